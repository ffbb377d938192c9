//! Helpers shared by integration tests (peer tools, temp dirs, engine fixtures).
#![allow(dead_code)]

pub mod faulty;
pub mod rng;
#[allow(unused_imports)]
pub use rng::Rng;
// The reference model lives in the library (the engine fuzz target uses it too).
#[allow(unused_imports)]
pub use zcow::fuzzing::zone_model;

use std::sync::Arc;
use zcow::engine::{Engine, MemZoneStore};
use zcow::zone::ZoneGeometry;

/// A geometry; `nr_zones` derived from the sizes.
pub fn geo(
    device_size: u64,
    zone_size: u64,
    zone_capacity: u64,
    conventional_zones: u32,
    max_open_zones: u32,
    max_active_zones: u32,
    max_append_bytes: u32,
) -> ZoneGeometry {
    ZoneGeometry {
        device_size,
        zone_size,
        zone_capacity,
        nr_zones: device_size.div_ceil(zone_size) as u32,
        conventional_zones,
        max_open_zones,
        max_active_zones,
        max_append_bytes,
    }
}

/// A fresh in-memory store and an engine over it.
pub fn engine(g: ZoneGeometry) -> (Arc<MemZoneStore>, Engine) {
    let store = Arc::new(MemZoneStore::new(g).unwrap());
    let e = Engine::open(store.clone()).unwrap();
    (store, e)
}

/// `len` bytes of a pattern that differs per seed and offset.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| seed.wrapping_mul(31).wrapping_add((k / 512) as u8) | 1)
        .collect()
}

// ---- peer tools and scratch files ----

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether a peer tool is on PATH. In CI (CI=true) a missing tool is a
/// failure, never a silent skip.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("required tool '{tool}' is missing (CI=true)");
        }
        eprintln!("SKIP: {tool} missing");
    }
    found
}

/// Run a command, returning its output.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Run and require success; returns stdout.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Path of a built binary of this package.
pub fn bin(name: &str) -> PathBuf {
    let mut p = std::env::current_exe().expect("test exe");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join(name)
}

/// Temporary directory for a test.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// String form of a path.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One power-loss state: which pending writes survive (in this order) and
/// which of them (by position) is torn to how many sectors.
pub type CrashVariant = (Vec<usize>, Option<(usize, usize)>);

/// The crash states tested for `n` unsynced writes: every in-order prefix,
/// the reverse order, every single write dropped, and the last write torn
/// to one sector.
pub fn crash_variants(n: usize) -> Vec<CrashVariant> {
    let mut v: Vec<CrashVariant> = (0..=n).map(|k| ((0..k).collect(), None)).collect();
    v.push(((0..n).rev().collect(), None));
    for skip in 0..n {
        v.push(((0..n).filter(|&i| i != skip).collect(), None));
    }
    if n > 0 {
        v.push(((0..n).collect(), Some((n - 1, 1))));
    }
    v
}

/// Zone size of [`zoned_check_fixture`].
pub const FIXTURE_ZONE: u64 = 16 << 20;

/// The zoned image the check and repair tests start from: 64 MiB, 4 zones
/// of 16 MiB (zone 0 conventional), 64 KiB clusters; zone 0 has 64 KiB of
/// data, zone 1 192 KiB with its wp at 192 KiB. Returned open (not yet
/// flushed) so a test can add what it needs before syncing.
pub fn zoned_check_fixture(path: &std::path::Path) -> zcow::format::Qcow2 {
    use zcow::format::create::{create, CreateOptions};
    use zcow::format::wp::WpEntry;
    use zcow::format::zoned::ZonedCreateOptions;
    let st = zcow::storage::FileStorage::create(path).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 64 << 20,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(FIXTURE_ZONE),
                conventional_zones: Some(1),
                max_open_zones: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let img = zcow::format::Qcow2::open_path(path, &Default::default()).unwrap();
    img.write(0, &vec![0x11; 65536]).unwrap();
    img.write(FIXTURE_ZONE, &vec![0x22; 3 * 65536]).unwrap();
    img.write_wp_entries(1, &[WpEntry::new(FIXTURE_ZONE + 3 * 65536, false)])
        .unwrap();
    img
}

/// One power-loss state of a qcow2 crash test: the image opens, every byte
/// the last flush made durable and no later write touched reads back as it
/// was, and (with `qemu`) `qemu-img check` finds no corruption (leaks only
/// pass: clusters allocated by writes that never became durable).
pub fn verify_crash_state(
    bytes: Vec<u8>,
    durable: &[u8],
    touched: &[bool],
    dir: &std::path::Path,
    qemu: bool,
    what: &str,
) {
    let img = zcow::format::Qcow2::open(
        Arc::new(zcow::storage::MemStorage::from_bytes(bytes.clone())),
        &zcow::format::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: crash state does not open: {e}"));
    let mut got = vec![0u8; durable.len()];
    img.read(0, &mut got)
        .unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
    for i in 0..durable.len() {
        if !touched[i] && got[i] != durable[i] {
            panic!(
                "{what}: flushed byte {i:#x} lost: {:#x} != {:#x}",
                got[i], durable[i]
            );
        }
    }
    if qemu {
        let p = dir.join("state.qcow2");
        std::fs::write(&p, &bytes).unwrap();
        let o = run("qemu-img", &["check", s(&p)]);
        assert!(
            matches!(o.status.code(), Some(0) | Some(3)),
            "{what}: qemu-img check found corruption:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
