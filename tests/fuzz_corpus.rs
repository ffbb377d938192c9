//! Replays every seed corpus file (`fuzz/corpus/<target>/*`) and every
//! minimized crash (`fuzz/regressions/<target>/*`) through the library
//! function of its fuzz target, on stable Rust. A target directory without
//! an entry in `TARGETS` fails the test, so a new target cannot be forgotten.
//!
//! `write_seeds` (ignored) writes the zcow-made seeds for
//! `fuzz/make-corpus.sh`.

use std::path::{Path, PathBuf};

// The fuzz targets' 512 MiB live-heap limit applies to the replay too, so an
// input that made a target allocate too much fails here as well (by abort).
#[path = "../fuzz/fuzz_targets/alloc_limit.rs"]
mod alloc_limit;
use zcow::fuzzing;

/// A fuzz target's library function.
type Target = fn(&[u8]);

/// Target name (directory under fuzz/corpus and fuzz/regressions) → function.
const TARGETS: &[(&str, Target)] = &[
    ("header", fuzzing::fuzz_header),
    ("zoned_ext", fuzzing::fuzz_zoned_ext),
    ("image_read", fuzzing::fuzz_image_read),
    ("image_rw", fuzzing::fuzz_image_rw),
    ("image_write", fuzzing::fuzz_image_write),
    ("engine", fuzzing::engine::fuzz_engine),
    ("nbd_server", fuzzing::nbd::fuzz_nbd_server),
    ("nbd_client", fuzzing::nbd::fuzz_nbd_client),
    ("check", fuzzing::check::fuzz_check),
    ("iocmd_parse", fuzzing::iocmd_parse::fuzz_iocmd_parse),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn replay(kind: &str) -> usize {
    let base = fuzz_dir().join(kind);
    let Ok(dirs) = std::fs::read_dir(&base) else {
        return 0;
    };
    let mut n = 0;
    for d in dirs {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let f = TARGETS
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap_or_else(|| panic!("{}: no target function registered in TARGETS", d.display()))
            .1;
        let mut files: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for p in files {
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{} panicked on {}", name, p.display());
            n += 1;
        }
    }
    n
}

#[test]
fn corpus_replays() {
    let n = replay("corpus");
    assert!(n > 0, "no seed corpus found under fuzz/corpus");
}

#[test]
fn regressions_replay() {
    replay("regressions");
}

fn regression(target: &str, name: &str) {
    let p = fuzz_dir().join("regressions").join(target).join(name);
    let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let f = TARGETS.iter().find(|(t, _)| *t == target).unwrap().1;
    f(&data);
}

// Named regression cases: one per finding (see docs/fuzzing.md).
// REGRESSIONS-BEGIN
/// Header::encode padded extensions to absolute 8-byte offsets, so with a
/// header_length that is not a multiple of 8 a re-encoded header moved its
/// extensions and lost them on the next parse.
#[test]
fn header_unaligned_header_length_ext_shift() {
    regression("header", "unaligned-header-length-ext-shift");
}
/// Qcow2::read_wp_entries allocated zonedmeta_size bytes (here ~4 GiB) from
/// a zoned extension that a check-mode open had kept although it failed
/// validation.
#[test]
fn image_read_check_mode_wp_array_unvalidated_size() {
    regression("image_read", "check-mode-wp-array-unvalidated-size");
}
/// A server's zone geometry was used unchecked: zone size 2^63 made
/// `ZoneGeometry::zone_start` overflow in the client's bisection for the
/// conventional zone count (found with overflow checks on, `run.sh -a`).
#[test]
fn nbd_client_peer_zone_size_overflows_zone_start() {
    regression("nbd_client", "peer-zone-size-overflows-zone-start");
}
// REGRESSIONS-END

/// Write the zcow-made seeds into `$ZCOW_SEED_DIR/{images,image_write,zoned_ext}`.
#[test]
#[ignore = "writes seed files; run by fuzz/make-corpus.sh"]
fn write_seeds() {
    use std::sync::Arc;
    use zcow::format::create::{create, CreateOptions};
    use zcow::format::wp::WpEntry;
    use zcow::format::zoned::ZonedCreateOptions;
    use zcow::format::{OpenOptions, Qcow2};
    use zcow::storage::{MemStorage, Storage};

    let out = PathBuf::from(std::env::var("ZCOW_SEED_DIR").expect("ZCOW_SEED_DIR"));
    for d in ["images", "image_write", "zoned_ext"] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }
    let zoned = |cs: u64, size: u64, zone: u64, cap: u64, conv: u32, open: u32| CreateOptions {
        size,
        cluster_size: cs,
        zoned: Some(ZonedCreateOptions {
            zone_size: Some(zone),
            zone_capacity: Some(cap),
            conventional_zones: Some(conv),
            max_open_zones: Some(open),
            max_active_zones: Some(open),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cases = [
        (
            "zoned-c1k-z4k",
            zoned(1024, 64 << 10, 4 << 10, 4 << 10, 2, 3),
            false,
            false,
        ),
        (
            "zoned-c1k-z4k-cap3k",
            zoned(1024, 64 << 10, 4 << 10, 3 << 10, 1, 0),
            false,
            false,
        ),
        (
            "zoned-c1k-written",
            zoned(1024, 64 << 10, 4 << 10, 4 << 10, 2, 3),
            true,
            false,
        ),
        (
            "zoned-c1k-le-wp",
            zoned(1024, 64 << 10, 4 << 10, 4 << 10, 2, 3),
            true,
            true,
        ),
        (
            "zoned-c4k-z16k-odd-size",
            zoned(4096, 60 << 10, 16 << 10, 12 << 10, 1, 2),
            true,
            false,
        ),
    ];
    for (name, opts, write, little_endian) in cases {
        let store = Arc::new(MemStorage::new());
        create(store.as_ref(), &opts).unwrap();
        if write {
            let s: Arc<dyn Storage> = store.clone();
            let img = Qcow2::open(s, &OpenOptions::default()).unwrap();
            let geo = img.zoned().unwrap().geometry;
            let mut entries = img.read_wp_entries().unwrap();
            // Conventional data, and 1.5 KiB written at the start of zone 2.
            img.write(512, &[0xc1; 1024]).unwrap();
            let z2 = geo.zone_start(2);
            img.write(z2, &[0x5e; 1536]).unwrap();
            entries[2] = WpEntry::new(z2 + 1536, false);
            img.write_wp_entries(0, &entries).unwrap();
            img.flush().unwrap();
            if little_endian {
                let ext = img.zoned().unwrap().ext.clone();
                drop(img);
                let mut raw = Vec::new();
                for e in &entries {
                    raw.extend_from_slice(&e.0.to_le_bytes());
                }
                store.write_at(ext.zonedmeta_offset, &raw).unwrap();
            }
        }
        let bytes = store.to_vec();
        assert!(bytes.len() < 64 << 10, "{name}: {} bytes", bytes.len());
        std::fs::write(out.join("images").join(format!("{name}.qcow2")), &bytes).unwrap();
        // zoned_ext seed: size, cluster-size selector, body length, body, file.
        let img = Qcow2::open(
            Arc::new(MemStorage::read_only(bytes.clone())),
            &OpenOptions {
                read_only: true,
                check_mode: true,
                ..Default::default()
            },
        )
        .unwrap();
        let body = img.zoned().unwrap().ext.encode();
        let mut seed = img.size().to_be_bytes().to_vec();
        seed.push(img.cluster_size().trailing_zeros() as u8 - 9);
        seed.push(body.len() as u8);
        seed.extend_from_slice(&body);
        seed.extend_from_slice(&bytes);
        std::fs::write(out.join("zoned_ext").join(name), seed).unwrap();
    }
    // image_write seeds: every cluster size, plain and zoned, with
    // pseudo-random op bytes after the setup.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for cs_sel in 0u8..5 {
        for flags in [0u8, 1, 4, 0x51, 0xf0] {
            let mut seed = vec![cs_sel, cs_sel + 2, 0, 32 + cs_sel * 16, flags];
            if flags & 1 != 0 {
                seed.push(1); // zone size shift
                seed.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]); // capacity sectors - 1
                seed.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // conventional zones
            }
            for _ in 0..160 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                seed.push(x as u8);
            }
            let name = format!("c{cs_sel}-f{flags:02x}");
            std::fs::write(out.join("image_write").join(name), seed).unwrap();
        }
    }
}
