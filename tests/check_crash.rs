//! After a crash: a writer process (this test binary in child mode, using
//! the format library) appends to zones, resets and finishes them, and is
//! killed with SIGKILL at random points. Then `check` must find no
//! corruption (leaks allowed), `-r all` must make the image clean, and every
//! write completed before the writer's last flush must read back.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use zcow::check::{run_check, CheckOptions, RepairMode};
use zcow::format::create::{create, CreateOptions};
use zcow::format::wp::WpEntry;
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::FileStorage;

const ZONE: u64 = 1 << 20;
const CHUNK: u64 = 64 << 10;

fn check(p: &Path, repair: Option<RepairMode>) -> (i32, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let c = run_check(
        p,
        &CheckOptions {
            repair,
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    (
        c,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    )
}

/// Child: write forever. Log line per flushed write: `offset len byte`
/// (a reset logs `reset zone`).
fn writer(img: &Path, log: &Path, seed: u64) -> ! {
    let q = Qcow2::open_path(img, &OpenOptions::default()).unwrap();
    let mut logf = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    let mut pending = Vec::new();
    let mut i = seed;
    loop {
        i += 1;
        let zone = 1 + (i % 7) as u32;
        let wps = q.read_wp_entries().unwrap();
        let wp = wps[zone as usize].wp();
        let start = zone as u64 * ZONE;
        if i % 29 == 0 || wp + CHUNK > start + ZONE {
            // Reset. Logged (synced) before it starts: once it may have
            // reached the disk, the zone's older data may be gone.
            logf.write_all(format!("reset {zone}\n").as_bytes())
                .unwrap();
            logf.sync_all().unwrap();
            q.deallocate(start, ZONE).unwrap();
            q.write_wp_entries(zone, &[WpEntry::new(start, false)])
                .unwrap();
        } else if i % 31 == 0 {
            q.write_wp_entries(zone, &[WpEntry::new(start + ZONE, false)])
                .unwrap();
            pending.push(format!("finish {zone}"));
        } else {
            let b = (i % 251) as u8 + 1;
            q.write(wp, &vec![b; CHUNK as usize]).unwrap();
            q.write_wp_entries(zone, &[WpEntry::new(wp + CHUNK, false)])
                .unwrap();
            pending.push(format!("{wp} {CHUNK} {b}"));
        }
        if i % 3 == 0 {
            q.flush().unwrap();
            q.sync_file().unwrap();
            if !pending.is_empty() {
                // One write(2) per batch: `writeln!` would issue one per
                // formatted piece, and a kill between them tears a line.
                let batch: String = pending.drain(..).map(|l| l + "\n").collect();
                logf.write_all(batch.as_bytes()).unwrap();
            }
            logf.sync_all().unwrap();
        }
    }
}

/// A kill during a log append can leave a partial last line. It was never
/// synced, so it promised nothing: cut it off before the next writer
/// appends, or the two would run together into one bogus line.
fn drop_torn_tail(log: &Path) {
    let Ok(text) = std::fs::read(log) else {
        return;
    };
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < text.len() {
        let f = std::fs::OpenOptions::new().write(true).open(log).unwrap();
        f.set_len(keep as u64).unwrap();
    }
}

#[test]
fn check_after_crash() {
    if let (Ok(img), Ok(log), Ok(seed)) = (
        std::env::var("ZCOW_CRASH_IMG"),
        std::env::var("ZCOW_CRASH_LOG"),
        std::env::var("ZCOW_CRASH_SEED"),
    ) {
        writer(Path::new(&img), Path::new(&log), seed.parse().unwrap());
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("z.qcow2");
    let log = d.path().join("log");
    let st = FileStorage::create(&img).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 8 * ZONE,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(ZONE),
                conventional_zones: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    let mut leaky_rounds = 0;
    for round in 0..16u64 {
        drop_torn_tail(&log);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "check_after_crash",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ZCOW_CRASH_IMG", &img)
            .env("ZCOW_CRASH_LOG", &log)
            .env("ZCOW_CRASH_SEED", (round * 1000).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(40 + (round * 37) % 120));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let (c, out) = check(&img, None);
        if c == 3 {
            leaky_rounds += 1;
        }
        if c != 0 && c != 3 {
            failures.push(format!(
                "round {round}: check after the crash exit {c}\n{out}"
            ));
            break;
        }
        let (c, out) = check(&img, Some(RepairMode::All));
        if c != 0 {
            failures.push(format!("round {round}: repair exit {c}\n{out}"));
            break;
        }
        // Every flushed write whose zone was not reset later reads back.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut expect: Vec<(u64, u64, u8)> = Vec::new();
        // The kill may tear the last line: only complete lines count.
        for l in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let f: Vec<&str> = l.trim_end().split(' ').collect();
            match f[0] {
                "reset" => {
                    let z: u64 = f[1].parse().unwrap();
                    expect.retain(|e| e.0 / ZONE != z);
                }
                "finish" => {}
                _ => expect.push((
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )),
            }
        }
        let q = Qcow2::open_path(
            &img,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        for (off, len, b) in expect {
            let mut buf = vec![0u8; len as usize];
            q.read(off, &mut buf).unwrap();
            if buf.iter().any(|&x| x != b) {
                failures.push(format!("round {round}: data at {off:#x} lost after repair"));
                break;
            }
        }
    }
    let lines = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    eprintln!("{lines} flushed operations logged; {leaky_rounds} crashes left leaks");
    assert!(lines > 0, "the writer never flushed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
