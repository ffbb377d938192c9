//! Zoned corruption suite: each zoned problem is detected with its exact
//! message, repaired, and a second check is clean; data below every write
//! pointer is unchanged by the repair.

mod common;

use std::path::{Path, PathBuf};
use zcow::check::{
    run_check, run_repair, undo_repair, CheckOptions, OutputFormat, RepairMode, RepairOptions,
};
use zcow::format::create::{create, CreateOptions};
use zcow::format::wp::WpEntry;
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::FileStorage;

const MIB: u64 = 1 << 20;
const ZONE: u64 = 16 * MIB;

/// The shared zoned fixture, flushed and synced.
fn zoned_image(dir: &Path) -> PathBuf {
    let p = dir.join("z.qcow2");
    let img = common::zoned_check_fixture(&p);
    img.flush().unwrap();
    img.sync_file().unwrap();
    p
}

fn check(p: &Path, repair: Option<RepairMode>, json: bool) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_check(
        p,
        &CheckOptions {
            repair,
            output: if json {
                OutputFormat::Json
            } else {
                OutputFormat::Human
            },
            display_name: Some("z.qcow2".into()),
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn patch(p: &Path, off: u64, b: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(b, off)
        .unwrap();
}

fn read(p: &Path, off: u64, n: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; n];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

/// Offset of the zoned extension body in the file.
fn ext_body(p: &Path) -> u64 {
    let c0 = read(p, 0, 4096);
    let mut off = 112usize;
    loop {
        let magic = u32::from_be_bytes(c0[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(c0[off + 4..off + 8].try_into().unwrap()) as usize;
        assert_ne!(magic, 0, "no zoned extension");
        if magic == 0x007a_6264 {
            return off as u64 + 8;
        }
        off += 8 + len.div_ceil(8) * 8;
    }
}

fn wp_array(p: &Path) -> u64 {
    u64::from_be_bytes(read(p, ext_body(p) + 48, 8).try_into().unwrap())
}

fn guest(p: &Path, off: u64, n: usize) -> Vec<u8> {
    let img = Qcow2::open_path(
        p,
        &OpenOptions {
            read_only: true,
            check_mode: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = vec![0u8; n];
    img.read(off, &mut b).unwrap();
    b
}

/// Corrupt, expect `msg` and `code`, repair with `mode`, expect clean, and
/// the data below the write pointers intact.
fn case(name: &str, corrupt: impl Fn(&Path), code: i32, msg: &str, mode: RepairMode) {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    corrupt(&p);
    let (c, out, err) = check(&p, None, false);
    assert_eq!(c, code, "{name}: exit code\n{out}{err}");
    assert!(
        err.lines().any(|l| l == msg),
        "{name}: expected line {msg:?} in\n{err}"
    );
    let (c, out, err) = check(&p, Some(mode), false);
    assert_eq!(c, 0, "{name}: repair\n{out}{err}");
    assert!(
        out.contains("Double checking the fixed image now..."),
        "{name}: {out}"
    );
    let (c, out, err) = check(&p, None, false);
    assert_eq!(c, 0, "{name}: after repair\n{out}{err}");
    assert!(err.is_empty(), "{name}: {err}");
    assert_eq!(
        guest(&p, 0, 65536),
        vec![0x11; 65536],
        "{name}: zone 0 data"
    );
    assert_eq!(
        guest(&p, ZONE, 3 * 65536),
        vec![0x22; 3 * 65536],
        "{name}: zone 1 data"
    );
}

#[test]
fn check_zoned_clean_image() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    let (c, out, err) = check(&p, None, false);
    assert_eq!((c, err.as_str()), (0, ""), "{out}");
    assert!(
        out.starts_with("No errors were found on the image.\n"),
        "{out}"
    );
    let (c, out, _) = check(&p, None, true);
    assert_eq!(c, 0);
    assert!(out.contains("\"zoned\": {"), "{out}");
    assert!(out.contains("\"wp-byte-order\": \"big-endian\""), "{out}");
    assert!(out.contains("\"zones\": 4"), "{out}");
}

#[test]
fn check_zoned_wp_outside_zone() {
    case(
        "wp outside zone",
        |p| patch(p, wp_array(p) + 16, &(3 * ZONE + 4096).to_be_bytes()),
        2,
        "ERROR zoned: zone 2: write pointer 0x3001000 outside the zone [0x2000000, 0x3000000]",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_conventional_bit_on_sequential_zone() {
    case(
        "conv bit",
        |p| patch(p, wp_array(p) + 24, &((3 * ZONE) | 1 << 59).to_be_bytes()),
        2,
        "ERROR zoned: zone 3: conventional bit set on a sequential zone",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_conventional_bit_missing() {
    case(
        "conv bit missing",
        |p| patch(p, wp_array(p), &0u64.to_be_bytes()),
        2,
        "ERROR zoned: zone 0: conventional bit missing on a conventional zone",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_reserved_bits() {
    case(
        "reserved bits",
        |p| patch(p, wp_array(p) + 16, &((2 * ZONE) | 1 << 62).to_be_bytes()),
        2,
        "ERROR zoned: zone 2: reserved bits 62-63 set (entry 0x4000000002000000)",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_little_endian_array() {
    case(
        "little endian",
        |p| {
            let a = wp_array(p);
            let raw = read(p, a, 32);
            let le: Vec<u8> = raw
                .chunks(8)
                .flat_map(|c| u64::from_be_bytes(c.try_into().unwrap()).to_le_bytes())
                .collect();
            patch(p, a, &le);
        },
        2,
        "ERROR zoned: write-pointer array is little-endian (host order of the QEMU patch series v3-v9); zcow stores it big-endian",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_nr_zones_mismatch() {
    case(
        "nr_zones",
        |p| patch(p, ext_body(p) + 24, &5u32.to_be_bytes()),
        2,
        "ERROR zoned: nr_zones is 5 but a 67108864-byte disk with 16777216-byte zones has 4",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_bit5_clear_with_extension() {
    case(
        "bit 5 clear",
        |p| patch(p, 79, &[0]),
        2,
        "ERROR zoned: zoned header extension present but incompatible feature bit 5 (zoned format) is clear",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_reserved_extension_bytes() {
    case(
        "ext reserved",
        |p| patch(p, ext_body(p) + 1, &[1]),
        2,
        "ERROR zoned: reserved bytes 1-3 of the extension are not zero ([01, 00, 00])",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_stale_cluster_past_wp() {
    case(
        "stale",
        |p| {
            // Data written at zone 1 + 1 MiB, wp left at 192 KiB (a crash
            // between the data and the wp update).
            let img = Qcow2::open_path(p, &OpenOptions::default()).unwrap();
            img.write(ZONE + MIB, &vec![0x33; 65536]).unwrap();
            img.flush().unwrap();
        },
        3,
        "Leaked zone cluster: zone 1 guest offset 0x1100000 (host cluster 10) is at or past the write pointer 0x1030000",
        RepairMode::Leaks,
    );
}

#[test]
fn check_zoned_wp_past_data() {
    case(
        "wp past data",
        |p| patch(p, wp_array(p) + 16, &(2 * ZONE + MIB).to_be_bytes()),
        3,
        "Leaked zone 2: write pointer 0x2100000 is past the zone's data, which ends at 0x2000000",
        RepairMode::Leaks,
    );
}

#[test]
fn check_zoned_array_refcount_zero() {
    case(
        "array refcount 0",
        |p| {
            // Refblock at cluster 2; the array is at cluster 4 (16-bit entries).
            let c = wp_array(p) / 65536;
            patch(p, 0x20000 + 2 * c, &[0, 0]);
        },
        2,
        "ERROR cluster 4 refcount=0 reference=1",
        RepairMode::All,
    );
}

#[test]
fn check_zoned_unrepairable_limits() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    patch(&p, ext_body(&p) + 32, &9u32.to_be_bytes());
    let (c, _, err) = check(&p, None, false);
    assert_eq!(c, 2);
    assert!(err.contains("ERROR zoned: zone limits max_open_zones 9 / max_active_zones 0 do not fit the 3 sequential zones"), "{err}");
    let (c, _, _) = check(&p, Some(RepairMode::All), false);
    assert_eq!(c, 2, "not derivable: stays");
}

#[test]
fn check_zoned_forbidden_snapshot_and_missing_extension() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    // Turn the extension into an unknown one: bit 5 set, no extension.
    patch(&p, ext_body(&p) - 8, &0x1234_5678u32.to_be_bytes());
    let (c, _, err) = check(&p, None, false);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("ERROR zoned: incompatible feature bit 5 (zoned format) is set but the image has no zoned header extension"), "{err}");
    assert!(
        err.contains("Leaked cluster 4 refcount=1 reference=0"),
        "{err}"
    );
    // -r all clears the bit (a plain qcow2 image is left) and frees the
    // array nothing refers to any more.
    let (c, _, err) = check(&p, Some(RepairMode::All), false);
    assert_eq!(c, 0, "{err}");
    assert_eq!(read(&p, 79, 1), [0]);
}

#[test]
fn check_zoned_array_aliasing_data() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    // Point zone 2's first guest cluster at the WP array cluster.
    let arr = wp_array(&p);
    let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
    img.write(2 * ZONE, &[0x44; 512]).unwrap();
    img.flush().unwrap();
    let hosts = img.allocated_clusters(2 * ZONE, 65536).unwrap();
    drop(img);
    let (_, host) = hosts[0];
    // Find the L2 entry holding `host` and redirect it.
    let bytes = std::fs::read(&p).unwrap();
    let needle = (host | 1 << 63).to_be_bytes();
    let at = bytes.windows(8).position(|w| w == needle).unwrap();
    patch(&p, at as u64, &(arr | 1 << 63).to_be_bytes());
    let (c, _, err) = check(&p, None, false);
    assert_eq!(c, 2);
    assert!(
        err.contains(&format!(
            "ERROR zoned: write-pointer array cluster {} overlaps other metadata or data",
            arr / 65536
        )),
        "{err}"
    );
    // Repair never raises the refcount to make the alias look legal: the
    // guest entry gets a copy of the cluster, the array keeps its own, and
    // the guest range is reported lost.
    let array_before = read(&p, arr, 32);
    let (c, _, err) = check(&p, Some(RepairMode::All), false);
    assert_eq!(c, 0, "{err}");
    assert!(
        !err.contains("Repairing cluster 10 refcount=1 reference=2"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "cluster {} is also metadata; the guest's view of it was copied",
            arr / 65536
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "zcow: Lost guest bytes 0x2000000-0x200ffff: its L2 entry pointed at metadata"
        ),
        "{err}"
    );
    assert_eq!(read(&p, arr, 32), array_before, "the array is untouched");
    assert_eq!(check(&p, None, false).0, 0);
}

#[test]
fn check_repair_dry_run_backup_and_undo() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    patch(&p, wp_array(&p) + 24, &((3 * ZONE) | 1 << 59).to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    // Dry run: nothing changes.
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_repair(
        &p,
        &RepairOptions {
            dry_run: true,
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Dry run: would rewrite"), "{out}");
    assert_eq!(std::fs::read(&p).unwrap(), before, "dry run wrote");
    // Real repair with a backup, then undo.
    let bk = d.path().join("undo.bin");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_repair(
        &p,
        &RepairOptions {
            backup: Some(bk.clone()),
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_ne!(std::fs::read(&p).unwrap(), before);
    assert_eq!(check(&p, None, false).0, 0);
    undo_repair(&p, &bk).unwrap();
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "undo restores the image"
    );
}

#[test]
fn check_zoned_json_layout() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    patch(&p, wp_array(&p) + 24, &((3 * ZONE) | 1 << 59).to_be_bytes());
    let (c, out, _) = check(&p, None, true);
    assert_eq!(c, 2);
    assert_eq!(
        out,
        "{\n    \"image-end-offset\": 655360,\n    \"zoned\": {\n        \"zones\": 4,\n        \"corruptions\": 1,\n        \"conventional-zones\": 1\n    },\n    \"total-clusters\": 1024,\n    \"corruptions\": 1,\n    \"check-errors\": 0,\n    \"allocated-clusters\": 4,\n    \"filename\": \"z.qcow2\",\n    \"format\": \"qcow2\"\n}\n",
        "QDict order; no wp-byte-order when no byte order makes every entry valid"
    );
}

#[test]
fn check_zoned_finished_zone_is_clean() {
    // A finished zone has its wp at the zone end without data there.
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    patch(&p, wp_array(&p) + 16, &(3 * ZONE).to_be_bytes());
    let (c, out, err) = check(&p, None, false);
    assert_eq!((c, err.as_str()), (0, ""), "{out}");
}

#[test]
fn check_progress_draws_a_bar_on_a_terminal() {
    // `script` runs the command on a pseudo-terminal (util-linux).
    if !common::have("script") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    let cmd = format!(
        "{} check -p {}",
        env!("CARGO_BIN_EXE_zcow-img"),
        p.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tty = String::from_utf8_lossy(&out.stdout);
    // The bar ends at 100 % and stays, on its own line, above the summary
    // (tests/img_progress.rs covers every -p job).
    let end = tty.rfind("] 100%").unwrap_or_else(|| panic!("{tty:?}"));
    assert!(
        tty[end..].contains("\r\nNo errors were found on the image.\r\n"),
        "{tty:?}"
    );
}

#[test]
fn check_progress_prints_nothing_on_a_pipe() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    let mut out = Vec::new();
    let mut err = Vec::new();
    let c = run_check(
        &p,
        &CheckOptions {
            progress: true,
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(c, 0);
    assert!(err.is_empty());
    assert_eq!(
        String::from_utf8(out).unwrap().lines().next(),
        Some("No errors were found on the image.")
    );
}

/// 20,000 zones of 64 KiB (4 KiB clusters): the array spans three of the
/// chunks check reads it in, so findings in later chunks, zones without any
/// L2 table, and a whole-array byte-order rewrite are all exercised.
fn many_zones_image(dir: &Path) -> PathBuf {
    let p = dir.join("many.qcow2");
    let st = FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 20_000 * 65536,
            cluster_size: 4096,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(65536),
                conventional_zones: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
    for z in [1u64, 9000, 12345, 19999] {
        img.write(z * 65536, &vec![z as u8; 8192]).unwrap();
        img.write_wp_entries(z as u32, &[WpEntry::new(z * 65536 + 8192, false)])
            .unwrap();
    }
    img.flush().unwrap();
    img.sync_file().unwrap();
    p
}

fn wp_entries(p: &Path) -> Vec<WpEntry> {
    Qcow2::open_path(
        p,
        &OpenOptions {
            read_only: true,
            check_mode: true,
            ..Default::default()
        },
    )
    .unwrap()
    .read_wp_entries()
    .unwrap()
}

#[test]
fn check_zoned_findings_across_array_chunks() {
    let d = tempfile::tempdir().unwrap();
    let p = many_zones_image(d.path());
    let good = wp_entries(&p);
    let a = wp_array(&p);
    let z = |i: u64| i * 65536;
    // Zone 9001 (second chunk): conventional bit on a sequential zone.
    patch(
        &p,
        a + 9001 * 8,
        &WpEntry::new(z(9001), true).0.to_be_bytes(),
    );
    // Zone 12345 (second chunk): wp two zones away; data ends at +8 KiB.
    patch(&p, a + 12345 * 8, &z(12347).to_be_bytes());
    // Zone 17000 (third chunk, in an L2 range with no table at all): wp
    // past data that never reached the disk.
    patch(&p, a + 17000 * 8, &(z(17000) + 16384).to_be_bytes());
    let (c, out, err) = check(&p, None, false);
    assert_eq!(c, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "ERROR zoned: zone 9001: conventional bit set on a sequential zone",
            "ERROR zoned: zone 12345: write pointer 0x303b0000 outside the zone [0x30390000, 0x303a0000]",
            "Leaked zone 17000: write pointer 0x42684000 is past the zone's data, which ends at 0x42680000",
        ],
        "{err}"
    );
    let (c, out, err) = check(&p, Some(RepairMode::All), false);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = check(&p, None, false);
    assert_eq!((c, err.as_str()), (0, ""), "{out}");
    let mut want = good.clone();
    want[12345] = WpEntry::new(z(12345) + 8192, false);
    assert_eq!(wp_entries(&p), want);
    for i in [1u64, 9000, 12345, 19999] {
        assert_eq!(guest(&p, z(i), 8192), vec![i as u8; 8192], "zone {i}");
    }
}

#[test]
fn check_zoned_little_endian_array_spanning_chunks() {
    let d = tempfile::tempdir().unwrap();
    let p = many_zones_image(d.path());
    let good = wp_entries(&p);
    let a = wp_array(&p);
    let raw = read(&p, a, 20_000 * 8);
    let le: Vec<u8> = raw
        .chunks(8)
        .flat_map(|c| u64::from_be_bytes(c.try_into().unwrap()).to_le_bytes())
        .collect();
    patch(&p, a, &le);
    let (c, _, err) = check(&p, None, true);
    assert_eq!(c, 2, "{err}");
    let (c, out, err) = check(&p, Some(RepairMode::All), false);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(read(&p, a, 20_000 * 8), raw, "array rewritten big-endian");
    assert_eq!(wp_entries(&p), good);
    let (c, out, err) = check(&p, None, false);
    assert_eq!((c, err.as_str()), (0, ""), "{out}");
}

/// A fresh zoned image with preallocation=metadata maps every cluster up
/// front: check finds it clean (no "Leaked zone cluster" for the zeroed
/// preallocation), and data really written past a wp is still found.
#[test]
fn check_zoned_preallocated_metadata_is_clean() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("z.qcow2");
    let st = FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 64 * MIB,
            preallocation: zcow::format::create::Preallocation::Metadata,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(ZONE),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let (c, out, err) = check(&p, None, false);
    assert_eq!((c, err.as_str()), (0, ""), "{out}");
    assert!(
        out.starts_with("No errors were found on the image."),
        "{out}"
    );
    // -r leaks frees nothing.
    let before = std::fs::read(&p).unwrap();
    let (c, _, err) = check(&p, Some(RepairMode::Leaks), false);
    assert_eq!((c, err.as_str()), (0, ""));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "-r leaks changed the image"
    );
    // Data written past zone 1's wp (a crash before the wp update).
    let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
    img.write(ZONE + MIB, &vec![0x33; 65536]).unwrap();
    img.flush().unwrap();
    drop(img);
    let (c, _, err) = check(&p, None, false);
    assert_eq!(c, 3, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("Leaked zone cluster: zone 1 guest offset 0x1100000"),
        "{err}"
    );
}

fn repair(p: &Path, opts: &RepairOptions) -> (anyhow::Result<i32>, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let r = run_repair(p, opts, &mut out, &mut err);
    (
        r,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// The dry run says "would" everywhere and never claims a repair.
#[test]
fn repair_dry_run_says_would() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    patch(&p, wp_array(&p) + 16, &(2 * ZONE + MIB).to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    let (r, out, err) = repair(
        &p,
        &RepairOptions {
            dry_run: true,
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap(), 0);
    let all = format!("{out}{err}");
    assert!(!all.contains("found and repaired"), "{all}");
    assert!(!all.contains("Double checking"), "{all}");
    assert!(!all.contains("Repairing"), "{all}");
    assert!(out.contains("would be repaired"), "{out}");
    assert!(
        err.contains("Would repair zone 2: write pointer 0x2100000"),
        "{err}"
    );
    assert!(
        out.contains("Dry run: Zone 2 write pointer would move 0x2100000 -> 0x2000000"),
        "{out}"
    );
    assert!(out.contains("Dry run: Nothing would be lost."), "{out}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    // The real repair reports the same, in the past tense, and in JSON.
    let (r, out, _) = repair(
        &p,
        &RepairOptions {
            output: OutputFormat::Json,
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap(), 0);
    assert!(out.contains("\"nothing-lost\": true"), "{out}");
    assert!(out.contains("\"old\": 34603008"), "{out}");
    assert!(out.contains("\"new\": 33554432"), "{out}");
}

/// `--backup` refuses an existing file (unless forced), the backup is
/// checksummed, and `--undo` refuses a damaged or mismatched backup
/// without touching the image.
#[test]
fn repair_backup_is_safe() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    patch(&p, wp_array(&p) + 24, &((3 * ZONE) | 1 << 59).to_be_bytes());
    let original = std::fs::read(&p).unwrap();
    let bk = d.path().join("undo.bin");
    std::fs::write(&bk, b"precious").unwrap();
    let with = |force| RepairOptions {
        backup: Some(bk.clone()),
        force,
        ..Default::default()
    };
    let (r, _, _) = repair(&p, &with(false));
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&bk).unwrap(), b"precious");
    assert_eq!(std::fs::read(&p).unwrap(), original, "image touched");
    let (r, _, _) = repair(&p, &with(true));
    assert_eq!(r.unwrap(), 0);
    let repaired = std::fs::read(&p).unwrap();
    assert_ne!(repaired, original);
    let good = std::fs::read(&bk).unwrap();
    // A second run must not replace the backup.
    let (r, _, _) = repair(&p, &with(false));
    assert!(r.is_err());
    assert_eq!(std::fs::read(&bk).unwrap(), good);
    // A damaged backup (one flipped byte anywhere, or cut short) is refused.
    for at in [20, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&bk, &bad).unwrap();
        let e = format!("{:#}", undo_repair(&p, &bk).unwrap_err());
        assert!(e.contains("damaged") || e.contains("magic"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), repaired, "image touched");
    }
    std::fs::write(&bk, &good[..good.len() - 10]).unwrap();
    assert!(undo_repair(&p, &bk).is_err());
    assert_eq!(std::fs::read(&p).unwrap(), repaired, "image touched");
    // An image changed since the repair does not match the backup.
    std::fs::write(&bk, &good).unwrap();
    patch(&p, wp_array(&p) + 8, &(ZONE + 65536).to_be_bytes());
    let e = format!("{:#}", undo_repair(&p, &bk).unwrap_err());
    assert!(e.contains("nothing restored"), "{e}");
    patch(&p, wp_array(&p) + 8, &(ZONE + 3 * 65536).to_be_bytes());
    assert_eq!(std::fs::read(&p).unwrap(), repaired);
    // The intact backup restores the original, verified.
    undo_repair(&p, &bk).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), original);
    // Undoing twice is refused: the image no longer matches.
    assert!(undo_repair(&p, &bk).is_err());
    assert_eq!(std::fs::read(&p).unwrap(), original);
}

/// A write-pointer array that is gone (its offset points past the end of
/// the file) is rebuilt from the data each zone holds; no zone holding data
/// is reset.
#[test]
fn check_zoned_missing_array_is_rebuilt_from_the_data() {
    let d = tempfile::tempdir().unwrap();
    let p = zoned_image(d.path());
    let data = guest(&p, ZONE, 3 * 65536);
    patch(&p, ext_body(&p) + 48, &0x7fff_0000u64.to_be_bytes());
    let (c, _, err) = check(&p, None, false);
    assert_eq!(c, 2, "{err}");
    let (c, _, err) = check(&p, Some(RepairMode::All), false);
    assert_eq!(c, 0, "{err}");
    assert!(
        err.contains("Repairing zoned: write-pointer array rebuilt"),
        "{err}"
    );
    let wps: Vec<u64> = wp_entries(&p).iter().map(|e| e.wp()).collect();
    assert_eq!(wps, [0, ZONE + 3 * 65536, 2 * ZONE, 3 * ZONE]);
    assert!(wp_entries(&p)[0].conventional());
    assert_eq!(guest(&p, ZONE, 3 * 65536), data);
    assert_eq!(check(&p, None, false).0, 0);
}
