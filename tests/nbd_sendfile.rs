//! Zero-copy read replies (`sendfile` from the image file): what real
//! clients read back equals the raw twin, for plain and zoned qcow2, with
//! structured and simple replies, holes, compressed clusters (which take
//! the buffered path) and zone tails past the write pointer; and reads
//! racing a discard or zone reset whose clusters are reused elsewhere never
//! see the other range's bytes.

mod common_nbd;

use common_nbd::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcow::device::BlockDevice;
use zcow::nbd::ServerConfig;
use zcow::open::{open_device, OpenOptions};
use zcow::zone::ZoneOp;

const MIB: u64 = 1 << 20;

fn open(img: &Path) -> Arc<dyn BlockDevice> {
    open_device(
        img,
        &OpenOptions {
            format: Some("qcow2".into()),
            ..Default::default()
        },
    )
    .expect("open image")
}

fn cfg() -> ServerConfig {
    ServerConfig {
        max_connections: 0,
        zero_copy: std::env::var_os("ZC_OFF").is_none(),
        ..ServerConfig::default()
    }
}

/// nbdcopy the export to a file and return its bytes.
fn nbdcopy_out(uri: &str, dir: &Path, extra: &[&str]) -> Vec<u8> {
    let out = dir.join("out.raw");
    let _ = std::fs::remove_file(&out);
    ok(Command::new("nbdcopy").args(extra).arg(uri).arg(&out));
    std::fs::read(&out).expect("read nbdcopy output")
}

fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}

/// Python libnbd reads with simple replies, and structured ones with the
/// DF flag, at the given (offset, len) pairs, compared with `raw`.
const PY_VARIANTS: &str = r#"
import nbd, sys
uri, raw = sys.argv[1], sys.argv[2]
want = open(raw, "rb").read()
reqs = [(int(a), int(b)) for a, b in (x.split(":") for x in sys.argv[3:])]
for structured in (False, True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    # DF is sent even though the server does not advertise it (it honours
    # it: one data chunk, no holes).
    h.set_strict_mode(0)
    h.connect_uri(uri)
    for off, n in reqs:
        flags = nbd.CMD_FLAG_DF if structured else 0
        got = h.pread(n, off, flags=flags)
        if got != want[off:off + n]:
            print("mismatch structured=%s at %d len %d" % (structured, off, n))
            sys.exit(1)
    h.shutdown()
print("ok")
"#;

fn py_variants(uri: &str, raw: &Path, reqs: &[(u64, u64)]) {
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", PY_VARIANTS, uri]).arg(raw);
    for (o, n) in reqs {
        c.arg(format!("{o}:{n}"));
    }
    let out = ok(&mut c);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn plain_qcow2_reads_match_raw_twin() {
    if !need("qemu-img") || !need("qemu-io") || !need("nbdcopy") || !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("twin.raw");
    let img = dir.path().join("disk.qcow2");
    let mut d = pattern(7, (32 * MIB) as usize);
    // A hole (unallocated in the qcow2 image) and a short zero run.
    d[(12 * MIB) as usize..(16 * MIB) as usize].fill(0);
    d[(20 * MIB) as usize..(20 * MIB + 4096) as usize].fill(0);
    std::fs::write(&raw, &d).unwrap();
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img));
    // Compressed clusters: the device cannot map them, the reply is read
    // into a buffer instead.
    ok(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -c -P 0x5a 13M 256k"])
        .arg(&img));
    ok(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 13M 256k"])
        .arg(&raw));
    let want = std::fs::read(&raw).unwrap();
    let srv = InProc::start(open(&img), cfg());
    let uri = srv.uri();
    same(&nbdcopy_out(&uri, dir.path(), &[]), &want, "nbdcopy");
    same(
        &nbdcopy_out(
            &uri,
            dir.path(),
            &["--connections=4", "--request-size=1048576"],
        ),
        &want,
        "nbdcopy, 4 connections, 1 MiB requests",
    );
    ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&raw)
        .arg(&uri));
    // Across the hole, the short zero run, the compressed clusters, the end.
    let reqs = [
        (11 * MIB, 2 * MIB),
        (20 * MIB - 64 * 1024, 256 * 1024),
        (13 * MIB - 4096, 512 * 1024),
        (32 * MIB - 96 * 1024, 96 * 1024),
        (3 * MIB + 512, 300 * 1024 + 7),
    ];
    py_variants(&uri, &raw, &reqs);
    let direct = srv.stats.zero_copy_replies.load(Ordering::Relaxed);
    assert!(direct > 0, "no read went out with sendfile");
}

#[test]
fn zoned_reads_match_written_data() {
    if !need("qemu-img") || !need("nbdcopy") || !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("zoned.qcow2");
    ok(Command::new(zcow_img()).args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=8M,zone.conventional_zones=1",
        img.to_str().unwrap(),
        "48M",
    ]));
    let dev = open(&img);
    let mut want = vec![0u8; (48 * MIB) as usize];
    // Conventional zone 0: scattered writes; zone 1 full; zone 2 to its
    // middle; zone 3 empty; zone 4 one odd length; zone 5 full.
    let fill = |want: &mut Vec<u8>, off: u64, len: u64, seed: u64| {
        let p = pattern(seed, len as usize);
        dev.write(off, &p, false).expect("write");
        want[off as usize..(off + len) as usize].copy_from_slice(&p);
    };
    fill(&mut want, MIB, 3 * MIB, 1);
    fill(&mut want, 6 * MIB + 4096, 8192, 2);
    fill(&mut want, 8 * MIB, 8 * MIB, 3);
    fill(&mut want, 16 * MIB, 4 * MIB + 4096, 4);
    fill(&mut want, 32 * MIB, 3 * MIB + 4096 * 3, 5);
    fill(&mut want, 40 * MIB, 8 * MIB, 6);
    dev.flush().unwrap();
    let raw = dir.path().join("want.raw");
    std::fs::write(&raw, &want).unwrap();
    let srv = InProc::start(dev, cfg());
    let uri = srv.uri();
    same(&nbdcopy_out(&uri, dir.path(), &[]), &want, "nbdcopy");
    same(
        &nbdcopy_out(
            &uri,
            dir.path(),
            &["--connections=4", "--request-size=2097152"],
        ),
        &want,
        "nbdcopy, 4 connections, 2 MiB requests",
    );
    ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&raw)
        .arg(&uri));
    let reqs = [
        (20 * MIB - 64 * 1024, 256 * 1024), // over zone 2's write pointer
        (35 * MIB, MIB),                    // zone 4's tail
        (7 * MIB, 2 * MIB),                 // crossing zones 0 and 1
        (24 * MIB, MIB),                    // empty zone
    ];
    py_variants(&uri, &raw, &reqs);
    assert!(srv.stats.zero_copy_replies.load(Ordering::Relaxed) > 0);
}

fn zcow_img() -> PathBuf {
    Path::new(bin()).with_file_name("zcow-img")
}

/// Reads `[off, off+len)` in 1 MiB pieces for `secs` seconds; every 4 KiB
/// block must be `want`'s or zeroes. Prints the counts.
const PY_RACE: &str = r#"
import nbd, sys, time, random
uri, wantf, off, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
want = open(wantf, "rb").read()
zero = bytes(4096)
h = nbd.NBD()
h.connect_uri(uri)
reads = zeros = datas = bad = 0
end = time.time() + secs
rnd = random.Random(1)
while time.time() < end:
    o = off + rnd.randrange(0, n - (1 << 20) + 1, 65536)
    got = h.pread(1 << 20, o)
    reads += 1
    for i in range(0, 1 << 20, 4096):
        b = got[i:i + 4096]
        w = want[o - off + i:o - off + i + 4096]
        if b == w:
            datas += 1
        elif b == zero:
            zeros += 1
        else:
            bad += 1
            if bad < 5:
                print("foreign bytes at %#x" % (o + i))
h.shutdown()
print("reads %d data %d zero %d bad %d" % (reads, datas, zeros, bad))
sys.exit(1 if bad else 0)
"#;

fn race(dev: Arc<dyn BlockDevice>, range: (u64, u64), want: &[u8], churn: impl Fn() + Send + Sync) {
    let dir = tempfile::tempdir().unwrap();
    let wantf = dir.path().join("want.raw");
    std::fs::write(&wantf, want).unwrap();
    let srv = InProc::start(dev, cfg());
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
                churn();
            }
        });
        let out = Command::new("/usr/bin/python3")
            .args(["-c", PY_RACE, &srv.uri()])
            .arg(&wantf)
            .args([range.0.to_string(), range.1.to_string(), "3".into()])
            .output()
            .expect("python3");
        stop.store(true, Ordering::Relaxed);
        out
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(text.contains("bad 0"), "{text}");
    assert!(srv.stats.zero_copy_replies.load(Ordering::Relaxed) > 0);
}

#[test]
fn plain_reads_racing_discard_and_cluster_reuse() {
    if !need("qemu-img") || !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M"));
    let dev = open(&img);
    let p1 = pattern(11, (4 * MIB) as usize);
    let p2 = pattern(12, (4 * MIB) as usize);
    dev.write(0, &p1, false).unwrap();
    dev.flush().unwrap();
    let d = dev.clone();
    let want = p1.clone();
    // [0, 4M) is discarded (its clusters freed and punched), [8M, 12M) is
    // written and takes those clusters, then it is the other way round.
    race(dev, (0, 4 * MIB), &want, move || {
        d.discard(0, 4 * MIB).unwrap();
        d.flush().unwrap();
        d.write(8 * MIB, &p2, false).unwrap();
        d.flush().unwrap();
        d.discard(8 * MIB, 4 * MIB).unwrap();
        d.flush().unwrap();
        d.write(0, &p1, false).unwrap();
        d.flush().unwrap();
    });
}

#[test]
fn zoned_reads_racing_zone_reset_and_reuse() {
    if !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("zoned.qcow2");
    ok(Command::new(zcow_img()).args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=4M",
        img.to_str().unwrap(),
        "32M",
    ]));
    let dev = open(&img);
    let p1 = pattern(21, (4 * MIB) as usize);
    let p3 = pattern(23, (4 * MIB) as usize);
    dev.write(0, &p1, false).unwrap();
    dev.flush().unwrap();
    let d = dev.clone();
    let want = p1.clone();
    // Zone 0 is reset (clusters freed) and zone 5 written (taking them),
    // then zone 5 is reset and zone 0 written again.
    race(dev, (0, 4 * MIB), &want, move || {
        d.zone_mgmt(ZoneOp::Reset, 0, 4 * MIB).unwrap();
        d.flush().unwrap();
        d.write(20 * MIB, &p3, false).unwrap();
        d.flush().unwrap();
        d.zone_mgmt(ZoneOp::Reset, 20 * MIB, 4 * MIB).unwrap();
        d.flush().unwrap();
        d.write(0, &p1, false).unwrap();
        d.flush().unwrap();
    });
}

/// Four 8 MiB reads whose replies the client leaves unread for 4 s: the
/// socket fills, the server copies the rest of each reply (so the
/// clusters are not pinned meanwhile: a discard and flush elsewhere in
/// the image meanwhile does not wait for the client), and the bytes still
/// match.
const PY_SLOW: &str = r#"
import nbd, sys, time
uri, raw = sys.argv[1], sys.argv[2]
want = open(raw, "rb").read()
n = 8 << 20
h = nbd.NBD()
h.connect_uri(uri)
bufs = [nbd.Buffer(n) for _ in range(4)]
cookies = [h.aio_pread(bufs[i], i * n) for i in range(4)]
time.sleep(4)
while h.aio_in_flight() > 0:
    h.poll(-1)
for i, c in enumerate(cookies):
    h.aio_command_completed(c)
    if bytes(bufs[i].to_bytearray()) != want[i * n:(i + 1) * n]:
        print("mismatch in read %d" % i)
        sys.exit(1)
h.shutdown()
print("ok")
"#;

#[test]
fn slow_client_replies_are_copied_and_match() {
    if !need("qemu-img") || !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("twin.raw");
    let img = dir.path().join("disk.qcow2");
    std::fs::write(&raw, pattern(31, (48 * MIB) as usize)).unwrap();
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img));
    let dev = open(&img);
    let d = dev.clone();
    let srv = InProc::start(dev, cfg());
    let (out, freeing) = std::thread::scope(|s| {
        // Frees clusters outside the reads while the client is stalled:
        // freeing waits for pinned clusters, which must not be held.
        let t = s.spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let start = Instant::now();
            d.discard(32 * MIB, 16 * MIB).unwrap();
            d.flush().unwrap();
            start.elapsed()
        });
        let out = ok(Command::new("/usr/bin/python3")
            .args(["-c", PY_SLOW, &srv.uri()])
            .arg(&raw));
        (out, t.join().unwrap())
    });
    assert!(out.contains("ok"), "{out}");
    // Without the bound it would wait for the client (3 s more).
    assert!(
        freeing < Duration::from_millis(2500),
        "discard + flush waited {freeing:?} for a stalled client"
    );
    assert!(srv.stats.zero_copy_replies.load(Ordering::Relaxed) >= 4);
    assert!(
        srv.stats.zero_copy_spills.load(Ordering::Relaxed) > 0,
        "no reply was finished from a copy"
    );
}
