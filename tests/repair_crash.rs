//! Crash simulation of check's repairs: `check -r leaks`, `check -r all` and
//! `repair` run over the fault storage on the corruption corpus and on
//! zoned images with stale clusters; power is lost at every storage write
//! and every crash state built from the unsynced writes is checked. In every
//! state the image is no worse than before the repair began: check finds no
//! more corruptions than before, and every guest cluster the repair does
//! not report as lost reads as it did before. A repair run again on the
//! crash state ends where the uninterrupted repair ended.

mod common;
use common::*;
use std::path::Path;
use std::sync::Arc;
use zcow::check::repair::JournalStorage;
use zcow::check::{check_store, CheckReport, RepairMode};
use zcow::format::wp::WpEntry;
use zcow::storage::{FaultConfig, FaultStorage, MemStorage, Storage};

const MIB: u64 = 1 << 20;

/// How a repair is run.
#[derive(Debug, Clone, Copy)]
enum Run {
    Leaks,
    All,
    /// `zcow-img repair`: `-r all` through the journaling store.
    Repair,
}

fn check(store: Arc<dyn Storage>, mode: Option<RepairMode>) -> Option<CheckReport> {
    check_store(
        store,
        mode,
        &zcow::progress::Progress::hidden(),
        &mut std::io::sink(),
        |_| {},
    )
    .ok()
}

fn repair(st: Arc<FaultStorage>, run: Run, cs: u64) -> Option<CheckReport> {
    match run {
        Run::Leaks => check(st, Some(RepairMode::Leaks)),
        Run::All => check(st, Some(RepairMode::All)),
        Run::Repair => {
            let j = JournalStorage::new(st, false, cs).ok()?;
            check(Arc::new(j), Some(RepairMode::All))
        }
    }
}

fn be64(b: &[u8], off: u64) -> u64 {
    let mut a = [0u8; 8];
    let o = off as usize;
    if o + 8 <= b.len() {
        a.copy_from_slice(&b[o..o + 8]);
    }
    u64::from_be_bytes(a)
}

/// What the guest reads, one CRC-32 per cluster, found by following the
/// raw L1/L2 entries (an image in any state can be read this way):
/// the active image's view, then each snapshot's, labelled as repair
/// reports them (`snapshot ID (NAME)`). Values of 1 << 40 and above mark
/// clusters whose mapping cannot be followed.
fn guest_views(img: &[u8]) -> Vec<(Option<String>, Vec<u64>)> {
    let size = be64(img, 24);
    let mut v = vec![(
        None,
        guest_view(img, be64(img, 40), be32(img, 36) as u64, size),
    )];
    let nb = be32(img, 60) as u64;
    let mut pos = be64(img, 64);
    for _ in 0..nb.min(64) {
        pos = pos.div_ceil(8) * 8;
        let l1 = be64(img, pos);
        let l1_size = be32(img, pos + 8) as u64;
        let id_len = be16(img, pos + 12);
        let name_len = be16(img, pos + 14);
        let extra = be32(img, pos + 36) as u64;
        let disk = if extra >= 16 {
            be64(img, pos + 48)
        } else {
            size
        };
        let at = (pos + 40 + extra) as usize;
        let text = |a: usize, n: u64| {
            String::from_utf8_lossy(img.get(a..a + n as usize).unwrap_or(&[])).into_owned()
        };
        let id = text(at, id_len);
        let name = text(at + id_len as usize, name_len);
        v.push((
            Some(format!("snapshot {id} ({name})")),
            guest_view(img, l1, l1_size, disk),
        ));
        pos += 40 + extra + id_len + name_len;
    }
    v
}

fn be32(b: &[u8], off: u64) -> u32 {
    (be64(b, off) >> 32) as u32
}

fn be16(b: &[u8], off: u64) -> u64 {
    be64(b, off) >> 48
}

/// One view: the L1 table at `l1_off` over a disk of `size` bytes.
fn guest_view(img: &[u8], l1_off: u64, l1_size: u64, size: u64) -> Vec<u64> {
    let cb = u32::from_be_bytes(img[20..24].try_into().unwrap());
    let cs = 1u64 << cb;
    let per_l2 = cs / 8;
    let mask = 0x00ff_ffff_ffff_fe00u64;
    let zero = crc32fast::hash(&vec![0u8; cs as usize]) as u64;
    let len = img.len() as u64;
    (0..size.div_ceil(cs))
        .map(|g| {
            let i = g / per_l2;
            if i >= l1_size {
                return zero;
            }
            let l2 = be64(img, l1_off + i * 8) & mask;
            if l2 == 0 {
                return zero;
            }
            if l2 % cs != 0 || l2 >= len {
                return 1 << 40;
            }
            let e = be64(img, l2 + (g % per_l2) * 8);
            let mut b = vec![0u8; cs as usize];
            if e & (1 << 62) != 0 {
                let (off, n) = zcow::format::l2::compressed_range(e, cb);
                let end = off.saturating_add(n).min(len);
                if off >= len {
                    return 2 << 40;
                }
                let src = &img[off as usize..end as usize];
                return match zcow::format::compress::decompress(0, src, &mut b) {
                    Ok(()) => crc32fast::hash(&b) as u64,
                    Err(_) => 3 << 40,
                };
            }
            let off = e & mask;
            if e & 1 != 0 || off == 0 {
                return zero;
            }
            let end = (off + cs).min(len);
            if off < len {
                b[..(end - off) as usize].copy_from_slice(&img[off as usize..end as usize]);
            }
            crc32fast::hash(&b) as u64
        })
        .collect()
}

/// Which clusters of the view `snap` (None: the active image) the repair
/// reported lost.
fn lost_clusters(rep: &CheckReport, snap: &Option<String>, cs: u64, n: usize) -> Vec<bool> {
    let mut v = vec![false; n];
    for l in rep.lost.iter().filter(|l| &l.snapshot == snap) {
        for g in l.guest / cs..(l.guest + l.len).div_ceil(cs) {
            if let Some(x) = v.get_mut(g as usize) {
                *x = true;
            }
        }
    }
    v
}

/// Every power-loss state of one repair of `img`; returns the state count.
fn crash_repair(name: &str, img: &[u8], run: Run) -> usize {
    crash_repair_to(name, img, run, None)
}

/// [`crash_repair`]; `fixed_view`: the views of the uncorrupted image, which
/// a repair that restores a mapping (rather than dropping one) may bring
/// back in place of the corrupt image's.
fn crash_repair_to(
    name: &str,
    img: &[u8],
    run: Run,
    fixed_view: Option<&[(Option<String>, Vec<u64>)]>,
) -> usize {
    let cs = 1u64 << u32::from_be_bytes(img[20..24].try_into().unwrap());
    let before = check(Arc::new(MemStorage::from_bytes(img.to_vec())), None)
        .unwrap_or_else(|| panic!("{name}: the corrupt image cannot be checked"));
    let views = guest_views(img);
    // The uninterrupted repair: what it reports lost, where it ends.
    let full = Arc::new(FaultStorage::new(img.to_vec(), FaultConfig::default()));
    let done =
        repair(full.clone(), run, cs).unwrap_or_else(|| panic!("{name} {run:?}: repair failed"));
    let writes = full.write_count();
    let lost: Vec<Vec<bool>> = views
        .iter()
        .map(|(snap, v)| lost_clusters(&done, snap, cs, v.len()))
        .collect();
    let end = check(Arc::new(MemStorage::from_bytes(full.current())), None).unwrap();
    assert!(
        end.counts.corruptions <= before.counts.corruptions,
        "{name} {run:?}: the repair left more corruptions ({:?}) than it found ({:?})",
        end.counts,
        before.counts
    );
    if !matches!(run, Run::Leaks) {
        assert_eq!(
            (end.counts.corruptions, end.counts.check_errors),
            (0, 0),
            "{name} {run:?}: -r all did not end consistent: {:?}",
            end.counts
        );
    }
    let mut states = 0;
    for cut in 0..writes {
        let st = Arc::new(FaultStorage::new(
            img.to_vec(),
            FaultConfig {
                power_loss_at_write: Some(cut),
                ..Default::default()
            },
        ));
        let _ = repair(st.clone(), run, cs);
        let n = st.pending_writes();
        for (k, (keep, torn)) in variants(n).into_iter().enumerate() {
            let bytes = st.crash_state(&keep, torn);
            states += 1;
            let what =
                format!("{name} {run:?}: power lost at write {cut}, state {keep:?} torn {torn:?}");
            let mut lines = Vec::new();
            let after = check_store(
                Arc::new(MemStorage::from_bytes(bytes.clone())),
                None,
                &zcow::progress::Progress::hidden(),
                &mut lines,
                |_| {},
            )
            .ok()
            .unwrap_or_else(|| panic!("{what}: the image can no longer be checked"));
            assert!(
                after.failed.is_none() || before.failed.is_some(),
                "{what}: check fails: {:?}",
                after.failed
            );
            let safe = safe_copied(&lines);
            assert!(
                after.counts.corruptions - safe <= before.counts.corruptions,
                "{what}: {} corruptions ({safe} of them COPIED clear on a refcount just lowered to 1), {} before the repair",
                after.counts.corruptions,
                before.counts.corruptions
            );
            let now = guest_views(&bytes);
            for (k, (snap, view)) in views.iter().enumerate() {
                let Some((_, v)) = now.iter().find(|x| &x.0 == snap) else {
                    assert!(
                        !done.lost_snapshots.is_empty(),
                        "{what}: {snap:?} is gone and not reported lost"
                    );
                    continue;
                };
                let fixed = fixed_view.and_then(|f| f.iter().find(|x| &x.0 == snap));
                for (g, (a, b)) in v.iter().zip(view).enumerate() {
                    assert!(
                        lost[k][g] || a == b || fixed.is_some_and(|f| f.1[g] == *a),
                        "{what}: guest cluster {g} of {snap:?} changed and is not reported lost"
                    );
                }
            }
            // Running the repair again finishes the job.
            if k % 5 == 0 {
                let again = Arc::new(FaultStorage::new(bytes, FaultConfig::default()));
                let _ = repair(again.clone(), run, cs);
                let fin = check(Arc::new(MemStorage::from_bytes(again.current())), None).unwrap();
                assert!(
                    fin.counts.corruptions <= end.counts.corruptions,
                    "{what}: a second repair ends with {:?}, the uninterrupted one with {:?}",
                    fin.counts,
                    end.counts
                );
            }
        }
    }
    states
}

/// How many of check's findings are COPIED flags missing on clusters
/// whose refcount is 1: the state between a leak repair lowering a shared
/// cluster's refcount to 1 and setting the flag (the two live in different
/// clusters, so no order avoids it). It is the safe direction: the next
/// write copies the cluster, nothing reads differently, and a second run
/// sets the flag. (COPIED set on a shared cluster, the unsafe direction,
/// is still counted.)
fn safe_copied(err: &[u8]) -> i64 {
    String::from_utf8_lossy(err)
        .lines()
        .filter(|l| l.starts_with("ERROR OFLAG_COPIED") && l.ends_with(" refcount=1"))
        .filter(|l| {
            // The entry as printed (hex): COPIED is bit 63.
            l.split_whitespace()
                .filter_map(|w| {
                    w.strip_prefix("l2_entry=")
                        .or_else(|| w.strip_prefix("l1_entry="))
                })
                .all(|h| u64::from_str_radix(h, 16).is_ok_and(|e| e & 1 << 63 == 0))
        })
        .count() as i64
}

/// The shared crash variants, plus every subset of the unsynced writes
/// (up to 8 of them) and each write torn after its first sector.
fn variants(n: usize) -> Vec<CrashVariant> {
    let mut v = crash_variants(n);
    if n <= 8 {
        for m in 1..(1usize << n) - 1 {
            v.push(((0..n).filter(|i| m & (1 << i) != 0).collect(), None));
        }
    }
    for t in 0..n.min(16) {
        v.push(((0..=t).collect(), Some((t, 1))));
    }
    v
}

/// Where the base image keeps its structures.
struct Layout {
    cs: u64,
    reftable: u64,
    refblock: u64,
    l1: u64,
    l2: u64,
    /// Host offset of guest cluster 1's data.
    data1: u64,
}

impl Layout {
    fn of(img: &[u8]) -> Self {
        let mask = 0x00ff_ffff_ffff_fe00u64;
        let cs = 1u64 << u32::from_be_bytes(img[20..24].try_into().unwrap());
        let reftable = be64(img, 48);
        let l1 = be64(img, 40);
        let l2 = be64(img, l1) & mask;
        Layout {
            cs,
            reftable,
            refblock: be64(img, reftable) & mask,
            l1,
            l2,
            data1: be64(img, l2 + 8) & mask,
        }
    }

    /// Offset of the 16-bit refcount of the cluster at host offset `h`.
    fn rc(&self, h: u64) -> u64 {
        self.refblock + 2 * (h / self.cs)
    }
}

type Patch = (&'static str, fn(&mut Vec<u8>, &Layout));

fn put(b: &mut Vec<u8>, off: u64, v: &[u8]) {
    let end = off as usize + v.len();
    if b.len() < end {
        b.resize(end, 0);
    }
    b[off as usize..end].copy_from_slice(v);
}

fn put64(b: &mut Vec<u8>, off: u64, v: u64) {
    put(b, off, &v.to_be_bytes());
}

const C: u64 = 1 << 63;

/// Single corruptions of a qemu-img image (the reference corpus, with
/// offsets taken from the image so any cluster size works).
fn corpus() -> Vec<Patch> {
    vec![
        ("01-data-refcount-2", |b, l| put(b, l.rc(l.data1), &[0, 2])),
        ("03-data-refcount-0", |b, l| put(b, l.rc(l.data1), &[0, 0])),
        ("04-refblock-zeroed", |b, l| {
            put(b, l.refblock, &vec![0u8; l.cs as usize])
        }),
        ("06-reftable-unaligned", |b, l| {
            put64(b, l.reftable, l.refblock + 0x200)
        }),
        ("11-l2-beyond-eof", |b, l| {
            put64(b, l.l2 + 16, C | 0x100_0000)
        }),
        ("12-l2-unaligned-data", |b, l| {
            put64(b, l.l2 + 8, C | (l.data1 + 0x200))
        }),
        ("13-l2-unaligned-zero-alloc", |b, l| {
            put64(b, l.l2 + 8, C | (l.data1 + 0x200) | 1)
        }),
        ("14-l2-reserved", |b, l| {
            put64(b, l.l2 + 8, C | 1 << 56 | l.data1)
        }),
        ("15-l1-reserved", |b, l| put64(b, l.l1, C | l.l2 | 1)),
        ("16-l1-unaligned", |b, l| put64(b, l.l1, C | (l.l2 + 0x200))),
        ("17-l1-beyond-eof", |b, l| put64(b, l.l1, C | 0x100_0000)),
        ("18-l2-copied-cleared", |b, l| {
            put64(b, l.l2, be64(b, l.l2) & !C)
        }),
        ("19-l1-copied-cleared", |b, l| put64(b, l.l1, l.l2)),
        ("20-l2-to-refblock", |b, l| {
            put64(b, l.l2 + 16, C | l.refblock)
        }),
        ("21-l2-to-l1", |b, l| put64(b, l.l2 + 16, C | l.l1)),
        ("22b-dirty-leak", |b, l| {
            put(b, 79, &[1]);
            put(b, l.rc(l.data1), &[0, 2]);
        }),
    ]
}

#[test]
fn repair_survives_power_loss_on_the_corruption_corpus() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let mut total = 0;
    for cluster_size in ["65536", "4096"] {
        let d = tmp();
        let p = d.path().join("t.qcow2");
        let o = format!("cluster_size={cluster_size}");
        ok(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &o, s(&p), "64M"],
        );
        ok(
            "qemu-io",
            &[
                "-c",
                "write -P 0xaa 0 128k",
                "-c",
                "write -P 0xbb 1M 64k",
                s(&p),
            ],
        );
        let base = std::fs::read(&p).unwrap();
        let layout = Layout::of(&base);
        for (name, patch) in corpus() {
            let mut img = base.clone();
            patch(&mut img, &layout);
            for run in [Run::Leaks, Run::All, Run::Repair] {
                total += crash_repair(&format!("{name} ({cluster_size})"), &img, run);
            }
        }
    }
    // Straight to the process's stderr (not eprintln!, which the test
    // harness captures), so every CI log shows how many states were checked.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("repair_crash: corpus: {total} power-loss states checked\n").as_bytes(),
    );
    assert!(total > 1000, "only {total} states");
}

/// The shared zoned fixture (zone 1 holds 192 KiB below its wp), then
/// `stale` writes past the wp.
fn zoned_stale(dir: &Path, stale: &[(u64, u64)], wp_past: bool) -> Vec<u8> {
    let zone = FIXTURE_ZONE;
    let p = dir.join("z.qcow2");
    let img = zoned_check_fixture(&p);
    for &(off, len) in stale {
        img.write(off, &vec![0x33; len as usize]).unwrap();
    }
    if wp_past {
        img.write_wp_entries(2, &[WpEntry::new(2 * zone + MIB, false)])
            .unwrap();
    }
    img.flush().unwrap();
    img.sync_file().unwrap();
    drop(img);
    std::fs::read(&p).unwrap()
}

#[test]
fn repair_survives_power_loss_on_zoned_stale_clusters() {
    let zone = 16 * MIB;
    let d = tmp();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "zoned-stale-1",
            zoned_stale(d.path(), &[(zone + MIB, 65536)], false),
        ),
        (
            "zoned-stale-many",
            zoned_stale(
                d.path(),
                &[
                    (zone + MIB, 3 * 65536),
                    (zone + 4 * MIB, 65536),
                    (3 * zone, 65536),
                ],
                false,
            ),
        ),
        (
            "zoned-stale-24",
            zoned_stale(
                d.path(),
                &(0..24)
                    .map(|i| (zone * (1 + i % 3) + 4 * MIB + (i / 3) * 131072, 65536))
                    .collect::<Vec<_>>(),
                false,
            ),
        ),
        (
            "zoned-stale-and-wp-past-data",
            zoned_stale(d.path(), &[(zone + 2 * MIB, 2 * 65536)], true),
        ),
    ];
    // The write-pointer array gone (its offset past the end of the file):
    // rebuilt from the data.
    let mut missing = zoned_stale(d.path(), &[], false);
    let body = zoned_ext_body(&missing);
    put(&mut missing, body + 48, &0x7fff_0000u64.to_be_bytes());
    let mut cases = cases;
    cases.push(("zoned-array-missing", missing));
    let mut total = 0;
    for (name, img) in &cases {
        for run in [Run::Leaks, Run::All, Run::Repair] {
            total += crash_repair(name, img, run);
        }
    }
    // Straight to the process's stderr (not eprintln!, which the test
    // harness captures), so every CI log shows how many states were checked.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("repair_crash: zoned: {total} power-loss states checked\n").as_bytes(),
    );
    assert!(total > 200, "only {total} states");
}

/// Offset of the zoned extension's body in cluster 0.
fn zoned_ext_body(img: &[u8]) -> u64 {
    let mut off = 112usize;
    loop {
        let magic = u32::from_be_bytes(img[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(img[off + 4..off + 8].try_into().unwrap()) as usize;
        assert_ne!(magic, 0, "no zoned extension");
        if magic == 0x007a_6264 {
            return off as u64 + 8;
        }
        off += 8 + len.div_ceil(8) * 8;
    }
}

/// Offset of the first snapshot's L1 table and of its first L2 table.
fn snap_tables(b: &[u8]) -> (u64, u64) {
    let l1 = be64(b, be64(b, 64));
    (l1, be64(b, l1) & 0x00ff_ffff_ffff_fe00)
}

/// Snapshot-owned and shared L2 tables, compressed entries and a header
/// L1 offset of 0: the repairs of mappings that are not the active
/// image's own (every view is compared), crash state by crash state.
#[test]
fn repair_survives_power_loss_on_snapshot_compressed_and_l1_cases() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let mut total = 0;
    for cluster_size in ["65536", "4096"] {
        let d = tmp();
        let p = d.path().join("t.qcow2");
        let o = format!("cluster_size={cluster_size}");
        ok(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &o, s(&p), "64M"],
        );
        ok(
            "qemu-io",
            &[
                "-c",
                "write -P 0xaa 0 128k",
                "-c",
                "write -P 0xbb 1M 64k",
                s(&p),
            ],
        );
        let plain = std::fs::read(&p).unwrap();
        ok("qemu-img", &["snapshot", "-c", "snap1", s(&p)]);
        let shared = std::fs::read(&p).unwrap();
        ok("qemu-io", &["-c", "write -P 0xdd 0 64k", s(&p)]);
        let snap = std::fs::read(&p).unwrap();
        let c = d.path().join("c.qcow2");
        ok(
            "qemu-img",
            &["convert", "-c", "-O", "qcow2", "-o", &o, s(&p), s(&c)],
        );
        let comp = std::fs::read(&c).unwrap();
        let cs: u64 = cluster_size.parse().unwrap();
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut add = |name, base: &Vec<u8>, f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = base.clone();
            f(&mut b);
            cases.push((name, b));
        };
        add("s-l2-unaligned", &snap, &|b| {
            let (_, l2) = snap_tables(b);
            put64(b, l2, be64(b, l2) + 0x200);
        });
        add("s-l2-reserved", &snap, &|b| {
            let (_, l2) = snap_tables(b);
            put64(b, l2 + 8, be64(b, l2 + 8) | 1 << 56);
        });
        add("s-l2-beyond-eof", &snap, &|b| {
            let (_, l2) = snap_tables(b);
            put64(b, l2 + 8, C | 0x100_0000);
        });
        add("s-l2-to-refblock", &snap, &|b| {
            let (_, l2) = snap_tables(b);
            let rb = Layout::of(b).refblock;
            put64(b, l2, C | rb);
        });
        add("s-l1-entry-beyond-eof", &snap, &|b| {
            let (l1, _) = snap_tables(b);
            put64(b, l1, C | 0x100_0000);
        });
        add("sh-l2-beyond-eof", &shared, &|b| {
            let l = Layout::of(b);
            put64(b, l.l2 + 16, 0x100_0000);
        });
        add("sh-l2-to-l1", &shared, &|b| {
            let l = Layout::of(b);
            put64(b, l.l2 + 16, l.l1);
        });
        let cl2 = Layout::of(&comp).l2;
        add("c-past-eof", &comp, &|b| {
            put64(b, cl2 + 8, 1 << 62 | 0x100_0000)
        });
        add("c-to-refblock", &comp, &|b| {
            let rb = Layout::of(b).refblock;
            put64(b, cl2 + 8, 1 << 62 | rb);
        });
        add("c-sector-count-impossible", &comp, &|b| {
            let x = 62 - (cs.trailing_zeros() - 8);
            let e = be64(b, cl2) | ((1u64 << (cs.trailing_zeros() - 8)) - 1) << x;
            put64(b, cl2, e);
        });
        add("c-copied", &comp, &|b| put64(b, cl2, be64(b, cl2) | C));
        for (name, img) in &cases {
            for run in [Run::Leaks, Run::All, Run::Repair] {
                total += crash_repair(&format!("{name} ({cluster_size})"), img, run);
            }
        }
        // The header's L1 offset 0: the table is located again.
        let mut l1_0 = plain.clone();
        put64(&mut l1_0, 40, 0);
        let good = guest_views(&plain);
        for run in [Run::Leaks, Run::All, Run::Repair] {
            total += crash_repair_to(
                &format!("33-l1-offset-0 ({cluster_size})"),
                &l1_0,
                run,
                Some(&good),
            );
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "repair_crash: snapshots, compressed, L1 offset: {total} power-loss states checked\n"
        )
        .as_bytes(),
    );
    assert!(total > 1000, "only {total} states");
}
