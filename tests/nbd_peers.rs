//! zcow-nbd against real peers: qemu-img, qemu-io, nbdinfo, nbdcopy,
//! python nbd, fio, socket activation. Raw images now; the qcow2 variant
//! runs once `open_device` understands qcow2.

mod common_nbd;

use common_nbd::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SIZE: u64 = 64 << 20;

fn raw_image(dir: &Path, fill: bool) -> PathBuf {
    let p = dir.join("disk.raw");
    if fill {
        let mut d = pattern(42, SIZE as usize);
        // Leave a zero region so sparse paths are exercised.
        d[(16 << 20)..(32 << 20)].fill(0);
        std::fs::write(&p, d).unwrap();
    } else {
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(SIZE).unwrap();
    }
    p
}

fn qemu_io_suite(uri: &str) {
    let out = ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 0 64k",
        "-c",
        "write -P 0xcd 1M 128k",
        "-c",
        "write -z 2M 64k",
        "-c",
        "discard 1M 64k",
        "-c",
        "write -P 0xef -f 3M 4k",
        "-c",
        "flush",
        uri,
    ]));
    assert!(
        out.contains("wrote 131072/131072 bytes at offset 1048576"),
        "{out}"
    );
    assert!(
        out.contains("discard 65536/65536 bytes at offset 1048576"),
        "{out}"
    );
    let out = ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0xab 0 64k",
        "-c",
        "read -P 0xcd 1088k 64k",
        "-c",
        "read -P 0 2M 64k",
        "-c",
        "read -P 0xef 3M 4k",
        uri,
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(
        out.contains("read 4096/4096 bytes at offset 3145728"),
        "{out}"
    );
}

#[test]
fn peers_qemu_img_and_qemu_io_raw() {
    if !need("qemu-img") || !need("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), true);
    let srv = ServerProc::start(&img, &["-f", "raw", "-e", "4", "--discard=unmap"]);
    let uri = srv.uri();
    let info = ok(Command::new("qemu-img").args(["info", &uri]));
    assert!(
        info.contains("virtual size: 64 MiB (67108864 bytes)"),
        "{info}"
    );
    // Read side first: convert out and compare, byte exact.
    let local = dir.path().join("local.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&local));
    assert_eq!(std::fs::read(&local).unwrap(), std::fs::read(&img).unwrap());
    let cmp = ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&local)
        .arg(&uri));
    assert!(cmp.contains("Images are identical."), "{cmp}");
    let map = ok(Command::new("qemu-img").args(["map", "-f", "raw", "--output=json", &uri]));
    assert!(map.contains("\"start\": 0"), "{map}");
    // Write side: parallel out-of-order convert into the export.
    let src = dir.path().join("src.raw");
    std::fs::write(&src, pattern(7, SIZE as usize)).unwrap();
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-W", "-m", "16", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    let cmp = ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(&uri));
    assert!(cmp.contains("Images are identical."), "{cmp}");
    qemu_io_suite(&uri);
    // QEMU negotiated extended headers on every connection.
    let log = srv.log_text();
    assert!(log.contains("option EXTENDED_HEADERS (11)"), "{log}");
    assert!(log.contains("transmission: mode Extended"), "{log}");
    assert!(!log.contains("mode Structured"), "{log}");
    drop(srv);
    // What was acknowledged reached the file.
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..65536].iter().all(|&b| b == 0xab));
    assert!(bytes[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 0xef));
}

#[test]
fn peers_qcow2_when_supported() {
    if !need("qemu-img") || !need("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("64M"));
    let opened = zcow::open::open_device(
        &img,
        &zcow::open::OpenOptions {
            format: Some("qcow2".into()),
            ..Default::default()
        },
    );
    assert_eq!(opened.expect("zcow opens the qcow2 image").size(), SIZE);
    let srv = ServerProc::start(&img, &["-f", "qcow2", "--discard=unmap"]);
    qemu_io_suite(&srv.uri());
    drop(srv);
    let check = ok(Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&img));
    assert!(check.contains("No errors"), "{check}");
    let out = ok(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "read -P 0xab 0 64k",
            "-c",
            "read -P 0xef 3M 4k",
        ])
        .arg(&img));
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

#[test]
fn peers_nbdinfo_variants() {
    if !need("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), false);
    let srv = ServerProc::start(&img, &["-x", "exp", "-D", "test disk", "-e", "4"]);
    let uri = format!("{}/exp", srv.uri());
    let out = ok(Command::new("nbdinfo").arg(&uri));
    for want in [
        "protocol: newstyle-fixed without TLS, using structured packets",
        "export-size: 67108864 (64M)",
        "base:allocation",
        "is_read_only: false",
        "can_flush: true",
        "can_fua: true",
        "can_multi_conn: true",
        "can_trim: true",
        "can_zero: true",
        "can_fast_zero: true",
        "can_df: true",
        "can_cache: true",
        "block_size_minimum: 1",
        "block_size_preferred: 4096",
        "block_size_maximum: 33554432",
        "description: test disk",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let out = ok(Command::new("nbdinfo").arg("--list").arg(srv.uri()));
    assert!(out.contains("export=\"exp\""), "{out}");
    assert!(out.contains("description: test disk"), "{out}");
    let out = ok(Command::new("nbdinfo").arg("--json").arg(&uri));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["exports"][0]["export-size"], 67108864);
    assert_eq!(v["exports"][0]["export-name"], "exp");
    for (what, code) in [("flush", 0), ("multi-conn", 0), ("trim", 0), ("zero", 0)] {
        let o = run(
            Command::new("nbdinfo").args(["--can", what]).arg(&uri),
            Duration::from_secs(30),
        );
        assert_eq!(o.status.code(), Some(code), "--can {what}");
    }
    let out = ok(Command::new("nbdinfo").arg("--map").arg(&uri));
    let first: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&first[..3], &["0", "67108864", "0"], "{out}");
    // Wrong export name is refused.
    let o = run(
        Command::new("nbdinfo").arg(format!("{}/nope", srv.uri())),
        Duration::from_secs(30),
    );
    assert!(!o.status.success());
    // Read-only, single connection server.
    let ro = ServerProc::start(&img, &["-r"]);
    let o = run(
        Command::new("nbdinfo")
            .args(["--can", "multi-conn"])
            .arg(ro.uri()),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        Command::new("nbdinfo")
            .args(["--is", "read-only"])
            .arg(ro.uri()),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn peers_nbdcopy_byte_exact() {
    if !need("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), true);
    let srv = ServerProc::start(&img, &["-e", "4"]);
    ok(Command::new("nbdcopy").arg(srv.uri()).arg("null:"));
    let out = dir.path().join("out.raw");
    ok(Command::new("nbdcopy").arg(srv.uri()).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    // Write path with multi-conn and flush.
    let src = dir.path().join("src.raw");
    std::fs::write(&src, pattern(3, SIZE as usize)).unwrap();
    ok(Command::new("nbdcopy")
        .arg("--flush")
        .arg(&src)
        .arg(srv.uri()));
    ok(Command::new("nbdcopy").arg(srv.uri()).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn peers_python_nbd_script() {
    if !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), false);
    let srv = ServerProc::start(&img, &["--discard=unmap"]);
    let script = format!(
        r#"
import nbd
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri("{uri}")
print("size", h.get_size())
buf = bytes(range(256)) * 64
h.pwrite(buf, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(len(buf), 8192) == buf
h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(4096, 8192) == bytes(4096)
h.trim(4096, 65536)
h.cache(65536, 0)
h.flush()
ents = []
h.block_status(65536, 0, lambda m, o, e, err: ents.extend(e))
print("extents", len(ents) >= 2, sum(ents[0::2]) >= 1)
try:
    h.pread(512, {size})
    print("past-end ok?!")
except nbd.Error as e:
    print("past-end", e.errno)
h.set_strict_mode(0)
try:
    h.pread(4096, {size} - 1024)
except nbd.Error as e:
    print("unstrict past-end", e.errno)
print("still", len(h.pread(16, 0)))
h.shutdown()
"#,
        uri = srv.uri(),
        size = SIZE
    );
    let out = ok(Command::new("/usr/bin/python3").arg("-c").arg(script));
    assert!(out.contains("size 67108864"), "{out}");
    assert!(out.contains("extents True True"), "{out}");
    assert!(out.contains("unstrict past-end EINVAL"), "{out}");
    assert!(out.contains("still 16"), "{out}");
    let data = std::fs::read(&img).unwrap();
    assert!(data[8192 + 4096..8192 + 16384]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((i + 4096) % 256) as u8));
}

#[test]
fn peers_fio_random_reads() {
    if !need("fio") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), true);
    let srv = ServerProc::start(&img, &[]);
    let out = ok(Command::new("fio").args([
        "--name=r",
        "--ioengine=nbd",
        &format!("--uri={}", srv.uri()),
        "--rw=randread",
        "--bs=4k",
        "--iodepth=16",
        "--runtime=3",
        "--time_based",
        "--size=64m",
    ]));
    assert!(out.contains("err= 0"), "{out}");
    assert!(out.contains("read: IOPS="), "{out}");
}

#[test]
fn peers_socket_activation() {
    if !need("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), false);
    let out = ok(Command::new("nbdinfo")
        .args(["--size", "--", "[", bin()])
        .arg(&img)
        .arg("]"));
    assert_eq!(out.trim(), "67108864");
}

#[test]
fn server_lifecycle_non_persistent_and_sigterm() {
    if !need("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), false);
    // Without -t the server leaves after its last client.
    let mut srv = ServerProc::start_opts(&img, &[], false);
    ok(Command::new("qemu-img").args(["info", &srv.uri()]));
    let t = Instant::now();
    let st = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success());
    // With -t it runs until SIGTERM, then exits 0 and removes its PID file.
    let mut srv = ServerProc::start(&img, &[]);
    ok(Command::new("qemu-img").args(["info", &srv.uri()]));
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let st = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "server ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st}");
    assert!(!srv.dir.path().join("pid").exists());
}

#[test]
fn unix_socket_and_fork() {
    if !need("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), true);
    let sock = dir.path().join("nbd.sock");
    let pid = dir.path().join("pid");
    // --fork: the parent returns once the socket is listening.
    let st = Command::new(bin())
        .args(["-t", "--fork", "-e", "0", "-k"])
        .arg(&sock)
        .arg("--pid-file")
        .arg(&pid)
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    while !pid.exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "no PID file");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let server_pid: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out = ok(Command::new("qemu-img").args(["info", &uri]));
    assert!(out.contains("virtual size: 64 MiB"), "{out}");
    let dev = zcow::nbd::connect_uri(&uri).unwrap();
    let mut b = vec![0u8; 4096];
    dev.read(1 << 20, &mut b).unwrap();
    assert_eq!(
        b,
        pattern(42, SIZE as usize)[1 << 20..(1 << 20) + 4096].to_vec()
    );
    drop(dev);
    // SAFETY: the forked server's PID, from its own PID file.
    unsafe { libc::kill(server_pid, libc::SIGTERM) };
    let t = Instant::now();
    while sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "server did not clean up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn peers_libnbd_option_mode_and_old_clients() {
    if !need_python_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_image(dir.path(), true);
    let srv = ServerProc::start(&img, &["-x", "e1", "-D", "first", "-e", "0"]);
    let uri_e1 = format!("{}/e1", srv.uri());
    let script = format!(
        r#"
import nbd
uri = "{uri}"
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
names = []
h.opt_list(lambda n, d: names.append((n, d)))
print("list", names)
ctxs = []
h.opt_list_meta_context(lambda c: ctxs.append(c))
print("contexts", ctxs)
h.set_export_name("e1")
h.opt_info()
print("info size", h.get_size())
h.opt_abort()
# Structured replies off: simple replies.
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(uri)
print("simple", h.get_structured_replies_negotiated(), len(h.pread(4096, 4096)))
h.shutdown()
# Non-fixed newstyle.
h = nbd.NBD()
h.set_handshake_flags(0)
h.set_request_structured_replies(False)
h.connect_uri(uri)
print("oldnewstyle", h.get_protocol(), len(h.pread(512, 0)))
h.shutdown()
"#,
        uri = uri_e1
    );
    let out = ok(Command::new("/usr/bin/python3").arg("-c").arg(script));
    assert!(out.contains("list [('e1', 'first')]"), "{out}");
    assert!(out.contains("contexts ['base:allocation']"), "{out}");
    assert!(out.contains("info size 67108864"), "{out}");
    assert!(out.contains("simple False 4096"), "{out}");
    assert!(out.contains("oldnewstyle newstyle 512"), "{out}");
}
