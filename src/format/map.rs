//! Where guest clusters live in the image file (for `zcow-img map`): a
//! read-only walk of the active L1 and L2 tables, one L2 table at a time.

use super::error::{FormatError, Result};
use super::l2::{decode_l2, ClusterType, L1_RESERVED, OFFSET_MASK};
use super::Qcow2;

/// What one run of guest clusters maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Data at this host offset (of the run's first byte).
    Data(u64),
    /// Reads as zero; the host offset when a cluster is still allocated.
    Zero(Option<u64>),
    /// Compressed data.
    Compressed,
    /// Not allocated in this image (backing file or zeroes).
    Unallocated,
}

/// A run of guest bytes with one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRun {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where it lives.
    pub map: Mapping,
}

/// Runs covering `[offset, offset+len)` of `img`; adjacent clusters merge
/// when their host offsets are contiguous too.
pub fn map_range(img: &Qcow2, offset: u64, len: u64) -> Result<Vec<MapRun>> {
    let end =
        offset
            .checked_add(len)
            .filter(|&e| e <= img.size())
            .ok_or(FormatError::OutOfRange {
                offset,
                len,
                size: img.size(),
            })?;
    let h = img.header();
    let cb = h.cluster_bits;
    let cs = 1u64 << cb;
    let es = h.l2_entry_size();
    let l2_entries = h.l2_entries();
    let ext = h.extended_l2();
    let data_file = h.data_file().is_some();
    let store = img.storage();
    let mut l1 = vec![0u8; h.l1_size as usize * 8];
    store.read_at_zero_fill(h.l1_table_offset, &mut l1)?;
    let mut out: Vec<MapRun> = Vec::new();
    let mut table: Option<(u64, Vec<u8>)> = None;
    let mut pos = offset;
    while pos < end {
        let gc = pos >> cb;
        let in_cluster = pos & (cs - 1);
        let n = (cs - in_cluster).min(end - pos);
        let l1i = (gc / l2_entries) as usize;
        let l1e = l1
            .get(l1i * 8..l1i * 8 + 8)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
        if l1e & L1_RESERVED != 0 {
            return Err(FormatError::Corrupt(format!(
                "L1 entry {l1i} has reserved bits set ({l1e:#x})"
            )));
        }
        let l2off = l1e & OFFSET_MASK;
        let ct = if l2off == 0 {
            ClusterType::Unallocated
        } else {
            if table.as_ref().map(|t| t.0) != Some(l2off) {
                let mut t = vec![0u8; cs as usize];
                store.read_at_zero_fill(l2off, &mut t)?;
                table = Some((l2off, t));
            }
            let t = table.as_ref().map(|t| t.1.as_slice()).unwrap_or(&[]);
            let i = ((gc % l2_entries) * es) as usize;
            let w = t
                .get(i..i + 8)
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
            decode_l2(w, cb, ext, data_file)
        };
        let map = match ct {
            ClusterType::Normal(hst) => Mapping::Data(hst.0 + in_cluster),
            ClusterType::ZeroAlloc(hst) => Mapping::Zero(Some(hst.0 + in_cluster)),
            ClusterType::ZeroPlain => Mapping::Zero(None),
            ClusterType::Compressed { .. } => Mapping::Compressed,
            ClusterType::Unallocated => Mapping::Unallocated,
        };
        match out.last_mut() {
            Some(r) if mergeable(r, map) => r.len += n,
            _ => out.push(MapRun {
                start: pos,
                len: n,
                map,
            }),
        }
        pos += n;
    }
    Ok(out)
}

fn mergeable(r: &MapRun, next: Mapping) -> bool {
    match (r.map, next) {
        (Mapping::Data(a), Mapping::Data(b)) | (Mapping::Zero(Some(a)), Mapping::Zero(Some(b))) => {
            a + r.len == b
        }
        (a, b) => a == b,
    }
}
