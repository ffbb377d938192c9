//! `zcow-img` commands end to end: create, info, zone report, zone set-cond.

mod common;
use common::*;

fn zimg(args: &[&str]) -> std::process::Output {
    run(s(&bin("zcow-img")), args)
}

#[test]
fn readme_example_and_zone_commands() {
    let d = tmp();
    let p = d.path().join("disk.qcow2");
    let o = zimg(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=64M,zone.conventional_zones=2,zone.max_open_zones=8",
        s(&p),
        "4G",
    ]);
    assert!(o.status.success());
    let info = String::from_utf8(zimg(&["info", s(&p)]).stdout).unwrap();
    let zoned: Vec<&str> = info
        .lines()
        .skip_while(|l| *l != "Zoned information:")
        .take(12)
        .collect();
    assert_eq!(
        zoned,
        [
            "Zoned information:",
            "    model: host-managed",
            "    zone size: 64 MiB (67108864 bytes)",
            "    zone capacity: 64 MiB (67108864 bytes)",
            "    zone count: 64",
            "    conventional zones: 2",
            "    max open zones: 8",
            "    max active zones: 0 (unlimited)",
            "    max append bytes: 65536",
            "    metadata offset: 0x40000",
            "    metadata size: 512",
            "    zones by condition: NOT_WP 2, EMPTY 62",
        ]
    );
    // Write through zcow-io, then the persistent report shows the result.
    let io = run(
        s(&bin("zcow-io")),
        &["-c", "write -P 1 128M 1M", "-c", "zf 192M 64M", s(&p)],
    );
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    let r = String::from_utf8(
        zimg(&["zone", "report", "--offset", "64M", "--count", "4", s(&p)]).stdout,
    )
    .unwrap();
    let lines: Vec<&str> = r.lines().collect();
    assert_eq!(lines.len(), 6, "{r}");
    assert!(lines[1].ends_with("conventional        NOT_WP"), "{r}");
    assert!(
        lines[2].contains("0x8100000") && lines[2].ends_with("CLOSED"),
        "{r}"
    );
    assert!(lines[3].ends_with("FULL"), "{r}");
    assert_eq!(lines[5], "4 zones: NOT_WP 1, EMPTY 1, CLOSED 1, FULL 1");
    let j: serde_json::Value =
        serde_json::from_slice(&zimg(&["zone", "report", "--output", "json", s(&p)]).stdout)
            .unwrap();
    assert_eq!(j["zones"].as_array().unwrap().len(), 64);
    assert_eq!(j["zones-by-condition"]["closed"], 1);
    assert_eq!(j["zones"][2]["write-pointer"], 0x8100000u64);
    assert_eq!(j["zones"][2]["condition"], "closed");

    // Fault conditions are persistent and visible to zcow-io.
    let o = zimg(&["zone", "set-cond", s(&p), "5", "offline"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "zone 5: OFFLINE\n");
    let io = run(s(&bin("zcow-io")), &["-c", "read 320M 4k", s(&p)]);
    assert_eq!(io.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&io.stdout),
        "read failed: Input/output error\n"
    );
    let o = zimg(&["zone", "set-cond", s(&p), "6", "readonly"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "zone 6: READ_ONLY\n");
    let io = run(s(&bin("zcow-io")), &["-c", "write 384M 4k", s(&p)]);
    assert_eq!(
        String::from_utf8_lossy(&io.stdout),
        "write failed: Operation not permitted\n"
    );
    let o = zimg(&["zone", "set-cond", s(&p), "5", "clear"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "zone 5: EMPTY\n");
    let o = zimg(&["zone", "set-cond", s(&p), "99", "offline"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("zone 99 does not exist"));
}

#[test]
fn open_errors_are_reported_like_qemu_img() {
    let d = tmp();
    let p = d.path().join("bad.qcow2");
    std::fs::write(&p, b"not an image at all, just some bytes........................................................................").unwrap();
    // Probed as raw, as qemu-img does; with -f qcow2 it is an error.
    let o = zimg(&["info", s(&p)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("file format: raw\n"));
    let o = zimg(&["info", "-f", "qcow2", s(&p)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "zcow-img: Could not open '{}': Image is not in qcow2 format\n",
            s(&p)
        )
    );
    let o = zimg(&["create", "-f", "qcow2", s(&p), "12Q"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "zcow-img: Invalid image size specified: '12Q'.\n"
    );
}

#[test]
fn check_and_repair_commands_are_wired_like_qemu_img() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    assert!(zimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        s(&p),
        "16M"
    ])
    .status
    .success());
    let o = zimg(&["check", s(&p)]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("No errors were found on the image.\n"));
    let o = zimg(&["check", "-q", s(&p)]);
    assert_eq!((o.status.code(), o.stdout.is_empty()), (Some(0), true));
    let o = zimg(&["check", "-r", "foo", s(&p)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "zcow-img: --repair (-r) expects 'leaks' or 'all' not 'foo'\nTry 'zcow-img check --help' for more info\n"
    );
    let o = zimg(&["info", "--output=xml", s(&p)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "zcow-img: --output expects 'human' or 'json' not 'xml'\nTry 'zcow-img info --help' for more info\n"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&zimg(&["check", "--output=json", s(&p)]).stdout).unwrap();
    assert_eq!(j["zoned"]["zones"], 16);
    assert_eq!(j["check-errors"], 0);
    // A wp pointing outside its zone: check exits 2, repair fixes it, the
    // next check is clean.
    let mut b = std::fs::read(&p).unwrap();
    let pos = b
        .windows(4)
        .position(|w| w == [0, 0x7a, 0x62, 0x64])
        .unwrap()
        + 8;
    let off = u64::from_be_bytes(b[pos + 48..pos + 56].try_into().unwrap()) as usize;
    b[off + 8 * 3..off + 8 * 4].copy_from_slice(&(7u64 << 20).to_be_bytes());
    std::fs::write(&p, &b).unwrap();
    assert_eq!(zimg(&["check", s(&p)]).status.code(), Some(2));
    let dry = zimg(&["repair", "--dry-run", s(&p)]);
    assert!(String::from_utf8_lossy(&dry.stderr)
        .contains("zone 3: write pointer 0x700000 outside the zone"));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("Dry run: nothing was written"));
    assert_eq!(
        zimg(&["check", s(&p)]).status.code(),
        Some(2),
        "dry run changed nothing"
    );
    let bk = d.path().join("backup.bin");
    let r = zimg(&["repair", "--backup", s(&bk), s(&p)]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(zimg(&["check", s(&p)]).status.code(), Some(0));
    // Undo restores the broken state.
    assert!(zimg(&["repair", "--undo", s(&bk), s(&p)]).status.success());
    assert_eq!(zimg(&["check", s(&p)]).status.code(), Some(2));
}
