//! Repairs of the mapping (`-r all`), the active image's and every
//! snapshot's: the least destructive fix of each L1/L2 entry the walk could
//! not trust, so that the image can end consistent. An L2 table mapped by
//! several L1 tables (shared with snapshots) is fixed once, only when those
//! mappings are all the references it has; each loss is reported in every
//! view that maps it.
//!
//! * reserved bits set in an entry whose offset is valid: cleared;
//! * an L1 entry whose L2 table cannot be located (unaligned, past EOF), an
//!   L2 entry whose data cannot be located (unaligned, past EOF): the
//!   mapping is dropped, so the guest range reads as zeroes (or as the
//!   backing file), and the range is reported as lost;
//! * a data cluster that is also metadata (aliasing): the guest's view is
//!   copied to a new cluster at the end of the file and the entry points
//!   there, so each owner keeps what it holds (never a raised refcount);
//! * a compressed entry with COPIED set: cleared; one whose range runs past
//!   the end of the file, over metadata, or longer than compressed data can
//!   be: its sector count is shortened to the stream when the stream still
//!   decompresses, else the mapping is dropped.
//!
//! Crash safety: entries are single 8-byte (or 16-byte) writes; a copy is
//! written and synced, its refcount set and synced, and only then is the
//! entry pointed at it. No refcount is lowered here: clusters a dropped
//! entry used become leaks for the later, synced, leak repair.

use super::errno::Errno;
use super::walk::Walk;
use super::{Ctx, Lost};
use crate::format::l2::{
    decode_l2, ClusterType, COMPRESSED, COPIED, L1_RESERVED, L2_RESERVED, OFFSET_MASK, ZERO,
};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Write the unaligned preallocated-zero entries the walk found, where the
/// table can be trusted. Returns (written, refused).
pub(crate) fn apply_prealloc(cx: &mut Ctx, w: &Walk) -> Result<(i64, i64), Errno> {
    let (mut done, mut refused) = (0, 0);
    for (pos, bytes, l2) in &w.prealloc {
        let c = l2 >> cx.img.cb;
        if l2 & (cx.img.cs - 1) == 0 && w.l2_writable(c) {
            cx.img.write(*pos, bytes)?;
            done += 1;
        } else {
            let _ = writeln!(
                cx.err,
                "zcow: Not rewriting the L2 entry at 0x{pos:x}: its table (0x{l2:x}) is not a trusted L2 table"
            );
            refused += 1;
        }
    }
    if done > 0 {
        cx.img.sync()?;
    }
    Ok((done, refused))
}

/// Apply the mapping repairs; returns how many entries were repaired.
pub(crate) fn fix_mappings(cx: &mut Ctx, w: &Walk) -> Result<i64, Errno> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let ext = cx.img.extended();
    let es = if ext { 16u64 } else { 8 };
    let size = cx.img.header.size;
    let l2_entries = cs / es;
    let span = l2_entries * cs;
    let mut fixed = 0i64;
    let l1_off = cx.img.header.l1_table_offset;
    // Entries past the virtual disk map nothing a guest can read.
    let needed = size.div_ceil(span) as usize;
    if cx.img.l1.len() > needed && !l1_writable(cx, w, l1_off, cx.img.l1.len()) {
        if !l1_writable(cx, w, l1_off, needed) {
            return Ok(0);
        }
        // The declared table runs into other structures or past the end of
        // the file: keep the entries the disk needs.
        let _ = writeln!(
            cx.err,
            "Repairing L1 table size: {} entries overlap other structures or run past the end of the file; the {needed} entries the virtual disk needs are kept",
            cx.img.l1.len()
        );
        cx.img.write_header_field(
            crate::format::header::field::L1_SIZE,
            &(needed as u32).to_be_bytes(),
        )?;
        cx.img.sync()?;
        cx.img.header.l1_size = needed as u32;
        cx.img.l1.truncate(needed);
        // What the walk found through the dropped entries was garbage:
        // walk again before trusting its aliasing findings.
        return Ok(1);
    }
    // A table cut off by the end of the file (a truncated image): the
    // missing entries read as zeroes, and the table is made whole with
    // zeroes so that it is counted and kept.
    let n = cx.img.l1.len().min(needed);
    let file_len = cx.img.file_len();
    let l1_end = l1_off + n as u64 * 8;
    if n > 0 && l1_off & (cs - 1) == 0 && l1_end > file_len {
        let from = l1_off.max(file_len);
        let first = (from - l1_off).div_ceil(8);
        let _ = writeln!(
            cx.err,
            "Repairing L1 table: entries {first}..{n} lie past the end of the file; written as zeroes"
        );
        cx.img.write(from, &vec![0u8; (l1_end - from) as usize])?;
        cx.img.sync()?;
        let (g0, g1) = (first * span, size.min(n as u64 * span));
        if g1 > g0 {
            cx.lost.push(Lost {
                guest: g0,
                len: g1 - g0,
                why: "its L1 table entries lie past the end of the file (the image was cut short)"
                    .into(),
                snapshot: None,
            });
        }
        return Ok(1);
    }
    // Who maps each L2 table: (snapshot or active, guest offset, disk
    // size), one per L1 entry. A table is repaired only when these are all
    // the references the walk counted for it, so a fix is right for every
    // owner (each loss is reported in each owner's view).
    let mut owners: BTreeMap<u64, Vec<Owner>> = BTreeMap::new();
    if l1_writable(cx, w, l1_off, cx.img.l1.len()) {
        let entries: Vec<u64> = cx.img.l1.iter().take(needed).copied().collect();
        fixed += fix_l1(cx, l1_off, &entries, None, size, &mut owners)?;
    }
    for k in 0..cx.snaps.list.len() {
        let s = &cx.snaps.list[k];
        let (off, n) = (s.l1_offset, s.l1_size as u64);
        let disk = s.disk_size(size);
        let label = s.label();
        if n > crate::format::header::MAX_L1_BYTES / 8
            || n == 0
            || !l1_writable(cx, w, off, n as usize)
        {
            continue;
        }
        let n = n.min(disk.div_ceil(span));
        let entries = super::image::read_u64s(&*cx.img.store, off, n)?;
        fixed += fix_l1(cx, off, &entries, Some(label), disk, &mut owners)?;
    }
    // Data clusters with more owners than the refcount width can count:
    // the first owner keeps the cluster, later ones get copies.
    let mut owned = std::collections::HashSet::new();
    for (l2, who) in &owners {
        let k = l2 >> cb;
        // A table that is aliased (or reached more often than its owners
        // say) is left alone: a change would reach another owner too.
        if w.distrust(k).is_some() || w.imrt.get(k) != who.len() as u64 {
            continue;
        }
        fixed += fix_l2(cx, w, *l2, who, &mut owned)?;
    }
    if fixed > 0 {
        cx.img.sync()?;
    }
    Ok(fixed)
}

/// One L1 entry's view of an L2 table.
struct Owner {
    /// `None` for the active image.
    snap: Option<Rc<str>>,
    /// Guest offset of the table's first entry.
    guest: u64,
    /// Virtual disk size of that view.
    disk: u64,
}

/// Repair one L1 table (`entries` as on disk at `l1_off`): drop entries
/// whose L2 table cannot be located, clear reserved bits; record the owner
/// of every L2 table it maps.
fn fix_l1(
    cx: &mut Ctx,
    l1_off: u64,
    entries: &[u64],
    snap: Option<String>,
    disk: u64,
    owners: &mut BTreeMap<u64, Vec<Owner>>,
) -> Result<i64, Errno> {
    let cs = cx.img.cs;
    let span = cs / cx.img.header.l2_entry_size() * cs;
    let mut fixed = 0;
    let label: Option<Rc<str>> = snap.as_deref().map(Rc::from);
    for (i, &e) in entries.iter().enumerate() {
        if e == 0 {
            continue;
        }
        let guest = i as u64 * span;
        let glen = disk.saturating_sub(guest).min(span);
        let l2 = e & OFFSET_MASK;
        let unaligned = l2 & (cs - 1) != 0;
        let in_snap = snap
            .as_ref()
            .map(|s| format!(" of {s}"))
            .unwrap_or_default();
        if unaligned || l2 >= cx.img.file_len() {
            let why = format!(
                "L1 entry {i}{in_snap} points at {} L2 table (0x{l2:x})",
                if unaligned {
                    "an unaligned"
                } else {
                    "a missing"
                }
            );
            set_l1(cx, l1_off, i, 0, snap.is_none())?;
            lose(cx, guest, glen, why, true, snap.clone());
            fixed += 1;
            continue;
        }
        if e & L1_RESERVED != 0 {
            let ne = e & !L1_RESERVED;
            let _ = writeln!(
                cx.err,
                "Repairing L1 entry {i}{in_snap}: reserved bits cleared ({e:x} -> {ne:x})"
            );
            set_l1(cx, l1_off, i, ne, snap.is_none())?;
            fixed += 1;
        }
        owners.entry(l2).or_default().push(Owner {
            snap: label.clone(),
            guest,
            disk,
        });
    }
    Ok(fixed)
}

/// Repair the entries of the L2 table at `l2`, mapped by `who`.
fn fix_l2(
    cx: &mut Ctx,
    w: &Walk,
    l2: u64,
    who: &[Owner],
    owned: &mut std::collections::HashSet<u64>,
) -> Result<i64, Errno> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let ext = cx.img.extended();
    let es = if ext { 16u64 } else { 8 };
    let data_file = cx.img.has_data_file();
    let v3 = cx.img.header.version >= 3;
    let l2_entries = cs / es;
    let refs = who.len() as u64;
    let mut fixed = 0;
    let mut table = vec![0u8; cs as usize];
    cx.img.read(l2, &mut table)?;
    for j in 0..l2_entries {
        let at = (j * es) as usize;
        let le = be64(&table[at..]);
        let bitmap = if ext { be64(&table[at + 8..]) } else { 0 };
        let ty = decode_l2(le, cb, ext, data_file);
        let pos = l2 + at as u64;
        let data = le & OFFSET_MASK;
        let has_data = matches!(ty, ClusterType::Normal(_));
        let rel = j * cs;
        let new: Option<(u64, u64)> = match ty {
            ClusterType::Normal(_) | ClusterType::ZeroAlloc(_) if !data_file => {
                let file_len = cx.img.file_len();
                if data & (cs - 1) != 0 || data >= file_len {
                    if !has_data && data & (cs - 1) != 0 {
                        // The walk rewrites these itself.
                        None
                    } else {
                        let what = if data & (cs - 1) != 0 {
                            format!("data offset 0x{data:x} is not cluster aligned")
                        } else {
                            format!("data offset 0x{data:x} is past the end of the file")
                        };
                        let repl = if has_data {
                            (0, 0)
                        } else if ext {
                            (0, 0xffff_ffff_0000_0000)
                        } else if v3 {
                            (ZERO, 0)
                        } else {
                            (0, 0)
                        };
                        let _ = writeln!(
                            cx.err,
                            "Repairing L2 entry at 0x{pos:x}: {what}; mapping dropped"
                        );
                        if has_data {
                            lose_all(cx, who, rel, &format!("its L2 entry's {what}"));
                        }
                        Some(repl)
                    }
                } else if le & L2_RESERVED != 0 {
                    let ne = le & !L2_RESERVED;
                    let _ = writeln!(
                        cx.err,
                        "Repairing L2 entry at 0x{pos:x}: reserved bits cleared ({le:x} -> {ne:x})"
                    );
                    Some((ne, bitmap))
                } else if has_data && w.overflowed(data >> cb) && !owned.insert(data) {
                    let copy = copy_cluster(cx, data, refs)?;
                    let _ = writeln!(
                        cx.err,
                        "Repairing L2 entry at 0x{pos:x}: cluster {} has more owners than its refcount can count; this one now owns a copy at cluster {}",
                        data >> cb,
                        copy >> cb
                    );
                    lose_all(
                        cx,
                        who,
                        rel,
                        &format!(
                            "its L2 entry shared cluster {} with another (more owners than the refcount width allows); it keeps those bytes, its own data could not be located",
                            data >> cb
                        ),
                    );
                    Some((copy | copied(refs), bitmap))
                } else if has_data && w.aliased_data(data >> cb) {
                    let copy = copy_cluster(cx, data, refs)?;
                    let _ = writeln!(
                        cx.err,
                        "Repairing L2 entry at 0x{pos:x}: cluster {} is also metadata; the guest's view of it was copied to cluster {}",
                        data >> cb,
                        copy >> cb
                    );
                    lose_all(
                        cx,
                        who,
                        rel,
                        &format!(
                            "its L2 entry pointed at metadata (cluster {}); it keeps those bytes, its own data could not be located",
                            data >> cb
                        ),
                    );
                    Some((copy | copied(refs), bitmap))
                } else {
                    None
                }
            }
            ClusterType::Compressed { offset, size } if !data_file && !ext => {
                fix_compressed(cx, w, pos, le, offset, size).map(|(ne, why)| {
                    if let Some(why) = why {
                        lose_all(cx, who, rel, &why);
                    }
                    (ne, 0)
                })
            }
            _ => None,
        };
        if let Some((ne, nb)) = new {
            let mut bytes = ne.to_be_bytes().to_vec();
            if ext {
                bytes.extend_from_slice(&nb.to_be_bytes());
            }
            cx.img.write(pos, &bytes)?;
            table[at..at + bytes.len()].copy_from_slice(&bytes);
            fixed += 1;
        }
    }
    Ok(fixed)
}

/// COPIED for a new cluster with `refs` references.
fn copied(refs: u64) -> u64 {
    if refs == 1 {
        COPIED
    } else {
        0
    }
}

/// The repair of a compressed entry (`le`, its range `coff`, `size`), if
/// it needs one: (new entry, why its data was lost if it was).
///
/// * COPIED set: cleared (the data is intact);
/// * a range running past the end of the file, over metadata, or longer
///   than a compressed cluster can be (more sectors than a cluster plus
///   one): when the stream at `coff` still decompresses to a full cluster
///   before the trouble starts, the sector count is shortened to the
///   stream (data kept); otherwise the mapping is dropped (reads zeroes or
///   the backing file).
fn fix_compressed(
    cx: &mut Ctx,
    w: &Walk,
    pos: u64,
    le: u64,
    coff: u64,
    size: u64,
) -> Option<(u64, Option<String>)> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let mut ne = le & !COPIED;
    if le & COPIED != 0 {
        let _ = writeln!(
            cx.err,
            "Repairing L2 entry at 0x{pos:x}: COPIED flag cleared on a compressed cluster"
        );
    }
    let file_len = cx.img.file_len();
    let end = coff.saturating_add(size);
    // Where the range stops being trustworthy: the first metadata cluster
    // it covers, else the end of the file.
    let mut limit = end.min(file_len);
    let mut c = coff & !(cs - 1);
    while c < end.min(file_len) {
        if w.aliased_data(c >> cb) {
            limit = limit.min(c.max(coff));
            break;
        }
        c += cs;
    }
    let past_eof = end.saturating_sub(file_len) >= cs || coff >= file_len;
    let too_long = size > cs + 512;
    if limit == end.min(file_len) && !past_eof && !too_long {
        return (le & COPIED != 0).then_some((ne, None));
    }
    let why = if coff >= file_len {
        format!("its compressed data at 0x{coff:x} lies past the end of the file")
    } else if limit < end.min(file_len) {
        format!("its compressed data at 0x{coff:x} overlaps metadata")
    } else if past_eof {
        format!("its compressed data at 0x{coff:x} runs past the end of the file")
    } else {
        format!("its compressed data at 0x{coff:x} has an impossible sector count")
    };
    let avail = limit.saturating_sub(coff).min(cs + 512);
    let mut src = vec![0u8; avail as usize];
    let n = if avail > 0 && cx.img.read(coff, &mut src).is_ok() {
        crate::format::compress::stream_len(cx.img.header.compression_type, &src, cs as usize)
    } else {
        None
    };
    match n {
        Some(n) => {
            let sectors = ((coff & 511) + n as u64).div_ceil(512).max(1);
            let x = 62 - (cb - 8);
            ne = COMPRESSED | ((sectors - 1) << x) | coff;
            let _ = writeln!(
                cx.err,
                "Repairing L2 entry at 0x{pos:x}: {why}; the stream ends within {n} bytes, sector count set to {sectors}"
            );
            Some((ne, None))
        }
        None => {
            let _ = writeln!(
                cx.err,
                "Repairing L2 entry at 0x{pos:x}: {why} and does not decompress there; mapping dropped"
            );
            Some((0, Some(why)))
        }
    }
}

/// Whether the first `n` entries of the active L1 table lie in the file,
/// in clusters no other metadata uses.
fn l1_writable(cx: &Ctx, w: &Walk, l1_off: u64, n: usize) -> bool {
    let cs = cx.img.cs;
    let end = l1_off + n as u64 * 8;
    if l1_off & (cs - 1) != 0 || end > cx.img.file_len() {
        return n == 0;
    }
    (l1_off / cs..end.div_ceil(cs)).all(|c| w.table_writable(c))
}

fn set_l1(cx: &mut Ctx, l1_off: u64, i: usize, v: u64, active: bool) -> Result<(), Errno> {
    cx.img.write(l1_off + i as u64 * 8, &v.to_be_bytes())?;
    if active {
        cx.img.l1[i] = v;
    }
    Ok(())
}

/// Report guest cluster `rel` of an L2 table lost in every view mapping it.
fn lose_all(cx: &mut Ctx, who: &[Owner], rel: u64, why: &str) {
    let cs = cx.img.cs;
    for o in who {
        let g = o.guest + rel;
        if g < o.disk {
            lose(
                cx,
                g,
                cs.min(o.disk - g),
                why.to_string(),
                false,
                o.snap.as_deref().map(String::from),
            );
        }
    }
}

fn lose(cx: &mut Ctx, guest: u64, len: u64, why: String, print: bool, snapshot: Option<String>) {
    if len == 0 {
        return;
    }
    if print {
        let _ = writeln!(
            cx.err,
            "Repairing {why}: mapping dropped, guest bytes 0x{guest:x}-0x{:x} now read as zeroes (or the backing file)",
            guest + len - 1
        );
    }
    cx.lost.push(Lost {
        guest,
        len,
        why,
        snapshot,
    });
}

/// Copy cluster `src` to a new cluster at the end of the file, durable and
/// refcounted with `refs` (when a refblock covers it; otherwise the
/// rebuild that follows counts it) before anything points at it.
fn copy_cluster(cx: &mut Ctx, src: u64, refs: u64) -> Result<u64, Errno> {
    let cs = cx.img.cs;
    let mut buf = vec![0u8; cs as usize];
    cx.img.read(src, &mut buf)?;
    let dst = cx.img.file_len().div_ceil(cs) * cs;
    cx.img.write(dst, &buf)?;
    cx.img.sync()?;
    let k = dst >> cx.img.cb;
    if cx.img.has_refblock(k, &mut *cx.err) {
        cx.img.set_refcount(k, refs, &mut *cx.err)?;
        cx.img.sync()?;
    }
    Ok(dst)
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}
