//! `-r all` when the header's L1 table offset is wrong (the table it names
//! overlaps the header: offset 0): find the
//! real active L1 table among the clusters nothing else owns, or, when it
//! cannot be told apart, give the image a new empty L1 table and keep every
//! old cluster allocated (leaks a later `-r leaks` may free) rather than
//! free the data it may still hold.
//!
//! A candidate is a cluster with a refcount but no reference (with the
//! header's L1 left out of the walk) whose `l1_size` entries are all valid
//! L1 entries pointing at L2 tables that lack a reference too and parse as
//! L2 tables (valid entries to clusters with a refcount). Exactly one
//! candidate is taken; none or several give the empty table.
//!
//! Crash safety: the header switch is one 12-byte write between syncs; a
//! new empty table is durable and refcounted before the header names it.

use super::errno::Errno;
use super::walk::Walk;
use super::{Counts, Ctx, Fix, Lost};
use crate::format::l2::{decode_l2, ClusterType, L1_RESERVED, L2_RESERVED, OFFSET_MASK};

/// What [`relocate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relocated {
    /// The L1 offset is not suspect (or the repair could not run).
    No,
    /// The real table was found and the header names it.
    Found,
    /// A new empty table; old clusters must be kept as leaks.
    Empty,
}

/// Candidates examined at most (a hostile image full of orphan clusters
/// must not make repair read all of them as tables).
const MAX_CANDIDATES: u64 = 1 << 20;

/// Bytes the search reads at most; past it the table counts as not found
/// (the image then gets an empty table, its clusters kept).
const MAX_READ: u64 = 1 << 30;

/// Whether the active L1 table overlaps the header (cluster 0, which is
/// the header whatever else is corrupt): then the L1 offset is wrong.
/// Overlaps with structures found through other header fields (the
/// refcount table) are not taken as proof: that field may be the wrong one.
fn suspect(cx: &Ctx) -> bool {
    let cs = cx.img.cs;
    let (off, n) = (cx.img.header.l1_table_offset, cx.img.header.l1_size as u64);
    n > 0 && off & (cs - 1) == 0 && off < cs
}

/// Find the active L1 table when the header's offset is wrong (see the
/// module doc). Returns what was done.
pub(crate) fn relocate(cx: &mut Ctx) -> Result<Relocated, Errno> {
    if !suspect(cx) {
        return Ok(Relocated::No);
    }
    let cs = cx.img.cs;
    let old = cx.img.header.l1_table_offset;
    let l1_size = cx.img.header.l1_size;
    // Count every reference except the header's L1 table.
    let nb = cx.img.file_len().div_ceil(cs);
    let mut w = Walk::new(cx.img.order, cs, nb, true)?;
    cx.img.header.l1_size = 0;
    let sink: &mut dyn std::io::Write = Box::leak(Box::new(std::io::sink()));
    let err = std::mem::replace(&mut cx.err, sink);
    let mut rebuild = false;
    let r = super::walk::calculate_refcounts(
        cx,
        &mut Counts::default(),
        Fix::default(),
        &mut rebuild,
        &mut w,
    );
    cx.img.header.l1_size = l1_size;
    let found = r.and_then(|_| candidates(cx, &w, l1_size as u64));
    cx.err = err;
    let found = found?;
    if found.len() == 1 {
        let at = found[0];
        let _ = writeln!(
            cx.err,
            "Repairing L1 table offset: 0x{old:x} overlaps the image header; the active L1 table was found at 0x{at:x}"
        );
        set_l1_offset(cx, at, l1_size)?;
        cx.img.l1 = super::image::read_u64s(&*cx.img.store, at, l1_size as u64)?;
        return Ok(Relocated::Found);
    }
    // A new empty table at the end of the file, durable and refcounted
    // before the header names it.
    let span = cs / cx.img.header.l2_entry_size() * cs;
    let needed = cx.img.header.size.div_ceil(span).max(1);
    let at = cx.img.file_len().div_ceil(cs) * cs;
    let len = (needed * 8).div_ceil(cs) * cs;
    cx.img.write(at, &vec![0u8; len as usize])?;
    cx.img.sync()?;
    let mut c = at;
    while c < at + len {
        let k = c >> cx.img.cb;
        if cx.img.has_refblock(k, &mut *cx.err) {
            cx.img.set_refcount(k, 1, &mut *cx.err)?;
        }
        c += cs;
    }
    cx.img.sync()?;
    let _ = writeln!(
        cx.err,
        "Repairing L1 table offset: 0x{old:x} overlaps the image header and the real table cannot be told apart ({} candidates); a new empty L1 table is at 0x{at:x}, the old clusters are kept allocated",
        found.len()
    );
    set_l1_offset(cx, at, needed as u32)?;
    cx.img.l1 = vec![0; needed as usize];
    if cx.img.header.size > 0 {
        cx.lost.push(Lost {
            guest: 0,
            len: cx.img.header.size,
            why: format!(
                "the L1 table offset 0x{old:x} is corrupt and the table could not be located (its clusters are kept as leaks)"
            ),
            snapshot: None,
        });
    }
    Ok(Relocated::Empty)
}

/// Write `l1_size` and `l1_table_offset` (one 12-byte write between syncs).
fn set_l1_offset(cx: &mut Ctx, at: u64, size: u32) -> Result<(), Errno> {
    let mut b = size.to_be_bytes().to_vec();
    b.extend_from_slice(&at.to_be_bytes());
    cx.img.sync()?;
    cx.img
        .write_header_field(crate::format::header::field::L1_SIZE, &b)?;
    cx.img.sync()?;
    cx.img.header.l1_size = size;
    cx.img.header.l1_table_offset = at;
    Ok(())
}

/// On-disk refcount of cluster `k` (0 where it cannot be read).
fn rc(cx: &mut Ctx, k: u64) -> u64 {
    let sink: &mut dyn std::io::Write = &mut std::io::sink();
    cx.img.get_refcount(k, sink).unwrap_or(0)
}

/// Clusters that could be the active L1 table (at most two are looked for:
/// more than one is already ambiguous).
fn candidates(cx: &mut Ctx, w: &Walk, l1_size: u64) -> Result<Vec<u64>, Errno> {
    let cs = cx.img.cs;
    let nb = cx.img.file_len().div_ceil(cs);
    let tbl = (l1_size * 8).div_ceil(cs);
    let mut out = Vec::new();
    let mut seen = 0u64;
    let mut budget = MAX_READ;
    let mut c = 1;
    while c + tbl <= nb && out.len() < 2 && seen < MAX_CANDIDATES && budget > 0 {
        let orphan =
            (c..c + tbl).all(|k| w.imrt.get(k) == 0) && (c..c + tbl).all(|k| rc(cx, k) > 0);
        if !orphan {
            c += 1;
            continue;
        }
        seen += 1;
        if is_l1(cx, w, c * cs, l1_size, &mut budget)? {
            out.push(c * cs);
        }
        c += 1;
    }
    Ok(out)
}

/// Whether the table at `at` reads as a valid active L1 table of orphans.
fn is_l1(cx: &mut Ctx, w: &Walk, at: u64, n: u64, budget: &mut u64) -> Result<bool, Errno> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let file_len = cx.img.file_len();
    let mut tables = std::collections::HashSet::new();
    // Read a chunk at a time: most candidates (guest data) fail on their
    // first entries.
    const CHUNK: u64 = 512;
    let mut entries = Vec::new();
    for i in 0..n {
        if i % CHUNK == 0 {
            if *budget == 0 {
                return Ok(false);
            }
            let len = CHUNK.min(n - i);
            *budget = budget.saturating_sub(len * 8);
            entries = super::image::read_u64s(&*cx.img.store, at + i * 8, len)?;
        }
        let e = entries[(i % CHUNK) as usize];
        if e == 0 {
            continue;
        }
        let l2 = e & OFFSET_MASK;
        if e & L1_RESERVED != 0 || l2 & (cs - 1) != 0 || l2 == 0 || l2 >= file_len {
            return Ok(false);
        }
        let k = l2 >> cb;
        // An L2 table missing a reference: unreferenced, or shared with a
        // snapshot as an L2 table only.
        let refs = w.imrt.get(k);
        if l2 == at || !tables.insert(k) || rc(cx, k) <= refs || (refs > 0 && !w.l2_only(k)) {
            return Ok(false);
        }
        *budget = budget.saturating_sub(cs);
        if !is_l2(cx, w, l2)? {
            return Ok(false);
        }
    }
    Ok(!tables.is_empty())
}

/// Whether the cluster at `l2` parses as an L2 table whose entries name
/// clusters with a refcount that are not metadata.
fn is_l2(cx: &mut Ctx, w: &Walk, l2: u64) -> Result<bool, Errno> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let ext = cx.img.extended();
    let es = if ext { 16 } else { 8 };
    let data_file = cx.img.has_data_file();
    let file_len = cx.img.file_len();
    let mut t = vec![0u8; cs as usize];
    cx.img.read(l2, &mut t)?;
    for e in t.chunks(es) {
        let mut a = [0u8; 8];
        a.copy_from_slice(&e[..8]);
        let le = u64::from_be_bytes(a);
        match decode_l2(le, cb, ext, data_file) {
            ClusterType::Compressed { offset, size }
                if data_file || offset.saturating_add(size) > file_len + 511 =>
            {
                return Ok(false);
            }
            ClusterType::Normal(_) | ClusterType::ZeroAlloc(_) if !data_file => {
                let d = le & OFFSET_MASK;
                if le & L2_RESERVED != 0 || d & (cs - 1) != 0 || d >= file_len {
                    return Ok(false);
                }
                let k = d >> cb;
                if rc(cx, k) == 0 || (w.imrt.get(k) > 0 && !w.data_only(k)) {
                    return Ok(false);
                }
            }
            _ => {}
        }
    }
    Ok(true)
}
