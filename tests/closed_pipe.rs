//! No binary panics when its reader goes away (`zcow-img zone report IMG |
//! head -1`): it stops quietly with the status a shell shows for a tool
//! killed by SIGPIPE.

mod common;

use common::{bin, s, tmp};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Run `prog args`, read one line of its stdout, close the pipe, and
/// return (exit code, stderr).
fn first_line_then_close(prog: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin(prog))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first line");
    assert!(!line.is_empty(), "{prog} printed nothing");
    drop(out);
    let o = child.wait_with_output().expect("wait");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn closed_stdout_is_not_a_panic() {
    let d = tmp();
    let img = d.path().join("z.qcow2");
    let o = Command::new(bin("zcow-img"))
        .args(["create", "-q", "-o", "zone.mode=host-managed,zone.size=1M"])
        .arg(&img)
        .arg("2G")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 2048 zones: about 200 KiB of report, far more than a pipe holds.
    let (code, err) = first_line_then_close("zcow-img", &["zone", "report", s(&img)]);
    assert_eq!((code, err.as_str()), (Some(141), ""));
    let (code, err) =
        first_line_then_close("zcow-img", &["zone", "report", "--output", "json", s(&img)]);
    assert_eq!((code, err.as_str()), (Some(141), ""));
    let (code, err) = first_line_then_close("zcow-io", &["-r", "-c", "read -v 0 4M", s(&img)]);
    assert_eq!((code, err.as_str()), (Some(141), ""));
}
