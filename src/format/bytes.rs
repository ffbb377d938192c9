//! Big-endian field readers for parsing on-disk structures from byte
//! slices (for layouts that are not aligned enough for `zerocopy` structs).
//! The caller guarantees the bytes are there.

/// u16 at byte `o`.
pub fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// u32 at byte `o`.
pub fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// u64 at byte `o`.
pub fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}
