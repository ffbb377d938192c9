//! Differential tests: the same `-c` commands through real `qemu-io` and
//! through `zcow-io` on identical images must print the same stdout (only
//! the timing part of report lines normalised) and exit the same way.
//! Without qemu-io installed the tests skip, except under CI=true.

use std::path::{Path, PathBuf};
use std::process::Command;
use zcow::iocmd::normalize_timing;

const ZCOW_IO: &str = env!("CARGO_BIN_EXE_zcow-io");

fn have_qemu() -> bool {
    let ok = Command::new("qemu-io")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-io is required when CI=true"
        );
        eprintln!("qemu-io not installed: skipping differential test");
    }
    ok
}

/// Run `tool -f fmt -c ... file`; returns (normalised stdout, exit code).
fn run(tool: &str, fmt: &str, file: &Path, cmds: &[&str]) -> (String, i32) {
    let mut c = Command::new(tool);
    c.arg("-f").arg(fmt);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let o = c.arg(file).output().expect("run tool");
    (
        normalize_timing(&String::from_utf8_lossy(&o.stdout)),
        o.status.code().unwrap_or(-1),
    )
}

/// Equal outputs, or a panic showing the first differing line.
fn assert_same(zcow: &str, qemu: &str, cmds: &[&str]) {
    if zcow == qemu {
        return;
    }
    let (z, q): (Vec<&str>, Vec<&str>) = (zcow.lines().collect(), qemu.lines().collect());
    let i = z.iter().zip(&q).take_while(|(a, b)| a == b).count();
    let from = i.saturating_sub(3);
    panic!(
        "stdout differs at line {}\n  zcow-io: {:?}\n  qemu-io: {:?}\ncontext (zcow-io):\n{}\ncommands: {:?}",
        i + 1,
        z.get(i),
        q.get(i),
        z[from..(i + 1).min(z.len())].join("\n"),
        cmds
    );
}

struct Images {
    _dir: tempfile::TempDir,
    qemu: PathBuf,
    zcow: PathBuf,
}

fn raw_pair(size: u64) -> Images {
    let dir = tempfile::tempdir().unwrap();
    let (qemu, zcow) = (dir.path().join("q.raw"), dir.path().join("z.raw"));
    for p in [&qemu, &zcow] {
        std::fs::File::create(p).unwrap().set_len(size).unwrap();
    }
    Images {
        _dir: dir,
        qemu,
        zcow,
    }
}

/// Compare one scenario on raw images, then the image contents.
fn same_on_raw(cmds: &[&str]) {
    let im = raw_pair(1 << 20);
    let (q, qc) = run("qemu-io", "raw", &im.qemu, cmds);
    let (z, zc) = run(ZCOW_IO, "raw", &im.zcow, cmds);
    assert_same(&z, &q, cmds);
    assert_eq!(zc, qc, "exit code differs for {cmds:?}");
    assert!(
        std::fs::read(&im.qemu).unwrap() == std::fs::read(&im.zcow).unwrap(),
        "image contents differ after {cmds:?}"
    );
}

const SCENARIOS: &[&[&str]] = &[
    // Writes, reads, hex dumps, pattern verification.
    &[
        "write -P 0xab 0 4k",
        "read -v 0 64",
        "read -P 0xab 0 4k",
        "read -P 0xac 0 4k",
        "write -P 0x41 100 20",
        "read -v 90 40",
        "r -v 4090 7",
        "w -P 65 1k 512",
        "read -P 0101 1k 512",
    ],
    // Verification windows.
    &[
        "write -P 5 0 512",
        "read -P 5 -s 0 -l 512 0 1k",
        "read -P 5 -s 512 0 1k",
        "read -P 0 -s 512 0 1k",
        "read -P 0 -s 1 -l 4 0 2",
        "read -P 5 -l 512 0 1k",
        "read -s 1 0 2",
    ],
    // Errors and bad arguments.
    &[
        "write 1M 512",
        "read 1000k 48k",
        "read 0 3G",
        "write 0 3G",
        "read 0 1x",
        "read -P 256 0 1",
        "read -P xyz 0 1",
        "read -P -1 0 1",
        "write -u 0 4k",
        "write -n 0 4k",
        "write -z -P 1 0 4k",
        "discard 0 3G",
        "read 0 1 2",
        "read -z 0 1",
        "write -q",
        "bogus",
        "read 0",
        "help nope",
    ],
    // Zeroes, discard, flush, quiet.
    &[
        "write -P 7 0 16k",
        "write -z 0 4k",
        "write -z -u 4k 4k",
        "read -P 0 0 8k",
        "read -P 7 8k 8k",
        "discard 0 64k",
        "discard -q 0 4k",
        "flush",
        "f",
        "read -q 0 512",
        "write -q -P 5 0 512",
        "read -q -P 6 0 512",
    ],
    // Machine-readable statistics.
    &["read -C 0 512", "write -C -P 1 0 512", "discard -C 0 512"],
    // Vectored I/O.
    &[
        "writev -P 3 0 512 1k",
        "readv -P 3 0 512 1k",
        "readv -v 0 16 16",
        "readv -P 4 0 512",
        "writev 0 3G",
        "readv 0 1x",
    ],
    // Background requests, completed at aio_flush. One at a time: qemu-io
    // prints completions in completion order, zcow-io in issue order.
    &[
        "aio_write -P 1 0 4k",
        "aio_flush",
        "aio_write -P 2 4k 4k 4k",
        "aio_flush",
        "aio_write -q 64k 512",
        "aio_flush",
        "aio_write 1M 512",
        "aio_flush",
        "aio_write -z 0 4k",
        "aio_flush",
        "aio_write -i 0 1",
        "aio_write -z 0 1 2",
        "aio_write -u 0 1",
        "aio_read -P 2 4k 8k",
        "aio_flush",
        "aio_read -P 9 4k 512",
        "aio_flush",
        "aio_read -v 0 16",
        "aio_flush",
        "aio_write -P 6 0 512",
    ],
    // Information commands.
    &["info", "length", "l", "quit", "read 0 1"],
    &[
        "alloc 0",
        "alloc 4k 64k",
        "a 1000k 1M",
        "alloc 2M",
        "alloc -1",
        "map",
    ],
    &[
        "zrp 0 1",
        "zo 0 1",
        "zap -p 0 512 512",
        "zrp -1 1",
        "zrs 0 1x",
    ],
];

#[test]
fn raw_scenarios_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    for cmds in SCENARIOS {
        same_on_raw(cmds);
    }
}

#[test]
fn write_from_file_matches_qemu_io() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("pattern");
    std::fs::write(&src, b"zcow-io pattern file!").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let cmds = [
        format!("write -s {} 0 1000", src.display()),
        "read -v 0 64".to_string(),
        format!("write -s {} 0 1", empty.display()),
        format!("write -s {}/none 0 1", dir.path().display()),
        format!("write -P 1 -s {} 0 1", src.display()),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    same_on_raw(&cmds);
}

/// Offsets and pattern bytes in every notation: random strings over the
/// characters that matter, each parsed by both tools.
#[test]
fn number_parsing_matches_qemu_io() {
    if !have_qemu() {
        return;
    }
    const CHARS: &[u8] = b"0123456789012345.xXkKmMgGtTpPeEbB+-";
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cmds = Vec::new();
    for _ in 0..400 {
        let len = 1 + next() % 6;
        let s: String = (0..len)
            .map(|_| CHARS[(next() % CHARS.len() as u64) as usize] as char)
            .collect();
        cmds.push(format!("read {s} 0"));
        cmds.push(format!("read -q -P {s} 0 0"));
    }
    for s in [
        "1.5k",
        ".5k",
        "+.5k",
        "1.k",
        "0x1B",
        "1e",
        "0x",
        "9223372036854775807",
        "8E",
        "-0",
        "0.9999999999999999999999k",
        "1.00000000000000000001",
        "0x10k",
        "00x5",
        "1.5e",
    ] {
        cmds.push(format!("read {s} 0"));
    }
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    same_on_raw(&cmds);
}

/// qcow2 images, once the format layer opens them (until then zcow-io sees
/// the file as raw bytes and the test says so and skips).
#[test]
fn qcow2_scenarios_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (q, z) = (dir.path().join("q.qcow2"), dir.path().join("z.qcow2"));
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("1M")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(created, "qemu-img cannot create a qcow2 image");
    let opts = zcow::open::OpenOptions {
        format: Some("qcow2".into()),
        read_only: true,
        allow_backing: false,
    };
    let opens_qcow2 = zcow::open::open_device(&q, &opts)
        .map(|d| d.size() == 1 << 20)
        .unwrap_or(false);
    assert!(opens_qcow2, "zcow cannot open the qcow2 image");
    for cmds in SCENARIOS {
        if cmds.contains(&"info") {
            continue; // qemu-io prints qcow2 internals (cluster size, ...).
        }
        std::fs::copy(&q, &z).unwrap();
        let q2 = dir.path().join("q2.qcow2");
        std::fs::copy(&q, &q2).unwrap();
        let (qo, qc) = run("qemu-io", "qcow2", &q2, cmds);
        let (zo, zc) = run(ZCOW_IO, "qcow2", &z, cmds);
        assert_same(&zo, &qo, cmds);
        assert_eq!(zc, qc, "exit code differs for {cmds:?}");
        // The image zcow-io wrote must read back the same in qemu-io.
        let (a, _) = run("qemu-io", "qcow2", &q2, &["read -v 0 1M"]);
        let (b, _) = run("qemu-io", "qcow2", &z, &["read -v 0 1M"]);
        assert!(a == b, "qcow2 contents differ after {cmds:?}");
    }
}

#[test]
fn open_failure_and_interactive_prompt() {
    if !have_qemu() {
        return;
    }
    let im = raw_pair(1 << 20);
    let missing = im.qemu.with_file_name("missing.raw");
    let (q, qc) = run("qemu-io", "raw", &missing, &["read 0 1"]);
    let (z, zc) = run(ZCOW_IO, "raw", &missing, &["read 0 1"]);
    assert_eq!((z, zc), (q, qc));

    let input = "write -P 1 0 512\nbogus\n\nread -q -P 1 0 512\nquit\nread 0 1\n";
    let interactive = |tool: &str, file: &Path| {
        use std::io::Write;
        let mut child = Command::new(tool)
            .args(["-f", "raw"])
            .arg(file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        (
            normalize_timing(&String::from_utf8_lossy(&o.stdout)).replace("qemu-io> ", "PROMPT> "),
            o.status.code(),
        )
    };
    let q = interactive("qemu-io", &im.qemu);
    let z = interactive(ZCOW_IO, &im.zcow);
    assert_eq!(z.0.replace("zcow-io> ", "PROMPT> "), q.0);
    assert_eq!(z.1, q.1);
}

/// `-r`, and `close`/`open` between commands.
#[test]
fn read_only_and_reopen_match_qemu_io() {
    if !have_qemu() {
        return;
    }
    let im = raw_pair(1 << 20);
    let go = |tool: &str, file: &Path, extra: &[&str], cmds: &[String]| {
        let mut c = Command::new(tool);
        c.args(["-f", "raw"]).args(extra);
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        let o = c.arg(file).output().unwrap();
        (
            normalize_timing(&String::from_utf8_lossy(&o.stdout)),
            o.status.code(),
        )
    };
    let ro = [
        "read -v 0 16",
        "write 0 512",
        "discard 0 512",
        "read -P 0 0 512",
    ]
    .map(String::from);
    assert_eq!(
        go(ZCOW_IO, &im.zcow, &["-r"], &ro),
        go("qemu-io", &im.qemu, &["-r"], &ro)
    );
    let reopen = |f: &Path| {
        [
            "write -P 7 0 512".to_string(),
            "close".into(),
            "read 0 512".into(),
            format!("open -r {}", f.display()),
            "read -P 7 0 512".into(),
            "write 0 512".into(),
            format!("open {}", f.display()),
            "close".into(),
            format!("open {}", f.display()),
            "write -P 8 512 512".into(),
            "read -P 8 512 512".into(),
        ]
    };
    assert_eq!(
        go(ZCOW_IO, &im.zcow, &[], &reopen(&im.zcow)),
        go("qemu-io", &im.qemu, &[], &reopen(&im.qemu))
    );
}
