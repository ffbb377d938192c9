//! `zcow-nbd --control PATH`: zone conditions and management of a served
//! image, live on every connection and durable across a restart.

mod common_nbd;

use common_nbd::ServerProc;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use zcow::device::DeviceError;

const MIB: u64 = 1 << 20;

fn zimg() -> &'static str {
    env!("CARGO_BIN_EXE_zcow-img")
}

fn zoned(dir: &Path) -> String {
    let p = dir.join("z.qcow2");
    let o = Command::new(zimg())
        .args([
            "create",
            "-q",
            "-o",
            "zone.mode=host-managed,zone.size=1M,zone.conventional_zones=1",
        ])
        .arg(&p)
        .arg("8M")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.to_str().unwrap().to_string()
}

/// One control connection.
struct Control(BufReader<UnixStream>);

impl Control {
    fn connect(path: &Path) -> Control {
        Control(BufReader::new(
            UnixStream::connect(path).expect("control socket"),
        ))
    }

    fn send(&mut self, req: &str) -> Value {
        writeln!(self.0.get_mut(), "{req}").unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "one reply line: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

fn errno(e: DeviceError) -> i32 {
    match e {
        DeviceError::Remote { errno, .. } => errno,
        other => panic!("expected an error from the server, got {other}"),
    }
}

fn report(image: &str) -> String {
    let o = Command::new(zimg())
        .args(["zone", "report", image])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cond_line(report: &str, zone: u32) -> String {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&zone.to_string()))
        .unwrap_or_else(|| panic!("zone {zone} missing:\n{report}"))
        .to_string()
}

#[test]
fn control_socket_sets_conditions_live_and_durably() {
    let dir = tempfile::tempdir().unwrap();
    let img = zoned(dir.path());
    let sock = dir.path().join("control");
    let srv = ServerProc::start(
        Path::new(&img),
        &["-e", "2", "--control", sock.to_str().unwrap()],
    );
    let a = zcow::nbd::connect_uri(&srv.uri()).expect("client a");
    let b = zcow::nbd::connect_uri(&srv.uri()).expect("client b");
    let data = vec![0x5a; 4096];
    // Zone 2 is written by client a, zone 3 by client b.
    a.write(2 * MIB, &data, false).unwrap();
    b.write(3 * MIB, &data, false).unwrap();

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket is owner-only");
    let mut c = Control::connect(&sock);
    let r = c.send(r#"{"op":"set-cond","zone":2,"cond":"offline"}"#);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["zone"]["condition"], json!("OFFLINE"), "{r}");
    let r = c.send(r#"{"op":"set-cond","zone":3,"cond":"readonly"}"#);
    assert_eq!(r["zone"]["condition"], json!("READ_ONLY"), "{r}");

    // Both clients see it at once: OFFLINE fails writes and reads with EIO,
    // READ_ONLY fails writes with EPERM and still reads.
    for dev in [&a, &b] {
        assert_eq!(
            errno(dev.write(2 * MIB + 4096, &data, false).unwrap_err()),
            libc::EIO
        );
        let mut buf = vec![0u8; 4096];
        assert_eq!(errno(dev.read(2 * MIB, &mut buf).unwrap_err()), libc::EIO);
        assert_eq!(
            errno(dev.write(3 * MIB + 4096, &data, false).unwrap_err()),
            libc::EPERM
        );
        dev.read(3 * MIB, &mut buf).unwrap();
        assert_eq!(buf, data);
    }
    // Management: finish zone 4, reset it again, report it.
    a.write(4 * MIB, &data, false).unwrap();
    let r = c.send(r#"{"op":"finish","zone":4}"#);
    assert_eq!(r["zone"]["condition"], json!("FULL"), "{r}");
    let r = c.send(r#"{"op":"reset","zone":4}"#);
    assert_eq!(r["zone"]["condition"], json!("EMPTY"), "{r}");
    assert_eq!(r["zone"]["wp"], json!(4 * MIB), "{r}");
    let r = c.send(r#"{"op":"open","zone":5}"#);
    assert_eq!(r["zone"]["condition"], json!("EXP_OPEN"), "{r}");
    let r = c.send(r#"{"op":"close","zone":5}"#);
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = c.send(r#"{"op":"report","zone":2,"count":2}"#);
    let zones = r["zones"].as_array().expect("zones");
    assert_eq!(zones.len(), 2, "{r}");
    assert_eq!(zones[0]["condition"], json!("OFFLINE"));
    assert_eq!(zones[1]["condition"], json!("READ_ONLY"));
    // Errors are one line too, and the connection stays usable.
    let r = c.send(r#"{"op":"set-cond","zone":99,"cond":"offline"}"#);
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(r["error"].as_str().unwrap().contains("zone 99"), "{r}");
    let r = c.send("not json");
    assert_eq!(r["ok"], json!(false), "{r}");
    // zcow-img: a plain set-cond is refused with the way to the server;
    // --control goes through it.
    let o = Command::new(zimg())
        .args(["zone", "set-cond", &img, "6", "offline"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Failed to get \"write\" lock") && err.contains("--control"),
        "{err}"
    );
    let o = Command::new(zimg())
        .args([
            "zone",
            "set-cond",
            "--control",
            sock.to_str().unwrap(),
            &img,
            "6",
            "offline",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "zone 6: OFFLINE\n");
    assert_eq!(
        errno(b.write(6 * MIB, &data, false).unwrap_err()),
        libc::EIO
    );

    // Restart (the server is killed outright): the conditions were durable.
    drop(c);
    drop(a);
    drop(b);
    drop(srv);
    let rep = report(&img);
    assert!(cond_line(&rep, 2).ends_with("OFFLINE"), "{rep}");
    assert!(cond_line(&rep, 3).ends_with("READ_ONLY"), "{rep}");
    assert!(cond_line(&rep, 4).ends_with("EMPTY"), "{rep}");
    assert!(cond_line(&rep, 6).ends_with("OFFLINE"), "{rep}");
    // Served again, the conditions hold; clearing one lets writes in.
    let srv = ServerProc::start(Path::new(&img), &["--control", sock.to_str().unwrap()]);
    let a = zcow::nbd::connect_uri(&srv.uri()).expect("client");
    assert_eq!(
        errno(a.write(2 * MIB + 4096, &data, false).unwrap_err()),
        libc::EIO
    );
    let r = Control::connect(&sock).send(r#"{"op":"set-cond","zone":3,"cond":"clear"}"#);
    assert_eq!(r["ok"], json!(true), "{r}");
    a.write(3 * MIB + 4096, &data, false).unwrap();
}

#[test]
fn control_socket_resets_all_zones_live_and_durably() {
    let dir = tempfile::tempdir().unwrap();
    let img = zoned(dir.path());
    let sock = dir.path().join("control");
    let srv = ServerProc::start(
        Path::new(&img),
        &["-e", "2", "--control", sock.to_str().unwrap()],
    );
    let a = zcow::nbd::connect_uri(&srv.uri()).expect("client a");
    let b = zcow::nbd::connect_uri(&srv.uri()).expect("client b");
    let data = vec![0x5a; 4096];
    // Conventional zone 0, sequential zones 2 and 3 (two clients), zone 4
    // written then READ_ONLY, zone 5 finished.
    a.write(0, &data, false).unwrap();
    a.write(2 * MIB, &data, false).unwrap();
    b.write(3 * MIB, &data, false).unwrap();
    b.write(4 * MIB, &data, false).unwrap();
    let mut c = Control::connect(&sock);
    let r = c.send(r#"{"op":"set-cond","zone":4,"cond":"readonly"}"#);
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = c.send(r#"{"op":"finish","zone":5}"#);
    assert_eq!(r["zone"]["condition"], json!("FULL"), "{r}");

    let r = c.send(r#"{"op":"reset-all"}"#);
    assert_eq!(r, json!({"ok": true}));
    let r = c.send(r#"{"op":"report"}"#);
    let zones = r["zones"].as_array().expect("zones");
    let cond = |i: usize| zones[i]["condition"].as_str().unwrap().to_string();
    assert_eq!(
        (0..8).map(cond).collect::<Vec<_>>(),
        [
            "NOT_WP",
            "EMPTY",
            "EMPTY",
            "EMPTY",
            "READ_ONLY",
            "EMPTY",
            "EMPTY",
            "EMPTY"
        ],
        "{r}"
    );
    assert_eq!(zones[2]["wp"], json!(2 * MIB), "{r}");
    assert_eq!(
        zones[4]["wp"],
        json!(4 * MIB + 4096),
        "READ_ONLY keeps its wp: {r}"
    );
    // Every connection sees it at once: the reset zones read as zeroes and
    // take a write at their start again; the conventional zone kept its data.
    let mut buf = vec![0u8; 4096];
    for dev in [&a, &b] {
        dev.read(3 * MIB, &mut buf).unwrap();
        assert_eq!(buf, vec![0; 4096]);
        dev.read(0, &mut buf).unwrap();
        assert_eq!(buf, data);
    }
    b.write(2 * MIB, &data, false).unwrap();
    a.write(3 * MIB, &data, false).unwrap();
    assert_eq!(
        errno(a.write(4 * MIB + 4096, &data, false).unwrap_err()),
        libc::EPERM
    );
    // Reset again and restart: the reset was durable before the reply.
    let r = c.send(r#"{"op":"reset-all"}"#);
    assert_eq!(r["ok"], json!(true), "{r}");
    drop(c);
    drop(a);
    drop(b);
    drop(srv);
    let rep = report(&img);
    for z in [2, 3, 5] {
        assert!(cond_line(&rep, z).ends_with("EMPTY"), "zone {z}: {rep}");
    }
    assert!(cond_line(&rep, 4).ends_with("READ_ONLY"), "{rep}");
}
