//! `zcow-img convert`, `compare`, `map`, `amend`, `measure` and
//! `create -o help`: byte-identical to qemu-img on plain images, and the
//! zoned behaviour (zone states after convert, write-pointer compare, zone
//! boundaries in map, amend refusals), also over nbd:// with zcow-nbd.

mod common;
mod common_nbd;
use common::*;
use std::path::Path;
use std::process::Output;

fn zimg(args: &[&str]) -> Output {
    run(s(&bin("zcow-img")), args)
}

fn out(o: &Output) -> (String, i32) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

/// Run the same arguments through qemu-img and zcow-img: same stdout and
/// exit code.
fn same_as_qemu(args: &[&str]) {
    let q = out(&run("qemu-img", args));
    let z = out(&zimg(args));
    assert_eq!(z, q, "zcow-img {args:?} differs from qemu-img");
}

/// A sparse raw file: data at 0 (64k), 1M (128k), 3M (a whole MiB), 5M (4k)
/// and one byte at 2M+700, in 8 MiB.
fn sample_raw(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("src.raw");
    ok("qemu-img", &["create", "-q", "-f", "raw", s(&p), "8M"]);
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -P 2 1M 128k",
            "-c",
            "write -P 3 3M 1M",
            "-c",
            "write -P 4 5M 4k",
            "-c",
            "write -P 5 0x200200 512",
            s(&p),
        ],
    );
    p
}

fn zone_conds(file: &str) -> Vec<(u64, String)> {
    let o = zimg(&["zone", "report", "--output", "json", file]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            (
                z["write-pointer"].as_u64().unwrap(),
                // QEMU spelling in the JSON (`closed`); the tests name
                // conditions as the human report does (`CLOSED`).
                z["condition"]
                    .as_str()
                    .unwrap()
                    .to_ascii_uppercase()
                    .replace('-', "_"),
            )
        })
        .collect()
}

#[test]
fn plain_images_match_qemu_img() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let d = tmp();
    let raw = sample_raw(d.path());
    let q = d.path().join("q.qcow2");
    let z = d.path().join("z.qcow2");
    ok("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&q)]);
    // zcow-img's own convert: qemu-img agrees on content, check is clean,
    // and the map is the same layout qemu-img writes.
    let o = zimg(&["convert", "-O", "qcow2", s(&raw), s(&z)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        ok("qemu-img", &["compare", s(&raw), s(&z)]),
        "Images are identical.\n"
    );
    ok("qemu-img", &["check", s(&z)]);
    let zr = d.path().join("z.raw");
    assert!(zimg(&["convert", "-O", "raw", s(&z), s(&zr)])
        .status
        .success());
    assert_eq!(std::fs::read(&zr).unwrap(), std::fs::read(&raw).unwrap());
    // A different image and a longer one.
    let other = d.path().join("other.raw");
    std::fs::copy(&raw, &other).unwrap();
    ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 9 6M 512", s(&other)],
    );
    let long = d.path().join("long.raw");
    std::fs::copy(&raw, &long).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&long)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let (r, q, z, other, long) = (s(&raw), s(&q), s(&z), s(&other), s(&long));
    for args in [
        &["compare", r, q][..],
        &["compare", "-s", r, q],
        &["compare", r, other],
        &["compare", other, r],
        &["compare", "-q", r, other],
        &["compare", r, long],
        &["compare", "-s", r, long],
        &["compare", "-f", "raw", "-F", "qcow2", r, q],
        &["compare", "-f", "qcow2", r, q],
        &["compare", r, "/nonexistent/x"],
        &["compare", r],
        &["compare", q, z],
        &["map", r],
        &["map", q],
        &["map", "--output=json", r],
        &["map", "--output=json", q],
        &["map", "--start-offset", "1M", "--max-length", "1M", q],
        &["measure", "-O", "qcow2", "--size", "1G"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "--size",
            "1G",
        ],
        &["measure", "-O", "qcow2", r],
        &["measure", "-O", "qcow2", "--output=json", q],
        &["measure", "-O", "raw", q],
        &["measure", "--size", "1G"],
        &["measure", "-O", "qcow2"],
        &["measure", "-O", "qcow2", "--size", "1G", r],
        &["amend", "-o", "lazy_refcounts=on", z],
        &["amend", "-o", "cluster_size=4k", z],
        &["amend", z],
        &["amend", "-f", "raw", "-o", "size=1", r],
        &[
            "convert",
            "--target-is-zero",
            "-O",
            "raw",
            r,
            "/nonexistent/t",
        ],
        &["convert", "-S", "1000", "-O", "raw", r, "/nonexistent/t"],
        &["convert", "-m", "20", "-O", "raw", r, "/nonexistent/t"],
        &["convert", "-O", "foo", r, "/nonexistent/t"],
    ] {
        same_as_qemu(args);
    }
    // A backing chain: depth and file names as qemu-img prints them.
    let ov = d.path().join("ov.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            q,
            "-F",
            "qcow2",
            s(&ov),
        ],
    );
    ok(
        "qemu-io",
        &["-c", "write -P 7 1M 4k", "-c", "write -z 2M 64k", s(&ov)],
    );
    same_as_qemu(&["map", "--output=json", s(&ov)]);
    same_as_qemu(&["map", s(&ov)]);
}

#[test]
fn convert_onto_zones_leaves_states_the_data_implies() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let d = tmp();
    let raw = sample_raw(d.path());
    let z = d.path().join("z.qcow2");
    let o = zimg(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        s(&raw),
        s(&z),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(zone_conds(s(&z)), expected_zones());
    let zr = d.path().join("back.raw");
    assert!(zimg(&["convert", "-O", "raw", s(&z), s(&zr)])
        .status
        .success());
    assert_eq!(std::fs::read(&zr).unwrap(), std::fs::read(&raw).unwrap());
    assert_eq!(out(&zimg(&["compare", s(&raw), s(&z)])).1, 0);
    // Zoned -> zoned keeps pointers, conditions and the READ_ONLY fault.
    assert!(zimg(&["zone", "set-cond", s(&z), "6", "readonly"])
        .status
        .success());
    let z2 = d.path().join("z2.qcow2");
    let o = zimg(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed",
        s(&z),
        s(&z2),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut want = expected_zones();
    want[6].1 = "READ_ONLY".into();
    assert_eq!(zone_conds(s(&z2)), want);
    assert_eq!(
        out(&zimg(&["compare", s(&z), s(&z2)])),
        ("Images are identical.\n".into(), 0)
    );
    // -S 0 fills every zone; the write pointers then differ.
    let z3 = d.path().join("z3.qcow2");
    assert!(zimg(&[
        "convert",
        "-S",
        "0",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        s(&raw),
        s(&z3)
    ])
    .status
    .success());
    assert!(zone_conds(s(&z3)).iter().all(|(_, c)| c == "FULL"));
    assert_eq!(
        out(&zimg(&["compare", s(&z), s(&z3)])),
        (
            "Write pointer mismatch in zone 0 at offset 0: 0x10000 CLOSED vs 0x100000 FULL!\n"
                .into(),
            1
        )
    );
    assert_eq!(
        out(&zimg(&["compare", "--ignore-zones", s(&z), s(&z3)])).1,
        0
    );
    // Zoned map: a line per zone and runs split at write pointers.
    let (map, code) = out(&zimg(&["map", s(&z)]));
    assert_eq!(code, 0);
    assert!(map.contains(
        "Zone 3 start 0x300000 length 0x100000 capacity 0x100000 wp 0x400000 seq-write-required FULL\n0x300000        0x100000"
    ), "{map}");
    let (json, _) = out(&zimg(&["map", "--output=json", s(&z)]));
    assert!(json.contains(
        "{ \"start\": 65536, \"length\": 983040, \"depth\": 0, \"present\": false, \"zero\": true, \"data\": false, \"compressed\": false, \"zone\": 0}"
    ), "{json}");
    // -c onto a zoned target is refused before anything is created (zoned
    // images hold no compressed clusters), not silently ignored.
    let c = d.path().join("c.qcow2");
    let o = zimg(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        s(&raw),
        s(&c),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Compression not supported for zoned images"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!c.exists());
    let o = zimg(&["convert", "-c", "-n", "-O", "qcow2", s(&raw), s(&z)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("zoned"));
}

/// The zones of [`sample_raw`] converted with 1 MiB zones.
fn expected_zones() -> Vec<(u64, String)> {
    let m = 1u64 << 20;
    vec![
        (0x10000, "CLOSED".into()),
        (m + 0x20000, "CLOSED".into()),
        (2 * m + 0x1000, "CLOSED".into()),
        (4 * m, "FULL".into()),
        (4 * m, "EMPTY".into()),
        (5 * m + 0x1000, "CLOSED".into()),
        (6 * m, "EMPTY".into()),
        (7 * m, "EMPTY".into()),
    ]
}

#[test]
fn amend_zone_limits_and_refusals() {
    let d = tmp();
    let z = d.path().join("z.qcow2");
    let zs = s(&z);
    assert!(zimg(&[
        "create",
        "-q",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        zs,
        "8M"
    ])
    .status
    .success());
    let io = |cmd: &str| run(s(&bin("zcow-io")), &["-c", cmd, zs]);
    for k in 0..3u64 {
        assert!(io(&format!("write {} 4k", k << 20)).status.success());
    }
    // Three zones are CLOSED: a limit of 2 would break them.
    let o = zimg(&["amend", "-o", "zone.max_active_zones=2", zs]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 zones are partly written"));
    let o = zimg(&["amend", "-o", "zone.max_active_zones=3", zs]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info = out(&zimg(&["info", zs])).0;
    assert!(
        info.contains("    max open zones: 3\n    max active zones: 3\n"),
        "{info}"
    );
    for bad in [
        "zone.max_open_zones=5",
        "zone.max_append_bytes=1000",
        "zone.max_append_bytes=1M",
        "zone.size=2M",
    ] {
        assert_eq!(
            zimg(&["amend", "-o", bad, zs]).status.code(),
            Some(1),
            "{bad}"
        );
    }
    assert!(zimg(&["amend", "-o", "zone.max_append_bytes=4k", zs])
        .status
        .success());
    assert!(out(&zimg(&["info", zs]))
        .0
        .contains("max append bytes: 4096"));
    assert_eq!(
        out(&zimg(&["check", zs])).0.lines().next(),
        Some("No errors were found on the image.")
    );
}

#[test]
fn create_and_amend_help_list_options() {
    let (h, code) = out(&zimg(&["create", "-f", "qcow2", "-o", "help"]));
    assert_eq!(code, 0);
    assert!(h.starts_with(
        "Supported qcow2 options:\n  backing_file=<str>     - File name of a base image\n"
    ));
    for o in [
        "zone.mode",
        "zone.size",
        "zone.capacity",
        "zone.conventional_zones",
        "zone.max_open_zones",
        "zone.max_active_zones",
        "zone.max_append_bytes",
    ] {
        assert!(h.contains(&format!("  {o}=<")), "{o} missing:\n{h}");
    }
    assert_eq!(out(&zimg(&["create", "-o", "?"])).0, h);
    let (a, code) = out(&zimg(&["amend", "-o", "help"]));
    assert_eq!(code, 0);
    assert!(a.contains("zone.max_active_zones=<num>"));
}

#[test]
fn measure_counts_the_write_pointer_array() {
    let base = out(&zimg(&["measure", "-O", "qcow2", "--size", "1G"])).0;
    assert_eq!(
        base,
        "required size: 393216\nfully allocated size: 1074135040\n"
    );
    // 1024 zones of 1 MiB: an 8 KiB array in one 64 KiB cluster.
    let z = out(&zimg(&[
        "measure",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        "--size",
        "1G",
    ]))
    .0;
    assert_eq!(
        z,
        "required size: 458752\nfully allocated size: 1074200576\n"
    );
}

#[test]
fn nbd_uris_for_info_zone_report_map_compare_convert() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let d = tmp();
    let raw = sample_raw(d.path());
    let t = d.path().join("t.qcow2");
    assert!(zimg(&[
        "create",
        "-q",
        "-o",
        "zone.mode=host-managed,zone.size=1M",
        s(&t),
        "8M"
    ])
    .status
    .success());
    let srv = common_nbd::ServerProc::start(&t, &[]);
    let uri = srv.uri();
    // Load the export with zcow-img convert -n: zone by zone over NBD.
    let o = zimg(&["convert", "-n", s(&raw), &uri]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&zimg(&["compare", s(&raw), &uri])).1, 0);
    let wps: Vec<u64> = zone_conds(&uri).into_iter().map(|z| z.0).collect();
    let want: Vec<u64> = expected_zones().into_iter().map(|z| z.0).collect();
    assert_eq!(wps, want);
    let info = out(&zimg(&["info", &uri])).0;
    assert!(info.starts_with(&format!(
        "image: {uri}\nfile format: raw\nvirtual size: 8 MiB (8388608 bytes)\ndisk size: unavailable\nZoned information:\n"
    )), "{info}");
    let map = out(&zimg(&["map", &uri])).0;
    assert!(map.contains("Zone 7 start 0x700000"), "{map}");
    let back = d.path().join("back.raw");
    assert!(zimg(&["convert", "-O", "raw", &uri, s(&back)])
        .status
        .success());
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&raw).unwrap());
    drop(srv);
    // A plain export: map as qemu-img prints it.
    let srv = common_nbd::ServerProc::start(&raw, &["-f", "raw"]);
    let uri = srv.uri();
    same_as_qemu(&["map", "--output=json", &uri]);
    same_as_qemu(&["compare", s(&raw), &uri]);
}

#[test]
fn convert_options_and_zone_capacity() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let d = tmp();
    let raw = sample_raw(d.path());
    let bytes = std::fs::read(&raw).unwrap();
    // -W with 4 workers: same bytes.
    let w = d.path().join("w.qcow2");
    assert!(
        zimg(&["convert", "-W", "-m", "4", "-O", "qcow2", s(&raw), s(&w)])
            .status
            .success()
    );
    assert_eq!(out(&run("qemu-img", &["compare", s(&raw), s(&w)])).1, 0);
    // Two sources are concatenated.
    let cat = d.path().join("cat.raw");
    assert!(zimg(&["convert", s(&raw), s(&raw), s(&cat)])
        .status
        .success());
    assert_eq!(
        std::fs::read(&cat).unwrap(),
        [&bytes[..], &bytes[..]].concat()
    );
    // -n onto a target full of junk: the source's zero ranges are zeroed.
    let junk = d.path().join("junk.raw");
    std::fs::write(&junk, vec![0xeeu8; bytes.len()]).unwrap();
    assert!(zimg(&["convert", "-n", s(&raw), s(&junk)]).status.success());
    assert_eq!(std::fs::read(&junk).unwrap(), bytes);
    // ... unless the caller says the target is zero already.
    std::fs::write(&junk, vec![0xeeu8; bytes.len()]).unwrap();
    assert!(
        zimg(&["convert", "-n", "--target-is-zero", s(&raw), s(&junk)])
            .status
            .success()
    );
    assert_eq!(std::fs::read(&junk).unwrap()[0x10000], 0xee);
    // A smaller target is refused, as by qemu-img.
    let small = d.path().join("small.raw");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    same_as_qemu(&["convert", "-n", "-O", "raw", s(&raw), s(&small)]);
    // Conventional zones take the data as it is; zone capacity 512 KiB:
    // zone 3 (3M..4M is all data) cannot hold its second half.
    let z = d.path().join("cap.qcow2");
    let o = zimg(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M,zone.capacity=512k,zone.conventional_zones=2",
        s(&raw),
        s(&z),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("zone 3 (start 0x300000): data at byte 3670016 lies past the zone capacity"),
        "{err}"
    );
    // Without the full zone it fits: conventional zones NOT_WP, the rest
    // as the data implies.
    let part = d.path().join("part.raw");
    ok("qemu-img", &["create", "-q", "-f", "raw", s(&part), "4M"]);
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 4k",
            "-c",
            "write -P 2 3M 8k",
            s(&part),
        ],
    );
    let o = zimg(&[
        "convert",
        "-O",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M,zone.capacity=512k,zone.conventional_zones=2",
        s(&part),
        s(&z),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let conds: Vec<String> = zone_conds(s(&z)).into_iter().map(|z| z.1).collect();
    assert_eq!(conds, ["NOT_WP", "NOT_WP", "EMPTY", "CLOSED"]);
    assert_eq!(out(&zimg(&["compare", s(&part), s(&z)])).1, 0);
}
