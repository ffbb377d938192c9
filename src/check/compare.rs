//! Comparing computed and on-disk refcounts (QEMU `compare_refcounts`) and
//! the COPIED flag check (`check_oflag_copied`), with zcow's refusals: no
//! refcount is raised for a cluster reached through a corrupt entry or
//! aliased metadata, and no leak is freed while the walk is incomplete.

use super::errno::{strerror, Errno};
use super::walk::Walk;
use super::{Counts, Ctx, Fix};
use crate::format::l2::{decode_l2, ClusterType, COPIED, OFFSET_MASK};

/// QEMU `compare_refcounts`. Returns the highest cluster in use, and
/// whether every on-disk refcount matched the computed one (nothing
/// reported, nothing changed).
pub(crate) fn compare_refcounts(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    rebuild: &mut bool,
    w: &Walk,
) -> (u64, bool) {
    let mut highest = 0;
    let mut all_same = true;
    let mut told_incomplete = false;
    let n = w.imrt.n;
    cx.phase("comparing refcounts");
    let rb_bits = cx.img.rb_bits;
    let order = cx.img.order;
    let idx_mask = (1u64 << rb_bits) - 1;
    // One refblock lookup per block, not per cluster: this loop is the hot
    // path of a big image. Fixes below only touch entry i, which is never
    // read again, so the copy stays valid.
    for rti in 0..n.div_ceil(1 << rb_bits) {
        cx.progress(rti << rb_bits, n);
        let block = cx.img.refblock_copy(rti << rb_bits, &mut *cx.err);
        // A block identical to the computed one has nothing to report: only
        // its highest used cluster matters.
        if let Ok(disk) = &block {
            if let Some(last) = w.imrt.same_block(rti, disk.as_deref()) {
                if let Some(l) = last {
                    highest = (rti << rb_bits) + l;
                }
                continue;
            }
        }
        for i in rti << rb_bits..((rti + 1) << rb_bits).min(n) {
            let r1 = match &block {
                Ok(Some(b)) => super::imrt::rc_get(b, order, (i & idx_mask) as usize),
                Ok(None) => 0,
                Err(e) => {
                    let _ = writeln!(
                        cx.err,
                        "Can't get refcount for cluster {i}: {}",
                        strerror(*e)
                    );
                    res.check_errors += 1;
                    all_same = false;
                    continue;
                }
            };
            let r2 = w.imrt.get(i);
            if r1 > 0 || r2 > 0 {
                highest = i;
            }
            if r1 == r2 {
                continue;
            }
            all_same = false;
            mismatch(cx, res, fix, rebuild, w, i, r1, r2, &mut told_incomplete);
        }
    }
    (highest, all_same)
}

/// Report (and with `fix`, repair) one cluster whose on-disk refcount `r1`
/// differs from the computed `r2`.
#[allow(clippy::too_many_arguments)]
fn mismatch(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    rebuild: &mut bool,
    w: &Walk,
    i: u64,
    r1: u64,
    r2: u64,
    told_incomplete: &mut bool,
) {
    let mut fixing = false;
    let mut refusal = None;
    if r1 == 0 {
        *rebuild = true;
    } else if r1 > r2 && fix.leaks {
        if let Some(why) = w.incomplete.first() {
            if !*told_incomplete {
                refusal = Some(format!("zcow: Not freeing leaked clusters: {why}, so they may still be in use; fix that first or copy the data out"));
                *told_incomplete = true;
            }
        } else {
            fixing = true;
        }
    } else if r1 < r2 && fix.errors {
        match w.distrust(i) {
            Some(why) => {
                refusal = Some(format!(
                    "zcow: Not raising the refcount of cluster {i}: {why}; that would hide the corruption"
                ))
            }
            None => fixing = true,
        }
    }
    let _ = writeln!(
        cx.err,
        "{} cluster {i} refcount={r1} reference={r2}",
        if fixing {
            "Repairing"
        } else if r1 < r2 {
            "ERROR"
        } else {
            "Leaked"
        }
    );
    if let Some(r) = refusal {
        let _ = writeln!(cx.err, "{r}");
    }
    if fixing && cx.img.set_refcount(i, r2, &mut *cx.err).is_ok() {
        if r1 > r2 {
            res.leaks_fixed += 1;
        } else {
            res.corruptions_fixed += 1;
        }
    } else if r1 < r2 {
        res.corruptions += 1;
    } else {
        res.leaks += 1;
    }
}

/// QEMU `check_oflag_copied` over the active tables. `disk_is_computed`:
/// the on-disk refcounts of clusters the walk covers equal the computed
/// ones (the last comparison found and changed nothing), so they are read
/// from the in-memory table. Then, if the walk already vouched for every
/// data entry's flag ([`Walk::copied_checked`]), only the L1 entries are
/// checked here and no L2 table is read again.
pub(crate) fn check_oflag_copied(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    w: &Walk,
    disk_is_computed: bool,
) -> Result<(), Errno> {
    let l2_checked = disk_is_computed && w.copied_checked(cx.img.writes());
    let refcount = |cx: &mut Ctx, k: u64| {
        if disk_is_computed && k < w.imrt.n {
            Ok(w.imrt.get(k))
        } else {
            cx.img.get_refcount(k, &mut *cx.err)
        }
    };
    let repair = if fix.errors {
        true
    } else if fix.leaks {
        res.check_errors == 0 && res.corruptions == 0 && res.leaks == 0
    } else {
        false
    };
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let ext = cx.img.extended();
    let es = if ext { 16 } else { 8 };
    let data_file = cx.img.has_data_file();
    let mut table = vec![0u8; cs as usize];
    for i in 0..cx.img.l1.len() {
        let e = cx.img.l1[i];
        let l2_off = e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        let Ok(r) = refcount(cx, l2_off >> cb) else {
            continue;
        };
        if (r == 1) != (e & COPIED != 0) {
            res.corruptions += 1;
            let refuse = if repair {
                w.distrust(l2_off >> cb)
            } else {
                None
            };
            let fixing = repair && refuse.is_none();
            let _ = writeln!(
                cx.err,
                "{} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={r}",
                if fixing { "Repairing" } else { "ERROR" }
            );
            if let Some(why) = refuse {
                let _ = writeln!(cx.err, "zcow: Not changing COPIED of L1 entry {i}: {why}");
            }
            if fixing {
                let ne = if r == 1 { e | COPIED } else { e & !COPIED };
                let at = cx.img.header.l1_table_offset + i as u64 * 8;
                if let Err(err) = cx.img.write(at, &ne.to_be_bytes()) {
                    let _ = err;
                    res.check_errors += 1;
                    return Err(err);
                }
                cx.img.l1[i] = ne;
                res.corruptions -= 1;
                res.corruptions_fixed += 1;
            }
        }
        if l2_checked {
            continue;
        }
        if let Err(e) = cx.img.read(l2_off, &mut table) {
            let _ = writeln!(cx.err, "ERROR: Could not read L2 table: {}", strerror(e));
            res.check_errors += 1;
            return Err(e);
        }
        // Never write into a table that is itself suspect.
        let table_refusal = if l2_off & (cs - 1) != 0 {
            Some(format!(
                "its L2 table offset 0x{l2_off:x} is not cluster aligned"
            ))
        } else {
            w.distrust(l2_off >> cb)
        };
        let mut dirty = 0;
        for j in 0..(cs as usize / es) {
            let at = j * es;
            let mut a = [0u8; 8];
            a.copy_from_slice(&table[at..at + 8]);
            let le = u64::from_be_bytes(a);
            let ty = decode_l2(le, cb, ext, data_file);
            if !matches!(ty, ClusterType::Normal(_) | ClusterType::ZeroAlloc(_)) {
                continue;
            }
            let data = le & OFFSET_MASK;
            let r = if data_file {
                1
            } else {
                match refcount(cx, data >> cb) {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            };
            if (r == 1) != (le & COPIED != 0) {
                res.corruptions += 1;
                let refuse = if !repair {
                    None
                } else if let Some(t) = &table_refusal {
                    Some(t.clone())
                } else if !data_file {
                    w.distrust(data >> cb)
                } else {
                    None
                };
                let fixing = repair && refuse.is_none();
                let _ = writeln!(
                    cx.err,
                    "{} OFLAG_COPIED data cluster: l2_entry={le:x} refcount={r}",
                    if fixing { "Repairing" } else { "ERROR" }
                );
                if let Some(why) = refuse {
                    let _ = writeln!(cx.err, "zcow: Not changing COPIED of that L2 entry: {why}");
                }
                if fixing {
                    let ne = if r == 1 { le | COPIED } else { le & !COPIED };
                    table[at..at + 8].copy_from_slice(&ne.to_be_bytes());
                    dirty += 1;
                }
            }
        }
        if dirty > 0 {
            if let Err(e) = cx.img.write(l2_off, &table) {
                let _ = writeln!(cx.err, "ERROR: Could not write L2 table: {}", strerror(e));
                res.check_errors += 1;
                return Err(e);
            }
            res.corruptions -= dirty;
            res.corruptions_fixed += dirty;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The COPIED-flag check fused into the walk must report what the full
    //! pass reports: these images have entries whose flag is only wrong
    //! because of a reference counted after the entry was decoded.
    use crate::format::create::{create, CreateOptions, Preallocation};
    use crate::progress::Progress;
    use crate::storage::{MemStorage, Storage};
    use std::sync::Arc;

    fn be64(b: &[u8], at: u64) -> u64 {
        let at = at as usize;
        u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    /// A 1 MiB image, 64 KiB clusters, every cluster preallocated:
    /// (bytes, L2 table offset, refblock offset).
    fn image(refcount_bits: u32) -> (Vec<u8>, u64, u64) {
        let s = MemStorage::new();
        let o = CreateOptions {
            size: 1 << 20,
            refcount_bits,
            preallocation: Preallocation::Metadata,
            ..CreateOptions::default()
        };
        create(&s, &o).expect("create");
        let b = s.to_vec();
        let l2 = be64(&b, be64(&b, 40)) & super::OFFSET_MASK;
        let rb = be64(&b, be64(&b, 48));
        (b, l2, rb)
    }

    fn set_rc(b: &mut [u8], rb: u64, bits: u32, cluster: u64, v: u64) {
        let at = (rb + cluster * bits as u64 / 8) as usize;
        match bits {
            16 => b[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes()),
            8 => b[at] = v as u8,
            _ => unreachable!(),
        }
    }

    /// Runs a check; returns (corruptions, the OFLAG_COPIED lines).
    fn check(b: Vec<u8>) -> (i64, Vec<String>) {
        let store: Arc<dyn Storage> = Arc::new(MemStorage::from_bytes(b));
        let mut err = Vec::new();
        let rep = super::super::check_store(store, None, &Progress::new(false), &mut err, |_| {})
            .expect("checkable");
        let lines = String::from_utf8_lossy(&err)
            .lines()
            .filter(|l| l.contains("OFLAG_COPIED"))
            .map(String::from)
            .collect();
        (rep.counts.corruptions, lines)
    }

    #[test]
    fn clean_preallocated_image_has_no_findings() {
        for bits in [16, 8] {
            let (b, _, _) = image(bits);
            assert_eq!(check(b), (0, vec![]), "refcount_bits={bits}");
        }
    }

    #[test]
    fn a_cluster_mapped_twice_is_reported_on_both_entries() {
        for bits in [16, 8] {
            let (mut b, l2, rb) = image(bits);
            let e0 = be64(&b, l2);
            let e1 = be64(&b, l2 + 8);
            // Entry 1 maps entry 0's cluster, COPIED still set on both, and
            // the refcounts agree with that (2, and 0 for the old cluster):
            // only the second entry's reference makes the first one wrong.
            b[l2 as usize + 8..l2 as usize + 16].copy_from_slice(&e0.to_be_bytes());
            let c0 = (e0 & super::OFFSET_MASK) >> 16;
            let c1 = (e1 & super::OFFSET_MASK) >> 16;
            set_rc(&mut b, rb, bits, c0, 2);
            set_rc(&mut b, rb, bits, c1, 0);
            let want = format!("ERROR OFLAG_COPIED data cluster: l2_entry={e0:x} refcount=2");
            assert_eq!(
                check(b),
                (2, vec![want.clone(), want]),
                "refcount_bits={bits}"
            );
        }
    }

    #[test]
    fn a_cluster_also_used_as_the_l1_table_is_reported() {
        let (mut b, l2, rb) = image(16);
        let l1 = be64(&b, 40);
        let e3 = be64(&b, l2 + 24);
        // Entry 3 maps the L1 table's cluster (counted after the active
        // L2 tables), refcounts agreeing.
        let ne = super::COPIED | l1;
        b[l2 as usize + 24..l2 as usize + 32].copy_from_slice(&ne.to_be_bytes());
        set_rc(&mut b, rb, 16, l1 >> 16, 2);
        set_rc(&mut b, rb, 16, (e3 & super::OFFSET_MASK) >> 16, 0);
        let want = format!("ERROR OFLAG_COPIED data cluster: l2_entry={ne:x} refcount=2");
        assert_eq!(check(b), (1, vec![want]));
    }

    #[test]
    fn a_cleared_flag_on_an_unshared_cluster_is_reported() {
        let (mut b, l2, _) = image(16);
        let e = be64(&b, l2 + 40) & !super::COPIED;
        b[l2 as usize + 40..l2 as usize + 48].copy_from_slice(&e.to_be_bytes());
        let want = format!("ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount=1");
        assert_eq!(check(b), (1, vec![want]));
    }
}
