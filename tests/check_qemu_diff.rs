//! Differential suite: every corruption case of the qemu-img check reference
//! (§10) is built on a real qemu-img image, then `qemu-img check` and zcow's
//! check run on copies (plain, `-r leaks`, `-r all`, human and JSON). Exit
//! code, stdout and stderr must match, except in the cases listed in
//! [`SAFER`], where zcow deliberately refuses an unsafe qemu-img repair; there
//! the test asserts zcow's own result.

mod check_common;
use check_common::*;
use std::path::Path;

/// Base image of the reference: header, reftable, refblock, L1, L2, data 5–7.
fn base(dir: &Path) {
    must(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "t.qcow2", "64M"],
    );
    must(
        dir,
        "qemu-io",
        &[
            "-c",
            "write -P 0xaa 0 128k",
            "-c",
            "write -P 0xbb 1M 64k",
            "t.qcow2",
        ],
    );
}

type Setup = fn(&Path, &Path);

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// (name, setup(dir, image)).
fn cases() -> Vec<(&'static str, Setup)> {
    vec![
        ("01-clean", |_, _| {}),
        ("01-data-refcount-2", |_, p| patch(p, 0x2000a, &[0, 2])),
        ("02-leak-at-eof", |_, p| {
            set_len(p, 0x90000);
            patch(p, 0x20010, &[0, 1]);
        }),
        ("03-data-refcount-0", |_, p| patch(p, 0x2000a, &[0, 0])),
        ("04-refblock-zeroed", |_, p| {
            patch(p, 0x20000, &[0u8; 0x10000])
        }),
        ("05-reftable-entry-zero", |_, p| patch(p, 0x10000, &be(0))),
        ("06-reftable-unaligned", |_, p| {
            patch(p, 0x10000, &be(0x20200))
        }),
        ("07-reftable-reserved", |_, p| {
            patch(p, 0x10000, &be(0x20001))
        }),
        ("08-refblock-beyond-eof", |_, p| {
            patch(p, 0x10000, &be(0x100_0000))
        }),
        ("09-reftable-clusters-0", |_, p| patch(p, 56, &[0, 0, 0, 0])),
        ("10-l2-to-unrefcounted", |_, p| {
            patch(p, 0x80000, &[0xcc; 0x10000]);
            patch(p, 0x40010, &be(0x8000_0000_0008_0000));
        }),
        ("11-l2-beyond-eof", |_, p| {
            patch(p, 0x40010, &be(0x8000_0000_0100_0000))
        }),
        ("12-l2-unaligned-data", |_, p| {
            patch(p, 0x40008, &be(0x8000_0000_0006_0200))
        }),
        ("13-l2-unaligned-zero-alloc", |_, p| {
            patch(p, 0x40008, &be(0x8000_0000_0006_0201))
        }),
        ("14-l2-reserved", |_, p| {
            patch(p, 0x40008, &be(0x8100_0000_0006_0000))
        }),
        ("15-l1-reserved", |_, p| {
            patch(p, 0x30000, &be(0x8000_0000_0004_0001))
        }),
        ("16-l1-unaligned", |_, p| {
            patch(p, 0x30000, &be(0x8000_0000_0004_0200))
        }),
        ("17-l1-beyond-eof", |_, p| {
            patch(p, 0x30000, &be(0x8000_0000_0100_0000))
        }),
        ("18-l2-copied-cleared", |_, p| {
            patch(p, 0x40000, &be(0x50000))
        }),
        ("19-l1-copied-cleared", |_, p| {
            patch(p, 0x30000, &be(0x40000))
        }),
        ("20-l2-to-refblock", |_, p| {
            patch(p, 0x40010, &be(0x8000_0000_0002_0000))
        }),
        ("21-l2-to-l1", |_, p| {
            patch(p, 0x40010, &be(0x8000_0000_0003_0000))
        }),
        ("22-dirty", |_, p| patch(p, 79, &[1])),
        ("23-corrupt", |_, p| patch(p, 79, &[2])),
        ("22b-dirty-leak", |_, p| {
            patch(p, 79, &[1]);
            patch(p, 0x2000a, &[0, 2]);
        }),
        ("28-unknown-incompat", |_, p| patch(p, 79, &[0x40])),
        ("30-unknown-compat", |_, p| patch(p, 87, &[0x80])),
        ("31-unknown-autoclear", |_, p| patch(p, 95, &[0x80])),
        ("32-bad-version", |_, p| patch(p, 4, &[0, 0, 0, 4])),
        ("32-cluster-bits-8", |_, p| patch(p, 20, &[0, 0, 0, 8])),
        ("32-cluster-bits-22", |_, p| patch(p, 20, &[0, 0, 0, 22])),
        ("32-refcount-order-7", |_, p| patch(p, 96, &[0, 0, 0, 7])),
        ("32-header-length-100", |_, p| {
            patch(p, 100, &[0, 0, 0, 100])
        }),
        ("32-l1-offset-unaligned", |_, p| patch(p, 40, &be(0x30200))),
        ("32-reftable-offset-unaligned", |_, p| {
            patch(p, 48, &be(0x10200))
        }),
        ("32-l1-size-0", |_, p| patch(p, 36, &[0, 0, 0, 0])),
        ("16b-l1-size-huge", |_, p| patch(p, 36, &[0, 0x10, 0, 1])),
        ("32-extension-too-large", |_, p| {
            patch(p, 0x74, &[0x7f, 0xff, 0xff, 0xff])
        }),
        ("32-bad-magic", |_, p| patch(p, 0, &[0, 0, 0, 0])),
        ("33-reftable-offset-0", |_, p| patch(p, 48, &be(0))),
        ("33-l1-offset-0", |_, p| patch(p, 40, &be(0))),
        ("40-extra-cluster-past-refblock", |_, p| {
            // Refcount 1 for a cluster past EOF is never compared.
            patch(p, 0x20000 + 2 * 20, &[0, 1]);
        }),
    ]
}

/// Snapshot cases: base image plus `qemu-img snapshot -c snap1`, then data
/// rewritten so the snapshot owns clusters of its own.
fn snap_cases() -> Vec<(&'static str, Setup)> {
    vec![
        ("s-clean", |_, _| {}),
        ("s-incomplete-extra", |_, p| {
            let t = read64(p, 64);
            patch(p, t + 36, &[0, 0, 0, 8]);
        }),
        ("s-extra-too-big", |_, p| {
            let t = read64(p, 64);
            patch(p, t + 36, &[0, 0, 8, 0]);
        }),
        ("s-l1-unaligned", |_, p| {
            let t = read64(p, 64);
            let l1 = read64(p, t);
            patch(p, t, &be(l1 + 0x200));
        }),
        ("s-l1-too-large", |_, p| {
            let t = read64(p, 64);
            patch(p, t + 8, &[0, 0x50, 0, 0]);
        }),
        ("s-table-offset-unaligned", |_, p| {
            let t = read64(p, 64);
            patch(p, 64, &be(t + 0x200));
        }),
        ("s-too-many", |_, p| patch(p, 60, &[0, 1, 0, 1])),
        ("s-second-entry-zero", |_, p| patch(p, 60, &[0, 0, 0, 2])),
        ("s-data-refcount-1", |_, p| {
            // Shared data cluster 6 (active + snapshot) refcount 2 → 1.
            patch(p, 0x2000c, &[0, 1]);
        }),
        // The snapshot's own L2 table (the active one was copied on the
        // write after the snapshot): entry 0 maps snapshot-only data,
        // entries 1 and 16 data shared with the active image.
        ("s-l2-reserved", |_, p| {
            let l2 = snap_l2(p);
            patch(p, l2 + 8, &be(read64(p, l2 + 8) | 1 << 56));
        }),
        ("s-l2-unaligned", |_, p| {
            let l2 = snap_l2(p);
            patch(p, l2, &be(read64(p, l2) + 0x200));
        }),
        ("s-l2-beyond-eof", |_, p| {
            let l2 = snap_l2(p);
            patch(p, l2 + 128, &be(1 << 63 | 0x100_0000));
        }),
        ("s-l2-to-refblock", |_, p| {
            let l2 = snap_l2(p);
            patch(p, l2, &be(1 << 63 | refblock_of(p)));
        }),
        ("s-l1-entry-reserved", |_, p| {
            let l1 = snap_l1(p);
            patch(p, l1, &be(read64(p, l1) | 1));
        }),
        ("s-l1-entry-beyond-eof", |_, p| {
            patch(p, snap_l1(p), &be(1 << 63 | 0x100_0000))
        }),
    ]
}

/// The first snapshot's L1 table.
fn snap_l1(p: &Path) -> u64 {
    read64(p, read64(p, 64))
}

/// The first snapshot's first L2 table.
fn snap_l2(p: &Path) -> u64 {
    read64(p, snap_l1(p)) & MASK
}

/// Snapshot taken with no write after it: active and snapshot share every
/// L2 table (refcount 2).
fn shared_base(dir: &Path) {
    base(dir);
    must(dir, "qemu-img", &["snapshot", "-c", "snap1", "t.qcow2"]);
}

/// A corrupt entry in an L2 table the active image and a snapshot share:
/// repaired once, lost in both views.
#[test]
fn check_matches_qemu_img_on_shared_l2_cases() {
    run_cases(
        shared_base,
        vec![
            ("sh-l2-beyond-eof", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 16, &be(0x100_0000));
            }),
            ("sh-l2-reserved", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 8, &be(read64(p, l2 + 8) | 1 << 56));
            }),
            ("sh-l2-to-l1", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 16, &be(read64(p, 40)));
            }),
        ],
    );
}

fn snap_base(dir: &Path) {
    base(dir);
    must(dir, "qemu-img", &["snapshot", "-c", "snap1", "t.qcow2"]);
    must(dir, "qemu-io", &["-c", "write -P 0xdd 0 64k", "t.qcow2"]);
}

/// Cases qemu-img finds clean (the rest must not be).
const EXPECT_CLEAN: &[&str] = &[
    "clean",
    "22-dirty",
    "23-corrupt",
    "30-unknown-compat",
    "31-unknown-autoclear",
    "40-extra-cluster-past-refblock",
    "x-bit0-ignored",
];

/// Cases where zcow deliberately differs from qemu-img, with the reason; the
/// test asserts zcow's outcome instead ([`assert_outcome`]).
/// Key: (case, mode). Value: why.
const SAFER: &[(&str, &[Mode], &str)] = &[
    ("06-reftable-unaligned", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img -r leaks writes the corrupt bit and -r all fails writing refblocks; zcow never writes the corrupt bit and rebuilds"),
    ("07-reftable-reserved", &[Mode::All, Mode::AllJson],
     "qemu-img's rebuild trips its overlap check and marks the image corrupt; zcow's rebuild succeeds"),
    ("08-refblock-beyond-eof", &[Mode::All, Mode::AllJson],
     "qemu-img grows the file to wherever the garbage pointer says (16 MiB here); zcow rebuilds the refcount structure instead"),
    ("11-l2-beyond-eof", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the entry pointing past the end of the file (not clean); zcow drops the mapping, reports the range lost and ends clean"),
    ("12-l2-unaligned-data", &[Mode::All, Mode::AllJson],
     "qemu-img raises the refcount of a neighbouring cluster and clears COPIED on an innocent entry; zcow drops the mapping, reports the range lost and ends clean"),
    ("14-l2-reserved", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the reserved bit (not clean); zcow clears it and ends clean"),
    ("15-l1-reserved", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the reserved bit (not clean); zcow clears it and ends clean"),
    ("16-l1-unaligned", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img repairs on the basis of garbage parsed as an L2 table; zcow -r leaks frees nothing while the walk is incomplete, -r all drops the L1 entry (range reported lost) and ends clean"),
    ("17-l1-beyond-eof", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "zcow -r leaks keeps the lost L2 table and its data (the walk is incomplete); -r all drops the L1 entry, reports the range lost and ends clean"),
    ("20-l2-to-refblock", &[Mode::All, Mode::AllJson],
     "qemu-img rebuilds and leaves guest data aliasing the old refblock; zcow copies the cluster for the guest entry (range reported lost) and ends clean"),
    ("21-l2-to-l1", &[Mode::All, Mode::AllJson],
     "qemu-img raises the refcount and reports clean while guest data aliases the active L1; zcow copies the cluster for the guest entry (range reported lost)"),
    ("23-corrupt", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "same result; listed because qemu-img may rewrite the whole header"),
    ("16b-l1-size-huge", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img repairs on the basis of data parsed as L1/L2 tables; zcow -r all sets l1_size to what the disk needs and ends clean"),
    ("33-reftable-offset-0", &[Mode::All, Mode::AllJson],
     "qemu-img grows the file to 4 GiB for garbage refblock pointers read from the header; zcow rebuilds the refcount structure elsewhere"),
    ("33-l1-offset-0", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img frees the real L1, L2 and data clusters (all guest data lost); zcow -r leaks keeps them, -r all finds the real L1 table among the unreferenced clusters and names it (nothing lost)"),
    ("44-overflow-1bit", &[Mode::All, Mode::AllJson],
     "qemu-img sets COPIED on both entries sharing the overflowed cluster (a guest write then overwrites shared data in place); zcow gives the second entry a copy"),
    ("s-l1-unaligned", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img frees every cluster only the broken snapshot uses; zcow -r leaks keeps them, -r all drops the unlocatable snapshot (reported lost)"),
    ("s-l1-too-large", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img frees the snapshot's clusters then trips its overlap check (corrupt bit); zcow -r all sets the snapshot's l1_size to what its disk needs, keeping it"),
    ("s-l2-reserved", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the reserved bit in the snapshot's L2 table (not clean); zcow clears it and ends clean"),
    ("s-l2-unaligned", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img raises a neighbouring cluster's refcount; zcow -r leaks frees nothing while an entry's data cannot be located, -r all drops the snapshot's mapping (reported lost in the snapshot) and ends clean"),
    ("s-l2-beyond-eof", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img -r leaks lowers the refcount of the data the snapshot shared (its entry now points past the end of the file) and -r all leaves the entry; zcow -r leaks frees nothing while an entry's data cannot be located, -r all drops it (reported lost in the snapshot) and ends clean"),
    ("s-l2-to-refblock", &[Mode::All, Mode::AllJson],
     "qemu-img rebuilds and leaves the snapshot's data aliasing the old refblock; zcow gives the snapshot a copy of the cluster and ends clean"),
    ("s-l1-entry-reserved", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the reserved bit in the snapshot's L1 table; zcow clears it and ends clean"),
    ("s-l1-entry-beyond-eof", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img frees the clusters only the snapshot's lost L2 table used; zcow -r leaks keeps them, -r all drops the snapshot's L1 entry (reported lost in the snapshot) and ends clean"),
    ("sh-l2-beyond-eof", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the shared entry pointing past the end of the file; zcow drops it once (lost in the active image and the snapshot) and ends clean"),
    ("sh-l2-reserved", &[Mode::All, Mode::AllJson],
     "qemu-img leaves the reserved bit in the shared L2 table; zcow clears it and ends clean"),
    ("sh-l2-to-l1", &[Mode::All, Mode::AllJson],
     "qemu-img raises the refcount of the active L1 to hide the aliasing; zcow gives the shared entry a copy with both references"),
    ("40-compressed-copied", &[Mode::All, Mode::AllJson],
     "qemu-img leaves COPIED set on the compressed entry (not clean); zcow clears it and ends clean"),
    ("c-past-eof", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img -r leaks lowers the shared compressed cluster's refcount and -r all leaves the entry pointing past the end of the file; zcow -r leaks frees nothing while an entry's data cannot be located, -r all drops it (reported lost) and ends clean"),
    ("c-to-refblock", &[Mode::All, Mode::AllJson],
     "qemu-img counts the refblock as compressed data and hides the aliasing; zcow drops the entry, whose data does not decompress there (reported lost)"),
    ("c-sector-count-impossible", &[Mode::Leaks, Mode::All, Mode::AllJson],
     "qemu-img -r leaks lowers the refcount of the cluster the entry still uses, and -r all leaves the range running past the end of the file; zcow -r leaks frees nothing, -r all shortens the sector count to the stream, which decompresses (nothing lost)"),
    ("s-too-many", &[Mode::All, Mode::AllJson],
     "qemu-img tries to repair 65534 garbage entries and marks the image corrupt; zcow's result differs"),
];

/// Cases zcow must refuse to repair: the image stays byte-identical.
const REFUSED: &[&str] = &[];

/// The corrupted image before any repair (a fresh copy of `src` with the
/// case's patch).
fn qp_before(src: &Path, setup: Setup) -> Vec<u8> {
    let (d, p) = copy_to_scratch(src);
    setup(d.path(), &p);
    std::fs::read(&p).unwrap()
}

/// Guest ranges zcow reported lost (`zcow: Lost guest bytes A-B: why`).
fn lost_ranges(extra: &[String], snap: Option<&str>) -> Vec<(u64, u64)> {
    extra
        .iter()
        .filter_map(|l| l.strip_prefix("zcow: Lost guest bytes "))
        .filter_map(|l| {
            let r = l.split(':').next()?;
            // `A-B of snapshot ID (NAME)` for a snapshot's view.
            let (r, of) = match r.split_once(" of ") {
                Some((r, s)) => (r, Some(s)),
                None => (r, None),
            };
            if of != snap {
                return None;
            }
            let (a, b) = r.split_once('-')?;
            let p = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
            Some((p(a)?, p(b)? + 1))
        })
        .collect()
}

/// What a SAFER case must show after zcow's run in `mode` on `dir/t.qcow2`:
/// with `-r all`, a consistent image by `qemu-img check` (or, for a case
/// zcow refuses, the image byte-identical to before); with `-r leaks`, no
/// more corruptions than before. Whenever the result is consistent, every
/// guest byte outside the ranges zcow reported lost reads as in the
/// uncorrupted image `src`.
fn assert_outcome(
    name: &str,
    src: &Path,
    before: &[u8],
    dir: &Path,
    mode: Mode,
    extra: &[String],
) -> Result<(), String> {
    let img = dir.join("t.qcow2");
    let now = std::fs::read(&img).unwrap();
    let after = qemu_check(dir, Mode::Plain);
    let refused = REFUSED.contains(&name);
    match mode {
        Mode::All | Mode::AllJson if after.code != 0 => {
            if !(refused && now == before) {
                return Err(format!(
                    "qemu-img check after zcow's repair: exit {}\n{}{}",
                    after.code, after.out, after.err
                ));
            }
            return Ok(());
        }
        Mode::Leaks if after.code == 2 => {
            let count = |s: &str| {
                s.lines()
                    .find_map(|l| l.strip_suffix(" errors were found on the image."))
                    .and_then(|n| n.trim().parse::<i64>().ok())
                    .unwrap_or(0)
            };
            let (d0, p0) = copy_to_scratch(&img);
            std::fs::write(&p0, before).unwrap();
            let first = qemu_check(d0.path(), Mode::Plain);
            if count(&after.out) > count(&first.out) {
                return Err(format!(
                    "-r leaks left more corruptions: {} then {}",
                    first.out, after.out
                ));
            }
            return Ok(());
        }
        _ => {}
    }
    if after.code != 0 && after.code != 3 {
        return Ok(());
    }
    // Consistent: compare the guest view with the uncorrupted image, the
    // active image's and every snapshot's (`convert -l`).
    let raw = |p: &Path, out: &Path, snap: Option<&str>| {
        let mut args = vec!["convert".to_string()];
        if let Some(s) = snap {
            args.push("-l".into());
            args.push(format!("snapshot.name={s}"));
        }
        args.extend([
            "-O".into(),
            "raw".into(),
            p.to_str().unwrap().into(),
            out.to_str().unwrap().into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        must(p.parent().unwrap(), "qemu-img", &args);
        std::fs::read(out).unwrap()
    };
    let mut views: Vec<(Option<String>, Option<String>)> = vec![(None, None)];
    let (_, list, _) = sh(dir, "qemu-img", &["snapshot", "-l", src.to_str().unwrap()]);
    let (_, now_list, _) = sh(dir, "qemu-img", &["snapshot", "-l", img.to_str().unwrap()]);
    for l in list.lines().skip(2) {
        let mut f = l.split_whitespace();
        let (Some(id), Some(name)) = (f.next(), f.next()) else {
            continue;
        };
        let label = format!("snapshot {id} ({name})");
        if !now_list
            .lines()
            .skip(2)
            .any(|x| x.split_whitespace().nth(1) == Some(name))
        {
            // Dropped: only allowed when reported.
            if !extra
                .iter()
                .any(|x| x.starts_with("zcow: Lost ") && x.contains(&label))
            {
                return Err(format!("{label} is gone and not reported lost"));
            }
            continue;
        }
        views.push((Some(name.to_string()), Some(label)));
    }
    for (snap, label) in views {
        let lost = lost_ranges(extra, label.as_deref());
        let want = raw(src, &dir.join("want.raw"), snap.as_deref());
        let got = raw(&img, &dir.join("got.raw"), snap.as_deref());
        let view = label.as_deref().unwrap_or("the active image");
        if want.len() != got.len() {
            return Err(format!(
                "{view}: virtual size {} != {}",
                got.len(),
                want.len()
            ));
        }
        const CS: usize = 512;
        for (i, (a, b)) in got.chunks(CS).zip(want.chunks(CS)).enumerate() {
            let off = (i * CS) as u64;
            if a != b && !lost.iter().any(|&(s, e)| off >= s && off < e) {
                return Err(format!(
                    "{view}: guest bytes at 0x{off:x} differ from the uncorrupted image and are not reported lost (lost: {lost:x?})"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn safer_list_names_each_case_once() {
    let mut names: Vec<&str> = SAFER.iter().map(|x| x.0).collect();
    names.sort();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "a case is listed twice in SAFER");
}

fn safer(case: &str, mode: Mode) -> Option<&'static str> {
    SAFER
        .iter()
        .find(|(c, m, _)| *c == case && m.contains(&mode))
        .map(|x| x.2)
}

fn run_cases(make_base: fn(&Path), cases: Vec<(&'static str, Setup)>) {
    if !have_qemu() {
        eprintln!("qemu-img not installed: skipping");
        return;
    }
    let bdir = tempfile::tempdir().unwrap();
    make_base(bdir.path());
    let src = bdir.path().join("t.qcow2");
    let mut failures = Vec::new();
    for (name, setup) in cases {
        for mode in Mode::ALL {
            let (qd, qp) = copy_to_scratch(&src);
            setup(qd.path(), &qp);
            let (zd, zp) = copy_to_scratch(&src);
            setup(zd.path(), &zp);
            let q = qemu_check(qd.path(), mode);
            if mode == Mode::Plain {
                // Guard against a patch that silently does nothing.
                let clean = EXPECT_CLEAN.iter().any(|c| name.contains(c));
                assert_eq!(q.code == 0, clean, "{name}: qemu-img says {q:?}");
            }
            let (z, extra) = zcow_check(zd.path(), mode);
            if let Some(why) = safer(name, mode) {
                assert!(
                    !z.err.contains("Marking image as corrupt"),
                    "{name} {mode:?}: {why}"
                );
                if std::env::var("ZCOW_SHOW_SAFER").is_ok() {
                    eprintln!(
                        "SAFER {name} {mode:?}: exit {} qemu {}\n{}{}",
                        z.code,
                        q.code,
                        z.err,
                        extra.join("\n")
                    );
                }
                if let Err(e) =
                    assert_outcome(name, &src, &qp_before(&src, setup), zd.path(), mode, &extra)
                {
                    failures.push(format!("=== SAFER {name} {mode:?} ({why}): {e}"));
                }
                continue;
            }
            if q != z {
                failures.push(format!(
                    "=== {name} {mode:?}\n--- qemu ({})\n{}{}--- zcow ({})\n{}{}{}",
                    q.code,
                    q.out,
                    q.err,
                    z.code,
                    z.out,
                    z.err,
                    extra.join("\n")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn check_matches_qemu_img_on_reference_cases() {
    run_cases(base, cases());
}

#[test]
fn check_matches_qemu_img_on_snapshot_cases() {
    run_cases(snap_base, snap_cases());
}

/// Clean images of many shapes: every refcount width, v2, extended L2,
/// compressed, small clusters, preallocation.
#[test]
fn check_matches_qemu_img_on_clean_variants() {
    if !have_qemu() {
        return;
    }
    let variants: &[&str] = &[
        "refcount_bits=1",
        "refcount_bits=2",
        "refcount_bits=4",
        "refcount_bits=8",
        "refcount_bits=32",
        "refcount_bits=64",
        "compat=0.10",
        "extended_l2=on",
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=512",
        "preallocation=metadata",
        "lazy_refcounts=on",
    ];
    let mut failures = Vec::new();
    for v in variants {
        let d = tempfile::tempdir().unwrap();
        must(
            d.path(),
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", v, "t.qcow2", "16M"],
        );
        must(
            d.path(),
            "qemu-io",
            &[
                "-c",
                "write -P 0x11 0 100k",
                "-c",
                "write -P 0x22 3M 8k",
                "-c",
                "write -z 5M 64k",
                "t.qcow2",
            ],
        );
        for mode in [Mode::Plain, Mode::PlainJson] {
            let q = qemu_check(d.path(), mode);
            let (z, _) = zcow_check(d.path(), mode);
            if q != z {
                failures.push(format!("{v} {mode:?}\n{q:?}\n{z:?}"));
            }
        }
    }
    // Persistent bitmaps (directory, tables, data clusters).
    let d = tempfile::tempdir().unwrap();
    must(
        d.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "t.qcow2", "64M"],
    );
    must(d.path(), "qemu-img", &["bitmap", "--add", "t.qcow2", "b0"]);
    must(
        d.path(),
        "qemu-io",
        &[
            "-c",
            "write -P 0xaa 0 128k",
            "-c",
            "write 40M 64k",
            "t.qcow2",
        ],
    );
    must(d.path(), "qemu-img", &["bitmap", "--add", "t.qcow2", "b1"]);
    for mode in Mode::ALL {
        let (qd, _) = copy_to_scratch(&d.path().join("t.qcow2"));
        let (zd, _) = copy_to_scratch(&d.path().join("t.qcow2"));
        let q = qemu_check(qd.path(), mode);
        let (z, _) = zcow_check(zd.path(), mode);
        if q != z {
            failures.push(format!("bitmaps {mode:?}\n{q:?}\n{z:?}"));
        }
    }
    // Compressed image.
    let d = tempfile::tempdir().unwrap();
    must(
        d.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"],
    );
    must(
        d.path(),
        "qemu-io",
        &["-c", "write -P 0x33 0 200k", "a.qcow2"],
    );
    must(
        d.path(),
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "a.qcow2", "t.qcow2"],
    );
    for mode in [Mode::Plain, Mode::PlainJson] {
        let q = qemu_check(d.path(), mode);
        let (z, _) = zcow_check(d.path(), mode);
        if q != z {
            failures.push(format!("compressed {mode:?}\n{q:?}\n{z:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn l2_of(p: &Path) -> u64 {
    read64(p, read64(p, 40)) & MASK
}

fn refblock_of(p: &Path) -> u64 {
    read64(p, read64(p, 48)) & MASK
}

fn extl2_base(dir: &Path) {
    must(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "t.qcow2",
            "64M",
        ],
    );
    must(
        dir,
        "qemu-io",
        &[
            "-c",
            "write -P 0xaa 0 128k",
            "-c",
            "write -P 0xbb 1M 4k",
            "t.qcow2",
        ],
    );
}

#[test]
fn check_matches_qemu_img_on_extended_l2_cases() {
    run_cases(
        extl2_base,
        vec![
            ("x-clean", |_, _| {}),
            ("42-alloc-and-zero", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 8, &0x0000_0001_ffff_ffffu64.to_be_bytes());
            }),
            ("43-unallocated-with-alloc-bits", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 5 * 16 + 8, &1u64.to_be_bytes());
            }),
            ("x-bit0-ignored", |_, p| {
                let l2 = l2_of(p);
                let e = read64(p, l2);
                patch(p, l2, &(e | 1).to_be_bytes());
            }),
            ("x-unaligned-zero-alloc", |_, p| {
                // Preallocated (no alloc bits) entry at an unaligned offset.
                let l2 = l2_of(p);
                let e = read64(p, l2 + 16);
                patch(p, l2 + 16, &(e | 0x200).to_be_bytes());
                patch(p, l2 + 24, &0xffff_ffff_0000_0000u64.to_be_bytes());
            }),
        ],
    );
}

fn compressed_base(dir: &Path) {
    must(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "4M"],
    );
    must(dir, "qemu-io", &["-c", "write -P 0x33 0 256k", "a.qcow2"]);
    must(
        dir,
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "a.qcow2", "t.qcow2"],
    );
}

#[test]
fn check_matches_qemu_img_on_compressed_cases() {
    run_cases(
        compressed_base,
        vec![
            ("c-clean", |_, _| {}),
            ("40-compressed-copied", |_, p| {
                let l2 = l2_of(p);
                let e = read64(p, l2);
                patch(p, l2, &(e | 1 << 63).to_be_bytes());
            }),
            ("41-shared-compressed-refcount-low", |_, p| {
                let l2 = l2_of(p);
                let e = read64(p, l2);
                let host = (e & ((1u64 << 54) - 1)) >> 16;
                let rb = refblock_of(p);
                patch(p, rb + 2 * host, &[0, 1]);
            }),
            ("c-past-eof", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 8, &be(1 << 62 | 0x100_0000));
            }),
            ("c-to-refblock", |_, p| {
                let l2 = l2_of(p);
                patch(p, l2 + 8, &be(1 << 62 | refblock_of(p)));
            }),
            ("c-sector-count-impossible", |_, p| {
                // The stream is intact; its sector count runs a cluster
                // past the end of the file.
                let l2 = l2_of(p);
                patch(p, l2, &be(read64(p, l2) | 0xff << 54));
            }),
            ("c-compressed-leak", |_, p| {
                let l2 = l2_of(p);
                let e = read64(p, l2);
                let host = (e & ((1u64 << 54) - 1)) >> 16;
                let rb = refblock_of(p);
                patch(p, rb + 2 * host, &[0, 9]);
            }),
        ],
    );
}

fn rc1_base(dir: &Path) {
    must(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=1",
            "t.qcow2",
            "64M",
        ],
    );
    must(dir, "qemu-io", &["-c", "write -P 0xaa 0 128k", "t.qcow2"]);
}

fn rc2_base(dir: &Path) {
    must(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=2",
            "t.qcow2",
            "64M",
        ],
    );
    must(dir, "qemu-io", &["-c", "write -P 0xaa 0 128k", "t.qcow2"]);
}

#[test]
fn check_matches_qemu_img_on_refcount_width_cases() {
    let dup: Setup = |_, p| {
        let l2 = l2_of(p);
        let e = read64(p, l2);
        patch(p, l2 + 16, &(e & !(1 << 63)).to_be_bytes());
    };
    let leak: Setup = |_, p| {
        // An unreferenced cluster 20 with refcount 1, whatever the width.
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(21 << 16)
            .unwrap();
        let rb = refblock_of(p);
        let order = read32(p, 96);
        let mut block = std::fs::read(p).unwrap()[rb as usize..rb as usize + 65536].to_vec();
        zcow::format::refcount::set(&mut block, order, 20, 1);
        patch(p, rb, &block);
    };
    run_cases(rc1_base, vec![("44-overflow-1bit", dup), ("r1-leak", leak)]);
    run_cases(rc2_base, vec![("r2-shared", dup), ("r2-leak", leak)]);
}

fn lazy_crash_base(dir: &Path) {
    must(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "t.qcow2",
            "64M",
        ],
    );
    let _ = sh(
        dir,
        "qemu-io",
        &["-c", "write -P 0x5a 512 512", "-c", "sigraise 9", "t.qcow2"],
    );
}

#[test]
fn check_matches_qemu_img_on_lazy_refcount_crash() {
    run_cases(lazy_crash_base, vec![("27-lazy-crash", |_, _| {})]);
}

/// `-q` prints nothing on stdout (stderr items stay), like qemu-img.
#[test]
fn check_quiet_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    let p = d.path().join("t.qcow2");
    patch(&p, 0x2000a, &[0, 2]);
    let (code, out, err) = sh(d.path(), "qemu-img", &["check", "-q", "t.qcow2"]);
    let mut zo = Vec::new();
    let mut ze = Vec::new();
    let opts = zcow::check::CheckOptions {
        quiet: true,
        ..Mode::Plain.opts()
    };
    let zc = zcow::check::run_check(&p, &opts, &mut zo, &mut ze).unwrap();
    assert_eq!(
        (
            zc,
            String::from_utf8(zo).unwrap(),
            String::from_utf8(ze).unwrap()
        ),
        (code, out, err)
    );
    // Missing file.
    let (code, _, err) = sh(d.path(), "qemu-img", &["check", "nope.qcow2"]);
    let mut ze = Vec::new();
    let opts = zcow::check::CheckOptions {
        display_name: Some("nope.qcow2".into()),
        ..Default::default()
    };
    let zc = zcow::check::run_check(
        &d.path().join("nope.qcow2"),
        &opts,
        &mut Vec::new(),
        &mut ze,
    )
    .unwrap();
    assert_eq!(
        (zc, String::from_utf8(ze).unwrap()),
        (code, err.replace("qemu-img: ", "zcow-img: "))
    );
}

/// An image cut to 300 bytes: check reports it as qemu-img does (plain and
/// JSON), and zcow's `-r all` ends consistent by `qemu-img check`, saying
/// the whole disk was lost (its L1 table was cut off).
#[test]
fn check_image_cut_to_300_bytes() {
    if !have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    let src = d.path().join("t.qcow2");
    for mode in [Mode::Plain, Mode::PlainJson] {
        let (qd, qp) = copy_to_scratch(&src);
        set_len(&qp, 300);
        let (zd, zp) = copy_to_scratch(&src);
        set_len(&zp, 300);
        let q = qemu_check(qd.path(), mode);
        let (z, extra) = zcow_check(zd.path(), mode);
        assert_eq!(q, z, "{mode:?} {extra:?}");
        assert_eq!(z.code, 2);
    }
    let (zd, zp) = copy_to_scratch(&src);
    set_len(&zp, 300);
    let (z, extra) = zcow_check(zd.path(), Mode::All);
    assert_eq!(z.code, 0, "{z:?}");
    assert!(
        extra
            .iter()
            .any(|l| l.starts_with("zcow: Lost guest bytes 0x0-0x3ffffff:")),
        "{extra:?}"
    );
    assert_eq!(qemu_check(zd.path(), Mode::Plain).code, 0);
}
