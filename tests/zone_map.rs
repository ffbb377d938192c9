//! `zcow-img zone map` (SVG and text) and `zone report --output=blkzone`/`json`
//! on images whose zones were put in known states through zcow-io.

mod common;
use common::*;

fn zimg(args: &[&str]) -> std::process::Output {
    run(s(&bin("zcow-img")), args)
}

fn ok_stdout(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// 8 zones of 1 MiB: conventional, EMPTY, half written, finished, written
/// to capacity, EMPTY, OFFLINE, READ_ONLY. Every command reopens the image,
/// so conditions are what a power cycle leaves: a partly written zone is
/// CLOSED.
fn known_image(d: &tempfile::TempDir) -> std::path::PathBuf {
    let p = d.path().join("z.qcow2");
    ok_stdout(zimg(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M,zone.conventional_zones=1,zone.max_open_zones=4",
        s(&p),
        "8M",
    ]));
    let io = run(
        s(&bin("zcow-io")),
        &[
            "-c",
            "write -P 1 0 4k",
            "-c",
            "write -P 2 2M 512k",
            "-c",
            "zf 3M 1M",
            "-c",
            "write -P 3 4M 1M",
            s(&p),
        ],
    );
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    ok_stdout(zimg(&["zone", "set-cond", s(&p), "6", "offline"]));
    ok_stdout(zimg(&["zone", "set-cond", s(&p), "7", "readonly"]));
    p
}

#[test]
fn svg_map_has_one_cell_per_zone_with_colours_and_counts() {
    let d = tmp();
    let p = known_image(&d);
    let out = d.path().join("map.svg");
    ok_stdout(zimg(&["zone", "map", "-o", s(&out), s(&p)]));
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    let cells: Vec<&str> = svg
        .lines()
        .filter(|l| l.starts_with("<g class=\"cell "))
        .collect();
    assert_eq!(cells.len(), 8, "{svg}");
    let class = |i: usize| cells[i].split('"').nth(1).unwrap().to_string();
    assert_eq!(
        (0..8).map(class).collect::<Vec<_>>(),
        [
            "cell conventional",
            "cell empty",
            "cell closed",
            "cell full",
            "cell full",
            "cell empty",
            "cell offline",
            "cell read-only"
        ]
    );
    // Zone 2 is half written: its fill bar is half the cell.
    assert!(cells[2].contains("(50% written)"), "{}", cells[2]);
    assert!(cells[2].contains("class=\"fill\""));
    assert!(
        !cells[1].contains("class=\"fill\""),
        "an empty zone has no fill bar"
    );
    assert!(cells[6].contains("fill=\"#e03131\""), "offline is red");
    // Title with the geometry and limits, counts, legend.
    assert!(svg.contains(
        "8 zones of 1 MiB (capacity 1 MiB), 1 conventional, max open 4, max active unlimited"
    ));
    assert!(svg.contains("one cell per zone"));
    assert!(svg.contains("CONVENTIONAL 1, EMPTY 2, CLOSED 1, FULL 2, READ_ONLY 1, OFFLINE 1"));
    assert_eq!(svg.matches("<g class=\"legend ").count(), 8);
    assert!(svg.contains("<g class=\"legend full\">"));
}

#[test]
fn text_map_and_large_images_aggregate() {
    let d = tmp();
    let p = known_image(&d);
    let t = ok_stdout(zimg(&["zone", "map", "--output=text", s(&p)]));
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[1], "one cell per zone");
    assert_eq!(lines[2], "0 c.CFF.XR");
    assert_eq!(
        lines[3],
        "c CONVENTIONAL 1  . EMPTY 2  o IMP_OPEN 0  O EXP_OPEN 0  C CLOSED 1  F FULL 2  R READ_ONLY 1  X OFFLINE 1"
    );
    // 100,000 zones: cells aggregate, and the map says so.
    let big = d.path().join("big.qcow2");
    ok_stdout(zimg(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=64k,cluster_size=64k",
        s(&big),
        "6400000k",
    ]));
    let out = d.path().join("big.svg");
    ok_stdout(zimg(&["zone", "map", "-o", s(&out), s(&big)]));
    let svg = std::fs::read_to_string(&out).unwrap();
    let cells = svg
        .lines()
        .filter(|l| l.starts_with("<g class=\"cell "))
        .count();
    assert_eq!(cells, 14_286);
    assert!(svg.contains("each cell aggregates 7 consecutive zones"));
    assert!(svg.contains("EMPTY 100000"));
}

#[test]
fn zone_map_refuses_a_plain_image() {
    let d = tmp();
    let p = d.path().join("plain.qcow2");
    ok_stdout(zimg(&["create", "-f", "qcow2", s(&p), "1M"]));
    let o = zimg(&["zone", "map", s(&p)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a zoned device"));
}

#[test]
fn blkzone_report_layout() {
    let d = tmp();
    let p = known_image(&d);
    let t = ok_stdout(zimg(&[
        "zone",
        "report",
        "--output=blkzone",
        "--count",
        "4",
        s(&p),
    ]));
    assert_eq!(
        t,
        "  start: 0x000000000, len 0x000800, cap 0x000800, wptr 0x000000 reset:0 non-seq:0, zcond: 0(nw) [type: 1(CONVENTIONAL)]\n\
         \x20 start: 0x000000800, len 0x000800, cap 0x000800, wptr 0x000000 reset:0 non-seq:0, zcond: 1(em) [type: 2(SEQ_WRITE_REQUIRED)]\n\
         \x20 start: 0x000001000, len 0x000800, cap 0x000800, wptr 0x000400 reset:0 non-seq:0, zcond: 4(cl) [type: 2(SEQ_WRITE_REQUIRED)]\n\
         \x20 start: 0x000001800, len 0x000800, cap 0x000800, wptr 0x000800 reset:0 non-seq:0, zcond:14(fu) [type: 2(SEQ_WRITE_REQUIRED)]\n"
    );
    let j = ok_stdout(zimg(&[
        "zone",
        "report",
        "--output=json",
        "--count",
        "2",
        s(&p),
    ]));
    // QEMU's layout: 4-space indent, hyphenated keys and values.
    assert!(j.contains("\n    \"zones\": [\n"), "{j}");
    assert!(j.contains("\"condition\": \"not-wp\""), "{j}");
    assert!(j.contains("\"write-pointer\": 1048576"), "{j}");
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["zones-by-condition"]["empty"], 1);
}
