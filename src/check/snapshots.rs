//! The snapshot table as check reads it (QEMU
//! `qcow2_check_read_snapshot_table` / `qcow2_check_fix_snapshot_table`):
//! limits, oversized extra data, incomplete v3 entries, and the rewrite that
//! `-r all` does.

use super::errno::{strerror, Errno, EFBIG, EINVAL, ENOSPC};
use super::{Counts, Ctx, Fix};
use crate::format::bytes::{be32, be64};

const MAX_SNAPSHOTS: u64 = 65536;
const MAX_EXTRA: u32 = 1024;
const MAX_TABLE: u64 = 64 << 20;

/// One snapshot table entry.
#[derive(Debug, Clone)]
pub(crate) struct SnapEntry {
    pub id: String,
    pub name: String,
    id_raw: Vec<u8>,
    name_raw: Vec<u8>,
    pub l1_offset: u64,
    pub l1_size: u32,
    hdr: [u8; 40],
    pub extra_data_size: u32,
    /// Extra data as kept (at most 1024 bytes).
    extra: Vec<u8>,
}

/// The snapshot table state.
#[derive(Debug, Default)]
pub(crate) struct Snaps {
    pub list: Vec<SnapEntry>,
    pub offset: u64,
    pub size: u64,
    /// Whether the walk counted the table's clusters (it does not when the
    /// table runs past EOF): only then may a rewrite free them.
    pub counted: bool,
}

impl SnapEntry {
    /// The size of the snapshot's virtual disk (from its extra data, or
    /// the image's when the entry has none).
    pub fn disk_size(&self, image_size: u64) -> u64 {
        if self.extra_data_size >= 16 && self.extra.len() >= 16 {
            be64(&self.extra, 8)
        } else {
            image_size
        }
    }

    /// How messages name it: `snapshot ID (NAME)`.
    pub fn label(&self) -> String {
        format!("snapshot {} ({})", self.id, self.name)
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Read and validate the table. `Err` ends the check (exit 1).
pub(crate) fn read_table(cx: &mut Ctx, res: &mut Counts, fix: Fix) -> Result<(), Errno> {
    let mut nb = cx.img.raw_nb_snapshots as u64;
    let off = cx.img.raw_snapshots_offset;
    cx.snaps = Snaps::default();
    if nb > MAX_SNAPSHOTS && fix.errors {
        let _ = writeln!(
            cx.err,
            "Discarding {} overhanging snapshots",
            nb - MAX_SNAPSHOTS
        );
        if let Err(e) = cx.img.write(60, &(MAX_SNAPSHOTS as u32).to_be_bytes()) {
            res.check_errors += 1;
            let _ = writeln!(
                cx.err,
                "ERROR failed to overwrite nb_snapshots: {}",
                strerror(e)
            );
            return Err(e);
        }
        res.corruptions_fixed += (nb - MAX_SNAPSHOTS) as i64;
        nb = MAX_SNAPSHOTS;
        cx.img.raw_nb_snapshots = nb as u32;
    }
    if nb > MAX_SNAPSHOTS {
        res.check_errors += 1;
        let _ = writeln!(cx.err, "{}: ERROR snapshot table too large", cx.prog);
        let _ = writeln!(
            cx.err,
            "You can force-remove all {} overhanging snapshots with {} check -r all",
            nb - MAX_SNAPSHOTS,
            cx.prog
        );
        return Err(EFBIG);
    }
    if (i64::MAX as u64).saturating_sub(nb * 40) < off || off & (cx.img.cs - 1) != 0 {
        res.check_errors += 1;
        let _ = writeln!(cx.err, "{}: ERROR snapshot table offset invalid", cx.prog);
        return Err(EINVAL);
    }
    cx.snaps.offset = off;
    let mut pos = off;
    let mut table_len = 0u64;
    let mut dropped = 0i64;
    let mut list = Vec::new();
    for i in 0..nb {
        let pre = pos;
        table_len = table_len.div_ceil(8) * 8;
        pos = pos.div_ceil(8) * 8;
        let mut h = [0u8; 40];
        cx.img.read(pos, &mut h)?;
        pos += 40;
        let mut extra_size = be32(&h, 36);
        let id_len = u16::from_be_bytes([h[12], h[13]]) as u64;
        let name_len = u16::from_be_bytes([h[14], h[15]]) as u64;
        let mut extra_end = pos + extra_size as u64;
        if extra_size > MAX_EXTRA {
            if !fix.errors {
                res.check_errors += 1;
                let _ = writeln!(cx.err, "{}: ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry {i}", cx.prog);
                let _ = writeln!(
                    cx.err,
                    "You can force-remove this extra metadata with {} check -r all",
                    cx.prog
                );
                return Err(EFBIG);
            }
            let _ = writeln!(cx.err, "Discarding too much extra metadata in snapshot table entry {i} ({extra_size} > {MAX_EXTRA})");
            dropped += 1;
            extra_size = MAX_EXTRA;
        }
        let mut extra = vec![0u8; extra_size as usize];
        cx.img.read(pos, &mut extra)?;
        if be32(&h, 36) <= MAX_EXTRA {
            extra_end = pos + extra_size as u64;
        }
        pos = extra_end;
        let mut id_raw = vec![0u8; id_len as usize];
        cx.img.read(pos, &mut id_raw)?;
        pos += id_len;
        let mut name_raw = vec![0u8; name_len as usize];
        cx.img.read(pos, &mut name_raw)?;
        pos += name_len;
        table_len += 40 + extra_size as u64 + id_len + name_len;
        if table_len > MAX_TABLE || pos - off > i32::MAX as u64 {
            if !fix.errors {
                res.check_errors += 1;
                let _ = writeln!(
                    cx.err,
                    "{}: ERROR failed to read the snapshot table: Snapshot table is too big",
                    cx.prog
                );
                let _ = writeln!(
                    cx.err,
                    "You can force-remove all {} overhanging snapshots with {} check -r all",
                    nb - i,
                    cx.prog
                );
                return Err(EFBIG);
            }
            let _ = writeln!(
                cx.err,
                "Discarding {} overhanging snapshots (snapshot table is too big)",
                nb - i
            );
            dropped += (nb - i) as i64;
            pos = pre;
            break;
        }
        list.push(SnapEntry {
            id: cstr(&id_raw),
            name: cstr(&name_raw),
            id_raw,
            name_raw,
            l1_offset: be64(&h, 0),
            l1_size: be32(&h, 8),
            hdr: h,
            extra_data_size: extra_size,
            extra,
        });
    }
    cx.snaps.size = pos - off;
    cx.snaps.list = list;
    // Dropped data is a corruption that the rewrite below fixes.
    res.corruptions += dropped;
    if cx.img.header.version >= 3 {
        for (i, s) in cx.snaps.list.iter().enumerate() {
            if s.extra_data_size < 16 {
                res.corruptions += 1;
                let _ = writeln!(
                    cx.err,
                    "{} snapshot table entry {i} is incomplete",
                    if fix.errors { "Repairing" } else { "ERROR" }
                );
            }
        }
    }
    Ok(())
}

/// Find `n` contiguous clusters with on-disk refcount 0 whose refblocks
/// exist, lowest first, and give them refcount 1.
pub(crate) fn alloc_clusters(cx: &mut Ctx, n: u64) -> Result<u64, Errno> {
    let covered = (cx.img.reftable.len() as u64) << cx.img.rb_bits;
    let mut run = 0u64;
    let mut c = 1u64;
    while c < covered {
        let free =
            cx.img.has_refblock(c, &mut *cx.err) && cx.img.get_refcount(c, &mut *cx.err)? == 0;
        if free {
            run += 1;
            if run == n {
                let first = c + 1 - n;
                for k in first..=c {
                    cx.img.set_refcount(k, 1, &mut *cx.err)?;
                }
                return Ok(first << cx.img.cb);
            }
        } else {
            run = 0;
        }
        c += 1;
    }
    Err(ENOSPC)
}

/// Decrement the refcount of every cluster in a byte range.
pub(crate) fn free_range(cx: &mut Ctx, off: u64, len: u64) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    let cs = cx.img.cs;
    let mut c = off & !(cs - 1);
    while c < off + len {
        let k = c >> cx.img.cb;
        let r = cx.img.get_refcount(k, &mut *cx.err)?;
        if r > 0 {
            cx.img.set_refcount(k, r - 1, &mut *cx.err)?;
        }
        c += cs;
    }
    Ok(())
}

/// Encode the table as QEMU writes it (24 bytes of known extra data).
fn encode(cx: &Ctx) -> Vec<u8> {
    let mut out = Vec::new();
    for s in &cx.snaps.list {
        out.resize(out.len().div_ceil(8) * 8, 0);
        let old = s.extra_data_size as usize;
        let vm_state = if old >= 8 {
            be64(&s.extra, 0)
        } else {
            be32(&s.hdr, 32) as u64
        };
        let disk = if old >= 16 {
            be64(&s.extra, 8)
        } else {
            cx.img.header.size / 512 * 512
        };
        let icount = if old >= 24 {
            be64(&s.extra, 16)
        } else {
            u64::MAX
        };
        let unknown: &[u8] = if old > 24 { &s.extra[24..] } else { &[] };
        let mut h = s.hdr;
        h[12..14].copy_from_slice(&(s.id_raw.len() as u16).to_be_bytes());
        h[14..16].copy_from_slice(&(s.name_raw.len() as u16).to_be_bytes());
        h[32..36].copy_from_slice(&(vm_state.min(u32::MAX as u64) as u32).to_be_bytes());
        h[36..40].copy_from_slice(&((24 + unknown.len()) as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&vm_state.to_be_bytes());
        out.extend_from_slice(&disk.to_be_bytes());
        out.extend_from_slice(&icount.to_be_bytes());
        out.extend_from_slice(unknown);
        out.extend_from_slice(&s.id_raw);
        out.extend_from_slice(&s.name_raw);
    }
    out
}

/// QEMU `qcow2_check_fix_snapshot_table`: with `-r all`, write the table
/// anew (new clusters, header updated, old clusters freed).
pub(crate) fn fix_table(cx: &mut Ctx, res: &mut Counts, fix: Fix) -> Result<(), Errno> {
    if res.corruptions == 0 || !fix.errors {
        return Ok(());
    }
    let r = (|| -> Result<(), Errno> {
        let table = encode(cx);
        let cs = cx.img.cs;
        let new_off = if table.is_empty() {
            0
        } else {
            let n = (table.len() as u64).div_ceil(cs);
            let off = alloc_clusters(cx, n)?;
            cx.img.write(off, &table)?;
            off
        };
        cx.img.sync()?;
        let mut hdr = (cx.snaps.list.len() as u32).to_be_bytes().to_vec();
        hdr.extend_from_slice(&new_off.to_be_bytes());
        cx.img.write(60, &hdr)?;
        cx.img.sync()?;
        let (old_off, old_size) = (cx.snaps.offset, cx.snaps.size);
        if cx.snaps.counted && old_size > 0 {
            // Never free what the new table now uses.
            let cs = cx.img.cs;
            let new_end = new_off + (table.len() as u64).div_ceil(cs) * cs;
            let mut c = old_off & !(cs - 1);
            while c < old_off + old_size {
                if new_off == 0 || c < new_off || c >= new_end {
                    free_range(cx, c, cs)?;
                }
                c += cs;
            }
        }
        cx.img.raw_nb_snapshots = cx.snaps.list.len() as u32;
        cx.img.raw_snapshots_offset = new_off;
        Ok(())
    })();
    if let Err(e) = r {
        res.check_errors += 1;
        let _ = writeln!(
            cx.err,
            "ERROR failed to update snapshot table: {}",
            strerror(e)
        );
        return Err(e);
    }
    res.corruptions_fixed += res.corruptions;
    res.corruptions = 0;
    Ok(())
}

/// Report a snapshot that `fix_l1_refs` drops: the repair line, and the
/// loss (`{what}: {field} is corrupt`) for the summary.
fn drop_snapshot(cx: &mut Ctx, what: &str, field: &str, why: &str) {
    let _ = writeln!(
        cx.err,
        "Repairing {what}: {field} {why}; the snapshot is dropped"
    );
    cx.lost_snapshots
        .push(format!("{what}: {field} is corrupt"));
}

/// `-r all`: snapshots whose L1 table the walk could not follow. An
/// oversized `l1_size` is set to what the snapshot's disk needs when the
/// table is there; a snapshot whose table cannot be located (unaligned
/// offset, or past the end of the file) is dropped and reported lost. The
/// new table goes to the end of the file, durable and refcounted before the
/// header (one 12-byte write) names it; the old table's clusters become
/// leaks for the later, synced, leak repair. Returns the entries fixed.
pub(crate) fn fix_l1_refs(cx: &mut Ctx) -> Result<i64, Errno> {
    let cs = cx.img.cs;
    let span = cs / cx.img.header.l2_entry_size() * cs;
    let file_len = cx.img.file_len();
    let mut fixed = 0;
    let mut keep = Vec::with_capacity(cx.snaps.list.len());
    for mut s in std::mem::take(&mut cx.snaps.list) {
        let what = format!("snapshot {} ({})", s.id, s.name);
        if s.l1_offset & (cs - 1) != 0 || s.l1_offset >= file_len {
            drop_snapshot(
                cx,
                &what,
                &format!("its L1 table offset 0x{:x}", s.l1_offset),
                "cannot be located",
            );
            fixed += 1;
            continue;
        }
        if s.l1_size as u64 > crate::format::header::MAX_L1_BYTES / 8 {
            let disk = if s.extra_data_size >= 16 && s.extra.len() >= 16 {
                be64(&s.extra, 8)
            } else {
                cx.img.header.size
            };
            let needed = disk.div_ceil(span);
            if needed > crate::format::header::MAX_L1_BYTES / 8
                || s.l1_offset + needed * 8 > file_len
            {
                drop_snapshot(
                    cx,
                    &what,
                    &format!("its L1 table size {}", s.l1_size),
                    "is corrupt and the table cannot be located",
                );
                fixed += 1;
                continue;
            }
            let _ = writeln!(
                cx.err,
                "Repairing {what}: L1 table size {} set to the {needed} entries its {disk}-byte disk needs",
                s.l1_size
            );
            s.l1_size = needed as u32;
            s.hdr[8..12].copy_from_slice(&(needed as u32).to_be_bytes());
            fixed += 1;
        }
        keep.push(s);
    }
    cx.snaps.list = keep;
    if fixed == 0 {
        return Ok(0);
    }
    let table = encode(cx);
    let new_off = if table.is_empty() {
        0
    } else {
        let off = cx.img.file_len().div_ceil(cs) * cs;
        cx.img.write(off, &table)?;
        cx.img.sync()?;
        let mut c = off;
        while c < off + table.len() as u64 {
            let k = c >> cx.img.cb;
            if cx.img.has_refblock(k, &mut *cx.err) {
                cx.img.set_refcount(k, 1, &mut *cx.err)?;
            }
            c += cs;
        }
        off
    };
    cx.img.sync()?;
    let mut hdr = (cx.snaps.list.len() as u32).to_be_bytes().to_vec();
    hdr.extend_from_slice(&new_off.to_be_bytes());
    cx.img.write(60, &hdr)?;
    cx.img.sync()?;
    cx.img.raw_nb_snapshots = cx.snaps.list.len() as u32;
    cx.img.raw_snapshots_offset = new_off;
    cx.img.header.nb_snapshots = cx.snaps.list.len() as u32;
    cx.img.header.snapshots_offset = new_off;
    cx.snaps.offset = new_off;
    cx.snaps.size = table.len() as u64;
    Ok(fixed)
}
