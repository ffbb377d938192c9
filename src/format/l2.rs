//! L1 and L2 entries: masks, decoding into cluster types, compressed
//! descriptors and extended-L2 subcluster bitmaps.

use super::types::HostOffset;

/// L1/L2: refcount is exactly one.
pub const COPIED: u64 = 1 << 63;
/// L2: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// L2 standard: reads as zero.
pub const ZERO: u64 = 1;
/// Offset bits 9–55.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 bits that must be zero.
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Standard L2 bits that must be zero.
pub const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;

/// Subclusters per cluster with extended L2.
pub const SUBCLUSTERS: u32 = 32;

/// What an L2 entry says about a guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterType {
    /// Not allocated: read from backing, else zero.
    Unallocated,
    /// Zero, nothing allocated.
    ZeroPlain,
    /// Zero, host cluster still owned.
    ZeroAlloc(HostOffset),
    /// Data at a host offset.
    Normal(HostOffset),
    /// Compressed data.
    Compressed {
        /// Host byte offset of the compressed stream.
        offset: u64,
        /// Bytes the stream may occupy.
        size: u64,
    },
}

/// Decode a standard L2 entry (or word 0 of an extended one).
pub fn decode_l2(
    entry: u64,
    cluster_bits: u32,
    extended: bool,
    has_data_file: bool,
) -> ClusterType {
    if entry & COMPRESSED != 0 {
        let (offset, size) = compressed_range(entry, cluster_bits);
        return ClusterType::Compressed { offset, size };
    }
    let off = entry & OFFSET_MASK;
    let zero = !extended && entry & ZERO != 0;
    match (zero, off) {
        (true, 0) => ClusterType::ZeroPlain,
        (true, o) => ClusterType::ZeroAlloc(HostOffset(o)),
        (false, 0) if has_data_file && entry & COPIED != 0 => ClusterType::Normal(HostOffset(0)),
        (false, 0) => ClusterType::Unallocated,
        (false, o) => ClusterType::Normal(HostOffset(o)),
    }
}

/// (host byte offset, byte size) of a compressed descriptor, as QEMU reads it.
pub fn compressed_range(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let x = 62 - (cluster_bits - 8);
    let desc = entry & !(COPIED | COMPRESSED);
    let offset = desc & ((1u64 << x) - 1);
    let sectors = ((desc >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
    (offset, sectors * 512 - (offset & 511))
}

/// The L2 entry of a compressed stream of `len` bytes (1 ≤ len < cluster
/// size) at host byte `offset`: the offset in the low `x = 62 - (cluster_bits
/// - 8)` bits, the number of 512-byte sectors it touches minus one above it.
/// `None` when the offset does not fit in `x` bits.
pub fn compressed_entry(offset: u64, len: u64, cluster_bits: u32) -> Option<u64> {
    let x = 62 - (cluster_bits - 8);
    if len == 0 || offset >= 1u64 << x {
        return None;
    }
    let extra = ((offset + len - 1) >> 9) - (offset >> 9);
    if extra >= 1u64 << (cluster_bits - 8) {
        return None;
    }
    Some(COMPRESSED | extra << x | offset)
}

/// State of one subcluster of an extended L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubclusterState {
    /// Allocated: data at host offset + index × subcluster size.
    Alloc,
    /// Reads as zero.
    Zero,
    /// Unallocated (backing or zero).
    Unallocated,
    /// Both bits set: invalid.
    Invalid,
}

/// State of subcluster `i` from the bitmap word.
pub fn subcluster_state(bitmap: u64, i: u32) -> SubclusterState {
    let a = bitmap >> i & 1 != 0;
    let z = bitmap >> (32 + i) & 1 != 0;
    match (a, z) {
        (true, true) => SubclusterState::Invalid,
        (true, false) => SubclusterState::Alloc,
        (false, true) => SubclusterState::Zero,
        (false, false) => SubclusterState::Unallocated,
    }
}

/// L2 table offset of an L1 entry (0 = none).
pub fn l1_l2_offset(entry: u64) -> HostOffset {
    HostOffset(entry & OFFSET_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_entries() {
        assert_eq!(decode_l2(0, 16, false, false), ClusterType::Unallocated);
        assert_eq!(decode_l2(1, 16, false, false), ClusterType::ZeroPlain);
        assert_eq!(
            decode_l2(COPIED | 0x50000, 16, false, false),
            ClusterType::Normal(HostOffset(0x50000))
        );
        assert_eq!(
            decode_l2(0x50001, 16, false, false),
            ClusterType::ZeroAlloc(HostOffset(0x50000))
        );
        // Extended L2 ignores bit 0.
        assert_eq!(
            decode_l2(0x50001, 16, true, false),
            ClusterType::Normal(HostOffset(0x50000))
        );
    }

    #[test]
    fn compressed_descriptor_like_qemu() {
        // 64 KiB clusters: x = 54; offset 0x12345, 3 additional sectors.
        let e = COMPRESSED | (3u64 << 54) | 0x12345;
        let (o, s) = compressed_range(e, 16);
        assert_eq!(o, 0x12345);
        assert_eq!(s, 4 * 512 - 0x145);
    }

    #[test]
    fn compressed_entry_round_trips() {
        for cb in [9u32, 12, 16, 21] {
            for (off, len) in [(0x10000u64, 1u64), (0x12345, 1000), (0x401ff, 2)] {
                let len = len.min((1 << cb) - 1);
                let e = compressed_entry(off, len, cb).unwrap();
                let (o, s) = compressed_range(e, cb);
                assert_eq!(o, off);
                // The range covers the stream, up to the end of its last sector.
                assert!(s >= len && (o + s) % 512 == 0, "cb {cb} off {off:#x}");
                assert_eq!(
                    decode_l2(e, cb, false, false),
                    ClusterType::Compressed { offset: o, size: s }
                );
            }
        }
        // 2 MiB clusters leave 49 offset bits.
        assert!(compressed_entry(1 << 49, 100, 21).is_none());
    }

    #[test]
    fn subclusters() {
        let bm = 1u64 | (1 << 33) | (1 << 2) | (1 << 34);
        assert_eq!(subcluster_state(bm, 0), SubclusterState::Alloc);
        assert_eq!(subcluster_state(bm, 1), SubclusterState::Zero);
        assert_eq!(subcluster_state(bm, 2), SubclusterState::Invalid);
        assert_eq!(subcluster_state(bm, 3), SubclusterState::Unallocated);
    }
}
