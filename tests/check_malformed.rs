//! Malformed images never panic or hang check or repair: random byte
//! corruption of the metadata of real images (qemu-img made and zcow-made
//! zoned ones), each checked plainly and with `-r all` on a copy.

mod check_common;
use check_common::*;
use std::path::Path;
use std::time::{Duration, Instant};
use zcow::check::{run_check, CheckOptions, RepairMode};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn run(p: &Path, repair: Option<RepairMode>) -> i32 {
    let mut out = Vec::new();
    let mut err = Vec::new();
    run_check(
        p,
        &CheckOptions {
            repair,
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .unwrap()
}

fn fuzz(src: &Path, rounds: u32, seed: u64, qemu_agrees: bool, hot: &[(u64, u64)]) -> u32 {
    let data = std::fs::read(src).unwrap();
    // Metadata lives in the first clusters of these small images.
    let meta = data.len().min(0x60000) as u64;
    let mut rng = Rng(seed);
    let rounds: u32 = std::env::var("ZCOW_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rounds);
    let mut agreed = 0;
    for r in 0..rounds {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.qcow2");
        let mut img = data.clone();
        let flips = 1 + rng.below(8);
        for _ in 0..flips {
            // Half the flips hit the hot spots (header, extensions, the
            // first tables) when any were given.
            let at = if !hot.is_empty() && rng.below(2) == 0 {
                let (a, n) = hot[rng.below(hot.len() as u64) as usize];
                (a + rng.below(n)) as usize
            } else {
                rng.below(meta) as usize
            };
            match rng.below(4) {
                0 => img[at] ^= 1 << rng.below(8),
                1 => img[at] = rng.next() as u8,
                2 => {
                    // A plausible but wrong 64-bit pointer.
                    let at = at & !7;
                    if at + 8 <= img.len() {
                        let v = (rng.below(16) << 16) | rng.below(2) << 9 | rng.below(2) << 63;
                        img[at..at + 8].copy_from_slice(&v.to_be_bytes());
                    }
                }
                _ => img[at] = 0xff,
            }
        }
        std::fs::write(&p, &img).unwrap();
        let t = Instant::now();
        let c = std::panic::catch_unwind(|| run(&p, None));
        assert!(c.is_ok(), "round {r} seed {seed}: check panicked");
        let c2 = std::panic::catch_unwind(|| run(&p, Some(RepairMode::All)));
        assert!(c2.is_ok(), "round {r} seed {seed}: repair panicked");
        let c3 = std::panic::catch_unwind(|| run(&p, None));
        assert!(c3.is_ok(), "round {r} seed {seed}: re-check panicked");
        // A hang guard, not a speed target (those are benchmarks): a round
        // takes well under a second, so 60 s only trips on a hang or on
        // cost that grows without bound, even on a loaded CI machine.
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "round {r} seed {seed}: took {:?} (hang?)",
            t.elapsed()
        );
        let (c, c2, c3) = (c.unwrap(), c2.unwrap(), c3.unwrap());
        for code in [c, c2, c3] {
            assert!(
                [0, 1, 2, 3, 63].contains(&code),
                "round {r}: exit code {code}"
            );
        }
        if c2 == 0 {
            assert_eq!(
                c3, 0,
                "round {r} seed {seed}: repaired image not clean on re-check"
            );
        }
        if qemu_agrees && c2 == 0 {
            // What zcow repaired, qemu-img must find clean too.
            let (q, o, e) = sh(d.path(), "qemu-img", &["check", "t.qcow2"]);
            // Header validation is the format layer's (it accepts a few
            // headers qemu-img refuses); only the repair is judged here.
            if e.contains("Could not open") {
                continue;
            }
            assert_eq!(
                q, 0,
                "round {r} seed {seed}: qemu-img disagrees after repair\n{o}{e}"
            );
            agreed += 1;
        }
    }
    eprintln!("{agreed} repaired images confirmed clean by qemu-img");
    agreed
}

#[test]
fn check_malformed_qemu_images_never_panic() {
    if !have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    must(
        d.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "t.qcow2", "64M"],
    );
    must(
        d.path(),
        "qemu-io",
        &[
            "-c",
            "write -P 0xaa 0 128k",
            "-c",
            "write -P 0xbb 1M 64k",
            "t.qcow2",
        ],
    );
    must(d.path(), "qemu-img", &["snapshot", "-c", "s1", "t.qcow2"]);
    must(
        d.path(),
        "qemu-io",
        &["-c", "write -P 0xcc 0 64k", "t.qcow2"],
    );
    fuzz(
        &d.path().join("t.qcow2"),
        200,
        0x1234_5678,
        true,
        &[(0, 512)],
    );
}

#[test]
fn check_malformed_zoned_images_never_panic() {
    use zcow::format::create::{create, CreateOptions};
    use zcow::format::zoned::ZonedCreateOptions;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("z.qcow2");
    let st = zcow::storage::FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 64 << 20,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(8 << 20),
                conventional_zones: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let img = zcow::format::Qcow2::open_path(&p, &Default::default()).unwrap();
    img.write(0, &[7u8; 70000]).unwrap();
    img.write(8 << 20, &[8u8; 4096]).unwrap();
    img.flush().unwrap();
    drop(img);
    // The zoned extension body sits after the feature table; the WP array
    // follows the L1 cluster.
    let c0 = std::fs::read(&p).unwrap();
    let ext = c0
        .windows(4)
        .position(|w| w == [0x00, 0x7a, 0x62, 0x64])
        .unwrap() as u64;
    let wp = u64::from_be_bytes(c0[ext as usize + 56..ext as usize + 64].try_into().unwrap());
    fuzz(
        &p,
        150,
        0x9abc_def0,
        false,
        &[(ext, 64), (wp, 64), (0, 112)],
    );
}

#[test]
fn check_huge_declared_sizes_fail_cleanly() {
    if !have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    must(
        d.path(),
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "t.qcow2", "64M"],
    );
    let p = d.path().join("t.qcow2");
    // 32 MiB L1 at offset 0, every snapshot-table limit, a 2^55 data offset.
    patch(&p, 36, &0x0040_0000u32.to_be_bytes());
    patch(&p, 40, &0u64.to_be_bytes());
    patch(&p, 60, &0xffff_ffffu32.to_be_bytes());
    let t = Instant::now();
    let code = run(&p, None);
    assert_eq!(code, 1);
    assert!(t.elapsed() < Duration::from_secs(5));
}
