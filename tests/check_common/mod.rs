//! Helpers shared by the check test suites: running qemu-img and zcow's
//! check on copies of an image, patching bytes, normalising output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use zcow::check::{run_check, CheckOptions, OutputFormat, RepairMode};

/// Whether qemu-img/qemu-io are usable. Missing tools fail under CI=true.
pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("qemu-img/qemu-io are required for the differential suite under CI");
    }
    ok
}

/// Run a command, panicking on failure to start.
pub fn sh(dir: &Path, prog: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Run and require success.
pub fn must(dir: &Path, prog: &str, args: &[&str]) {
    let (c, o, e) = sh(dir, prog, args);
    assert_eq!(c, 0, "{prog} {args:?} failed: {o}{e}");
}

/// Overwrite bytes at `off`.
pub fn patch(path: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// Read a big-endian u64.
pub fn read64(path: &Path, off: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

/// Read a big-endian u32.
pub fn read32(path: &Path, off: u64) -> u32 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, off).unwrap();
    u32::from_be_bytes(b)
}

/// Set the file length.
pub fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Check modes of the differential suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    PlainJson,
    Leaks,
    All,
    AllJson,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Plain,
        Mode::PlainJson,
        Mode::Leaks,
        Mode::All,
        Mode::AllJson,
    ];
    pub fn args(self) -> Vec<&'static str> {
        match self {
            Mode::Plain => vec![],
            Mode::PlainJson => vec!["--output=json"],
            Mode::Leaks => vec!["-r", "leaks"],
            Mode::All => vec!["-r", "all"],
            Mode::AllJson => vec!["-r", "all", "--output=json"],
        }
    }
    pub fn opts(self) -> CheckOptions {
        CheckOptions {
            repair: match self {
                Mode::Plain | Mode::PlainJson => None,
                Mode::Leaks => Some(RepairMode::Leaks),
                Mode::All | Mode::AllJson => Some(RepairMode::All),
            },
            output: match self {
                Mode::PlainJson | Mode::AllJson => OutputFormat::Json,
                _ => OutputFormat::Human,
            },
            quiet: false,
            progress: false,
            display_name: Some("t.qcow2".into()),
            format: Some("qcow2".into()),
        }
    }
}

/// Output of one check run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub code: i32,
    pub out: String,
    pub err: String,
}

/// qemu-img check on `dir/t.qcow2`, output normalised to zcow's spelling.
pub fn qemu_check(dir: &Path, mode: Mode) -> Run {
    let mut args = vec!["check", "-f", "qcow2"];
    args.extend(mode.args());
    args.push("t.qcow2");
    let (code, out, err) = sh(dir, "qemu-img", &args);
    Run {
        code,
        out,
        err: err
            .replace("qemu-img: ", "zcow-img: ")
            .replace("with qemu-img check", "with zcow-img check"),
    }
}

/// zcow's check on `dir/t.qcow2`. Lines starting with `zcow: ` (zcow's own
/// explanations) are returned separately.
pub fn zcow_check(dir: &Path, mode: Mode) -> (Run, Vec<String>) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_check(&dir.join("t.qcow2"), &mode.opts(), &mut out, &mut err).unwrap();
    let err = String::from_utf8(err).unwrap();
    let extra: Vec<String> = err
        .lines()
        .filter(|l| l.starts_with("zcow: "))
        .map(String::from)
        .collect();
    let err: String = err
        .lines()
        .filter(|l| !l.starts_with("zcow: "))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        Run {
            code,
            out: String::from_utf8(out).unwrap(),
            err,
        },
        extra,
    )
}

/// A scratch directory holding `t.qcow2`.
pub fn copy_to_scratch(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("t.qcow2");
    std::fs::copy(src, &p).unwrap();
    (d, p)
}
