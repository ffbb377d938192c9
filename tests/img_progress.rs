//! `-p` progress of every long zcow-img job: on a terminal the bar is drawn
//! on stderr and its last state says 100 % on a line of its own; on a pipe
//! nothing extra is printed and stdout is what it is without `-p`.

mod common;
mod common_nbd;

use common::{bin, have, s, tmp};
use std::path::Path;
use std::process::Command;

fn img() -> String {
    s(&bin("zcow-img")).to_string()
}

/// Run zcow-img with `args` on a pseudo-terminal (util-linux `script`):
/// exit status and everything the terminal showed.
fn on_tty(args: &[&str]) -> (bool, String) {
    let mut cmd = img();
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run script");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// Terminal text without escape sequences (`ESC [ ... letter`).
fn strip_ansi(t: &str) -> String {
    let mut out = String::new();
    let mut it = t.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' && it.peek() == Some(&'[') {
            it.next();
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every state of the bar drawn on the terminal, in order.
fn drawn(tty: &str) -> Vec<String> {
    strip_ansi(tty)
        .split(['\r', '\n'])
        .filter(|l| l.starts_with("    [") && l.contains('%'))
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// The bar was drawn, its last state is 100 %, and what follows it starts
/// on a new line.
fn assert_reaches_100(tty: &str) {
    let states = drawn(tty);
    let last = states
        .last()
        .unwrap_or_else(|| panic!("no bar drawn: {tty:?}"));
    assert!(
        last.ends_with("] 100%"),
        "last drawn state {last:?} of {states:?}"
    );
    let plain = strip_ansi(tty);
    let after = &plain[plain.rfind("100%").unwrap() + 4..];
    assert!(
        after.trim_start_matches(' ').starts_with("\r\n"),
        "output continues on the bar's line: {after:?}"
    );
}

/// Run with pipes: (exit code, stdout, stderr).
fn piped(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin("zcow-img")).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// With `-p` on a pipe: same exit code and stdout as without, nothing on
/// stderr. `args` holds `-p` at `at`.
fn assert_pipe_unchanged(args: &[&str], at: usize) {
    let with = piped(args);
    let mut without = args.to_vec();
    without.remove(at);
    let plain = piped(&without);
    assert_eq!(with.2, "", "stderr with -p on a pipe");
    assert_eq!((with.0, &with.1), (plain.0, &plain.1), "{args:?}");
}

/// A zoned image of `zones` 64 KiB zones with data in zone 0.
fn zoned(dir: &Path, name: &str, zones: u64) -> String {
    let p = s(&dir.join(name)).to_string();
    common::ok(
        &img(),
        &[
            "create",
            "-q",
            "-o",
            "cluster_size=4k,zone.mode=host-managed,zone.size=64k",
            &p,
            &(zones * 65536).to_string(),
        ],
    );
    common::ok(s(&bin("zcow-io")), &["-c", "write -P 7 0 64k", &p]);
    p
}

/// A qcow2 image whose header cluster has refcount 2 (a leak): check -r
/// all repairs it and checks again.
fn leaky(dir: &Path) -> String {
    let p = dir.join("leak.qcow2");
    common::ok(
        &img(),
        &["create", "-q", "-o", "cluster_size=4k", s(&p), "64M"],
    );
    common::ok(s(&bin("zcow-io")), &["-c", "write -P 1 0 1M", s(&p)]);
    let mut b = std::fs::read(&p).unwrap();
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let rt = be(&b, 48) as usize;
    let rb = be(&b, rt) as usize;
    b[rb..rb + 2].copy_from_slice(&2u16.to_be_bytes());
    std::fs::write(&p, b).unwrap();
    s(&p).to_string()
}

#[test]
fn check_reaches_100_percent() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let p = zoned(d.path(), "z.qcow2", 4096);
    let (ok, tty) = on_tty(&["check", "-p", &p]);
    assert!(ok, "{tty}");
    assert_reaches_100(&tty);
    assert!(tty.contains("No errors were found on the image."), "{tty}");
    assert_pipe_unchanged(&["check", "-p", &p], 1);
}

#[test]
fn check_repair_reaches_100_percent_over_both_passes() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let p = leaky(d.path());
    let (ok, tty) = on_tty(&["check", "-r", "all", "-p", &p]);
    assert!(ok, "{tty}");
    assert_reaches_100(&tty);
    let plain = strip_ansi(&tty);
    // Item messages are printed off the bar's line, whole: each starts
    // where the bar was cleared.
    for m in [
        "\rLeaked cluster 0 refcount=2 reference=1\r\n",
        "\rRepairing cluster 0 refcount=2 reference=1\r\n",
    ] {
        assert!(plain.contains(m), "{m:?} in {plain:?}");
    }
    assert!(plain.contains("The following inconsistencies were found and repaired:"));
    assert!(plain.contains("No errors were found on the image."));
    // A pipe sees nothing extra (on a fresh leak).
    let p2 = leaky(d.path());
    let (code, out, err) = piped(&["check", "-r", "all", "-p", &p2]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains('%'), "{err}");
    assert!(!err.contains('['), "{err}");
}

#[test]
fn repair_reaches_100_percent() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let p = leaky(d.path());
    let bk = d.path().join("bk");
    let (ok, tty) = on_tty(&["repair", "-p", "--backup", s(&bk), &p]);
    assert!(ok, "{tty}");
    assert_reaches_100(&tty);
    assert!(
        strip_ansi(&tty).contains("Rewrote 1 metadata cluster(s)"),
        "{tty}"
    );
    let p = leaky(d.path());
    let (code, out, err) = piped(&["repair", "-p", &p]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains('%'), "{err}");
    assert!(out.contains("Rewrote 1 metadata cluster(s)"), "{out}");
}

#[test]
fn create_preallocation_reaches_100_percent() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let p = s(&d.path().join("pre.qcow2")).to_string();
    let o = "preallocation=metadata,cluster_size=4k";
    let (ok, tty) = on_tty(&["create", "-p", "-o", o, &p, "4G"]);
    assert!(ok, "{tty}");
    assert_reaches_100(&tty);
    assert!(tty.contains("Formatting '"), "{tty}");
    common::ok(&img(), &["check", &p]);
    let q = s(&d.path().join("pre2.qcow2")).to_string();
    let (code, out, err) = piped(&["create", "-p", "-o", o, &q, "4G"]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert!(out.starts_with("Formatting '"), "{out}");
}

#[test]
fn convert_reaches_100_percent() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let src = zoned(d.path(), "src.qcow2", 256);
    let dst = s(&d.path().join("dst.raw")).to_string();
    let (ok, tty) = on_tty(&["convert", "-p", "-O", "raw", &src, &dst]);
    assert!(ok, "{tty}");
    assert_reaches_100(&tty);
    let (code, out, err) = piped(&["convert", "-p", "-O", "raw", &src, &dst]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}

#[test]
fn zone_report_reaches_100_percent() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let p = zoned(d.path(), "many.qcow2", 70_000);
    for output in ["human", "json", "blkzone"] {
        let o = format!("--output={output}");
        let (ok, tty) = on_tty(&["zone", "report", "-p", &o, &p]);
        assert!(ok, "{tty}");
        assert_reaches_100(&tty);
        assert_pipe_unchanged(&["zone", "report", "-p", &o, &p], 2);
    }
}

#[test]
fn zone_report_of_a_served_export_reaches_100_percent() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let p = zoned(d.path(), "served.qcow2", 70_000);
    let srv = common_nbd::ServerProc::start(Path::new(&p), &[]);
    let uri = srv.uri();
    let (ok, tty) = on_tty(&["zone", "report", "-p", &uri]);
    assert!(ok, "{tty}");
    assert_reaches_100(&tty);
    assert!(tty.contains("70000 zones: "), "{tty}");
    assert_pipe_unchanged(&["zone", "report", "-p", &uri], 2);
}

#[test]
fn a_job_that_fails_at_once_draws_no_bar() {
    if !have("script") {
        return;
    }
    let d = tmp();
    let missing = s(&d.path().join("missing.qcow2")).to_string();
    let (ok, tty) = on_tty(&["check", "-p", &missing]);
    assert!(!ok);
    assert_eq!(drawn(&tty), Vec::<String>::new(), "{tty:?}");
    assert!(
        strip_ansi(&tty).starts_with("zcow-img: Could not open"),
        "{tty:?}"
    );
}
