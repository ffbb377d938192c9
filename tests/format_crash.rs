//! Crash simulation of the format layer: power loss at every storage write
//! of seeded random workloads; every crash state must be a qcow2 image
//! without corruption (leaks allowed) whose flushed data reads back.

mod common;
use common::*;
use std::sync::Arc;
use zcow::format::create::{create, CreateOptions};
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::{FaultConfig, FaultStorage, MemStorage, Storage};

const SIZE: u64 = 2 << 20;

#[derive(Clone, Copy, Debug)]
enum Op {
    Write(u64, u64, u8),
    Zero(u64, u64),
    Discard(u64, u64),
    Flush,
}

fn workload(seed: u64, n: usize) -> Vec<Op> {
    let mut r = Rng::seeded(seed);
    (0..n)
        .map(|_| {
            let off = r.below(SIZE);
            let len = (1 + r.below(150_000)).min(SIZE - off);
            match r.below(10) {
                0..=5 => Op::Write(off, len, 1 + r.below(255) as u8),
                6 => Op::Zero(off, len),
                7 => Op::Discard(off, len),
                _ => Op::Flush,
            }
        })
        .collect()
}

fn base_image(cluster_size: u64) -> Vec<u8> {
    let m = MemStorage::new();
    create(
        &m,
        &CreateOptions {
            size: SIZE,
            cluster_size,
            refcount_bits: 16,
            ..Default::default()
        },
    )
    .unwrap();
    m.to_vec()
}

/// Run `ops` until power is lost at storage write `cut`. Returns the
/// storage, the guest contents as of the last completed flush, and which
/// bytes were touched after it.
fn run_until_cut(
    img_bytes: &[u8],
    ops: &[Op],
    cut: u64,
    cs: u64,
) -> (Arc<FaultStorage>, Vec<u8>, Vec<bool>) {
    let st = Arc::new(FaultStorage::new(
        img_bytes.to_vec(),
        FaultConfig {
            power_loss_at_write: Some(cut),
            ..Default::default()
        },
    ));
    let mut current = vec![0u8; SIZE as usize];
    let mut durable = current.clone();
    let mut touched = vec![false; SIZE as usize];
    let img = match Qcow2::open(
        st.clone(),
        &OpenOptions {
            l2_cache_tables: 2,
            refblock_cache_tables: 2,
            ..Default::default()
        },
    ) {
        Ok(i) => i,
        Err(_) => return (st, durable, touched),
    };
    for op in ops {
        let (r, range) = match *op {
            Op::Write(o, l, p) => (img.write(o, &vec![p; l as usize]), Some((o, l, Some(p)))),
            Op::Zero(o, l) => (img.write_zeroes(o, l), Some((o, l, None))),
            Op::Discard(o, l) => {
                let a = o.div_ceil(cs) * cs;
                let b = (o + l) / cs * cs;
                (img.discard(o, l), (a < b).then_some((a, b - a, None)))
            }
            Op::Flush => (img.flush(), None),
        };
        // An op that was cut may have reached the disk partly.
        if let Some((o, l, _)) = range {
            for t in &mut touched[o as usize..(o + l) as usize] {
                *t = true;
            }
        }
        if r.is_err() {
            break;
        }
        match (*op, range) {
            (Op::Flush, _) => {
                durable = current.clone();
                touched.fill(false);
            }
            (_, Some((o, l, p))) => current[o as usize..(o + l) as usize].fill(p.unwrap_or(0)),
            _ => {}
        }
    }
    std::mem::forget(img); // power is gone: no flush on drop
    (st, durable, touched)
}

#[test]
fn power_loss_at_every_write_leaves_no_corruption() {
    let qemu = have("qemu-img");
    let d = tmp();
    let mut states = 0u64;
    for (seed, cs) in [(1u64, 4096u64), (2, 65536), (3, 512), (4, 4096)] {
        let base = base_image(cs);
        let ops = workload(seed, 40);
        // Count the writes of an uncut run.
        let (full, _, _) = run_until_cut(&base, &ops, u64::MAX, cs);
        let total = full.write_count();
        for cut in 0..=total {
            let (st, durable, touched) = run_until_cut(&base, &ops, cut, cs);
            let variants = crash_variants(st.pending_lengths().len());
            for (vi, (keep, torn)) in variants.into_iter().enumerate() {
                let bytes = st.crash_state(&keep, torn);
                // qemu-img on a sample keeps the run short; zcow's own
                // open+read checks every state.
                let q = qemu && vi % 7 == 0 && cut % 3 == 0;
                verify_crash_state(
                    bytes,
                    &durable,
                    &touched,
                    d.path(),
                    q,
                    &format!("seed {seed} cut {cut} variant {vi}"),
                );
                states += 1;
            }
        }
    }
    eprintln!("crash states verified: {states}");
    assert!(states > 1000, "only {states} crash states");
}

#[test]
fn injected_errors_fail_cleanly_and_later_writes_work() {
    use zcow::storage::InjectedKind;
    let base = base_image(4096);
    for (i, kind) in [
        (0u64, InjectedKind::Eio),
        (1, InjectedKind::Enospc),
        (3, InjectedKind::Eio),
    ] {
        let st = Arc::new(FaultStorage::new(
            base.clone(),
            FaultConfig {
                fail_write: Some((i, kind)),
                ..Default::default()
            },
        ));
        let img = Qcow2::open(st.clone(), &OpenOptions::default()).unwrap();
        let mut failed = false;
        for k in 0..8u64 {
            let r = img
                .write(k * 70_000, &vec![k as u8 + 1; 70_000])
                .and_then(|_| img.flush());
            if let Err(e) = r {
                failed = true;
                assert!(e.to_string().contains("injected"), "{e}");
            }
        }
        assert!(failed);
        // After the error everything works again.
        img.write(0, &[7u8; 4096]).unwrap();
        img.flush().unwrap();
        let mut b = [0u8; 4096];
        img.read(0, &mut b).unwrap();
        assert_eq!(b, [7u8; 4096]);
        let _ = st.sync();
    }
}

/// Power loss at every write of a resize sequence (growing through several
/// L1 tables, shrinking back): each crash state opens, has one of the sizes
/// the sequence passed through, keeps the data flushed before it, and is
/// free of corruption for qemu-img.
#[test]
fn power_loss_while_resizing_leaves_no_corruption() {
    let qemu = have("qemu-img");
    let d = tmp();
    // 512-byte clusters: one L2 table maps 32 KiB, so 2 MiB needs 64 L1
    // entries and 8 MiB 256 (several L1 tables of growing size).
    let base = base_image(512);
    let run = |cut: u64| {
        let st = Arc::new(FaultStorage::new(
            base.clone(),
            FaultConfig {
                power_loss_at_write: Some(cut),
                ..Default::default()
            },
        ));
        let img = Qcow2::open(st.clone(), &OpenOptions::default()).unwrap();
        let steps = || -> zcow::format::Result<()> {
            img.write(0, &[0x5a; 64 << 10])?;
            img.flush()?;
            img.resize(8 << 20)?;
            img.write(7 << 20, &[0x6b; 4096])?;
            img.flush()?;
            img.resize(1 << 20)
        };
        let _ = steps();
        std::mem::forget(img);
        st
    };
    let total = run(u64::MAX).write_count();
    let mut states = 0;
    for cut in 0..=total {
        let st = run(cut);
        for (vi, (keep, torn)) in crash_variants(st.pending_lengths().len())
            .into_iter()
            .enumerate()
        {
            let bytes = st.crash_state(&keep, torn);
            let what = format!("cut {cut} variant {vi}");
            let img = Qcow2::open(
                Arc::new(MemStorage::from_bytes(bytes.clone())),
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{what}: crash state does not open: {e}"));
            assert!(
                [SIZE, 8 << 20, 1 << 20].contains(&img.size()),
                "{what}: size {}",
                img.size()
            );
            // The first flush happened before any resize write: once the
            // resize started, its data is durable.
            if img.size() != SIZE {
                let mut got = vec![0u8; 64 << 10];
                img.read(0, &mut got).unwrap();
                assert!(got.iter().all(|&b| b == 0x5a), "{what}: flushed data lost");
            }
            if qemu && vi % 5 == 0 && cut % 2 == 0 {
                let p = d.path().join("state.qcow2");
                std::fs::write(&p, &bytes).unwrap();
                let o = common::run("qemu-img", &["check", s(&p)]);
                assert!(
                    matches!(o.status.code(), Some(0) | Some(3)),
                    "{what}: qemu-img check found corruption:\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
            states += 1;
        }
    }
    eprintln!("resize crash states verified: {states}");
    assert!(states > 50, "only {states} crash states");
}
