//! Feature bits of the v3 header and the feature name table.

/// Incompatible bit 0: refcounts may be stale (lazy refcounts in use).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible bit 1: corruption detected.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible bit 2: guest data in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible bit 3: compression type field is non-zero.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Incompatible bit 5: zoned format (zcow; QEMU patch series).
pub const INCOMPAT_ZONED: u64 = 1 << 5;
/// Every incompatible bit zcow understands.
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTL2
    | INCOMPAT_ZONED;

/// Compatible bit 0: lazy refcounts allowed.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Autoclear bit 0: bitmaps extension consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: external data file is also a raw image.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Which set a feature bit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureType {
    /// Incompatible features.
    Incompatible = 0,
    /// Compatible features.
    Compatible = 1,
    /// Autoclear features.
    Autoclear = 2,
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// Raw type byte (0, 1, 2; others are kept as they are).
    pub kind: u8,
    /// Bit number 0–63.
    pub bit: u8,
    /// Name (up to 46 bytes).
    pub name: String,
}

/// Size of one feature name table entry.
pub const FEATURE_NAME_ENTRY: usize = 48;

/// The table zcow writes: QEMU 10's eight names plus bit 5.
pub fn default_feature_table() -> Vec<FeatureName> {
    let e = |kind: FeatureType, bit: u8, name: &str| FeatureName {
        kind: kind as u8,
        bit,
        name: name.to_string(),
    };
    vec![
        e(FeatureType::Incompatible, 0, "dirty bit"),
        e(FeatureType::Incompatible, 1, "corrupt bit"),
        e(FeatureType::Incompatible, 2, "external data file"),
        e(FeatureType::Incompatible, 3, "compression type"),
        e(FeatureType::Incompatible, 4, "extended L2 entries"),
        e(FeatureType::Incompatible, 5, "zoned format"),
        e(FeatureType::Compatible, 0, "lazy refcounts"),
        e(FeatureType::Autoclear, 0, "bitmaps"),
        e(FeatureType::Autoclear, 1, "raw external data"),
    ]
}

/// The names QEMU 10 writes (without the zoned bit), for plain images.
pub fn qemu_feature_table() -> Vec<FeatureName> {
    default_feature_table()
        .into_iter()
        .filter(|f| !(f.kind == 0 && f.bit == 5))
        .collect()
}

/// Parse a feature name table payload.
pub fn parse_feature_table(data: &[u8]) -> Vec<FeatureName> {
    data.chunks_exact(FEATURE_NAME_ENTRY)
        .map(|c| {
            let raw = &c[2..];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            FeatureName {
                kind: c[0],
                bit: c[1],
                name: String::from_utf8_lossy(&raw[..end]).into_owned(),
            }
        })
        .collect()
}

/// Serialise a feature name table payload.
pub fn encode_feature_table(t: &[FeatureName]) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() * FEATURE_NAME_ENTRY);
    for f in t {
        let mut e = [0u8; FEATURE_NAME_ENTRY];
        e[0] = f.kind;
        e[1] = f.bit;
        let n = f.name.len().min(46);
        e[2..2 + n].copy_from_slice(&f.name.as_bytes()[..n]);
        out.extend_from_slice(&e);
    }
    out
}

/// QEMU's message for unsupported incompatible bits: names from the image's
/// own table first, then `Unknown incompatible feature: <hex>` for the rest.
pub fn unsupported_features_message(bits: u64, table: &[FeatureName]) -> String {
    let mut names = Vec::new();
    let mut rest = bits;
    for f in table {
        if f.kind == FeatureType::Incompatible as u8 && f.bit < 64 && bits & (1u64 << f.bit) != 0 {
            if rest & (1u64 << f.bit) != 0 {
                names.push(f.name.clone());
            }
            rest &= !(1u64 << f.bit);
        }
    }
    if rest != 0 {
        names.push(format!("Unknown incompatible feature: {rest:x}"));
    }
    format!("Unsupported qcow2 feature(s): {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_bits_like_qemu() {
        let t = default_feature_table();
        assert_eq!(
            unsupported_features_message(0x20, &t),
            "Unsupported qcow2 feature(s): zoned format"
        );
        assert_eq!(
            unsupported_features_message(0x20, &[]),
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 20"
        );
        let mut t2 = t.clone();
        t2.push(FeatureName {
            kind: 0,
            bit: 7,
            name: "my new feature".into(),
        });
        assert_eq!(
            unsupported_features_message(0xc0, &t2),
            "Unsupported qcow2 feature(s): my new feature, Unknown incompatible feature: 40"
        );
    }

    #[test]
    fn table_round_trips() {
        let t = default_feature_table();
        assert_eq!(parse_feature_table(&encode_feature_table(&t)), t);
    }
}
