//! zcow-nbd killed with SIGKILL under load from several clients, on plain
//! and zoned qcow2 images: `zcow-img check` finds no corruption (leaks are
//! allowed), `zcow-img repair` makes it clean, and every write acknowledged
//! before a completed FLUSH reads back.

mod common_nbd;
use common_nbd::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zcow::nbd::client::{Address, ClientOptions, NbdClient};

const ZONE: u64 = 1 << 20;
const WRITERS: u64 = 4;

fn zimg() -> String {
    bin().replace("zcow-nbd", "zcow-img")
}

/// Run one round: writers on their own zones (appends on zoned images,
/// sequential writes on plain ones), random FLUSHes, SIGKILL. Returns the
/// (offset, seed, len) of writes that a completed FLUSH covered.
fn round(img: &std::path::Path, zoned: bool, millis: u64) -> Vec<(u64, u64, usize)> {
    let srv = ServerProc::start(img, &["-e", "0"]);
    let addr = Address::Tcp {
        host: "127.0.0.1".into(),
        port: srv.port,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let durable: Arc<Mutex<Vec<(u64, u64, usize)>>> = Arc::default();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (addr, stop, durable) = (addr.clone(), stop.clone(), durable.clone());
            std::thread::spawn(move || {
                let Ok(c) = NbdClient::connect(&addr, &ClientOptions::default()) else {
                    return;
                };
                let mut pending = Vec::new();
                let mut seq = w * 1_000_000;
                // Zone 0 is conventional on the zoned image: start at 1.
                for z in (1 + w..16).step_by(WRITERS as usize) {
                    let start = z * ZONE;
                    let mut wp = start;
                    while wp + 65536 <= start + ZONE {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        seq += 1;
                        let len = 512 * (1 + (seq * 7919 % 128)) as usize;
                        let data = pattern(seq, len);
                        let at = if zoned {
                            match c.zone_append(start, &data, false) {
                                Ok(at) => at,
                                Err(_) => return,
                            }
                        } else {
                            if c.write(wp, &data, false).is_err() {
                                return;
                            }
                            wp
                        };
                        wp = at + len as u64;
                        pending.push((at, seq, len));
                        if seq % 5 == 0 {
                            if c.flush().is_err() {
                                return;
                            }
                            durable.lock().unwrap().append(&mut pending);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(millis));
    let mut srv = srv;
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let d = durable.lock().unwrap().clone();
    d
}

fn check_after_crash(img: &std::path::Path, durable: &[(u64, u64, usize)], what: &str) {
    let o = Command::new(zimg())
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{what}: {}", String::from_utf8_lossy(&o.stderr)));
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{what}: check found corruption: {j} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(j.get("corruptions").is_none(), "{what}: {j}");
    // Flushed data reads back (zoned: below the recovered write pointers).
    let dev = zcow::open::open_device(img, &zcow::open::OpenOptions::default()).unwrap();
    for &(off, seed, len) in durable {
        let mut b = vec![0u8; len];
        dev.read(off, &mut b).unwrap();
        assert!(
            b == pattern(seed, len),
            "{what}: flushed write at {off:#x} lost"
        );
    }
    drop(dev);
    // Repair leaves a clean image.
    let r = Command::new(zimg())
        .arg("repair")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let c = Command::new(zimg()).arg("check").arg(img).output().unwrap();
    assert_eq!(
        c.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&c.stdout)
    );
}

#[test]
fn sigkill_under_load_plain_and_zoned_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let mut flushed = 0;
    for (i, zoned) in [false, true, false, true, true, false]
        .into_iter()
        .enumerate()
    {
        let img = dir.path().join(format!("d{i}.qcow2"));
        let mut args = vec![
            "create".to_string(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
        ];
        if zoned {
            args.push("-o".into());
            args.push("zone.mode=host-managed,zone.size=1M,zone.conventional_zones=1,zone.max_append_bytes=64k".into());
        } else {
            args.push("-o".into());
            args.push("cluster_size=4k".into());
        }
        args.push(img.to_string_lossy().into());
        args.push("16M".into());
        assert!(Command::new(zimg()).args(&args).status().unwrap().success());
        let d = round(&img, zoned, 150 + 60 * i as u64);
        flushed += d.len();
        check_after_crash(&img, &d, &format!("round {i} zoned={zoned}"));
    }
    assert!(flushed > 0, "nothing was flushed before the kills");
}
