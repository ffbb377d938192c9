//! Crash simulation of compressed writes: power loss at every storage write
//! of seeded workloads mixing compressed writes (packed into shared host
//! clusters), normal overwrites, zeroing, discards and flushes. Every crash
//! state must open, hold every byte flushed before the crash, and pass
//! `qemu-img check` with at worst leaks.

mod common;
use common::*;
use std::sync::Arc;
use zcow::format::create::{create, CreateOptions};
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::{FaultConfig, FaultStorage, MemStorage};

const SIZE: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Whole clusters written compressed: (first cluster, clusters, seed).
    Compressed(u64, u64, u8),
    Write(u64, u64, u8),
    Zero(u64, u64),
    Discard(u64, u64),
    Flush,
}

/// Cluster contents that compress (runs of a few bytes) or, for seeds
/// divisible by 7, do not (then the cluster is stored uncompressed).
fn cluster_data(seed: u8, len: usize) -> Vec<u8> {
    if seed % 7 == 0 {
        let mut r = Rng::seeded(seed as u64);
        (0..len).map(|_| r.below(256) as u8).collect()
    } else {
        (0..len)
            .map(|i| seed.wrapping_add((i / 24) as u8 % 5))
            .collect()
    }
}

fn workload(seed: u64, n: usize, cs: u64) -> Vec<Op> {
    let clusters = SIZE / cs;
    let mut r = Rng::seeded(seed);
    (0..n)
        .map(|_| match r.below(12) {
            0..=5 => {
                let c = r.below(clusters);
                let k = (1 + r.below(6)).min(clusters - c);
                Op::Compressed(c, k, 1 + r.below(250) as u8)
            }
            6 | 7 => {
                let off = r.below(SIZE);
                let len = (1 + r.below(3 * cs)).min(SIZE - off);
                Op::Write(off, len, 1 + r.below(250) as u8)
            }
            8 => {
                let off = r.below(SIZE);
                Op::Zero(off, (1 + r.below(4 * cs)).min(SIZE - off))
            }
            9 => {
                let off = r.below(SIZE);
                Op::Discard(off, (1 + r.below(4 * cs)).min(SIZE - off))
            }
            _ => Op::Flush,
        })
        .collect()
}

fn base_image(cluster_size: u64, refcount_bits: u32, zstd: bool) -> Vec<u8> {
    let m = MemStorage::new();
    create(
        &m,
        &CreateOptions {
            size: SIZE,
            cluster_size,
            refcount_bits,
            compression_type: zstd as u8,
            ..Default::default()
        },
    )
    .unwrap();
    m.to_vec()
}

/// Run `ops` until power is lost at storage write `cut`: the storage, the
/// guest contents as of the last completed flush, and the bytes touched
/// after it.
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
        let (r, range): (_, Option<(u64, Vec<u8>)>) = match *op {
            Op::Compressed(c, k, p) => {
                let mut data = Vec::new();
                for j in 0..k {
                    data.extend(cluster_data(p.wrapping_add(j as u8), cs as usize));
                }
                (img.write_compressed(c * cs, &data), Some((c * cs, data)))
            }
            Op::Write(o, l, p) => {
                let d = vec![p; l as usize];
                (img.write(o, &d), Some((o, d)))
            }
            Op::Zero(o, l) => (img.write_zeroes(o, l), Some((o, vec![0; l as usize]))),
            Op::Discard(o, l) => {
                let a = o.div_ceil(cs) * cs;
                let b = (o + l) / cs * cs;
                (
                    img.discard(o, l),
                    (a < b).then(|| (a, vec![0; (b - a) as usize])),
                )
            }
            Op::Flush => (img.flush(), None),
        };
        // An op that was cut may have reached the disk partly.
        if let Some((o, d)) = &range {
            for t in &mut touched[*o as usize..*o as usize + d.len()] {
                *t = true;
            }
        }
        if r.is_err() {
            break;
        }
        match (op, range) {
            (Op::Flush, _) => {
                durable = current.clone();
                touched.fill(false);
            }
            (_, Some((o, d))) => current[o as usize..o as usize + d.len()].copy_from_slice(&d),
            _ => {}
        }
    }
    std::mem::forget(img); // power is gone: no flush on drop
    (st, durable, touched)
}

#[test]
fn power_loss_during_compressed_writes_leaves_no_corruption() {
    let qemu = have("qemu-img");
    let d = tmp();
    let mut states = 0u64;
    let mut compressed_seen = 0usize;
    for (seed, cs, bits, zstd) in [
        (1u64, 4096u64, 16u32, false),
        (2, 512, 16, false),
        (3, 4096, 2, true),
        (4, 65536, 16, true),
    ] {
        let base = base_image(cs, bits, zstd);
        let ops = workload(seed, 20, cs);
        // Count the writes of an uncut run, and make sure it did compress.
        let (full, _, _) = run_until_cut(&base, &ops, u64::MAX, cs);
        let total = full.write_count();
        compressed_seen += ops
            .iter()
            .filter(|o| matches!(o, Op::Compressed(..)))
            .count();
        for cut in 0..=total {
            let (st, durable, touched) = run_until_cut(&base, &ops, cut, cs);
            let variants = crash_variants(st.pending_lengths().len());
            for (vi, (keep, torn)) in variants.into_iter().enumerate() {
                let bytes = st.crash_state(&keep, torn);
                // qemu-img on a sample keeps the run short; zcow's own
                // open+read checks every state.
                let q = qemu && vi % 7 == 0 && cut % 4 == 0;
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
    assert!(compressed_seen > 20, "{compressed_seen} compressed writes");
    assert!(states > 1000, "only {states} crash states");
}

/// A clean run of the same workloads: the image `qemu-img check` finds
/// without leaks, holds compressed clusters that share host clusters, and
/// reads back in QEMU as zcow wrote it.
#[test]
fn compressed_workloads_end_clean_in_qemu() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    for (seed, cs, bits, zstd) in [
        (1u64, 4096u64, 16u32, false),
        (2, 512, 16, false),
        (3, 4096, 2, true),
        (4, 65536, 16, true),
    ] {
        let base = base_image(cs, bits, zstd);
        let ops = workload(seed, 30, cs);
        let st = Arc::new(MemStorage::from_bytes(base));
        let img = Qcow2::open(st.clone(), &OpenOptions::default()).unwrap();
        let mut want = vec![0u8; SIZE as usize];
        for op in &ops {
            match *op {
                Op::Compressed(c, k, p) => {
                    let mut data = Vec::new();
                    for j in 0..k {
                        data.extend(cluster_data(p.wrapping_add(j as u8), cs as usize));
                    }
                    img.write_compressed(c * cs, &data).unwrap();
                    want[(c * cs) as usize..(c * cs) as usize + data.len()].copy_from_slice(&data);
                }
                Op::Write(o, l, p) => {
                    img.write(o, &vec![p; l as usize]).unwrap();
                    want[o as usize..(o + l) as usize].fill(p);
                }
                Op::Zero(o, l) => {
                    img.write_zeroes(o, l).unwrap();
                    want[o as usize..(o + l) as usize].fill(0);
                }
                Op::Discard(o, l) => {
                    img.discard(o, l).unwrap();
                    let a = o.div_ceil(cs) * cs;
                    let b = (o + l) / cs * cs;
                    if a < b {
                        want[a as usize..b as usize].fill(0);
                    }
                }
                Op::Flush => img.flush().unwrap(),
            }
        }
        img.flush().unwrap();
        drop(img);
        let p = d.path().join(format!("w{seed}.qcow2"));
        std::fs::write(&p, st.to_vec()).unwrap();
        let o = run("qemu-img", &["check", s(&p)]);
        let t = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "seed {seed}: {t}");
        assert!(
            t.contains("compressed clusters") && !t.contains(" 0.00% compressed"),
            "{t}"
        );
        let back = d.path().join("back.raw");
        ok("qemu-img", &["convert", "-O", "raw", s(&p), s(&back)]);
        assert!(
            std::fs::read(&back).unwrap() == want,
            "seed {seed}: contents differ"
        );
    }
}
