//! The internal snapshot table.

use super::bytes::{be16, be32, be64};
use super::error::{invalid, Result};
use crate::storage::Storage;

/// QEMU's limit on the snapshot table size.
pub const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;
/// QEMU's limit on extra data per entry.
pub const MAX_EXTRA_DATA: u32 = 1024;

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// L1 table offset.
    pub l1_table_offset: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// ID string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Date, seconds.
    pub date_sec: u32,
    /// Date, nanoseconds.
    pub date_nsec: u32,
    /// VM clock, nanoseconds.
    pub vm_clock_nsec: u64,
    /// VM state size.
    pub vm_state_size: u64,
    /// Virtual disk size at snapshot time (extra data), if present.
    pub disk_size: Option<u64>,
    /// Instruction count (extra data), if present.
    pub icount: Option<u64>,
    /// Raw extra data, kept.
    pub extra: Vec<u8>,
}

/// Read the snapshot table: `count` entries at `offset`. Returns the entries
/// and the table's size in bytes.
pub fn read_table(s: &dyn Storage, offset: u64, count: u32) -> Result<(Vec<Snapshot>, u64)> {
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = offset;
    let file_len = s.len()?;
    for i in 0..count {
        if pos - offset + 40 > MAX_SNAPSHOT_TABLE {
            return Err(invalid!("Snapshot table too large"));
        }
        let mut h = [0u8; 40];
        if pos + 40 > file_len {
            return Err(invalid!(
                "snapshot {i}: entry at {pos:#x} lies past the end of the file"
            ));
        }
        s.read_at(pos, &mut h)?;
        let extra_size = be32(&h, 36);
        let id_len = be16(&h, 12) as u64;
        let name_len = be16(&h, 14) as u64;
        if extra_size > MAX_EXTRA_DATA {
            return Err(invalid!(
                "snapshot {i}: extra data size {extra_size} exceeds the limit of {MAX_EXTRA_DATA}"
            ));
        }
        let var = extra_size as u64 + id_len + name_len;
        let end = pos + 40 + var;
        if end - offset > MAX_SNAPSHOT_TABLE {
            return Err(invalid!("Snapshot table too large"));
        }
        if end > file_len {
            return Err(invalid!(
                "snapshot {i}: entry at {pos:#x} lies past the end of the file"
            ));
        }
        let mut v = vec![0u8; var as usize];
        s.read_at(pos + 40, &mut v)?;
        let extra = v[..extra_size as usize].to_vec();
        let id =
            String::from_utf8_lossy(&v[extra_size as usize..(extra_size as u64 + id_len) as usize])
                .into_owned();
        let name =
            String::from_utf8_lossy(&v[(extra_size as u64 + id_len) as usize..]).into_owned();
        let vm_state_size = if extra.len() >= 8 {
            be64(&extra, 0)
        } else {
            be32(&h, 32) as u64
        };
        out.push(Snapshot {
            l1_table_offset: be64(&h, 0),
            l1_size: be32(&h, 8),
            id,
            name,
            date_sec: be32(&h, 16),
            date_nsec: be32(&h, 20),
            vm_clock_nsec: be64(&h, 24),
            vm_state_size,
            disk_size: (extra.len() >= 16).then(|| be64(&extra, 8)),
            icount: (extra.len() >= 24).then(|| be64(&extra, 16)),
            extra,
        });
        pos = end.div_ceil(8) * 8;
    }
    Ok((out, pos - offset))
}
