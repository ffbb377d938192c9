//! Zoned extension end to end: our client against the server exporting a
//! zoned qcow2 image through the real engine, plus unaware peers (qemu-io,
//! nbdinfo, python nbd) under both write policies.

mod common_nbd;

use common_nbd::*;
use std::process::Command;
use std::sync::Arc;
use zcow::device::{BlockDevice, DeviceError};
use zcow::nbd::client::{ClientOptions, NbdClient, NbdDevice};
use zcow::nbd::proto::*;
use zcow::nbd::{connect_uri, ServerConfig, ZonedWrites};
use zcow::zone::{ZoneCond, ZoneOp};

const MIB: u64 = 1 << 20;

fn zoned_dev() -> Arc<zcow::engine::Engine> {
    // 16 zones of 1 MiB, capacity 768 KiB, 2 conventional, append ≤ 64 KiB,
    // in a zoned qcow2 image (in memory) served through the engine.
    use zcow::format::create::{create, CreateOptions};
    use zcow::format::zoned::ZonedCreateOptions;
    let m = zcow::storage::MemStorage::new();
    create(
        &m,
        &CreateOptions {
            size: 16 * MIB,
            cluster_size: 65536,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(MIB),
                zone_capacity: Some(768 * 1024),
                conventional_zones: Some(2),
                max_append_bytes: Some(65536),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .expect("create zoned image");
    let img = zcow::format::Qcow2::open(Arc::new(m), &zcow::format::OpenOptions::default())
        .expect("open zoned image");
    let store = zcow::engine::Qcow2ZoneStore::new(img).expect("zoned store");
    Arc::new(zcow::engine::Engine::open(Arc::new(store)).expect("engine"))
}

fn cfg() -> ServerConfig {
    ServerConfig {
        max_connections: 0,
        ..ServerConfig::default()
    }
}

fn errno_of(e: DeviceError) -> i32 {
    match e {
        DeviceError::Remote { errno, .. } => errno,
        other => panic!("expected a server error, got {other}"),
    }
}

#[test]
fn zoned_client_geometry_report_and_commands() {
    let dev = zoned_dev();
    let srv = InProc::start(dev.clone(), cfg());
    let remote = connect_uri(&srv.uri()).expect("connect");
    assert_eq!(remote.zone_geometry(), dev.zone_geometry());
    assert_eq!(
        remote.zone_report(0, 64).unwrap(),
        dev.zone_report(0, 64).unwrap()
    );

    let z3 = 3 * MIB;
    let a = pattern(1, 64 * 1024);
    remote.write(z3, &a, false).expect("write at wp");
    // Not at the write pointer: EINVAL, nothing changes.
    assert_eq!(
        errno_of(remote.write(z3 + 128 * 1024, &a, false).unwrap_err()),
        libc::EINVAL
    );
    // Appends land at the wp, one after the other.
    let b = pattern(2, 8192);
    assert_eq!(remote.zone_append(z3, &b, false).unwrap(), z3 + 65536);
    assert_eq!(remote.zone_append(z3, &b, true).unwrap(), z3 + 65536 + 8192);
    let mut back = vec![0u8; 65536 + 8192];
    remote.read(z3, &mut back).unwrap();
    assert_eq!(&back[..65536], &a[..]);
    assert_eq!(&back[65536..], &b[..]);
    // Append errors: conventional zone (EINVAL), too long (EINVAL).
    assert_eq!(
        errno_of(remote.zone_append(0, &b, false).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(
            remote
                .zone_append(z3, &vec![0; 65536 + 512], false)
                .unwrap_err()
        ),
        libc::EINVAL
    );

    // Management.
    remote.zone_mgmt(ZoneOp::Open, 5 * MIB, MIB).unwrap();
    remote.zone_mgmt(ZoneOp::Close, z3, MIB).unwrap();
    remote.zone_mgmt(ZoneOp::Finish, 6 * MIB, 2 * MIB).unwrap();
    assert_eq!(
        errno_of(remote.zone_mgmt(ZoneOp::Open, 6 * MIB, MIB).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(remote.write(6 * MIB, &b, false).unwrap_err()),
        libc::ENOSPC
    );
    assert_eq!(
        errno_of(remote.zone_mgmt(ZoneOp::Open, 0, MIB).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(
            remote
                .zone_mgmt(ZoneOp::Open, 5 * MIB + 4096, MIB)
                .unwrap_err()
        ),
        libc::EINVAL
    );
    let zones = remote.zone_report(0, 64).unwrap();
    assert_eq!(zones, dev.zone_report(0, 64).unwrap());
    assert_eq!(zones[3].cond, ZoneCond::Closed);
    assert_eq!(zones[3].wp, z3 + 65536 + 2 * 8192);
    assert_eq!(zones[5].cond, ZoneCond::ExpOpen);
    assert_eq!(zones[6].cond, ZoneCond::Full);
    assert_eq!(zones[7].cond, ZoneCond::Full);
    // A report starting mid-device.
    assert_eq!(
        remote.zone_report(7 * MIB + 5, 3).unwrap(),
        dev.zone_report(7 * MIB, 3).unwrap()
    );

    // Reset one, then reset-all.
    remote.zone_mgmt(ZoneOp::Reset, z3, MIB).unwrap();
    remote.read(z3, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0));
    remote.zone_mgmt(ZoneOp::Reset, 0, 16 * MIB).unwrap();
    let zones = remote.zone_report(0, 64).unwrap();
    assert!(zones[2..]
        .iter()
        .all(|z| z.cond == ZoneCond::Empty && z.wp == z.start));
    assert!(
        srv.stats
            .zoned_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn zoned_commands_need_the_option_and_both_header_forms_work() {
    let dev = zoned_dev();
    let srv = InProc::start(dev.clone(), cfg());
    let addr = zcow::nbd::client::Address::Tcp {
        host: "127.0.0.1".into(),
        port: srv.port,
    };
    // Without X_ZONED: zone commands are unknown commands (EINVAL), the
    // connection survives, and no geometry is reported.
    let c = NbdClient::connect(
        &addr,
        &ClientOptions {
            zoned: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert!(c.info().zoned.is_none());
    let r = c
        .raw_command(CMD_X_ZONE_OPEN, 0, 3 * MIB, MIB, None)
        .unwrap();
    assert_eq!(r.map(|e| e.0), Some(NBD_EINVAL));
    assert_eq!(c.raw_command(CMD_FLUSH, 0, 0, 0, None).unwrap(), None);
    drop(c);
    // Structured replies only (no EH), zoned on.
    let c = NbdClient::connect(
        &addr,
        &ClientOptions {
            extended_headers: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.info().mode, ReplyMode::Structured);
    let z = c.info().zoned.expect("zoned info");
    assert_eq!(
        (z.zone_size, z.zone_capacity, z.nr_zones, z.max_append),
        (MIB, 768 * 1024, 16, 65536)
    );
    assert_eq!(z.flags & XZ_FLAG_APPEND, XZ_FLAG_APPEND);
    let d = NbdDevice::new(c, "t".into()).unwrap();
    assert_eq!(d.zone_geometry().unwrap().conventional_zones, 2);
    assert_eq!(
        d.zone_append(4 * MIB, &[7u8; 4096], false).unwrap(),
        4 * MIB
    );
    assert_eq!(d.zone_report(4 * MIB, 1).unwrap()[0].wp, 4 * MIB + 4096);
}

#[test]
fn zoned_pipelined_writes_keep_zone_order() {
    // 64 sequential writes to one zone issued from 16 threads in arrival
    // order must all succeed thanks to per-zone FIFO on the server.
    let dev = zoned_dev();
    let srv = InProc::start(dev.clone(), cfg());
    let remote = connect_uri(&srv.uri()).unwrap();
    let z = 8 * MIB;
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let rx = std::sync::Mutex::new(rx);
    for k in 0..48u64 {
        tx.send(k).unwrap();
    }
    drop(tx);
    // Appends from many threads: each gets a distinct contiguous range.
    let landed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let k = match rx.lock().unwrap().recv() {
                    Ok(k) => k,
                    Err(_) => return,
                };
                let data = vec![k as u8; 4096];
                let at = remote.zone_append(z, &data, false).unwrap();
                landed.lock().unwrap().push((at, k));
            });
        }
    });
    let mut landed = landed.into_inner().unwrap();
    landed.sort();
    for (i, (at, k)) in landed.iter().enumerate() {
        assert_eq!(*at, z + i as u64 * 4096);
        let mut b = vec![0u8; 4096];
        remote.read(*at, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == *k as u8));
    }
}

#[test]
fn zoned_unaware_qemu_io_strict_policy() {
    if !need("qemu-io") || !need("qemu-img") {
        return;
    }
    let dev = zoned_dev();
    let srv = InProc::start(dev.clone(), cfg());
    let uri = srv.uri();
    // In-order writes fill a sequential zone; a write not at the wp fails.
    let out = ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x11 2M 64k",
        "-c",
        "write -P 0x12 2112k 64k",
        "-c",
        "write -P 0x13 0 4k",
        &uri,
    ]));
    assert!(
        out.contains("wrote 65536/65536 bytes at offset 2162688"),
        "{out}"
    );
    let bad = run(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x14 3076k 4k", &uri]),
        std::time::Duration::from_secs(30),
    );
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("Invalid argument"), "{text}");
    ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x11 2M 64k",
        "-c",
        "read -P 0x12 2112k 64k",
        "-c",
        "read -P 0 3076k 4k",
        "-c",
        "read -P 0x13 0 4k",
        &uri,
    ]));
    // Sequential convert without -W into zone 4 works.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let mut data = pattern(9, 16 * MIB as usize);
    for (i, b) in data.iter_mut().enumerate() {
        // Only zone 4's first 512 KiB carry data; the rest stays zero so
        // qemu-img skips it.
        if !(4 * MIB as usize..4 * MIB as usize + 512 * 1024).contains(&i) {
            *b = 0;
        }
    }
    std::fs::write(&src, &data).unwrap();
    // With --target-is-zero, qemu-img convert -n skips the zero areas and
    // writes the data in order.
    ok(Command::new("qemu-img")
        .args([
            "convert",
            "-n",
            "--target-is-zero",
            "-f",
            "raw",
            "-O",
            "raw",
        ])
        .arg(&src)
        .arg(&uri));
    let mut back = vec![0u8; 512 * 1024];
    dev.read(4 * MIB, &mut back).unwrap();
    assert_eq!(
        &back[..],
        &data[4 * MIB as usize..4 * MIB as usize + 512 * 1024]
    );
    assert_eq!(
        dev.zone_report(4 * MIB, 1).unwrap()[0].wp,
        4 * MIB + 512 * 1024
    );
    // base:allocation shows the unwritten zone tail as zero.
    let map = ok(Command::new("qemu-img").args(["map", "-f", "raw", "--output=json", &uri]));
    let tail = map
        .lines()
        .find(|l| l.contains(&format!("\"start\": {},", 4 * MIB + 512 * 1024)))
        .unwrap_or_else(|| panic!("{map}"));
    assert!(
        tail.contains("\"zero\": true") && tail.contains("\"data\": false"),
        "{map}"
    );
}

#[test]
fn zoned_readonly_policy_for_unaware_clients() {
    if !need("nbdinfo") {
        return;
    }
    let dev = zoned_dev();
    let srv = InProc::start(
        dev.clone(),
        ServerConfig {
            zoned_writes: ZonedWrites::ReadOnly,
            ..cfg()
        },
    );
    let out = ok(Command::new("nbdinfo").arg(srv.uri()));
    assert!(out.contains("is_read_only: true"), "{out}");
    assert!(out.contains("x-zoned:state"), "{out}");
    // A zone-aware client may still write.
    let remote = connect_uri(&srv.uri()).unwrap();
    assert!(!remote.is_read_only());
    remote.write(2 * MIB, &[1u8; 4096], false).unwrap();
}

#[test]
fn zoned_state_context_via_nbdinfo_and_python() {
    if !need("nbdinfo") || !need_python_nbd() {
        return;
    }
    let dev = zoned_dev();
    dev.write(2 * MIB, &[5u8; 8192], false).unwrap();
    dev.zone_mgmt(ZoneOp::Finish, 3 * MIB, MIB).unwrap();
    let srv = InProc::start(dev.clone(), cfg());
    let out = ok(Command::new("nbdinfo")
        .arg("--map=x-zoned:state")
        .arg(srv.uri()));
    let rows: Vec<Vec<u64>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .take(3)
                .map(|x| x.parse().unwrap())
                .collect()
        })
        .collect();
    // Zone 0 (conventional, even), zone 1 (conventional, odd), zone 2:
    // written [2M, 2M+8K) IMP_OPEN, then empty to capacity, then beyond cap.
    assert_eq!(rows[0], vec![0, MIB, 0x10]);
    assert_eq!(rows[1], vec![MIB, MIB, 0x10 | 0x400]);
    assert_eq!(rows[2], vec![2 * MIB, 8192, 0x2 | 0x20 | 0x100]);
    assert_eq!(rows[3], vec![2 * MIB + 8192, 768 * 1024 - 8192, 0x2 | 0x20]);
    assert_eq!(
        rows[4],
        vec![2 * MIB + 768 * 1024, 256 * 1024, 0x2 | 0x20 | 0x200]
    );
    // Zone 3 finished: FULL, written to the capacity and beyond.
    assert_eq!(
        rows[5],
        vec![3 * MIB, 768 * 1024, 0xE | 0x20 | 0x100 | 0x400]
    );

    let script = format!(
        r#"
import nbd
h = nbd.NBD()
h.add_meta_context("x-zoned:state")
h.connect_uri("{}")
assert h.can_meta_context("x-zoned:state")
seen = []
def cb(meta, off, ents, err):
    if meta == "x-zoned:state":
        seen.extend(ents)
h.block_status({}, 0, cb)
pos = 0
for i in range(0, len(seen), 2):
    print(pos, seen[i], seen[i+1] & 0xf, (seen[i+1] >> 4) & 3, seen[i+1] & 0x100 != 0)
    pos += seen[i]
h.shutdown()
"#,
        srv.uri(),
        4 * MIB
    );
    let out = ok(Command::new("/usr/bin/python3").arg("-c").arg(script));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0 1048576 0 1 False");
    assert_eq!(lines[2], "2097152 8192 2 2 True");
    assert!(lines.contains(&"3145728 786432 14 2 True"), "{out}");
}

#[test]
fn zoned_wp_context_only_with_extended_headers() {
    let dev = zoned_dev();
    dev.write(2 * MIB, &[5u8; 8192], false).unwrap();
    dev.zone_mgmt(ZoneOp::Finish, 3 * MIB, MIB).unwrap();
    let srv = InProc::start(dev.clone(), cfg());
    let addr = zcow::nbd::client::Address::Tcp {
        host: "127.0.0.1".into(),
        port: srv.port,
    };
    let want = vec![CTX_X_ZONED_WP.to_string(), CTX_X_ZONED_STATE.to_string()];
    let c = NbdClient::connect(
        &addr,
        &ClientOptions {
            contexts: want.clone(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let id = c.context_id(CTX_X_ZONED_WP).expect("x-zoned:wp with EH");
    let r = c.block_status(MIB + 4096, 4 * MIB, false).unwrap();
    let wp = &r.iter().find(|x| x.0 == id).unwrap().1;
    assert_eq!(
        wp[..4],
        [(MIB - 4096, 0), (MIB, 8192), (MIB, MIB), (MIB, 0)]
    );
    drop(c);
    let c = NbdClient::connect(
        &addr,
        &ClientOptions {
            contexts: want,
            extended_headers: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert!(c.context_id(CTX_X_ZONED_WP).is_none());
    assert!(c.context_id(CTX_X_ZONED_STATE).is_some());
}

#[test]
fn zoned_conventional_random_writes_from_many_threads_read_back() {
    // Conventional zones take no zone ticket: 16 threads writing 4 KiB
    // blocks in shuffled order across both conventional zones (and across
    // their boundary) must each land where they were sent.
    let dev = zoned_dev();
    let srv = InProc::start(dev.clone(), cfg());
    let remote = connect_uri(&srv.uri()).unwrap();
    let blocks = 2 * MIB / 4096;
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= blocks {
                    return;
                }
                // A permutation of the blocks (37 is odd, blocks a power of 2).
                let b = (k * 37) % blocks;
                remote
                    .write(b * 4096, &vec![(b % 251) as u8 + 1; 4096], false)
                    .unwrap();
            });
        }
    });
    // A write spanning the two conventional zones.
    remote.write(MIB - 2048, &[0xee; 4096], false).unwrap();
    let mut all = vec![0u8; 2 * MIB as usize];
    remote.read(0, &mut all).unwrap();
    for b in 0..blocks {
        let got = &all[(b * 4096) as usize..((b + 1) * 4096) as usize];
        let want = (b % 251) as u8 + 1;
        for (i, &x) in got.iter().enumerate() {
            let at = b * 4096 + i as u64;
            let expect = if (MIB - 2048..MIB + 2048).contains(&at) {
                0xee
            } else {
                want
            };
            assert_eq!(x, expect, "byte at {at:#x}");
        }
    }
}
