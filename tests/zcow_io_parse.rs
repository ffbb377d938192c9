//! Parser tests: qemu-io's messages for bad input, and property tests that
//! no command line makes the parser or a session panic.

use proptest::prelude::*;
use std::sync::Arc;
use zcow::iocmd::parse::{parse_line, Command, ReportOpts, WriteSource, WriteTarget};
use zcow::iocmd::table::COMMANDS;
use zcow::iocmd::{normalize_timing, run_script, Session};
use zcow::raw::RawDevice;
use zcow::storage::Storage;

fn stdout_of(cmds: &[&str]) -> (String, String, i32) {
    let dev = Arc::new(RawDevice::memory(1 << 20).unwrap());
    let o = run_script(dev, cmds);
    (normalize_timing(&o.stdout), o.stderr, o.exit_code)
}

#[test]
fn sizes_and_patterns_parse_like_qemu() {
    assert_eq!(
        parse_line("w -f -P 0x5a 1.5M 64k").unwrap(),
        Some(Command::Write {
            offset: 3 << 19,
            count: 64 << 10,
            source: WriteSource::Pattern(0x5a),
            target: WriteTarget::Disk,
            fua: true,
            report: ReportOpts::default(),
        })
    );
    assert_eq!(
        parse_line("write -z -u -n 0 8E").unwrap_err().messages[0].text,
        "Parsing error: argument too large -- 8E"
    );
    assert!(matches!(
        parse_line("write -z -n 0 4G").unwrap(),
        Some(Command::Write {
            count: 0x1_0000_0000,
            ..
        })
    ));
}

#[test]
fn bad_input_messages() {
    let (out, err, code) = stdout_of(&[
        "read -P 0x100 0 1",
        "read 1k 0x",
        "write -P 1 -z 0 1",
        "write -n 0 1",
        "writev 0 1G 1G",
        "readv 0 3G",
        "discard 0 3G",
        "zap -p 0 1G 1G 1G",
        "aio_write -z 0 1 1",
        "sleep -1",
        "help nosuch",
        "read 0",
        "nosuch",
        "read -x 0 1",
        "read 0 1 -P",
    ]);
    assert_eq!(
        out,
        "0x100 is not a valid pattern byte\n\
         Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 0x\n\
         Only one of -z, -P, and -s can be specified at the same time\n\
         -n requires -z to be specified\n\
         The total number of bytes exceed the maximum size 2147483136\n\
         Argument '3G' exceeds maximum size 2147483136\n\
         length cannot exceed 2147483136, given 3G\n\
         The total number of bytes exceed the maximum size 2147483136\n\
         -z supports only a single length parameter\n\
         -1 is not a valid number\n\
         command nosuch not found\n\
         read [-abCqrv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset\n\
         read [-abCqrv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset\n"
    );
    assert_eq!(
        err,
        "bad argument count 1 to read, expected at least 2 arguments\n\
         command \"nosuch\" not found\n\
         read: invalid option -- 'x'\n\
         read: option requires an argument -- 'P'\n"
    );
    assert_eq!(code, 1);
}

#[test]
fn success_keeps_exit_code_zero() {
    let (out, _, code) = stdout_of(&[
        "write -q -P 9 0 4k",
        "read -q -P 9 0 4k",
        "",
        "   ",
        "flush",
        "aio_write -q 0 512",
        "aio_flush",
        "help read",
    ]);
    assert!(out.starts_with("read [-abCqrv]"), "{out}");
    assert_eq!(code, 0);
}

#[test]
fn read_only_device_refuses_writes_before_parsing() {
    let dev: Arc<dyn zcow::device::BlockDevice> = {
        let m = zcow::storage::MemStorage::new();
        m.set_len(1 << 20).unwrap();
        Arc::new(RawDevice::new(Arc::new(m), true).unwrap())
    };
    let o = run_script(
        dev,
        &[
            "write -P 256 0 1",
            "discard 0 1",
            "aio_write 0 1",
            "read -q 0 1",
        ],
    );
    assert_eq!(o.stdout, "");
    assert_eq!(o.stderr, "zcow-io: Block node is read-only\n".repeat(3));
    assert_eq!(o.exit_code, 1);
}

#[test]
fn no_file_open() {
    let mut s = Session::new(None);
    let o = s.run_script(&["read 0 1", "help quit", "zrp 0 1", "close"]);
    assert_eq!(o.stdout, "quit -- exit the program\n");
    assert_eq!(o.stderr, "no file open, try 'help open'\n".repeat(3));
    assert_eq!(o.exit_code, 1);
}

#[test]
fn help_lists_every_command() {
    let (out, _, _) = stdout_of(&["help"]);
    for c in COMMANDS {
        assert!(out.contains(&format!("\n{} ", c.name)) || out.starts_with(c.name));
    }
    assert!(out.ends_with("\nUse 'help commandname' for extended help.\n"));
}

/// Words that make interesting command lines.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "-P",
            "-v",
            "-q",
            "-C",
            "-z",
            "-u",
            "-n",
            "-f",
            "-p",
            "-s",
            "-l",
            "-b",
            "-c",
            "-i",
            "-r",
            "--",
            "-",
            "-Pq",
            "-qv",
            "0",
            "512",
            "4k",
            "1M",
            "3G",
            "8E",
            "0x200",
            "1.5k",
            "-1",
            "0xab",
            "256",
            "x",
            "1e",
            "18446744073709551616",
            ".5k",
        ])
        .prop_map(String::from),
        "[0-9a-zA-Z.+\\-]{0,8}",
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

fn command_line() -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = COMMANDS
        .iter()
        .flat_map(|c| std::iter::once(c.name).chain(c.altname))
        .filter(|n| !matches!(*n, "open" | "o" | "sleep"))
        .collect();
    (
        prop::sample::select(names),
        prop::collection::vec(word(), 0..6),
    )
        .prop_map(|(n, ws)| format!("{n} {}", ws.join(" ")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parser_never_panics_on_any_text(line in "\\PC{0,40}") {
        let _ = parse_line(&line);
    }

    #[test]
    fn parser_never_panics_on_commands(line in command_line()) {
        if let Ok(Some(Command::Read { count, verify: Some(v), .. })) = parse_line(&line) {
            prop_assert!(v.offset + v.count <= count);
        }
    }

    #[test]
    fn session_never_panics(lines in prop::collection::vec(command_line(), 1..6)) {
        let dev = Arc::new(RawDevice::memory(64 << 10).unwrap());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let o = run_script(dev, &refs);
        prop_assert!(o.exit_code == 0 || o.exit_code == 1);
    }
}
