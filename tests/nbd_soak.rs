//! Bounded soak (8 connections × 16 requests in flight, mixed sizes,
//! content verified) and a crash test (SIGKILL under load: everything
//! acknowledged before a completed FLUSH reads back).

mod common_nbd;
#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use common_nbd::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zcow::nbd::client::{Address, ClientOptions, NbdClient};
use zcow::nbd::ServerConfig;
use zcow::raw::RawDevice;

const REGION: u64 = 512 << 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn soak_8_connections_16_in_flight() {
    let conns = 8u64;
    let depth = 16u64;
    let size = conns * depth * REGION;
    let dev = Arc::new(RawDevice::memory(size).unwrap());
    let srv = InProc::start(
        dev.clone(),
        ServerConfig {
            max_connections: 0,
            ..ServerConfig::default()
        },
    );
    let addr = Address::Tcp {
        host: "127.0.0.1".into(),
        port: srv.port,
    };
    let run_for = Duration::from_secs(4);
    let ops = Mutex::new(0u64);
    let mut rss_mid = 0;
    std::thread::scope(|s| {
        for c in 0..conns {
            let addr = addr.clone();
            let ops = &ops;
            s.spawn(move || {
                let ext = c % 2 == 0;
                let client = NbdClient::connect(
                    &addr,
                    &ClientOptions {
                        extended_headers: ext,
                        ..ClientOptions::default()
                    },
                )
                .unwrap();
                std::thread::scope(|s2| {
                    for t in 0..depth {
                        let client = &client;
                        s2.spawn(move || {
                            let base = (c * depth + t) * REGION;
                            let mut shadow = vec![0u8; REGION as usize];
                            let mut rng = Rng(base | 1);
                            let start = Instant::now();
                            let mut n = 0u64;
                            while start.elapsed() < run_for {
                                let len = [512u64, 4096, 65536, 1 + rng.below(100_000)]
                                    [rng.below(4) as usize];
                                let off = rng.below(REGION - len);
                                match rng.below(10) {
                                    0..=3 => {
                                        let d = pattern(rng.next(), len as usize);
                                        client.write(base + off, &d, rng.below(8) == 0).unwrap();
                                        shadow[off as usize..(off + len) as usize]
                                            .copy_from_slice(&d);
                                    }
                                    4 => {
                                        client.write_zeroes(base + off, len, 0).unwrap();
                                        shadow[off as usize..(off + len) as usize].fill(0);
                                    }
                                    5 => client.flush().unwrap(),
                                    _ => {
                                        let mut b = vec![0u8; len as usize];
                                        client.read(base + off, &mut b).unwrap();
                                        assert!(
                                            b == shadow[off as usize..(off + len) as usize],
                                            "conn {c} thread {t}: mismatch at {off}"
                                        );
                                    }
                                }
                                n += 1;
                            }
                            let mut b = vec![0u8; REGION as usize];
                            client.read(base, &mut b).unwrap();
                            assert!(b == shadow, "final content of region {c}/{t}");
                            *ops.lock().unwrap() += n;
                        });
                    }
                });
            });
        }
        std::thread::sleep(run_for / 2);
        rss_mid = rss_kib();
    });
    let rss_end = rss_kib();
    let n = *ops.lock().unwrap();
    eprintln!("soak: {n} requests, RSS mid {rss_mid} KiB, end {rss_end} KiB");
    assert!(n > 1000, "only {n} requests completed");
    assert!(
        rss_end < rss_mid + 256 * 1024,
        "memory grew from {rss_mid} to {rss_end} KiB"
    );
}

#[test]
fn crash_sigkill_under_load_keeps_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(16 * REGION).unwrap();
    drop(f);
    let srv = ServerProc::start(&img, &["-e", "0"]);
    let addr = Address::Tcp {
        host: "127.0.0.1".into(),
        port: srv.port,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Each writer records (offset, seed, len) of writes it knows are durable.
    let durable: Arc<Mutex<Vec<(u64, u64, usize)>>> = Arc::default();
    let mut handles = Vec::new();
    for w in 0..4u64 {
        let addr = addr.clone();
        let stop = stop.clone();
        let durable = durable.clone();
        handles.push(std::thread::spawn(move || {
            let Ok(client) = NbdClient::connect(&addr, &ClientOptions::default()) else {
                return;
            };
            let mut rng = Rng(w * 7 + 1);
            let mut pending = Vec::new();
            let mut slot = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Each write goes to a fresh 64 KiB slot of this writer's
                // four regions, so later writes never overwrite earlier ones.
                let off = w * 4 * REGION + (slot % (4 * REGION / 65536)) * 65536;
                slot += 1;
                if slot > 4 * REGION / 65536 {
                    break;
                }
                let seed = rng.next();
                let len = 4096 + rng.below(60000) as usize;
                if client.write(off, &pattern(seed, len), false).is_err() {
                    return;
                }
                pending.push((off, seed, len));
                if rng.below(4) == 0 {
                    if client.flush().is_err() {
                        return;
                    }
                    durable.lock().unwrap().append(&mut pending);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut srv = srv;
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let bytes = std::fs::read(&img).unwrap();
    let d = durable.lock().unwrap();
    assert!(!d.is_empty(), "nothing was flushed before the kill");
    for (off, seed, len) in d.iter() {
        assert!(
            bytes[*off as usize..*off as usize + len] == pattern(*seed, *len)[..],
            "flushed write at {off} lost"
        );
    }
    // The image is still served fine afterwards.
    let srv2 = ServerProc::start(&img, &[]);
    let dev = zcow::nbd::connect_uri(&srv2.uri()).unwrap();
    let (off, seed, len) = d[0];
    let mut b = vec![0u8; len];
    dev.read(off, &mut b).unwrap();
    assert_eq!(b, pattern(seed, len));
}

/// Zone append throughput over NBD at depth 1/8/32 into a zoned qcow2
/// image, next to plain sequential writes into a plain qcow2 image (files
/// in /dev/shm, so this measures zcow rather than the disk), alternating
/// rounds (`ZCOW_BENCH_ROUNDS`, default 5). Run with
/// `cargo test --release --test nbd_soak -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_zone_append_vs_sequential_write() {
    use std::sync::atomic::AtomicU64;
    const ZONE: u64 = 64 << 20;
    const CHUNK: usize = 64 << 10;
    // CPU seconds of this process (client and server threads both).
    let cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        s(u.ru_utime) + s(u.ru_stime)
    };
    // (MiB/s of wall time, MiB per CPU second)
    let run = |dev: Arc<dyn zcow::device::BlockDevice>, depth: usize, append: bool| -> (f64, f64) {
        let srv = InProc::start(
            dev,
            ServerConfig {
                max_connections: 0,
                ..ServerConfig::default()
            },
        );
        let client = NbdClient::connect(
            &Address::Tcp {
                host: "127.0.0.1".into(),
                port: srv.port,
            },
            &ClientOptions::default(),
        )
        .unwrap();
        let next = AtomicU64::new(0);
        let data = pattern(1, CHUNK);
        let c0 = cpu();
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..depth {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let off = k * CHUNK as u64;
                    if off >= 4 * ZONE {
                        return;
                    }
                    if append {
                        client.zone_append(off / ZONE * ZONE, &data, false).unwrap();
                    } else {
                        client.write(off, &data, false).unwrap();
                    }
                });
            }
        });
        let mib = (4 * ZONE) as f64 / (1 << 20) as f64;
        (
            mib / t.elapsed().as_secs_f64(),
            mib / (cpu() - c0).max(1e-3),
        )
    };
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = |zoned: bool| -> Arc<dyn zcow::device::BlockDevice> {
        use zcow::format::create::{create, CreateOptions};
        let p = dir.path().join(if zoned { "z.qcow2" } else { "p.qcow2" });
        let st = zcow::storage::FileStorage::create(&p).unwrap();
        create(
            &st,
            &CreateOptions {
                size: 8 * ZONE,
                zoned: zoned.then(|| zcow::format::zoned::ZonedCreateOptions {
                    zone_size: Some(ZONE),
                    max_append_bytes: Some(1 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
        // The creating handle holds the image's write lock until closed.
        drop(st);
        zcow::open::open_device(&p, &zcow::open::OpenOptions::default()).unwrap()
    };
    // Alternating rounds, best of each: on a shared machine one run says
    // little (the other processes decide how much CPU each run gets).
    let rounds: usize = std::env::var("ZCOW_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for depth in [1, 8, 32] {
        let (mut zs, mut ws, mut ratios) = (vec![], vec![], vec![]);
        let (mut zc, mut wc) = (vec![], vec![]);
        for _ in 0..rounds {
            let z = run(image(true), depth, true);
            let w = run(image(false), depth, false);
            zs.push(z.0);
            ws.push(w.0);
            zc.push(z.1);
            wc.push(w.1);
            ratios.push(z.0 / w.0);
        }
        let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        ratios.sort_by(|a, b| a.total_cmp(b));
        eprintln!(
            "depth {depth:2}: zone append {:6.0} MiB/s, sequential write {:6.0} MiB/s (best of {rounds}), ratio of bests {:.2}, median pair ratio {:.2}; MiB per CPU second {:.0} vs {:.0} (best), ratio {:.2}",
            best(&zs),
            best(&ws),
            best(&zs) / best(&ws),
            ratios[ratios.len() / 2],
            best(&zc),
            best(&wc),
            best(&zc) / best(&wc)
        );
    }
}
