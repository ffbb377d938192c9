//! The LUKS1 header of an encrypted image (read only, for `info`; zcow does
//! not decrypt).

use super::bytes::be32;
use serde_json::{json, Map, Value};

/// "LUKS\xba\xbe".
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Size of the fixed LUKS1 header.
pub const HEADER_LEN: usize = 592;
const SLOT_ACTIVE: u32 = 0x00AC_71F3;

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// QEMU's `encrypt` object (format `luks`) for `qemu-img info`, from the
/// header bytes; None if they are not a LUKS1 header.
pub fn info(h: &[u8]) -> Option<Value> {
    if h.len() < HEADER_LEN || &h[..6] != MAGIC {
        return None;
    }
    let cipher = cstr(&h[8..40]);
    let mode_spec = cstr(&h[40..72]);
    let hash = cstr(&h[72..104]);
    let key_bytes = be32(h, 108);
    let (mode, ivgen) = mode_spec.split_once('-').unwrap_or((&mode_spec, ""));
    let (ivgen_alg, ivgen_hash) = match ivgen.split_once(':') {
        Some((a, h)) => (a.to_string(), Some(h.to_string())),
        None => (ivgen.to_string(), None),
    };
    // XTS keys hold two cipher keys.
    let bits = if mode == "xts" {
        key_bytes * 4
    } else {
        key_bytes * 8
    };
    let alg = match cipher.as_str() {
        "aes" | "serpent" | "twofish" => format!("{cipher}-{bits}"),
        "cast5" => "cast5-128".into(),
        other => other.to_string(),
    };
    let slots: Vec<Value> = (0..8)
        .map(|i| {
            let o = 208 + i * 48;
            let mut m = Map::new();
            let active = be32(h, o) == SLOT_ACTIVE;
            m.insert("active".into(), json!(active));
            if active {
                m.insert("iters".into(), json!(be32(h, o + 4)));
                m.insert("stripes".into(), json!(be32(h, o + 44)));
            }
            m.insert("key-offset".into(), json!(be32(h, o + 40) as u64 * 512));
            Value::Object(m)
        })
        .collect();
    // Keys in QAPI order: the QDict printer orders them, ties go by insertion.
    let mut m = Map::new();
    m.insert("format".into(), json!("luks"));
    m.insert("cipher-alg".into(), json!(alg));
    m.insert("cipher-mode".into(), json!(mode));
    m.insert("ivgen-alg".into(), json!(ivgen_alg));
    if let Some(hh) = ivgen_hash {
        m.insert("ivgen-hash-alg".into(), json!(hh));
    }
    m.insert("hash-alg".into(), json!(hash));
    m.insert("detached-header".into(), json!(false));
    m.insert("payload-offset".into(), json!(be32(h, 104) as u64 * 512));
    m.insert("master-key-iters".into(), json!(be32(h, 164)));
    m.insert("uuid".into(), json!(cstr(&h[168..208])));
    m.insert("slots".into(), Value::Array(slots));
    Some(Value::Object(m))
}
