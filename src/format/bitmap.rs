//! The persistent dirty bitmap directory (bitmaps header extension).

use super::bytes::be32;

/// QEMU's limit on the directory size.
pub const MAX_DIRECTORY: u64 = 64 << 20;
/// Directory entry flag: the bitmap was in use (not stored consistently).
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Directory entry flag: the bitmap tracks writes automatically.
pub const FLAG_AUTO: u32 = 1 << 1;

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapEntry {
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// Flags (`FLAG_*`).
    pub flags: u32,
    /// Bitmap type (1 = dirty tracking).
    pub kind: u8,
    /// log2 of the granularity in bytes.
    pub granularity_bits: u8,
    /// Name.
    pub name: String,
}

impl BitmapEntry {
    /// Granularity in bytes (0 when the field is out of range).
    pub fn granularity(&self) -> u64 {
        1u64.checked_shl(self.granularity_bits as u32).unwrap_or(0)
    }
    /// QEMU's flag names, in QAPI order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & FLAG_IN_USE != 0 {
            v.push("in-use");
        }
        if self.flags & FLAG_AUTO != 0 {
            v.push("auto");
        }
        v
    }
}

/// Parse `count` entries from the directory bytes. Fails (with where) when
/// an entry runs past the directory.
pub fn parse_directory(dir: &[u8], count: u32) -> Result<Vec<BitmapEntry>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    for i in 0..count {
        if pos + 24 > dir.len() {
            return Err(format!(
                "bitmap directory entry {i} at byte {pos} is truncated"
            ));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&dir[pos..pos + 8]);
        let name_len = u16::from_be_bytes([dir[pos + 18], dir[pos + 19]]) as usize;
        let extra = be32(dir, pos + 20) as usize;
        let name_at = pos + 24 + extra;
        let Some(name) = dir.get(name_at..name_at + name_len) else {
            return Err(format!(
                "bitmap directory entry {i} at byte {pos} is truncated"
            ));
        };
        out.push(BitmapEntry {
            table_offset: u64::from_be_bytes(a),
            table_size: be32(dir, pos + 8),
            flags: be32(dir, pos + 12),
            kind: dir[pos + 16],
            granularity_bits: dir[pos + 17],
            name: String::from_utf8_lossy(name).into_owned(),
        });
        pos = (name_at + name_len).div_ceil(8) * 8;
    }
    Ok(out)
}
