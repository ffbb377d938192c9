//! Standard copy tools onto a zoned export served by zcow-nbd with the
//! default policy for zone-unaware clients: `qemu-img convert -n` (with and
//! without `-S 0` and `-W`) and `nbdcopy` load a sparse raw file, the data
//! reads back identical and every zone ends where its data ends. Also: the
//! advertised block sizes, the rejected-request log (rate-limited) and the
//! strict semantics zone-aware clients keep.

mod common_nbd;

use common_nbd::{free_port, need, ok, pattern, run};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zcow::open::{open_device, OpenOptions};
use zcow::zone::ZoneCond;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

/// Data runs of the source (everything else is a hole): whole zones, a
/// hole in the middle of a zone, holes at zone starts, zero tails.
const RUNS: &[(u64, u64)] = &[
    (0, 3 * MIB),
    (3 * MIB, 300 * KIB),
    (3 * MIB + 600 * KIB, 100 * KIB),
    (5 * MIB, 2 * MIB + 512 * KIB),
    (9 * MIB + 64 * KIB, 64 * KIB),
];

fn data_bytes() -> u64 {
    RUNS.iter().map(|r| r.1).sum()
}

/// A sparse raw file with [`RUNS`] of non-zero data.
fn sparse_source(path: &Path) -> Vec<u8> {
    let mut img = vec![0u8; SIZE as usize];
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    for (i, &(off, len)) in RUNS.iter().enumerate() {
        let mut d = pattern(i as u64 + 1, len as usize);
        for b in d.iter_mut() {
            *b |= 1;
        }
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&d).unwrap();
        img[off as usize..(off + len) as usize].copy_from_slice(&d);
    }
    img
}

/// A zcow-nbd process without `--trace` unless asked, killed by PID.
struct Srv {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Srv {
    fn start(image: &Path, extra: &[&str]) -> Srv {
        let port = free_port();
        let log = image.with_extension(format!("{port}.log"));
        let pid = image.with_extension(format!("{port}.pid"));
        let child = Command::new(common_nbd::bin())
            .args(["-t", "-p", &port.to_string(), "--pid-file"])
            .arg(&pid)
            .args(extra)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn zcow-nbd");
        let mut s = Srv { child, port, log };
        let t = Instant::now();
        while !pid.exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("zcow-nbd exited early ({st}): {}", s.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "zcow-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }
    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.port)
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGTERM and wait: the server flushes before it exits.
    fn stop(mut self) -> String {
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log_text()
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create_zoned(path: &Path, zone: &str, extra: &str) {
    let o = format!("zone.mode=host-managed,zone.size={zone}{extra}");
    ok(Command::new(env!("CARGO_BIN_EXE_zcow-img"))
        .args(["create", "-q", "-o", &o])
        .arg(path)
        .arg(SIZE.to_string()));
}

/// Write pointers the copy must leave: each zone ends where its data ends
/// (a zone without data stays EMPTY), rounded up to `gran` for a tool that
/// writes whole blocks (the zeroes after the data in the block are written
/// as data). With an active limit of `active` zones (0: none), every zone
/// with data but the last `active` ones is FULL: implicitly finished.
fn expected_wps(img: &[u8], zone: u64, active: usize, gran: u64) -> Vec<u64> {
    let n = SIZE / zone;
    let mut v: Vec<u64> = (0..n)
        .map(|z| {
            let s = z * zone;
            let d = &img[s as usize..(s + zone) as usize];
            s + d
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |p| (p as u64 + 1).next_multiple_of(gran).min(zone))
        })
        .collect();
    if active > 0 {
        let with_data: Vec<u64> = (0..n).filter(|&z| v[z as usize] > z * zone).collect();
        for &z in with_data.iter().rev().skip(active) {
            v[z as usize] = (z + 1) * zone;
        }
    }
    v
}

enum Tool<'a> {
    Convert(&'a [&'a str]),
    Nbdcopy,
}

/// Load the sparse source onto a fresh zoned export with `tool`, then check
/// the copy with `qemu-img compare`, a byte comparison of a read-back and
/// the zones' write pointers and conditions.
fn load(zone: &str, zone_bytes: u64, opts: &str, tool: Tool<'_>, full: bool, active: usize) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let img = dir.path().join("z.qcow2");
    let want = sparse_source(&src);
    create_zoned(&img, zone, opts);
    let srv = Srv::start(&img, &[]);
    let uri = srv.uri();
    let tool_kind = match tool {
        Tool::Convert(_) => Tool::Convert(&[]),
        Tool::Nbdcopy => Tool::Nbdcopy,
    };
    let mut cmd = match tool {
        Tool::Convert(args) => {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-n"])
                .args(args)
                .args(["-f", "raw", "-O", "raw"])
                .arg(&src)
                .arg(&uri);
            c
        }
        Tool::Nbdcopy => {
            let mut c = Command::new("nbdcopy");
            c.arg(&src).arg(&uri);
            c
        }
    };
    ok(&mut cmd);
    let cmp = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
        Duration::from_secs(60),
    );
    assert_eq!(
        cmp.status.code(),
        Some(0),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
    let back = dir.path().join("back.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&back));
    let mut got = Vec::new();
    std::fs::File::open(&back)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got == want, "read-back differs from the source");
    let log = srv.stop();
    assert!(
        !log.contains("failed"),
        "the server rejected requests:\n{log}"
    );

    let dev = open_device(
        &img,
        &OpenOptions {
            format: None,
            read_only: true,
            allow_backing: false,
        },
    )
    .unwrap();
    let zones = dev.zone_report(0, 1024).unwrap();
    let wps: Vec<u64> = zones.iter().map(|z| z.wp).collect();
    if full {
        // -S 0 writes every byte: every zone is FULL.
        assert!(zones.iter().all(|z| z.cond == ZoneCond::Full), "{zones:#?}");
    } else {
        // nbdcopy copies in requests of 256 KiB by default.
        let gran = if matches!(tool_kind, Tool::Nbdcopy) {
            256 * KIB
        } else {
            1
        };
        let exp = expected_wps(&want, zone_bytes, active, gran);
        if active > 0 && matches!(tool_kind, Tool::Nbdcopy) {
            // nbdcopy keeps many requests in flight, so which zones the
            // server finishes at the active limit depends on the order they
            // arrive in. What holds in any order: a zone without data stays
            // EMPTY, a zone with data ends at its data or is FULL, and no
            // more than `active` zones are left partly written.
            let ends = expected_wps(&want, zone_bytes, 0, gran);
            for (z, (&wp, &end)) in zones.iter().zip(wps.iter().zip(&ends)) {
                if end == z.start {
                    assert_eq!(wp, z.start, "zone {} has no data: {zones:#?}", z.index);
                } else {
                    assert!(
                        wp == end || wp == z.start + z.len,
                        "zone {}: wp {wp:#x}, data ends at {end:#x}: {zones:#?}",
                        z.index
                    );
                }
            }
            let partial = zones
                .iter()
                .filter(|z| z.wp != z.start && z.wp != z.start + z.len)
                .count();
            assert!(
                partial <= active,
                "{partial} zones left partly written: {zones:#?}"
            );
        } else {
            assert_eq!(wps, exp, "{zones:#?}");
        }
        for z in &zones {
            let c = if z.wp == z.start {
                ZoneCond::Empty
            } else if z.wp == z.start + z.len {
                ZoneCond::Full
            } else {
                ZoneCond::Closed
            };
            assert_eq!(z.cond, c, "zone {}", z.index);
        }
        // Zeroes at the write pointer advanced it without allocating
        // clusters: the image holds little more than the data.
        let used = std::fs::metadata(&img).unwrap().blocks() * 512;
        assert!(
            used < data_bytes() + 2 * MIB,
            "image uses {used} bytes for {} bytes of data",
            data_bytes()
        );
    }
}

fn peers() -> bool {
    need("qemu-img") && need("nbdcopy")
}

#[test]
fn convert_onto_1m_zones() {
    if !peers() {
        return;
    }
    load("1M", MIB, "", Tool::Convert(&[]), false, 0);
    load("1M", MIB, "", Tool::Convert(&["-S", "0"]), true, 0);
    // Out of order onto zones smaller than qemu-img's 2 MiB chunks: QEMU
    // holds back the second half of a chunk until the next chunk (ahead of
    // its zone's write pointer, waiting for that half) is answered, so the
    // server answers that one at once and applies it when the gap fills.
    // Several rounds, since the order the chunks arrive in varies.
    for _ in 0..3 {
        load("1M", MIB, "", Tool::Convert(&["-W"]), false, 0);
        load("1M", MIB, "", Tool::Convert(&["-W", "-S", "0"]), true, 0);
    }
}

#[test]
fn convert_onto_4m_zones() {
    if !peers() {
        return;
    }
    load("4M", 4 * MIB, "", Tool::Convert(&[]), false, 0);
    load("4M", 4 * MIB, "", Tool::Convert(&["-S", "0"]), true, 0);
    load("4M", 4 * MIB, "", Tool::Convert(&["-W"]), false, 0);
    load(
        "4M",
        4 * MIB,
        "",
        Tool::Convert(&["-W", "-S", "0"]),
        true,
        0,
    );
}

#[test]
fn nbdcopy_onto_1m_and_4m_zones() {
    if !peers() {
        return;
    }
    load("1M", MIB, "", Tool::Nbdcopy, false, 0);
    load("4M", 4 * MIB, "", Tool::Nbdcopy, false, 0);
}

#[test]
fn sequential_loaders_at_active_limit_one() {
    if !peers() {
        return;
    }
    let a = ",zone.max_active_zones=1";
    for (z, zb) in [("1M", MIB), ("4M", 4 * MIB)] {
        load(z, zb, a, Tool::Convert(&[]), false, 1);
        load(z, zb, a, Tool::Convert(&["-S", "0"]), true, 1);
        load(z, zb, a, Tool::Nbdcopy, false, 1);
    }
}

#[test]
fn loaders_with_open_zone_limits() {
    if !peers() {
        return;
    }
    // Open limit only: zones are implicitly closed, never finished.
    let o = ",zone.max_open_zones=1";
    for (z, zb) in [("1M", MIB), ("4M", 4 * MIB)] {
        load(z, zb, o, Tool::Convert(&[]), false, 0);
        // Not -W here: see docs/qemu.md ("Loading data") for why an
        // out-of-order loader can fail on small zones.
        load(z, zb, o, Tool::Nbdcopy, false, 0);
    }
    let oa = ",zone.max_open_zones=2,zone.max_active_zones=2";
    load("4M", 4 * MIB, oa, Tool::Convert(&[]), false, 2);
    load("1M", MIB, oa, Tool::Nbdcopy, false, 2);
}

#[test]
fn block_sizes_keep_clients_inside_zones() {
    if !need("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (zone, max) in [("1M", "1048576"), ("64M", "33554432")] {
        let img = dir.path().join(format!("z{zone}.qcow2"));
        let size = if zone == "64M" { 128 * MIB } else { SIZE };
        ok(Command::new(env!("CARGO_BIN_EXE_zcow-img"))
            .args(["create", "-q", "-o"])
            .arg(format!("zone.mode=host-managed,zone.size={zone}"))
            .arg(&img)
            .arg(size.to_string()));
        let srv = Srv::start(&img, &[]);
        let out = ok(Command::new("nbdinfo").args(["--json", &srv.uri()]));
        assert!(out.contains("\"block_size_minimum\": 512,"), "{out}");
        assert!(out.contains("\"block_size_preferred\": 4096,"), "{out}");
        assert!(
            out.contains(&format!("\"block_size_maximum\": {max},")),
            "{out}"
        );
    }
}

/// The unaware client's view of each rejected write, and the server's line
/// for it at the default log level.
#[test]
fn rejected_writes_are_logged_without_trace() {
    if !need("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("z.qcow2");
    create_zoned(&img, "1M", "");
    let srv = Srv::start(&img, &[]);
    let uri = srv.uri();
    ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 1M", &uri]));
    let cases = [
        // Ahead of the write pointer: waits for a gap filler that never
        // comes, then fails.
        ("write -P 2 2052k 4k", "Invalid argument"),
        // A FULL zone.
        ("write -P 2 0 4k", "No space left on device"),
        ("write -P 2 1M 4k", ""),
        // Below the write pointer.
        ("write -P 2 1M 4k", "Invalid argument"),
    ];
    for (c, errno) in cases {
        let out = run(
            Command::new("qemu-io").args(["-f", "raw", "-c", c, &uri]),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if errno.is_empty() {
            assert!(text.contains("wrote 4096/4096"), "{c}: {text}");
        } else {
            assert!(text.contains(errno), "{c}: {text}");
        }
    }
    let log = srv.stop();
    for want in [
        "zcow-nbd: conn 2: WRITE at 0x201000 length 0x1000 failed: EINVAL (Invalid argument): zone 2 (start 0x200000, EMPTY, wp 0x200000): write of 0x1000 bytes at 0x201000 is not at the write pointer (waited 5 s for the writes before it)",
        "zcow-nbd: conn 3: WRITE at 0x0 length 0x1000 failed: ENOSPC (No space left on device): zone 0 (start 0x0, FULL, wp 0x100000)",
        "zcow-nbd: conn 5: WRITE at 0x100000 length 0x1000 failed: EINVAL (Invalid argument): zone 1 (start 0x100000, ",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
    assert_eq!(log.lines().count(), 3, "{log}");
    // Nothing but rejections at the default level.
    assert!(!log.contains("cookie"), "{log}");
}

/// A write ahead of the write pointer without FUA is answered at once and
/// applied when the data before it comes; one whose gap never fills makes
/// the next FLUSH fail (once), and reads of it wait for it.
#[test]
fn writes_ahead_are_answered_then_applied() {
    if !need("qemu-io") || !common_nbd::need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("z.qcow2");
    create_zoned(&img, "1M", "");
    let srv = Srv::start(&img, &[]);
    let uri = srv.uri();
    // Write-back cache: no FUA. The second write fills the gap before the
    // first, which is then applied and reads back.
    let out = ok(Command::new("qemu-io").args([
        "-t",
        "writeback",
        "-f",
        "raw",
        "-c",
        "write -P 2 1028k 4k",
        "-c",
        "write -P 1 1M 4k",
        "-c",
        "read -P 2 1028k 4k",
        "-c",
        "read -P 1 1M 4k",
        "-c",
        "flush",
        &uri,
    ]));
    assert_eq!(out.matches("wrote 4096/4096").count(), 2, "{out}");
    assert_eq!(out.matches("read 4096/4096").count(), 2, "{out}");
    assert!(!out.contains("fail"), "{out}");
    // A gap that never fills: the write is answered, a read of it waits for
    // it and then finds the zone's zeroes, the next FLUSH fails with EIO and
    // the one after succeeds.
    let script = "\
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b'x' * 4096, 3 * 1048576 + 8192)
print('write ok')
t = time.monotonic()
print('read', h.pread(4096, 3 * 1048576 + 8192) == bytes(4096), time.monotonic() - t > 4)
try:
    h.flush()
    print('flush ok')
except nbd.Error as e:
    print('flush', e.errno)
h.flush()
print('flush ok')
";
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script, &uri]));
    assert_eq!(
        out, "write ok\nread True True\nflush EIO\nflush ok\n",
        "{out}"
    );
    let log = srv.stop();
    for want in [
        "zcow-nbd: conn 2: WRITE at 0x302000 length 0x1000 failed: EINVAL (Invalid argument): zone 3 (start 0x300000, EMPTY, wp 0x300000): write of 0x1000 bytes at 0x302000 is not at the write pointer (waited 5 s for the writes before it) (answered before it was applied: the next FLUSH fails)",
        "zcow-nbd: conn 2: FLUSH at 0x0 length 0x0 failed: EIO (Input/output error): 1 write(s) answered ahead of a zone's write pointer could not be applied: the data before them never came (see the log)",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
    assert_eq!(log.lines().count(), 2, "{log}");
    let dev = open_device(
        &img,
        &OpenOptions {
            format: None,
            read_only: true,
            allow_backing: false,
        },
    )
    .unwrap();
    let z = dev.zone_report(0, 4).unwrap();
    assert_eq!(z[1].wp, MIB + 8 * KIB, "{z:#?}");
    assert_eq!(z[3].wp, 3 * MIB, "{z:#?}");
    let mut back = vec![0u8; 8192];
    dev.read(MIB, &mut back).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 1) && back[4096..].iter().all(|&b| b == 2));
}

/// A client sending hundreds of bad writes gets a bounded log.
#[test]
fn rejected_request_log_is_rate_limited() {
    if !common_nbd::need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("z.qcow2");
    create_zoned(&img, "1M", "");
    let srv = Srv::start(&img, &[]);
    // Writes below the write pointer fail at once.
    let script = "\
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = b'x' * 4096
h.pwrite(buf, 3 * 1048576)
n = 0
for i in range(300):
    try:
        h.pwrite(buf, 3 * 1048576)
    except nbd.Error:
        n += 1
print(n)
";
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script, &srv.uri()]));
    assert_eq!(out.trim(), "300");
    let log = srv.stop();
    let lines = log.lines().filter(|l| l.contains("failed:")).count();
    assert!((20..60).contains(&lines), "{lines} lines:\n{log}");
    assert!(
        log.contains("more rejected requests not logged (rate limit)"),
        "{log}"
    );
}

/// Zone-aware clients keep the strict rules: zeroes spanning zones fail,
/// and zeroes at the write pointer up to the zone end advance it.
#[test]
fn aware_clients_keep_strict_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("z.qcow2");
    create_zoned(&img, "1M", "");
    let srv = Srv::start(&img, &[]);
    let dev = zcow::nbd::connect_uri(&srv.uri()).unwrap();
    assert!(dev.zone_geometry().is_some(), "the client negotiated zones");
    let e = dev
        .write_zeroes(0, 2 * MIB, Default::default())
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // A write crossing from zone 4 (at its wp) into zone 5 (empty).
    dev.write(4 * MIB, &[7u8; 4096], false).unwrap();
    let e = dev.write(4 * MIB + 4096, &vec![7u8; MIB as usize], false);
    assert_eq!(e.unwrap_err().errno(), libc::EINVAL);
    dev.write(MIB, &[5u8; 4096], false).unwrap();
    dev.write_zeroes(MIB + 4096, MIB - 4096, Default::default())
        .unwrap();
    let z = dev.zone_report(MIB, 1).unwrap()[0];
    assert_eq!((z.cond, z.wp), (ZoneCond::Full, 2 * MIB));
    drop(dev);
    // The same zeroes from an unaware client leave the zone where its data
    // ends.
    if need("qemu-io") {
        let uri = srv.uri();
        ok(Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 5 3M 4k",
            "-c",
            "write -z 3076k 1020k",
            "-c",
            "write -z 6M 1M",
            "-c",
            "write -P 6 7M 1020k",
            "-c",
            "write -P 6 8188k 8k",
            &uri,
        ]));
        let dev = zcow::nbd::connect_uri(&uri).unwrap();
        let z = dev.zone_report(3 * MIB, 6).unwrap();
        assert_eq!((z[0].cond, z[0].wp), (ZoneCond::ImpOpen, 3 * MIB + 4096));
        assert_eq!((z[3].cond, z[3].wp), (ZoneCond::Empty, 6 * MIB));
        // The crossing write was split into one part per zone.
        assert_eq!((z[4].cond, z[4].wp), (ZoneCond::Full, 8 * MIB));
        assert_eq!((z[5].cond, z[5].wp), (ZoneCond::ImpOpen, 8 * MIB + 4096));
    }
}
