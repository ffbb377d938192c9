//! The "format specific information" of a qcow2 image, in QAPI's
//! `ImageInfoSpecificQCow2` key order, as `qemu-img info` and qemu-io's
//! `info` print it.

use super::features::*;
use super::Qcow2;
use serde_json::{json, Map, Value};

/// The qcow2 format-specific data of `img` (compat, data file, compression
/// type, lazy refcounts, bitmaps, refcount bits, encryption, corrupt,
/// extended L2), keys inserted in QAPI order.
pub fn format_specific(img: &Qcow2) -> Map<String, Value> {
    let h = img.header();
    let st = img.storage();
    let v3 = h.version >= 3;
    let mut data = Map::new();
    data.insert("compat".into(), json!(if v3 { "1.1" } else { "0.10" }));
    if let Some(df) = h.data_file() {
        data.insert("data-file".into(), json!(df));
        data.insert(
            "data-file-raw".into(),
            json!(h.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0),
        );
    }
    let ctype = if h.compression_type == 1 {
        "zstd"
    } else {
        "zlib"
    };
    data.insert("compression-type".into(), json!(ctype));
    if v3 {
        data.insert(
            "lazy-refcounts".into(),
            json!(h.compatible_features & COMPAT_LAZY_REFCOUNTS != 0),
        );
    }
    let bitmaps = img.bitmaps().unwrap_or_default();
    if !bitmaps.is_empty() {
        let list: Vec<Value> = bitmaps
            .iter()
            .map(|b| {
                let mut m = Map::new();
                m.insert("flags".into(), json!(b.flag_names()));
                m.insert("name".into(), json!(b.name));
                m.insert("granularity".into(), json!(b.granularity()));
                Value::Object(m)
            })
            .collect();
        data.insert("bitmaps".into(), Value::Array(list));
    }
    data.insert("refcount-bits".into(), json!(h.refcount_bits()));
    if let (2, Some((off, len))) = (h.crypt_method, h.crypto()) {
        let mut buf = vec![0u8; super::luks::HEADER_LEN];
        if len as usize >= buf.len() && st.read_at(off, &mut buf).is_ok() {
            if let Some(e) = super::luks::info(&buf) {
                data.insert("encrypt".into(), e);
            }
        }
    }
    if v3 {
        data.insert(
            "corrupt".into(),
            json!(h.incompatible_features & INCOMPAT_CORRUPT != 0),
        );
        data.insert("extended-l2".into(), json!(h.extended_l2()));
    }
    data
}

/// Where QEMU places the VM state of a qcow2 image: after the guest range
/// covered by the L1 entries the virtual size needs (`l1_vm_state_index`).
pub fn vm_state_offset(img: &Qcow2) -> u64 {
    let h = img.header();
    let cluster = h.cluster_size();
    // One L2 table maps cluster/entry_size clusters (16 bytes with extended L2).
    let entry = if h.extended_l2() { 16 } else { 8 };
    let per_l1 = cluster.saturating_mul(cluster / entry);
    if per_l1 == 0 {
        return 0;
    }
    h.size.div_ceil(per_l1).saturating_mul(per_l1)
}
