//! Freed clusters stay in the file for the next allocations (a reuse pool
//! of at most `REUSE_POOL_BYTES`), and are punched when they leave the pool
//! still free, when the image is closed, or at once once a read reply may
//! hold the file's pages. What a user sees: a zone reset and rewrite does
//! not grow the file, the data reads back, and closing gives the space back.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use zcow::format::create::{create, CreateOptions};
use zcow::format::{OpenOptions, PageUse, Qcow2};
use zcow::storage::FileStorage;

const MIB: u64 = 1 << 20;

fn plain(p: &Path, size: u64) -> Qcow2 {
    let st = FileStorage::create(p).unwrap();
    create(
        &st,
        &CreateOptions {
            size,
            cluster_size: 65536,
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    Qcow2::open_path(p, &OpenOptions::default()).unwrap()
}

/// Bytes the file system holds for the file.
fn used(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn read(img: &Qcow2, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xeeu8; len];
    img.read(off, &mut b).unwrap();
    b
}

/// A new plain image `name` of `size` bytes in a new test folder, or None
/// (after a SKIP line) when that folder's file system cannot punch holes.
fn image(name: &str, size: u64) -> Option<(tempfile::TempDir, PathBuf, Qcow2)> {
    let d = tmp();
    if !punches(d.path()) {
        return None;
    }
    let p = d.path().join(name);
    let img = plain(&p, size);
    Some((d, p, img))
}

/// The file system under the test folder gives space back on a punch (the
/// tests are meaningless on one that does not; CI must have one).
fn punches(dir: &Path) -> bool {
    let p = dir.join("probe");
    std::fs::write(&p, vec![1u8; 4 * MIB as usize]).unwrap();
    let before = used(&p);
    let st = FileStorage::open(&p, false).unwrap();
    use zcow::storage::Storage;
    st.discard(0, 4 * MIB).unwrap();
    let after = used(&p);
    std::fs::remove_file(&p).unwrap();
    let ok = after + 2 * MIB < before;
    if !ok {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the test folder's file system does not punch holes (CI=true)"
        );
        eprintln!("SKIP: hole punching missing in the test folder's file system");
    }
    ok
}

#[test]
fn freed_clusters_are_reused_then_punched_at_close() {
    let Some((_d, p, img)) = image("r.qcow2", 64 * MIB) else {
        return;
    };
    img.write(0, &pattern(1, 8 * MIB as usize)).unwrap();
    img.flush().unwrap();
    let (len0, used0) = (file_len(&p), used(&p));
    assert!(used0 >= 8 * MIB, "{used0}");

    // Freed (the discard's decrements apply at the flush) but kept.
    img.discard(0, 8 * MIB).unwrap();
    img.flush().unwrap();
    assert!(
        used(&p) >= used0 - MIB,
        "punched at once: {} < {used0}",
        used(&p)
    );

    // New data lands in the freed clusters: the file does not grow.
    img.write(16 * MIB, &pattern(2, 8 * MIB as usize)).unwrap();
    img.flush().unwrap();
    assert_eq!(
        file_len(&p),
        len0,
        "the write did not reuse the freed clusters"
    );
    assert_eq!(read(&img, 0, 8 * MIB as usize), vec![0u8; 8 * MIB as usize]);
    assert_eq!(
        read(&img, 16 * MIB, 8 * MIB as usize),
        pattern(2, 8 * MIB as usize)
    );

    // Freed again, then closed: the space goes back to the file system.
    img.discard(16 * MIB, 8 * MIB).unwrap();
    img.flush().unwrap();
    assert!(used(&p) >= used0 - MIB);
    drop(img);
    assert!(
        used(&p) + 7 * MIB <= used0,
        "close kept the freed clusters: {} of {used0} bytes",
        used(&p)
    );
    let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
    assert_eq!(
        read(&img, 0, 24 * MIB as usize),
        vec![0u8; 24 * MIB as usize]
    );
    drop(img);
    ok(s(&bin("zcow-img")), &["check", s(&p)]);
    if have("qemu-img") {
        ok("qemu-img", &["check", s(&p)]);
    }
}

#[test]
fn a_lent_page_is_never_reused_in_place() {
    let Some((_d, p, img)) = image("l.qcow2", 64 * MIB) else {
        return;
    };
    img.write(0, &pattern(3, 4 * MIB as usize)).unwrap();
    img.flush().unwrap();
    let used0 = used(&p);
    // A zero-copy reader takes the file's pages (as zcow-nbd's sendfile
    // replies do); from now on freed clusters are punched at the flush.
    let mut runs = 0;
    assert!(img
        .read_direct(0, 4 * MIB, PageUse::Lend, &mut |r| runs += r.len())
        .unwrap());
    assert!(runs > 0);
    img.discard(0, 4 * MIB).unwrap();
    img.flush().unwrap();
    assert!(
        used(&p) + 3 * MIB <= used0,
        "freed clusters kept after a zero-copy read: {} of {used0} bytes",
        used(&p)
    );
}

#[test]
fn the_pool_keeps_at_most_its_bound() {
    let Some((_d, p, img)) = image("b.qcow2", 64 * MIB) else {
        return;
    };
    assert_eq!(zcow::format::REUSE_POOL_BYTES, 1 << 30);
    let total = 24 * MIB;
    img.set_reuse_pool_limit(16 * MIB);
    img.write(0, &pattern(4, total as usize)).unwrap();
    img.flush().unwrap();
    let used0 = used(&p);
    img.discard(0, total).unwrap();
    img.flush().unwrap();
    let given = used0 - used(&p).min(used0);
    // 24 MiB freed, 16 MiB kept: 8 MiB punched at the flush.
    assert!(
        (7 * MIB..=9 * MIB).contains(&given),
        "given back {given} bytes at the flush"
    );
    // Lowering the limit punches the excess now; 0 punches at once.
    img.set_reuse_pool_limit(4 * MIB);
    let given = used0 - used(&p).min(used0);
    assert!((19 * MIB..=21 * MIB).contains(&given), "given back {given}");
    img.set_reuse_pool_limit(0);
    img.write(32 * MIB, &pattern(5, 4 * MIB as usize)).unwrap();
    img.flush().unwrap();
    let before = used(&p);
    img.discard(32 * MIB, 4 * MIB).unwrap();
    img.flush().unwrap();
    assert!(used(&p) + 3 * MIB <= before, "limit 0 kept freed clusters");
    drop(img);
    assert!(used(&p) < 4 * MIB, "{} bytes after close", used(&p));
}
