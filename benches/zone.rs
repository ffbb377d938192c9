//! Zone engine benchmark: zoned qcow2 vs plain qcow2 vs raw file, same
//! workloads in one run. `cargo bench --bench zone` prints a Markdown table
//! (docs/benchmarks.md keeps the numbers). Files go to $ZCOW_BENCH_DIR
//! (default /dev/shm: tmpfs takes disk writeback noise out, so the numbers
//! compare the software paths). Each cell is the median of 3 runs, with the
//! three kinds interleaved.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcow::device::BlockDevice;
use zcow::engine::{Engine, Qcow2ZoneStore};
use zcow::format::create::{create, CreateOptions};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{OpenOptions, Qcow2};
use zcow::raw::RawDevice;
use zcow::storage::FileStorage;

const ZONE: u64 = 256 << 20;
const DISK: u64 = 8 << 30;
const STREAM: u64 = 256 << 20; // bytes per writer
const CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Zoned,
    Plain,
    Raw,
}

fn make(dir: &Path, kind: Kind) -> (PathBuf, Arc<dyn BlockDevice>) {
    let p = dir.join(match kind {
        Kind::Zoned => "zoned.qcow2",
        Kind::Plain => "plain.qcow2",
        Kind::Raw => "disk.raw",
    });
    let _ = std::fs::remove_file(&p);
    if kind == Kind::Raw {
        let st = FileStorage::create(&p).unwrap();
        zcow::storage::Storage::set_len(&st, DISK).unwrap();
        return (p, Arc::new(RawDevice::new(Arc::new(st), false).unwrap()));
    }
    let st = FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: DISK,
            zoned: (kind == Kind::Zoned).then(|| ZonedCreateOptions {
                zone_size: Some(ZONE),
                max_append_bytes: Some(1 << 20),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
    let dev: Arc<dyn BlockDevice> = if kind == Kind::Zoned {
        Arc::new(Engine::open(Arc::new(Qcow2ZoneStore::new(img).unwrap())).unwrap())
    } else {
        Arc::new(img)
    };
    (p, dev)
}

/// `writers` threads, each streaming STREAM bytes into its own zone-sized
/// region (at the wp for zoned devices), then one flush. MiB/s.
fn seq_write(dir: &Path, kind: Kind, writers: u64, append: bool) -> f64 {
    let (_p, dev) = make(dir, kind);
    let buf = Arc::new(vec![0x5au8; CHUNK]);
    let t = Instant::now();
    let hs: Vec<_> = (0..writers)
        .map(|w| {
            let dev = dev.clone();
            let buf = buf.clone();
            std::thread::spawn(move || {
                let base = w * ZONE;
                let mut off = 0;
                while off < STREAM {
                    let zone = base + (off / ZONE) * ZONE * writers;
                    let at = zone + off % ZONE;
                    if append && kind == Kind::Zoned {
                        dev.zone_append(zone, &buf, false).unwrap();
                    } else {
                        dev.write(at, &buf, false).unwrap();
                    }
                    off += CHUNK as u64;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    dev.flush().unwrap();
    (writers * STREAM) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

/// Mean latency of 4 KiB sequential writes (µs), no flush between.
fn lat_4k(dir: &Path, kind: Kind) -> f64 {
    let (_p, dev) = make(dir, kind);
    let buf = vec![0x33u8; 4096];
    let n = 20000u64;
    let t = Instant::now();
    for i in 0..n {
        dev.write(i * 4096, &buf, false).unwrap();
    }
    let e = t.elapsed();
    dev.flush().unwrap();
    e.as_secs_f64() * 1e6 / n as f64
}

fn million_zones(dir: &Path) -> (Duration, Duration, Duration) {
    let p = dir.join("million.qcow2");
    let _ = std::fs::remove_file(&p);
    let st = FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: (1 << 20) * 65536,
            cluster_size: 65536,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(65536),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    // Open: image + engine (power-cycle derivation of 1M zone states).
    let t = Instant::now();
    let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
    let eng = Engine::open(Arc::new(Qcow2ZoneStore::new(img).unwrap())).unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    let r = eng.report(0, 1 << 20).unwrap();
    let report = t.elapsed();
    assert_eq!(r.len(), 1 << 20);
    // The same through the CLI path (persistent view).
    let t = Instant::now();
    let (_, z) = zcow::img::zone::report(&p, 0, None, &zcow::progress::Progress::hidden()).unwrap();
    let cli = t.elapsed();
    assert_eq!(z.len(), 1 << 20);
    (open, report, cli)
}

/// Per-column median of three runs.
fn median3(mut f: impl FnMut() -> [f64; 3]) -> [f64; 3] {
    let runs = [f(), f(), f()];
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut v = [runs[0][c], runs[1][c], runs[2][c]];
        v.sort_by(|a, b| a.total_cmp(b));
        *o = v[1];
    }
    out
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`:
    // only `cargo bench` does the (long) measurement.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = std::env::var("ZCOW_BENCH_DIR").unwrap_or_else(|_| {
        if Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            "/var/tmp".into()
        }
    });
    let d = tempfile::tempdir_in(base).unwrap();
    let dir = d.path();
    println!("| workload | zoned qcow2 | plain qcow2 | raw | zoned / plain |");
    println!("|---|---|---|---|---|");
    for (name, writers, append) in [
        ("sequential write, 1 writer (MiB/s)", 1, false),
        ("sequential write, 4 writers on 4 zones (MiB/s)", 4, false),
        (
            "zone append, 1 writer (MiB/s; others: plain write)",
            1,
            true,
        ),
        (
            "zone append, 4 writers on 4 zones (MiB/s; others: plain write)",
            4,
            true,
        ),
    ] {
        let m = median3(|| {
            [
                seq_write(dir, Kind::Zoned, writers, append),
                seq_write(dir, Kind::Plain, writers, append),
                seq_write(dir, Kind::Raw, writers, append),
            ]
        });
        let (z, p, r) = (m[0], m[1], m[2]);
        println!("| {name} | {z:.0} | {p:.0} | {r:.0} | {:.2} |", z / p);
    }
    let m = median3(|| {
        [
            lat_4k(dir, Kind::Zoned),
            lat_4k(dir, Kind::Plain),
            lat_4k(dir, Kind::Raw),
        ]
    });
    let (z, p, r) = (m[0], m[1], m[2]);
    println!(
        "| 4 KiB write latency (µs, mean) | {z:.1} | {p:.1} | {r:.1} | {:.2} |",
        z / p
    );
    let (open, report, cli) = million_zones(dir);
    println!();
    println!("| 1,048,576 zones | time |");
    println!("|---|---|");
    println!("| open (image + engine) | {:.3} s |", open.as_secs_f64());
    println!(
        "| engine zone report of all zones | {:.3} s |",
        report.as_secs_f64()
    );
    println!(
        "| `zcow-img zone report` path (open + decode + descriptors) | {:.3} s |",
        cli.as_secs_f64()
    );
}
