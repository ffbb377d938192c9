//! `zcow-io` on real zoned images (engine over qcow2): full stdout of
//! scenario scripts against expected text, with reopen between runs.

mod common;
use common::*;

const OPTS: &str = "zone.mode=host-managed,zone.size=1M,zone.capacity=768k,zone.conventional_zones=1,zone.max_open_zones=2,zone.max_active_zones=3,zone.max_append_bytes=8k";

fn image(d: &tempfile::TempDir) -> std::path::PathBuf {
    let p = d.path().join("z.qcow2");
    ok(
        s(&bin("zcow-img")),
        &["create", "-q", "-f", "qcow2", "-o", OPTS, s(&p), "6M"],
    );
    p
}

/// Run zcow-io with `-c` commands; stdout with the timing part of report
/// lines replaced by `TIME`, stderr, exit code.
fn zio(p: &std::path::Path, cmds: &[&str]) -> (String, String, i32) {
    let mut args = Vec::new();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(s(p));
    let o = run(s(&bin("zcow-io")), &args);
    let out: String = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| match l.find(" ops; ") {
            Some(i) => format!("{}TIME\n", &l[..i + 6]),
            None => format!("{l}\n"),
        })
        .collect();
    (
        out,
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

#[test]
fn open_limit_closes_least_recently_written_and_active_limit_refuses() {
    let d = tmp();
    let p = image(&d);
    let (out, err, rc) = zio(
        &p,
        &[
            "write -P 1 1M 4k",
            "write -P 2 2M 4k",
            "zap -p 3M 4k",
            "zrp 0 6",
            "zo 4M 1M",
            "zc 2M 1M",
            "zo 4M 1M",
            "zf 2M 1M",
            "zo 4M 1M",
            "zrp 0 6",
        ],
    );
    assert_eq!(
        out,
        "\
wrote 4096/4096 bytes at offset 1048576
4 KiB, 1 ops; TIME
wrote 4096/4096 bytes at offset 2097152
4 KiB, 1 ops; TIME
After zap done, the append sector is 0x1800
start: 0x0, len 0x800, cap 0x800, wptr 0x0, zcond:0, [type: 1]
start: 0x800, len 0x800, cap 0x600, wptr 0x808, zcond:4, [type: 2]
start: 0x1000, len 0x800, cap 0x600, wptr 0x1008, zcond:2, [type: 2]
start: 0x1800, len 0x800, cap 0x600, wptr 0x1808, zcond:2, [type: 2]
start: 0x2000, len 0x800, cap 0x600, wptr 0x2000, zcond:1, [type: 2]
start: 0x2800, len 0x800, cap 0x600, wptr 0x2800, zcond:1, [type: 2]
zone open failed: No space left on device
zone open failed: No space left on device
start: 0x0, len 0x800, cap 0x800, wptr 0x0, zcond:0, [type: 1]
start: 0x800, len 0x800, cap 0x600, wptr 0x808, zcond:4, [type: 2]
start: 0x1000, len 0x800, cap 0x600, wptr 0x1800, zcond:14, [type: 2]
start: 0x1800, len 0x800, cap 0x600, wptr 0x1808, zcond:2, [type: 2]
start: 0x2000, len 0x800, cap 0x600, wptr 0x2000, zcond:3, [type: 2]
start: 0x2800, len 0x800, cap 0x600, wptr 0x2800, zcond:1, [type: 2]
"
    );
    assert_eq!(err, "\
zcow-io: zone 4 (start 0x400000, EMPTY, wp 0x400000): open needs an active zone resource but 3 of 3 are in use
zcow-io: zone 4 (start 0x400000, EMPTY, wp 0x400000): open needs an active zone resource but 3 of 3 are in use
");
    assert_eq!(rc, 1);
}

#[test]
fn capacity_boundary_full_zone_and_reset() {
    let d = tmp();
    let p = image(&d);
    let (out, err, rc) = zio(
        &p,
        &[
            "write -P 5 1M 0xbf000",
            "write 0x1bf000 0x2000",
            "write -P 6 0x1bf000 0x1000",
            "zrp 1M 1",
            "read -P 0 0x1c0000 0x40000",
            "write 0x1c0000 4k",
            "read -P 6 0x1bf000 4k",
            "zrs 1M 1M",
            "zrp 1M 1",
            "read -P 0 1M 4k",
        ],
    );
    assert_eq!(
        out,
        "\
wrote 782336/782336 bytes at offset 1048576
764 KiB, 1 ops; TIME
write failed: Invalid argument
wrote 4096/4096 bytes at offset 1830912
4 KiB, 1 ops; TIME
start: 0x800, len 0x800, cap 0x600, wptr 0xe00, zcond:14, [type: 2]
read 262144/262144 bytes at offset 1835008
256 KiB, 1 ops; TIME
write failed: No space left on device
read 4096/4096 bytes at offset 1830912
4 KiB, 1 ops; TIME
start: 0x800, len 0x800, cap 0x600, wptr 0x800, zcond:1, [type: 2]
read 4096/4096 bytes at offset 1048576
4 KiB, 1 ops; TIME
"
    );
    assert_eq!(err, "\
zcow-io: zone 1 (start 0x100000, IMP_OPEN, wp 0x1bf000): write of 0x2000 bytes at 0x1bf000 would pass the zone capacity (writable up to 0x1c0000)
zcow-io: zone 1 (start 0x100000, FULL, wp 0x1c0000): write of 0x1000 bytes at 0x1c0000 to a full zone
");
    assert_eq!(rc, 1);
}

#[test]
fn reopen_is_a_power_cycle() {
    let d = tmp();
    let p = image(&d);
    let (out, _, rc) = zio(
        &p,
        &[
            "write -P 7 1M 8k",
            "zo 2M 1M",
            "write 3M 4k",
            "zc 3M 1M",
            "zrp 1M 3",
        ],
    );
    assert_eq!(rc, 0);
    // Zone 1 was closed implicitly when zone 3 needed the second open slot.
    assert!(
        out.ends_with(
            "\
start: 0x800, len 0x800, cap 0x600, wptr 0x810, zcond:4, [type: 2]
start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:3, [type: 2]
start: 0x1800, len 0x800, cap 0x600, wptr 0x1808, zcond:4, [type: 2]
"
        ),
        "{out}"
    );
    // Next run: IMP_OPEN comes back CLOSED, EXP_OPEN with wp = start EMPTY.
    let (out, err, rc) = zio(
        &p,
        &["zrp 1M 3", "read -P 7 1M 8k", "read -P 0 0x102000 4k"],
    );
    assert_eq!(
        out,
        "\
start: 0x800, len 0x800, cap 0x600, wptr 0x810, zcond:4, [type: 2]
start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:1, [type: 2]
start: 0x1800, len 0x800, cap 0x600, wptr 0x1808, zcond:4, [type: 2]
read 8192/8192 bytes at offset 1048576
8 KiB, 1 ops; TIME
read 4096/4096 bytes at offset 1056768
4 KiB, 1 ops; TIME
"
    );
    assert_eq!((err.as_str(), rc), ("", 0));
}

#[test]
fn append_lands_at_the_wp_and_checks_its_arguments() {
    let d = tmp();
    let p = image(&d);
    let (out, err, rc) = zio(
        &p,
        &[
            "zap -p 1M 4k",
            "zap -p 1M 4k",
            "zap 1M 16k",
            "zap 0x101000 4k",
            "zap 0 4k",
            "zrp 1M 1",
        ],
    );
    assert_eq!(
        out,
        "\
After zap done, the append sector is 0x800
After zap done, the append sector is 0x808
zone append failed: Invalid argument
zone append failed: Invalid argument
zone append failed: Invalid argument
start: 0x800, len 0x800, cap 0x600, wptr 0x810, zcond:2, [type: 2]
"
    );
    assert_eq!(err, "\
zcow-io: zone 1 (start 0x100000, IMP_OPEN, wp 0x102000): append of 0x4000 bytes exceeds max_append_bytes 0x2000
zcow-io: zone 1 (start 0x100000, IMP_OPEN, wp 0x102000): append of 0x1000 bytes at 0x101000 is not at a zone start
zcow-io: zone 0 (start 0x0, NOT_WP, wp 0x0): append of 0x1000 bytes to a conventional zone
");
    assert_eq!(rc, 1);
}

mod common_nbd;

#[test]
fn nbd_uri_gives_the_same_output_as_the_file() {
    let d = tmp();
    let scripts: [&[&str]; 3] = [
        &[
            "write -P 1 1M 4k",
            "write -P 2 2M 4k",
            "zap -p 3M 4k",
            "zrp 0 6",
            "zo 4M 1M",
            "zc 2M 1M",
            "zf 2M 1M",
            "zo 4M 1M",
            "zrp 0 6",
            "read -P 1 1M 4k",
        ],
        &[
            "write -P 5 1M 0xbf000",
            "write 0x1bf000 0x2000",
            "write -P 6 0x1bf000 0x1000",
            "zrp 1M 1",
            "read -P 0 0x1c0000 0x40000",
            "write 0x1c0000 4k",
            "zrs 1M 1M",
            "zrp 1M 1",
            "read -P 0 1M 4k",
            "flush",
        ],
        &[
            "zap -p 1M 4k",
            "zap -p 1M 4k",
            "zap 1M 16k",
            "zap 0x101000 4k",
            "zap 0 4k",
            "zrp 1M 1",
            "write -z 0 64k",
            "discard 0 64k",
            "read -v 0x100000 32",
        ],
    ];
    for cmds in scripts {
        let file = image(&d);
        let served = d.path().join("served.qcow2");
        std::fs::copy(&file, &served).unwrap();
        let (fo, _, fc) = zio(&file, cmds);
        let srv = common_nbd::ServerProc::start(&served, &["-e", "0"]);
        let (no, _, nc) = zio(std::path::Path::new(&srv.uri()), cmds);
        drop(srv);
        assert_eq!(no, fo, "{cmds:?}");
        assert_eq!(nc, fc, "{cmds:?}");
        // Both images end in the same state.
        let (rf, _, _) = zio(&file, &["zrp 0 6", "read -v 0x100000 64"]);
        let (rs, _, _) = zio(&served, &["zrp 0 6", "read -v 0x100000 64"]);
        assert_eq!(rf, rs);
    }
}
