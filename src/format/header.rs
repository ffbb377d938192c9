//! The qcow2 header (v2 and v3), its extensions, and their validation.

use super::bytes::{be32, be64};
use super::error::{invalid, FormatError, Result};
use super::features::*;
use super::zoned::{ZonedExt, ZONED_EXT_MAGIC};
use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "QFI\xfb".
pub const QCOW_MAGIC: u32 = 0x5146_49fb;
/// Length of the v2 header.
pub const V2_HEADER_LEN: usize = 72;
/// Minimum v3 header length.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Header length QEMU and zcow write for v3 (with compression type + padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest cluster_bits.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limit on the L1 table (bytes).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (bytes).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's limit on the backing file name.
pub const MAX_BACKING_NAME: u32 = 1023;
/// QEMU's limit on snapshots.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Host offsets must stay below 2^56.
pub const MAX_HOST_OFFSET: u64 = 1 << 56;

/// Extension magics.
pub const EXT_END: u32 = 0;
/// Backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// External data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The fixed v2 part of the header, as on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeaderV2 {
    /// Magic.
    pub magic: U32,
    /// Version.
    pub version: U32,
    /// Backing file name offset.
    pub backing_file_offset: U64,
    /// Backing file name length.
    pub backing_file_size: U32,
    /// log2(cluster size).
    pub cluster_bits: U32,
    /// Virtual size.
    pub size: U64,
    /// Encryption method.
    pub crypt_method: U32,
    /// Active L1 entries.
    pub l1_size: U32,
    /// Active L1 offset.
    pub l1_table_offset: U64,
    /// Refcount table offset.
    pub refcount_table_offset: U64,
    /// Refcount table clusters.
    pub refcount_table_clusters: U32,
    /// Snapshot count.
    pub nb_snapshots: U32,
    /// Snapshot table offset.
    pub snapshots_offset: U64,
}

/// The v3 additions (offset 72..104), as on disk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeaderV3 {
    /// Incompatible features.
    pub incompatible_features: U64,
    /// Compatible features.
    pub compatible_features: U64,
    /// Autoclear features.
    pub autoclear_features: U64,
    /// log2(refcount bits).
    pub refcount_order: U32,
    /// Header length.
    pub header_length: U32,
}

/// Payload of the bitmaps extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Number of bitmaps.
    pub nb_bitmaps: u32,
    /// Reserved (must be 0).
    pub reserved: u32,
    /// Directory size in bytes.
    pub directory_size: u64,
    /// Directory offset.
    pub directory_offset: u64,
}

/// A header extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// Backing file format name.
    BackingFormat(String),
    /// Feature name table.
    FeatureTable(Vec<FeatureName>),
    /// Bitmaps extension.
    Bitmaps(BitmapsExt),
    /// Encryption header pointer.
    Crypto {
        /// Offset of the LUKS header.
        offset: u64,
        /// Length of the LUKS header.
        length: u64,
    },
    /// External data file name.
    DataFile(String),
    /// Zoned extension.
    Zoned(ZonedExt),
    /// Anything else, kept verbatim.
    Unknown {
        /// Magic.
        magic: u32,
        /// Payload.
        data: Vec<u8>,
    },
}

impl Extension {
    fn magic(&self) -> u32 {
        match self {
            Extension::BackingFormat(_) => EXT_BACKING_FORMAT,
            Extension::FeatureTable(_) => EXT_FEATURE_TABLE,
            Extension::Bitmaps(_) => EXT_BITMAPS,
            Extension::Crypto { .. } => EXT_CRYPTO,
            Extension::DataFile(_) => EXT_DATA_FILE,
            Extension::Zoned(_) => ZONED_EXT_MAGIC,
            Extension::Unknown { magic, .. } => *magic,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Extension::BackingFormat(s) | Extension::DataFile(s) => s.as_bytes().to_vec(),
            Extension::FeatureTable(t) => encode_feature_table(t),
            Extension::Bitmaps(b) => {
                let mut v = Vec::with_capacity(24);
                v.extend_from_slice(&b.nb_bitmaps.to_be_bytes());
                v.extend_from_slice(&b.reserved.to_be_bytes());
                v.extend_from_slice(&b.directory_size.to_be_bytes());
                v.extend_from_slice(&b.directory_offset.to_be_bytes());
                v
            }
            Extension::Crypto { offset, length } => {
                let mut v = offset.to_be_bytes().to_vec();
                v.extend_from_slice(&length.to_be_bytes());
                v
            }
            Extension::Zoned(z) => z.encode(),
            Extension::Unknown { data, .. } => data.clone(),
        }
    }
}

/// A decoded header with its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Backing file name offset (0 = none).
    pub backing_file_offset: u64,
    /// Backing file name length.
    pub backing_file_size: u32,
    /// log2(cluster size).
    pub cluster_bits: u32,
    /// Virtual size.
    pub size: u64,
    /// Encryption method.
    pub crypt_method: u32,
    /// Active L1 entries.
    pub l1_size: u32,
    /// Active L1 offset.
    pub l1_table_offset: u64,
    /// Refcount table offset.
    pub refcount_table_offset: u64,
    /// Refcount table clusters.
    pub refcount_table_clusters: u32,
    /// Snapshot count.
    pub nb_snapshots: u32,
    /// Snapshot table offset.
    pub snapshots_offset: u64,
    /// Incompatible features (v3).
    pub incompatible_features: u64,
    /// Compatible features (v3).
    pub compatible_features: u64,
    /// Autoclear features (v3).
    pub autoclear_features: u64,
    /// log2(refcount bits) (4 for v2).
    pub refcount_order: u32,
    /// Header length (72 for v2).
    pub header_length: u32,
    /// Compression type (additional field at 104; 0 if absent).
    pub compression_type: u8,
    /// Additional header bytes from offset 105 up to header_length, kept
    /// on rewrite.
    pub additional: Vec<u8>,
    /// Extensions in file order.
    pub extensions: Vec<Extension>,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
}

/// Lenient parts of header parsing that `check` wants relaxed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseMode {
    /// Accept `refcount_table_clusters == 0` (check mode, like QEMU).
    pub allow_empty_reftable: bool,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1u32 << self.refcount_order
    }
    /// Whether extended L2 entries are used.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    /// L2 entry size in bytes.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }
    /// L1 entries needed for the virtual size.
    pub fn required_l1_size(&self) -> u64 {
        required_l1_entries(self.size, self.cluster_bits, self.l2_entry_size())
    }
    /// The zoned extension, if present.
    pub fn zoned(&self) -> Option<&ZonedExt> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Zoned(z) => Some(z),
            _ => None,
        })
    }
    /// Mutable zoned extension.
    pub fn zoned_mut(&mut self) -> Option<&mut ZonedExt> {
        self.extensions.iter_mut().find_map(|e| match e {
            Extension::Zoned(z) => Some(z),
            _ => None,
        })
    }
    /// The backing format name, if present.
    pub fn backing_format(&self) -> Option<&str> {
        self.extensions.iter().find_map(|e| match e {
            Extension::BackingFormat(s) => Some(s.as_str()),
            _ => None,
        })
    }
    /// The external data file name, if present.
    pub fn data_file(&self) -> Option<&str> {
        self.extensions.iter().find_map(|e| match e {
            Extension::DataFile(s) => Some(s.as_str()),
            _ => None,
        })
    }
    /// The bitmaps extension, if present.
    pub fn bitmaps(&self) -> Option<&BitmapsExt> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Bitmaps(b) => Some(b),
            _ => None,
        })
    }
    /// The encryption header pointer, if present.
    pub fn crypto(&self) -> Option<(u64, u64)> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Crypto { offset, length } => Some((*offset, *length)),
            _ => None,
        })
    }
    /// The image's feature name table (empty if absent).
    pub fn feature_table(&self) -> &[FeatureName] {
        self.extensions
            .iter()
            .find_map(|e| match e {
                Extension::FeatureTable(t) => Some(t.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// Read only the cluster_bits field's worth: how many bytes of cluster 0
    /// to load for [`Header::parse`]. Fails on a bad magic or version.
    pub fn peek_cluster_size(first: &[u8]) -> Result<u64> {
        let raw = RawHeaderV2::read_from_prefix(first)
            .map_err(|_| invalid!("Image is not in qcow2 format (file too short for a header)"))?
            .0;
        if raw.magic.get() != QCOW_MAGIC {
            return Err(invalid!("Image is not in qcow2 format"));
        }
        let v = raw.version.get();
        if v != 2 && v != 3 {
            return Err(FormatError::Unsupported(format!(
                "Unsupported qcow2 version {v}"
            )));
        }
        let cb = raw.cluster_bits.get();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cb) {
            return Err(FormatError::Unsupported(format!(
                "Unsupported cluster size: 2^{cb}"
            )));
        }
        Ok(1u64 << cb)
    }

    /// Parse a header from the bytes of cluster 0 (shorter if the file is
    /// shorter). Validates everything that does not need other metadata.
    pub fn parse(c0: &[u8], mode: ParseMode) -> Result<Header> {
        let cluster_size = Self::peek_cluster_size(c0)?;
        let raw = RawHeaderV2::read_from_prefix(c0)
            .map_err(|_| invalid!("qcow2 header too short"))?
            .0;
        let version = raw.version.get();
        let cluster_bits = raw.cluster_bits.get();
        let mut h = Header {
            version,
            backing_file_offset: raw.backing_file_offset.get(),
            backing_file_size: raw.backing_file_size.get(),
            cluster_bits,
            size: raw.size.get(),
            crypt_method: raw.crypt_method.get(),
            l1_size: raw.l1_size.get(),
            l1_table_offset: raw.l1_table_offset.get(),
            refcount_table_offset: raw.refcount_table_offset.get(),
            refcount_table_clusters: raw.refcount_table_clusters.get(),
            nb_snapshots: raw.nb_snapshots.get(),
            snapshots_offset: raw.snapshots_offset.get(),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression_type: 0,
            additional: Vec::new(),
            extensions: Vec::new(),
            backing_file: None,
        };
        if version == 3 {
            let v3 = c0
                .get(V2_HEADER_LEN..)
                .and_then(|b| RawHeaderV3::read_from_prefix(b).ok())
                .ok_or_else(|| invalid!("qcow2 header too short"))?
                .0;
            h.incompatible_features = v3.incompatible_features.get();
            h.compatible_features = v3.compatible_features.get();
            h.autoclear_features = v3.autoclear_features.get();
            h.refcount_order = v3.refcount_order.get();
            h.header_length = v3.header_length.get();
            if h.header_length < V3_MIN_HEADER_LEN {
                return Err(invalid!("qcow2 header too short"));
            }
            if h.header_length as u64 > cluster_size {
                return Err(invalid!("qcow2 header exceeds cluster size"));
            }
            let hl = h.header_length as usize;
            if c0.len() < hl {
                return Err(invalid!(
                    "qcow2 header too short: header_length {} but the file has {} bytes",
                    hl,
                    c0.len()
                ));
            }
            if hl > 104 {
                h.compression_type = c0[104];
                h.additional = c0[105..hl].to_vec();
            }
        }
        if h.refcount_order > 6 {
            return Err(invalid!(
                "Reference count entry width too large; may not exceed 64 bits"
            ));
        }
        // Incompatible features: refuse unknown ones, naming them from the
        // image's own table (so extensions come first).
        let ext_end = h.parse_extensions(c0)?;
        let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FormatError::Unsupported(unsupported_features_message(
                unknown,
                h.feature_table(),
            )));
        }
        if h.incompatible_features & INCOMPAT_COMPRESSION != 0 && h.compression_type == 0 {
            return Err(invalid!(
                "qcow2: Compression type incompatible feature bit must not be set"
            ));
        }
        if h.compression_type > 1 {
            return Err(invalid!(
                "qcow2: unknown compression type: {}",
                h.compression_type
            ));
        }
        if h.compression_type != 0 && h.incompatible_features & INCOMPAT_COMPRESSION == 0 {
            return Err(invalid!(
                "qcow2: Compression type incompatible feature bit must be set"
            ));
        }
        if h.extended_l2() && cluster_bits < 14 {
            return Err(FormatError::Unsupported(format!(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes (image has 2^{cluster_bits})"
            )));
        }
        if h.crypt_method > 2 {
            return Err(FormatError::Unsupported(format!(
                "Unsupported encryption method {}",
                h.crypt_method
            )));
        }
        // Backing file name.
        if h.backing_file_offset != 0 {
            if h.backing_file_offset > cluster_size {
                return Err(invalid!("Invalid backing file offset"));
            }
            if h.backing_file_size > MAX_BACKING_NAME {
                return Err(invalid!("Backing file name too long"));
            }
            let start = h.backing_file_offset as usize;
            let end = start + h.backing_file_size as usize;
            if end as u64 > cluster_size || end > c0.len() {
                return Err(invalid!(
                    "Backing file name at offset {:#x} ({} bytes) lies outside cluster 0",
                    start,
                    h.backing_file_size
                ));
            }
            if start < ext_end && h.backing_file_size > 0 {
                return Err(invalid!(
                    "Backing file name at offset {:#x} overlaps the header extensions (which end at {:#x})",
                    start,
                    ext_end
                ));
            }
            h.backing_file = Some(String::from_utf8_lossy(&c0[start..end]).into_owned());
        }
        // Tables.
        let cs = cluster_size;
        if h.l1_table_offset % cs != 0 {
            return Err(invalid!("Active L1 table offset invalid"));
        }
        if h.l1_size as u64 * 8 > MAX_L1_BYTES {
            return Err(invalid!("Active L1 table too large"));
        }
        if h.required_l1_size() > MAX_L1_BYTES / 8 {
            // qemu's words (it needs more L1 entries than the limit).
            return Err(invalid!("Image is too big"));
        }
        if (h.l1_size as u64) < h.required_l1_size() {
            return Err(invalid!("L1 table is too small"));
        }
        if h.refcount_table_offset % cs != 0 {
            return Err(invalid!("Reference count table offset invalid"));
        }
        if h.refcount_table_clusters as u64 * cs > MAX_REFTABLE_BYTES {
            return Err(invalid!("Reference count table too large"));
        }
        if h.refcount_table_clusters == 0 && !mode.allow_empty_reftable {
            return Err(invalid!("Image does not contain a reference count table"));
        }
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(invalid!("Too many snapshots"));
        }
        if h.nb_snapshots > 0 && h.snapshots_offset % cs != 0 {
            return Err(invalid!("Snapshot table offset invalid"));
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 && h.data_file().is_none() {
            return Err(invalid!("'data-file' is required for this image"));
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE == 0 && h.data_file().is_some() {
            return Err(invalid!(
                "data-file extension present without the external data file feature bit"
            ));
        }
        Ok(h)
    }

    /// Parse the extension area; returns the offset just past the end marker.
    fn parse_extensions(&mut self, c0: &[u8]) -> Result<usize> {
        let mut off = self.header_length as usize;
        let limit = if self.backing_file_offset != 0 && self.backing_file_offset < c0.len() as u64 {
            self.backing_file_offset as usize
        } else {
            c0.len()
        };
        if self.version == 2 {
            // QEMU ignores bytes after a v2 header, but reads extensions if
            // present; zcow does too when they parse cleanly.
            let mut probe = self.clone();
            probe.version = 3;
            return match probe.parse_extensions(c0) {
                Ok(end) => {
                    self.extensions = probe.extensions;
                    Ok(end)
                }
                Err(_) => Ok(off),
            };
        }
        let mut seen_zoned = false;
        loop {
            if off + 8 > limit {
                // A v3 header without an end marker inside cluster 0.
                if off >= limit {
                    return Ok(off);
                }
                return Err(invalid!("Header extension too large"));
            }
            let magic = u32::from_be_bytes([c0[off], c0[off + 1], c0[off + 2], c0[off + 3]]);
            let len =
                u32::from_be_bytes([c0[off + 4], c0[off + 5], c0[off + 6], c0[off + 7]]) as usize;
            off += 8;
            // QEMU checks the length before the type, the end marker included.
            if len > limit - off {
                return Err(invalid!("Header extension too large"));
            }
            if magic == EXT_END {
                return Ok(off);
            }
            let data = &c0[off..off + len];
            let ext = match magic {
                EXT_BACKING_FORMAT => {
                    Extension::BackingFormat(String::from_utf8_lossy(data).into_owned())
                }
                EXT_FEATURE_TABLE => Extension::FeatureTable(parse_feature_table(data)),
                EXT_BITMAPS => {
                    if len < 24 {
                        return Err(invalid!(
                            "bitmaps extension: invalid length {len} (expected 24)"
                        ));
                    }
                    Extension::Bitmaps(BitmapsExt {
                        nb_bitmaps: be32(data, 0),
                        reserved: be32(data, 4),
                        directory_size: be64(data, 8),
                        directory_offset: be64(data, 16),
                    })
                }
                EXT_CRYPTO => {
                    if len != 16 {
                        return Err(invalid!(
                            "Invalid encryption header extension length {len} (expected 16)"
                        ));
                    }
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&data[0..8]);
                    let offset = u64::from_be_bytes(a);
                    a.copy_from_slice(&data[8..16]);
                    Extension::Crypto {
                        offset,
                        length: u64::from_be_bytes(a),
                    }
                }
                EXT_DATA_FILE => Extension::DataFile(String::from_utf8_lossy(data).into_owned()),
                ZONED_EXT_MAGIC => {
                    if seen_zoned {
                        return Err(invalid!("duplicate zoned header extension"));
                    }
                    seen_zoned = true;
                    Extension::Zoned(ZonedExt::parse(data)?)
                }
                _ => Extension::Unknown {
                    magic,
                    data: data.to_vec(),
                },
            };
            self.extensions.push(ext);
            off += len.div_ceil(8) * 8;
        }
    }

    /// Serialise cluster 0's contents: header, extensions, end marker and
    /// backing file name. Sets `backing_file_offset`/`size` accordingly.
    pub fn encode(&mut self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut out = vec![0u8; self.header_length as usize];
        if self.version >= 3 && out.len() > 104 {
            out[104] = self.compression_type;
            let n = self.additional.len().min(out.len() - 105);
            out[105..105 + n].copy_from_slice(&self.additional[..n]);
        }
        // QEMU writes extensions (e.g. the backing format) for v2 as well.
        if self.version >= 3 || !self.extensions.is_empty() {
            for e in &self.extensions {
                let p = e.payload();
                out.extend_from_slice(&e.magic().to_be_bytes());
                out.extend_from_slice(&(p.len() as u32).to_be_bytes());
                out.extend_from_slice(&p);
                // Pad the payload (not the absolute offset) to 8 bytes, as
                // parse_extensions steps: header_length need not be aligned.
                out.resize(out.len() + p.len().div_ceil(8) * 8 - p.len(), 0);
            }
            out.extend_from_slice(&[0u8; 8]);
        }
        match &self.backing_file {
            Some(name) => {
                self.backing_file_offset = out.len() as u64;
                self.backing_file_size = name.len() as u32;
                out.extend_from_slice(name.as_bytes());
            }
            None => {
                self.backing_file_offset = 0;
                self.backing_file_size = 0;
            }
        }
        if out.len() > cs {
            return Err(FormatError::BadOption(format!(
                "header, extensions and backing file name ({} bytes) do not fit in one {}-byte cluster",
                out.len(),
                cs
            )));
        }
        let raw = RawHeaderV2 {
            magic: QCOW_MAGIC.into(),
            version: self.version.into(),
            backing_file_offset: self.backing_file_offset.into(),
            backing_file_size: self.backing_file_size.into(),
            cluster_bits: self.cluster_bits.into(),
            size: self.size.into(),
            crypt_method: self.crypt_method.into(),
            l1_size: self.l1_size.into(),
            l1_table_offset: self.l1_table_offset.into(),
            refcount_table_offset: self.refcount_table_offset.into(),
            refcount_table_clusters: self.refcount_table_clusters.into(),
            nb_snapshots: self.nb_snapshots.into(),
            snapshots_offset: self.snapshots_offset.into(),
        };
        out[..V2_HEADER_LEN].copy_from_slice(raw.as_bytes());
        if self.version >= 3 {
            let v3 = RawHeaderV3 {
                incompatible_features: self.incompatible_features.into(),
                compatible_features: self.compatible_features.into(),
                autoclear_features: self.autoclear_features.into(),
                refcount_order: self.refcount_order.into(),
                header_length: self.header_length.into(),
            };
            out[V2_HEADER_LEN..104].copy_from_slice(v3.as_bytes());
        }
        Ok(out)
    }
}

/// L1 entries needed for `size` bytes.
pub fn required_l1_entries(size: u64, cluster_bits: u32, l2_entry_size: u64) -> u64 {
    let l2_entries = (1u64 << cluster_bits) / l2_entry_size;
    let per_l1 = (1u128 << cluster_bits) * l2_entries as u128;
    (size as u128).div_ceil(per_l1) as u64
}

/// Byte offsets of single fields, for in-place updates.
pub mod field {
    /// `l1_size` (u32) followed by `l1_table_offset` (u64).
    pub const L1_SIZE: u64 = 36;
    /// `refcount_table_offset` (u64) followed by `refcount_table_clusters` (u32).
    pub const REFTABLE_OFFSET: u64 = 48;
    /// `incompatible_features` (u64).
    pub const INCOMPAT: u64 = 72;
    /// `autoclear_features` (u64).
    pub const AUTOCLEAR: u64 = 88;
}
