//! The reference walk (QEMU `calculate_refcounts`): every structure that owns
//! host clusters adds one reference per cluster to the IMRT. Item messages
//! and counters follow QEMU 10 exactly; on top of that the walk records what
//! repair must not trust (clusters reached through corrupt entries, metadata
//! aliased by other references, structures it could not follow).

use super::errno::{Errno, EINVAL};
use super::image::{REFT_OFFSET_MASK, REFT_RESERVED_MASK};
use super::imrt::{BitSet, Imrt};
use super::{Counts, Ctx, Fix};
use crate::format::l2::{
    compressed_range, decode_l2, ClusterType, COMPRESSED, COPIED, L1_RESERVED, L2_RESERVED,
    OFFSET_MASK, ZERO,
};
use std::collections::HashMap;

/// What kind of owner a reference comes from (for aliasing detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Structures that must have exactly one owner: header, L1 tables,
    /// reftable, refblocks, snapshot table, bitmaps, LUKS header, WP array.
    Single,
    /// L2 tables (shared between snapshots legitimately).
    L2,
    /// Guest data (shared between snapshots and compressed clusters).
    Data,
    /// The refcount table and refcount blocks: metadata that a rebuild
    /// replaces, so its aliasing does not forbid a rebuild.
    Refcount,
}

/// A data cluster of a sequential zone found at or past its write pointer.
#[derive(Debug, Clone)]
pub(crate) struct StaleCluster {
    pub zone: u32,
    pub guest: u64,
    pub host: u64,
    /// Host offset of the L2 entry.
    pub entry_at: u64,
    pub wp: u64,
}

/// State of one reference walk.
#[derive(Debug)]
pub(crate) struct Walk {
    pub imrt: Imrt,
    /// Clusters reached through a corrupt entry: repair does not trust them.
    pub taint: HashMap<u64, String>,
    single: BitSet,
    refc: BitSet,
    l2: BitSet,
    data: BitSet,
    /// Structures the walk could not follow: their clusters may be counted
    /// as leaks although something still points at them.
    pub incomplete: Vec<String>,
    /// Active guest clusters past a zone's write pointer (at most
    /// `zoned::MAX_FINDINGS`; the rest are counted in `stale_unlisted`).
    pub stale: Vec<StaleCluster>,
    /// Stale clusters past the limit.
    pub stale_unlisted: u64,
    /// The zoned part of the walk (zoned images with a readable array).
    pub zones: Option<super::zoned::ZoneScan>,
    /// Why references currently being counted are suspect.
    taint_mode: Option<String>,
    /// Deferred rewrites of unaligned preallocated-zero L2 entries:
    /// (entry offset, new bytes, L2 table offset).
    pub prealloc: Vec<(u64, Vec<u8>, u64)>,
    /// Report unaligned preallocated entries instead of repairing them (a
    /// walk after repairs: what is left was refused).
    pub no_prealloc_fix: bool,
    /// Whether to record which kind of structure uses each cluster (for
    /// aliasing decisions). Only repairs and zoned checks need it; a plain
    /// check skips the bitsets' memory and time.
    track_classes: bool,
    /// Fused COPIED check: an active data entry was seen whose flag the
    /// walk cannot vouch for (COPIED clear, or a cluster it did not count
    /// plainly), or the active L1 table in memory differs from the one
    /// walked.
    pub(crate) copied_suspect: bool,
    /// Fused COPIED check: the image's write count when the walk ended
    /// (`None` until the walk is complete).
    copied_writes: Option<u64>,
    /// The L2 table being walked (one buffer for the whole walk).
    table: Vec<u8>,
}

impl Walk {
    pub fn new(order: u32, cs: u64, n: u64, track_classes: bool) -> Result<Self, Errno> {
        Ok(Walk {
            imrt: Imrt::new(order, cs, n)?,
            taint: HashMap::new(),
            single: BitSet::default(),
            refc: BitSet::default(),
            l2: BitSet::default(),
            data: BitSet::default(),
            incomplete: Vec::new(),
            stale: Vec::new(),
            stale_unlisted: 0,
            zones: None,
            taint_mode: None,
            prealloc: Vec::new(),
            no_prealloc_fix: false,
            track_classes,
            copied_suspect: false,
            copied_writes: None,
            table: Vec::new(),
        })
    }

    /// Whether the walk has already done `check_oflag_copied`'s work on the
    /// active L2 tables, exactly: it saw every active data entry with
    /// COPIED set and counted its cluster, no cluster of the image was
    /// counted twice (so each of those counts is final, and 1), and
    /// nothing was written since (`writes`: the image's write count now).
    /// The refcounts compared must be the computed ones (the caller's
    /// condition).
    pub fn copied_checked(&self, writes: u64) -> bool {
        !self.copied_suspect && !self.imrt.raised() && self.copied_writes == Some(writes)
    }

    /// Why repair must not trust cluster `i`'s computed count, if it must not.
    pub fn distrust(&self, i: u64) -> Option<String> {
        self.distrust_with(i, true)
    }

    /// [`Walk::distrust`], optionally leaving out the refcount structure
    /// (which a rebuild replaces).
    fn distrust_with(&self, i: u64, refcount: bool) -> Option<String> {
        if let Some(t) = self.taint.get(&i) {
            return Some(t.clone());
        }
        let r = refcount && self.refc.get(i);
        let (s, l, d) = (self.single.get(i) || r, self.l2.get(i), self.data.get(i));
        let kinds = s as u8 + l as u8 + d as u8;
        if kinds > 1 || (s && self.imrt.get(i) > 1) {
            let users: Vec<&str> = [(s, "metadata"), (l, "an L2 table"), (d, "guest data")]
                .iter()
                .filter(|x| x.0)
                .map(|x| x.1)
                .collect();
            return Some(if kinds > 1 {
                format!(
                    "cluster {i} is used by {} at once (metadata aliasing)",
                    users.join(" and ")
                )
            } else {
                format!("cluster {i} is used by metadata more than once (metadata aliasing)")
            });
        }
        None
    }

    /// Why a rebuild of the refcount structure must not trust the walk:
    /// a tainted cluster, or aliasing among structures the rebuild keeps.
    pub fn rebuild_distrust(&self) -> Option<String> {
        if let Some((k, v)) = self.taint.iter().min_by_key(|(k, _)| **k) {
            return Some(format!("cluster {k}: {v}"));
        }
        (0..self.imrt.n).find_map(|i| {
            let s = self.single.get(i);
            let rc = self.refc.get(i);
            let kinds = s as u8 + self.l2.get(i) as u8 + self.data.get(i) as u8;
            // Only the refcount structure's own count may be off: the
            // structures the rebuild keeps must each own their clusters.
            if kinds > 1 || (s && !rc && self.imrt.get(i) > 1) {
                self.distrust_with(i, false)
            } else {
                None
            }
        })
    }

    /// Whether L2 table cluster `i` can be written: one reference, as an
    /// L2 table only, reached through trusted entries.
    pub fn l2_writable(&self, i: u64) -> bool {
        !self.taint.contains_key(&i)
            && !self.single.get(i)
            && !self.refc.get(i)
            && !self.data.get(i)
            && self.imrt.get(i) == 1
    }

    /// Whether the active L1 table's cluster `i` can be written: it is
    /// not shared with other metadata (guest data aliasing it is moved
    /// away by the mapping repair instead).
    pub fn table_writable(&self, i: u64) -> bool {
        if self.taint.contains_key(&i) || self.l2.get(i) || self.refc.get(i) {
            return false;
        }
        // Guest data aliasing it may be counted once per L1 table that
        // reaches it (a shared L2 table): any count is the table plus data.
        self.data.get(i) || self.imrt.get(i) <= 1
    }

    /// Whether cluster `i` holds guest data and is also used as metadata
    /// or as an L2 table (the data owner is the one that can move).
    pub fn aliased_data(&self, i: u64) -> bool {
        self.data.get(i) && (self.single.get(i) || self.refc.get(i) || self.l2.get(i))
    }

    /// Whether cluster `i` is used as an L2 table and nothing else.
    pub fn l2_only(&self, i: u64) -> bool {
        self.l2.get(i) && !self.single.get(i) && !self.refc.get(i) && !self.data.get(i)
    }

    /// Whether cluster `i` is used as guest data and nothing else.
    pub fn data_only(&self, i: u64) -> bool {
        self.data.get(i) && !self.single.get(i) && !self.refc.get(i) && !self.l2.get(i)
    }

    /// Whether cluster `i`'s count overflowed the refcount width (more
    /// owners than the image can count).
    pub fn overflowed(&self, i: u64) -> bool {
        self.taint.get(&i).is_some_and(|t| t.contains("overflows"))
    }

    /// Whether any cluster is aliased or tainted.
    pub fn any_distrust(&self) -> Option<String> {
        if let Some((k, v)) = self.taint.iter().min_by_key(|(k, _)| **k) {
            return Some(format!("cluster {k}: {v}"));
        }
        (0..self.imrt.n).find_map(|i| self.distrust(i))
    }
}

/// QEMU `qcow2_inc_refcounts_imrt`.
#[inline]
pub(crate) fn inc_refcounts(
    cx: &mut Ctx,
    res: &mut Counts,
    w: &mut Walk,
    offset: u64,
    size: u64,
    class: Class,
) -> Result<(), Errno> {
    // Fast path: one aligned cluster inside the file, nothing to record
    // (every data cluster of a plain check; the hot path of a big image).
    let cs = cx.img.cs;
    if size == cs
        && offset & (cs - 1) == 0
        && offset < cx.img.file_len()
        && !w.track_classes
        && w.taint_mode.is_none()
    {
        let k = offset >> cx.img.cb;
        if k < w.imrt.n && !w.imrt.inc(k) {
            return Ok(());
        }
    }
    inc_refcounts_slow(cx, res, w, offset, size, class)
}

fn inc_refcounts_slow(
    cx: &mut Ctx,
    res: &mut Counts,
    w: &mut Walk,
    offset: u64,
    size: u64,
    class: Class,
) -> Result<(), Errno> {
    if size == 0 {
        return Ok(());
    }
    let file_len = cx.img.file_len();
    let cs = cx.img.cs;
    if offset as i128 + size as i128 - file_len as i128 >= cs as i128 {
        let _ = writeln!(
            cx.err,
            "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{offset:x} size 0x{size:x}"
        );
        res.corruptions += 1;
        return Ok(());
    }
    let start = offset & !(cs - 1);
    let last = (offset + size - 1) & !(cs - 1);
    let mut c = start;
    while c <= last {
        let k = c >> cx.img.cb;
        if k >= w.imrt.n {
            w.imrt.grow(k + 1).inspect_err(|_| res.check_errors += 1)?;
        }
        if w.track_classes {
            match class {
                Class::Single => w.single.set(k),
                Class::Refcount => w.refc.set(k),
                Class::L2 => w.l2.set(k),
                Class::Data => w.data.set(k),
            }
        }
        if let Some(t) = &w.taint_mode {
            w.taint.entry(k).or_insert_with(|| t.clone());
        }
        if w.imrt.inc(k) {
            let _ = writeln!(cx.err, "ERROR: overflow cluster offset=0x{c:x}");
            let _ = writeln!(cx.err, "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing");
            res.corruptions += 1;
            w.taint
                .entry(k)
                .or_insert_with(|| "its reference count overflows the refcount width".into());
        }
        c += cs;
    }
    Ok(())
}

/// How often one L1 table may map the same L2 table before zcow stops
/// walking it again.
const MAX_L2_REPEATS: u32 = 8;

/// Where an L1 table belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L1Kind {
    Active,
    Snapshot,
}

/// QEMU `check_refcounts_l1`.
pub(crate) fn check_l1(
    cx: &mut Ctx,
    res: &mut Counts,
    w: &mut Walk,
    l1_offset: u64,
    l1_size: u32,
    kind: L1Kind,
    fix: Fix,
) -> Result<(), Errno> {
    if kind == L1Kind::Active && cx.img.l1.len() != l1_size as usize {
        w.copied_suspect = true;
    }
    if l1_size == 0 {
        return Ok(());
    }
    inc_refcounts(cx, res, w, l1_offset, l1_size as u64 * 8, Class::Single)?;
    // Entries past EOF read as zero: only read what the file holds, so a
    // huge declared table costs nothing. The table is read a chunk at a
    // time (an active L1 of a 1 TiB image with 4 KiB clusters is 4 MiB).
    let in_file = cx.img.file_len().saturating_sub(l1_offset).div_ceil(8);
    let n = (l1_size as u64).min(in_file);
    let l2_entries = cx.img.cs / cx.img.header.l2_entry_size();
    // L2 tables this L1 maps: a bit per in-file cluster for the first
    // mapping, a map only for repeats and odd offsets.
    let mut seen_once = BitSet::default();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    if kind == L1Kind::Active {
        cx.phase("counting references");
    }
    const CHUNK: u64 = 8192;
    let mut chunk: Vec<u64> = Vec::new();
    for i in 0..n {
        if i % CHUNK == 0 {
            let len = CHUNK.min(n - i);
            chunk = match super::image::read_u64s(&*cx.img.store, l1_offset + i * 8, len) {
                Ok(t) => t,
                Err(e) => {
                    let _ = writeln!(cx.err, "ERROR: I/O error in check_refcounts_l1");
                    res.check_errors += 1;
                    return Err(e);
                }
            };
        }
        let e = chunk[(i % CHUNK) as usize];
        let i = i as usize;
        if kind == L1Kind::Active {
            cx.progress(i as u64, n);
            // The COPIED pass reads the L1 table kept in memory.
            if cx.img.l1.get(i) != Some(&e) {
                w.copied_suspect = true;
            }
        }
        if e == 0 {
            continue;
        }
        if e & L1_RESERVED != 0 {
            let _ = writeln!(cx.err, "ERROR found L1 entry with reserved bits set: {e:x}");
            res.corruptions += 1;
        }
        let l2_off = e & OFFSET_MASK;
        let before = res.corruptions;
        inc_refcounts(cx, res, w, l2_off, cx.img.cs, Class::L2)?;
        let beyond = res.corruptions != before;
        let unaligned = l2_off & (cx.img.cs - 1) != 0;
        if unaligned {
            let _ = writeln!(
                cx.err,
                "ERROR l2_offset={l2_off:x}: Table is not cluster aligned; L1 entry corrupted"
            );
            res.corruptions += 1;
        }
        if beyond || unaligned {
            w.incomplete.push(format!(
                "L1 entry {i} points at {} L2 table (offset 0x{l2_off:x}); the real table and its data cannot be found",
                if unaligned { "an unaligned" } else { "a missing" }
            ));
        }
        // One L1 table never legitimately maps one L2 table twice; walking a
        // table referenced thousands of times would make check hang on a
        // hostile image, so repeats beyond a few are not walked again.
        let k = l2_off >> cx.img.cb;
        let first_time = if unaligned || k >= w.imrt.n {
            false
        } else if !seen_once.get(k) {
            seen_once.set(k);
            true
        } else {
            false
        };
        let times = if first_time {
            1
        } else {
            // An in-file table seen before was counted by its bit.
            let n = seen
                .entry(l2_off)
                .or_insert(u32::from(!unaligned && k < w.imrt.n));
            *n += 1;
            *n
        };
        if times > MAX_L2_REPEATS {
            if times == MAX_L2_REPEATS + 1 {
                let _ = writeln!(cx.err, "zcow: L2 table at 0x{l2_off:x} is mapped by more than {MAX_L2_REPEATS} entries of one L1 table; later entries are not walked");
                w.incomplete.push(format!(
                    "the L2 table at 0x{l2_off:x} is mapped many times by one L1 table"
                ));
            }
            continue;
        }
        // QEMU parses even an unaligned "table"; repair must not trust what
        // such garbage references.
        let saved = w.taint_mode.take();
        if unaligned {
            w.taint_mode = Some(format!(
                "it is referenced from an unaligned L2 table at 0x{l2_off:x}"
            ));
        }
        let base = (kind == L1Kind::Active).then(|| i as u64 * l2_entries * cx.img.cs);
        let r = check_l2(cx, res, w, l2_off, kind, fix, base);
        w.taint_mode = saved;
        r?;
    }
    // Entries past the end of the file read as zero.
    if kind == L1Kind::Active && cx.img.l1.iter().skip(n as usize).any(|&e| e != 0) {
        w.copied_suspect = true;
    }
    Ok(())
}

/// QEMU `check_refcounts_l2`. `guest_base` is the guest offset the table maps
/// (active tables only; used for the zoned stale-data check).
fn check_l2(
    cx: &mut Ctx,
    res: &mut Counts,
    w: &mut Walk,
    l2_off: u64,
    kind: L1Kind,
    fix: Fix,
    guest_base: Option<u64>,
) -> Result<(), Errno> {
    // One buffer for every table of the walk.
    let mut table = std::mem::take(&mut w.table);
    table.resize(cx.img.cs as usize, 0);
    let r = if cx.img.read(l2_off, &mut table).is_err() {
        let _ = writeln!(cx.err, "ERROR: I/O error in check_refcounts_l2");
        res.check_errors += 1;
        Err(super::errno::EIO)
    } else {
        walk_l2(cx, res, w, &mut table, l2_off, kind, fix, guest_base)
    };
    w.table = table;
    r
}

/// The entries of one L2 table. A plain image's ordinary entries (an
/// aligned cluster inside the file, standard entries, nothing to record
/// for repair or zones) take a tight loop: count the reference, the
/// allocation and fragmentation figures, and note whether COPIED is
/// clear. Everything else goes through [`l2_entry`].
#[allow(clippy::too_many_arguments)]
fn walk_l2(
    cx: &mut Ctx,
    res: &mut Counts,
    w: &mut Walk,
    table: &mut [u8],
    l2_off: u64,
    kind: L1Kind,
    fix: Fix,
    guest_base: Option<u64>,
) -> Result<(), Errno> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let es = if cx.img.extended() { 16usize } else { 8 };
    let active = kind == L1Kind::Active;
    let mut next_contiguous = 0u64;
    let fast = es == 8
        && !cx.img.has_data_file()
        && w.zones.is_none()
        && !w.track_classes
        && w.taint_mode.is_none();
    if !fast {
        for i in 0..table.len() / es {
            l2_entry(
                cx,
                res,
                w,
                table,
                i,
                l2_off,
                kind,
                fix,
                guest_base,
                &mut next_contiguous,
            )?;
        }
        return Ok(());
    }
    // Entries with any of these bits need the general path: compressed,
    // reserved bits set, or an offset not aligned to a cluster.
    let odd = COMPRESSED | L2_RESERVED | (OFFSET_MASK & (cs - 1));
    let limit = w.imrt.n.min(cx.img.file_len().div_ceil(cs));
    let mut t = Tally {
        next_contiguous,
        ..Tally::default()
    };
    let n = table.len() / 8;
    let mut i = 0;
    while i < n {
        // Runs of ordinary entries in a loop that keeps everything in
        // registers; the first other entry goes the general way.
        i = {
            let mut counts = w.imrt.counts_mut();
            let g = Geometry {
                cb,
                cs,
                odd,
                limit,
                active,
            };
            if counts.order == 4 {
                ordinary_run::<true>(table, i, &g, &mut counts, &mut t)
            } else {
                ordinary_run::<false>(table, i, &g, &mut counts, &mut t)
            }
        };
        if i < n {
            l2_entry(
                cx,
                res,
                w,
                table,
                i,
                l2_off,
                kind,
                fix,
                guest_base,
                &mut t.next_contiguous,
            )?;
            i += 1;
        }
    }
    res.allocated_clusters += t.allocated;
    res.fragmented_clusters += t.fragmented;
    w.copied_suspect |= t.copied_clear;
    Ok(())
}

/// What the fast loop needs to know about the image and table.
struct Geometry {
    cb: u32,
    cs: u64,
    /// Entry bits that send an entry the general way.
    odd: u64,
    /// Clusters below this are inside the file and the IMRT.
    limit: u64,
    /// An active L2 table (allocation figures and the COPIED check).
    active: bool,
}

/// Running figures of the fast loop over one table.
#[derive(Default)]
struct Tally {
    allocated: u64,
    fragmented: u64,
    next_contiguous: u64,
    /// An active entry with COPIED clear was seen.
    copied_clear: bool,
}

/// Count the ordinary entries of `table` from entry `from` on (standard or
/// preallocated-zero entries naming an aligned cluster inside the file,
/// whose count is below the maximum); returns the index of the first
/// other entry, or the number of entries. `W16`: 16-bit refcounts.
#[inline(always)]
fn ordinary_run<const W16: bool>(
    table: &[u8],
    from: usize,
    g: &Geometry,
    c: &mut super::imrt::CountsMut<'_>,
    t: &mut Tally,
) -> usize {
    // Locals, not fields behind `t`: the compiler keeps them in registers
    // across the stores into the count table.
    let (mut raised, mut copied_clear) = (false, false);
    let (mut allocated, mut fragmented, mut next) = (0u64, 0u64, t.next_contiguous);
    let data = &mut *c.data;
    let mut at = from;
    for raw in table[from * 8..].chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(raw);
        let e = u64::from_be_bytes(a);
        if e != 0 {
            let offset = e & OFFSET_MASK;
            let k = offset >> g.cb;
            if e & g.odd != 0 || offset == 0 || k >= g.limit {
                break;
            }
            let r = if W16 {
                let p = 2 * k as usize;
                let Some(b) = data.get_mut(p..p + 2) else {
                    break;
                };
                let r = u16::from_be_bytes([b[0], b[1]]);
                if r == u16::MAX {
                    break;
                }
                b.copy_from_slice(&(r + 1).to_be_bytes());
                r as u64
            } else {
                let r = super::imrt::rc_get(data, c.order, k as usize);
                if r == c.max {
                    break;
                }
                super::imrt::rc_set(data, c.order, k as usize, r + 1);
                r
            };
            raised |= r != 0;
            if g.active {
                allocated += 1;
                fragmented += u64::from(next != 0 && offset != next);
                next = offset + g.cs;
                copied_clear |= e & COPIED == 0;
            }
        }
        at += 1;
    }
    *c.raised |= raised;
    t.allocated += allocated;
    t.fragmented += fragmented;
    t.next_contiguous = next;
    t.copied_clear |= copied_clear;
    at
}

/// One L2 entry, every case (QEMU's loop body of `check_refcounts_l2`).
#[allow(clippy::too_many_arguments)]
fn l2_entry(
    cx: &mut Ctx,
    res: &mut Counts,
    w: &mut Walk,
    table: &mut [u8],
    i: usize,
    l2_off: u64,
    kind: L1Kind,
    fix: Fix,
    guest_base: Option<u64>,
    next_contiguous: &mut u64,
) -> Result<(), Errno> {
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let ext = cx.img.extended();
    let es = if ext { 16usize } else { 8 };
    let data_file = cx.img.has_data_file();
    let frag = kind == L1Kind::Active;
    let csize_shift = 62 - (cb - 8);
    let coffset_mask = (1u64 << csize_shift) - 1;
    let at = i * es;
    let mut entry = be64(&table[at..]);
    let bitmap = if ext { be64(&table[at + 8..]) } else { 0 };
    if entry == 0 && bitmap == 0 {
        // Unallocated and unwritten: nothing to count or report (sparse
        // tables, e.g. one written cluster per zone, are mostly this).
        return Ok(());
    }
    let ty = decode_l2(entry, cb, ext, data_file);
    // The zone of this entry, its wp entry, and where its written data
    // ends (any entry that is not unallocated was written, zeros too).
    let mut zone = None;
    if let (Some(base), Some(scan)) = (guest_base, w.zones.as_mut()) {
        let guest = base + i as u64 * cs;
        let written = !matches!(ty, ClusterType::Unallocated) || (ext && bitmap != 0);
        zone = scan
            .visit(&mut cx.img, guest, written)
            .and_then(|(z, e, map)| map.stale_from(z, e).map(|s| (z, guest, s)));
    }
    if !matches!(ty, ClusterType::Compressed { .. }) && entry & L2_RESERVED != 0 {
        let _ = writeln!(
            cx.err,
            "ERROR found l2 entry with reserved bits set: {entry:x}"
        );
        res.corruptions += 1;
    }
    match ty {
        ClusterType::Compressed { .. } => {
            if entry & COPIED != 0 {
                let _ = writeln!(
                    cx.err,
                    "ERROR: coffset=0x{:x}: copied flag must never be set for compressed clusters",
                    entry & coffset_mask
                );
                entry &= !COPIED;
                res.corruptions += 1;
            }
            if data_file {
                let _ = writeln!(
                    cx.err,
                    "ERROR compressed cluster {i} with data file, entry=0x{entry:x}"
                );
                res.corruptions += 1;
                return Ok(());
            }
            if bitmap != 0 {
                let _ = writeln!(
                    cx.err,
                    "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{entry:x}"
                );
                res.corruptions += 1;
                return Ok(());
            }
            let (coff, csize) = compressed_range(entry, cb);
            let fl = cx.img.file_len();
            if coff >= fl || (coff + csize).saturating_sub(fl) >= cs {
                lost_data(w, coff);
            }
            inc_refcounts(cx, res, w, coff, csize, Class::Data)?;
            if frag {
                res.allocated_clusters += 1;
                res.compressed_clusters += 1;
                res.fragmented_clusters += 1;
            }
        }
        ClusterType::Normal(_) | ClusterType::ZeroAlloc(_) => {
            let offset = entry & OFFSET_MASK;
            // The fused COPIED check (see `Walk::copied_checked`): an entry
            // with COPIED set whose cluster is counted here is right if no
            // count is ever raised; anything else is left to the full pass.
            let counted = data_file || (offset & (cs - 1) == 0 && offset < cx.img.file_len());
            if frag && !(counted && entry & COPIED != 0) {
                w.copied_suspect = true;
            }
            if (bitmap >> 32) & bitmap != 0 {
                res.corruptions += 1;
                let _ = writeln!(
                    cx.err,
                    "ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                );
            }
            let mut unaligned = false;
            if offset & (cs - 1) != 0 {
                unaligned = true;
                res.corruptions += 1;
                let contains_data = if ext {
                    bitmap & 0xffff_ffff != 0
                } else {
                    entry & ZERO == 0
                };
                if !contains_data {
                    let fixing = fix.errors && !w.no_prealloc_fix;
                    let _ = writeln!(
                        cx.err,
                        "{} offset={offset:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
                        if fixing { "Repairing" } else { "ERROR" }
                    );
                    if fixing {
                        // A preallocated zero cluster: the guest reads
                        // zeros either way, so a plain zero entry loses
                        // nothing.
                        let new = if ext { 0 } else { ZERO };
                        let pos = l2_off + at as u64;
                        let mut bytes = new.to_be_bytes().to_vec();
                        if ext {
                            bytes.extend_from_slice(&bitmap.to_be_bytes());
                        }
                        // Written after the walk, once it is known
                        // that the table is not garbage reached
                        // through a corrupt structure.
                        w.prealloc.push((pos, bytes, l2_off));
                        table[at..at + 8].copy_from_slice(&new.to_be_bytes());
                        res.corruptions -= 1;
                        res.corruptions_fixed += 1;
                        return Ok(());
                    }
                } else {
                    let _ = writeln!(
                        cx.err,
                        "ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted."
                    );
                }
            }
            if frag {
                res.allocated_clusters += 1;
                if *next_contiguous != 0 && offset != *next_contiguous {
                    res.fragmented_clusters += 1;
                }
                *next_contiguous = offset.wrapping_add(cs);
            }
            if let Some((zone, guest, (from, wp))) = zone {
                if guest >= from && w.stale.len() >= super::zoned::MAX_FINDINGS {
                    w.stale_unlisted += 1;
                } else if guest >= from {
                    w.stale.push(StaleCluster {
                        zone,
                        guest,
                        host: offset,
                        entry_at: l2_off + at as u64,
                        wp,
                    });
                }
            }
            if !data_file
                && matches!(ty, ClusterType::Normal(_))
                && (unaligned || offset >= cx.img.file_len())
            {
                lost_data(w, offset);
            }
            if !data_file {
                let saved = w.taint_mode.clone();
                if unaligned {
                    w.taint_mode = Some(format!(
                        "it is referenced by an unaligned L2 entry (offset={offset:x})"
                    ));
                }
                let r = inc_refcounts(cx, res, w, offset, cs, Class::Data);
                w.taint_mode = saved;
                r?;
            }
        }
        ClusterType::ZeroPlain => {}
        ClusterType::Unallocated => {
            if bitmap & 0xffff_ffff != 0 {
                res.corruptions += 1;
                let _ = writeln!(
                    cx.err,
                    "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                );
            }
        }
    }
    Ok(())
}

/// An L2 entry whose data cannot be located: the cluster it should name
/// may be one that now looks leaked, so the walk is incomplete for leak
/// repair (recorded once; `-r all` drops the entry first).
fn lost_data(w: &mut Walk, offset: u64) {
    const WHY: &str = "an L2 entry names data that cannot be located";
    if !w.incomplete.iter().any(|x| x.starts_with(WHY)) {
        w.incomplete.push(format!(
            "{WHY} (offset 0x{offset:x}: unaligned or past the end of the file)"
        ));
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// QEMU `calculate_refcounts`.
pub(crate) fn calculate_refcounts(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    rebuild: &mut bool,
    w: &mut Walk,
) -> Result<(), Errno> {
    let cs = cx.img.cs;
    inc_refcounts(cx, res, w, 0, cs, Class::Single)?;
    let (l1o, l1s) = (cx.img.header.l1_table_offset, cx.img.header.l1_size);
    w.zones = cx.zones.as_ref().map(super::zoned::ZoneScan::new);
    check_l1(cx, res, w, l1o, l1s, L1Kind::Active, fix)?;
    if let Some(scan) = w.zones.as_mut() {
        scan.finish(&mut cx.img);
    }

    let nb = cx.snaps.list.len();
    if cx.img.has_data_file() && nb > 0 {
        let _ = writeln!(cx.err, "ERROR {nb} snapshots in image with data file");
        res.corruptions += 1;
    }
    let mut l1_seen: HashMap<u64, u32> = HashMap::new();
    for i in 0..nb {
        let (id, name, off, size) = {
            let s = &cx.snaps.list[i];
            (s.id.clone(), s.name.clone(), s.l1_offset, s.l1_size)
        };
        if off & (cs - 1) != 0 {
            let _ = writeln!(cx.err, "ERROR snapshot {id} ({name}) l1_offset={}: L1 table is not cluster aligned; snapshot table entry corrupted", super::image::hash_x(off));
            res.corruptions += 1;
            w.incomplete.push(format!(
                "snapshot {id} ({name}) has an unaligned L1 table offset"
            ));
            continue;
        }
        if size as u64 > crate::format::header::MAX_L1_BYTES / 8 {
            let _ = writeln!(cx.err, "ERROR snapshot {id} ({name}) l1_size={}: L1 table is too large; snapshot table entry corrupted", super::image::hash_x(size as u64));
            res.corruptions += 1;
            w.incomplete
                .push(format!("snapshot {id} ({name}) has an oversized L1 table"));
            continue;
        }
        // Snapshots never share an L1 table; a hostile table of 65536
        // entries naming the same one would otherwise cost 65536 walks.
        if size == 0 {
            continue;
        }
        let n = l1_seen.entry(off).or_insert(0u32);
        *n += 1;
        if *n > MAX_L2_REPEATS {
            if *n == MAX_L2_REPEATS + 1 {
                let _ = writeln!(cx.err, "zcow: L1 table at 0x{off:x} is named by more than {MAX_L2_REPEATS} snapshots; later ones are not walked");
                w.incomplete.push(format!(
                    "the L1 table at 0x{off:x} is named by many snapshots"
                ));
            }
            continue;
        }
        check_l1(cx, res, w, off, size, L1Kind::Snapshot, fix)?;
    }
    let (so, ss) = (cx.snaps.offset, cx.snaps.size);
    let before = res.corruptions;
    inc_refcounts(cx, res, w, so, ss, Class::Single)?;
    cx.snaps.counted = res.corruptions == before;

    let rto = cx.img.reftable_offset;
    let rts = cx.img.reftable.len() as u64 * 8;
    inc_refcounts(cx, res, w, rto, rts, Class::Refcount)?;

    if let Some((off, len)) = cx.img.header.crypto() {
        if len != 0 {
            inc_refcounts(cx, res, w, off, len, Class::Single)?;
        }
    }
    super::bitmaps::check_bitmaps(cx, res, w)?;
    if let Some(z) = cx.img.header.zoned().cloned() {
        inc_refcounts(
            cx,
            res,
            w,
            z.zonedmeta_offset,
            z.zonedmeta_size,
            Class::Single,
        )?;
    }
    check_refblocks(cx, res, fix, rebuild, w)?;
    w.copied_writes = Some(cx.img.writes());
    Ok(())
}

/// QEMU `check_refblocks`. zcow never grows the file for a refblock pointer
/// past EOF (QEMU does, by however much the garbage pointer says): it asks
/// for a rebuild instead.
fn check_refblocks(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    rebuild: &mut bool,
    w: &mut Walk,
) -> Result<(), Errno> {
    let cs = cx.img.cs;
    for i in 0..cx.img.reftable.len() {
        let e = cx.img.reftable[i];
        let off = e & REFT_OFFSET_MASK;
        let cluster = off >> cx.img.cb;
        if e & REFT_RESERVED_MASK != 0 {
            let _ = writeln!(
                cx.err,
                "ERROR refcount table entry {i} has reserved bits set"
            );
            res.corruptions += 1;
            *rebuild = true;
            continue;
        }
        if off & (cs - 1) != 0 {
            let _ = writeln!(
                cx.err,
                "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            );
            res.corruptions += 1;
            *rebuild = true;
            continue;
        }
        if cluster >= w.imrt.n {
            res.corruptions += 1;
            let _ = writeln!(cx.err, "ERROR refcount block {i} is outside image");
            if fix.errors {
                let _ = writeln!(cx.err, "zcow: Not growing the image to 0x{:x} bytes for refcount block {i}: the pointer is corrupt; rebuilding the refcount structure instead", off.saturating_add(cs));
                *rebuild = true;
            }
            continue;
        }
        if off != 0 {
            inc_refcounts(cx, res, w, off, cs, Class::Refcount)?;
            let r = w.imrt.get(cluster);
            if r != 1 {
                let _ = writeln!(cx.err, "ERROR refcount block {i} refcount={r}");
                res.corruptions += 1;
                *rebuild = true;
            }
        }
    }
    let _ = EINVAL;
    Ok(())
}
