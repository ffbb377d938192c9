//! Images that lie about where their metadata is: a crafted-overlap corpus.
//! Each image is opened through the public API, `zcow-io` (write + flush)
//! and `zcow-nbd`; afterwards not one byte of the image may have changed
//! (only the corrupt bit, where a write was refused on a read-write open),
//! and the error names both regions.

mod common;

use common::{bin, have, run, s, tmp};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcow::format::create::{create, CreateOptions};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::MemStorage;

const CS: u64 = 65536;
const INCOMPAT: usize = 72;
const INCOMPAT_CORRUPT: u64 = 2;
const ZONED_MAGIC: u32 = 0x007a_6264;

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}
fn put64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes());
}

/// Where an image keeps its metadata (as the header and tables say).
struct Layout {
    l1: u64,
    reftable: u64,
    refblock: u64,
    l2: u64,
    /// Byte offset of `zonedmeta_offset` in the file (zoned images).
    wp_field: Option<u64>,
    wp: u64,
}

fn layout(b: &[u8]) -> Layout {
    let l1 = be64(b, 40);
    let reftable = be64(b, 48);
    let refblock = be64(b, reftable);
    let l2 = be64(b, l1) & 0x00ff_ffff_ffff_fe00;
    // Header extensions start at header_length (112 for v3).
    let mut at = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
    let mut wp_field = None;
    while at + 8 <= CS as usize {
        let magic = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        if magic == 0 {
            break;
        }
        if magic == ZONED_MAGIC {
            wp_field = Some(at as u64 + 8 + 48);
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    let wp = wp_field.map(|f| be64(b, f)).unwrap_or(0);
    Layout {
        l1,
        reftable,
        refblock,
        l2,
        wp_field,
        wp,
    }
}

/// A 64 MiB image (zoned: 16 zones of 4 MiB, zone 0 conventional) with
/// guest cluster 0 written, so L1[0] points at an L2 table.
fn base(zoned: bool) -> Vec<u8> {
    let m = Arc::new(MemStorage::new());
    create(
        m.as_ref(),
        &CreateOptions {
            size: 64 << 20,
            zoned: zoned.then(|| ZonedCreateOptions {
                zone_size: Some(4 << 20),
                conventional_zones: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let img = Qcow2::open(m.clone(), &OpenOptions::default()).unwrap();
    img.write(0, &vec![0x5a; CS as usize]).unwrap();
    img.flush().unwrap();
    drop(img);
    let b = m.to_vec();
    let l = layout(&b);
    assert!(l.l2 != 0 && l.refblock != 0, "base image has an L2 table");
    b
}

/// What the crafted image must do on a read-write open.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Refused at open.
    Open,
    /// Opens; the first write is refused and the image marked corrupt.
    Write,
}

struct Case {
    name: &'static str,
    image: Vec<u8>,
    expect: Expect,
    /// Both regions, as the message names them.
    names: [&'static str; 2],
    /// Guest offset of the first write (the second goes to a new cluster
    /// of a sequential zone, 4 MiB).
    write_at: u64,
}

fn wp_over(name: &'static str, pick: fn(&Layout) -> u64, other: &'static str) -> Case {
    let mut b = base(true);
    let l = layout(&b);
    put64(&mut b, l.wp_field.unwrap(), pick(&l));
    Case {
        name,
        image: b,
        expect: Expect::Open,
        names: ["write-pointer array", other],
        write_at: 0,
    }
}

/// Point the L2 entry of guest cluster 0 (COPIED, owned) at `target`.
fn l2_into(name: &'static str, zoned: bool, pick: fn(&Layout) -> u64, other: &'static str) -> Case {
    let mut b = base(zoned);
    let l = layout(&b);
    let target = pick(&l);
    put64(&mut b, l.l2, target | 1 << 63);
    Case {
        name,
        image: b,
        expect: Expect::Write,
        names: ["guest data", other],
        write_at: 0,
    }
}

fn corpus() -> Vec<Case> {
    let mut v = vec![
        wp_over("wp array over L1", |l| l.l1, "active L1 table"),
        wp_over("wp array over reftable", |l| l.reftable, "refcount table"),
        wp_over("wp array over a refblock", |l| l.refblock, "refcount block"),
        wp_over("wp array over an L2 table", |l| l.l2, "L2 table"),
        wp_over("wp array over the header", |_| 0, "qcow2 header"),
    ];
    v.push(wp_over_valid_l1());
    let mut b = base(false);
    let l = layout(&b);
    put64(&mut b, 40, l.reftable);
    v.push(Case {
        name: "L1 over reftable",
        image: b,
        expect: Expect::Open,
        names: ["active L1 table", "refcount table"],
        write_at: 0,
    });
    v.push(l2_into(
        "L2 entry into the reftable",
        false,
        |l| l.reftable,
        "refcount table",
    ));
    v.push(l2_into(
        "L2 entry into the L1 table",
        false,
        |l| l.l1,
        "active L1 table",
    ));
    v.push(l2_into(
        "L2 entry into the wp array (zoned)",
        true,
        |l| l.wp,
        "write-pointer array",
    ));
    // Refcounts that lie: the L1 table's cluster is counted free, so the
    // allocator would hand it out for new data.
    let mut b = base(false);
    let l = layout(&b);
    b[(l.refblock + 2 * (l.l1 / CS)) as usize..][..2].fill(0);
    v.push(Case {
        name: "refcount of the L1 table says free",
        image: b,
        expect: Expect::Write,
        names: ["newly allocated cluster", "active L1 table"],
        write_at: 4 << 20,
    });
    if let Some(c) = snapshot_over_l1() {
        v.push(c);
    }
    v
}

/// The case: one sequential zone, nothing written, so the empty L1
/// table also reads as a valid write-pointer array (zone 0 empty). Without
/// the overlap check the first flush writes the zone's wp over L1[0].
fn wp_over_valid_l1() -> Case {
    let m = MemStorage::new();
    create(
        &m,
        &CreateOptions {
            size: 4 << 20,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(4 << 20),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = m.to_vec();
    let l = layout(&b);
    assert_eq!(be64(&b, l.l1), 0);
    put64(&mut b, l.wp_field.unwrap(), l.l1);
    Case {
        name: "wp array over an empty L1 (valid as wp entries)",
        image: b,
        expect: Expect::Open,
        names: ["write-pointer array", "active L1 table"],
        write_at: 0,
    }
}

/// An image with one internal snapshot (made by qemu-img) whose snapshot
/// table offset is moved onto the active L1 table.
fn snapshot_over_l1() -> Option<Case> {
    if !have("qemu-img") {
        return None;
    }
    let d = tmp();
    let p = d.path().join("snap.qcow2");
    let o = run("qemu-img", &["create", "-q", "-f", "qcow2", s(&p), "64M"]);
    assert!(o.status.success());
    let o = run("qemu-img", &["snapshot", "-c", "s1", s(&p)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut b = std::fs::read(&p).unwrap();
    let l1 = be64(&b, 40);
    put64(&mut b, 64, l1);
    Some(Case {
        name: "snapshot table over L1",
        image: b,
        expect: Expect::Open,
        names: ["snapshot table", "active L1 table"],
        write_at: 0,
    })
}

fn names_both(c: &Case, msg: &str) {
    for n in c.names {
        assert!(
            msg.contains(n),
            "{}: message does not name '{n}': {msg}",
            c.name
        );
    }
}

/// Everything but the incompatible-features field is as crafted; that
/// field gained the corrupt bit exactly when a write was refused.
fn unchanged(c: &Case, after: &[u8], how: &str) {
    let before = &c.image;
    assert_eq!(
        before.len(),
        after.len(),
        "{} ({how}): file length changed",
        c.name
    );
    let l = layout(before);
    let regions = [
        ("header", 0, CS),
        ("L1", l.l1, 8),
        ("reftable", l.reftable, CS),
        ("refblock", l.refblock, CS),
        ("L2 table", l.l2, CS),
    ];
    let mask = |b: &[u8]| {
        let mut v = b.to_vec();
        v[INCOMPAT..INCOMPAT + 8].fill(0);
        v
    };
    let (a, b) = (mask(before), mask(after));
    for (what, off, len) in regions {
        let r = off as usize..(off + len).min(a.len() as u64) as usize;
        assert!(
            a[r.clone()] == b[r],
            "{} ({how}): {what} at {off:#x} changed",
            c.name
        );
    }
    if let Some(f) = l.wp_field {
        let z = l.wp as usize;
        if z + 128 <= a.len() {
            assert!(
                a[z..z + 128] == b[z..z + 128],
                "{} ({how}): wp array changed",
                c.name
            );
        }
        assert_eq!(be64(before, f), be64(after, f));
    }
    assert!(a == b, "{} ({how}): the image changed", c.name);
    let corrupt = be64(after, INCOMPAT as u64) & INCOMPAT_CORRUPT != 0;
    let was = be64(before, INCOMPAT as u64) & INCOMPAT_CORRUPT != 0;
    assert_eq!(
        corrupt,
        was || c.expect == Expect::Write,
        "{} ({how}): corrupt bit",
        c.name
    );
}

fn write_copy(c: &Case, dir: &Path, tag: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{tag}.qcow2"));
    std::fs::write(&p, &c.image).unwrap();
    p
}

#[test]
fn public_api_refuses_and_overwrites_nothing() {
    let d = tmp();
    for c in corpus() {
        let p = write_copy(&c, d.path(), "api");
        let opts = OpenOptions::default();
        match (Qcow2::open_path(&p, &opts), c.expect) {
            (Err(e), Expect::Open) => names_both(&c, &e.to_string()),
            (Ok(img), Expect::Open) => {
                // (Only reached if protection is broken: show what a write
                // into a new cluster and a sequential zone would do.)
                let _ = img.write(4 << 20, &[0xab; 4096]);
                let _ = img.flush();
                drop(img);
                unchanged(&c, &std::fs::read(&p).unwrap(), "api");
                panic!("{}: read-write open accepted", c.name)
            }
            (Err(e), Expect::Write) => panic!("{}: open refused: {e}", c.name),
            (Ok(img), Expect::Write) => {
                let e = img
                    .write(c.write_at, &[0xab; 4096])
                    .unwrap_err()
                    .to_string();
                names_both(&c, &e);
                assert!(e.contains("the image is marked corrupt"), "{}: {e}", c.name);
                // Once marked, nothing else is written either.
                assert!(img.write(CS * 10, &[1; 512]).is_err(), "{}", c.name);
                assert!(img.write_zeroes(0, CS).is_err(), "{}", c.name);
                let _ = img.flush();
            }
        }
        unchanged(&c, &std::fs::read(&p).unwrap(), "api");
        // A read-only open proceeds and says what overlaps.
        let ro = Qcow2::open_path(
            &p,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        );
        if c.expect == Expect::Open {
            let img = ro.unwrap_or_else(|e| panic!("{}: read-only open: {e}", c.name));
            names_both(&c, img.metadata_overlap().unwrap_or(""));
        }
    }
}

#[test]
fn zcow_io_write_and_flush_overwrite_nothing() {
    let d = tmp();
    for c in corpus() {
        let p = write_copy(&c, d.path(), "io");
        let first = format!("write -P 0xab {} 4096", c.write_at);
        let o = run(
            s(&bin("zcow-io")),
            &[
                "-c",
                &first,
                "-c",
                "write -P 0xab 4M 4096",
                "-c",
                "flush",
                s(&p),
            ],
        );
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        match c.expect {
            Expect::Open => {
                assert_ne!(o.status.code(), Some(0), "{}: {out}", c.name);
                names_both(&c, &out);
            }
            Expect::Write => {
                assert!(out.contains("write failed"), "{}: {out}", c.name);
                assert!(
                    out.contains(
                        "qcow2: Marking image as corrupt: Preventing invalid write on metadata"
                    ),
                    "{}: {out}",
                    c.name
                );
                names_both(&c, &out);
            }
        }
        unchanged(&c, &std::fs::read(&p).unwrap(), "zcow-io");
        if c.expect == Expect::Open {
            // Read-only use proceeds with a warning naming both regions.
            let o = run(s(&bin("zcow-img")), &["info", s(&p)]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(0), "{}: info: {err}", c.name);
            assert!(err.starts_with("warning: "), "{}: {err}", c.name);
            names_both(&c, &err);
            unchanged(&c, &std::fs::read(&p).unwrap(), "zcow-img info");
        }
    }
}

#[test]
fn zcow_nbd_overwrites_nothing() {
    let d = tmp();
    for c in corpus() {
        let p = write_copy(&c, d.path(), "nbd");
        let first = format!("write -P 0xab {} 4096", c.write_at);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = d.path().join("nbd.log");
        let mut child = Command::new(bin("zcow-nbd"))
            .args(["-p", &port.to_string(), "-t", s(&p)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        match c.expect {
            Expect::Open => {
                let start = Instant::now();
                let st = loop {
                    if let Some(st) = child.try_wait().unwrap() {
                        break st;
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        let _ = child.kill();
                        panic!("{}: zcow-nbd served an overlapping image", c.name);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                assert!(!st.success(), "{}", c.name);
                names_both(&c, &std::fs::read_to_string(&log).unwrap());
            }
            Expect::Write => {
                let uri = format!("nbd://127.0.0.1:{port}");
                let start = Instant::now();
                let out = loop {
                    let o = run(
                        s(&bin("zcow-io")),
                        &[
                            "-c",
                            &first,
                            "-c",
                            "write -P 0xab 4M 4096",
                            "-c",
                            "flush",
                            &uri,
                        ],
                    );
                    let out = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    if out.contains("write failed") || start.elapsed() > Duration::from_secs(10) {
                        break out;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let _ = child.kill();
                let _ = child.wait();
                assert!(out.contains("write failed"), "{}: {out}", c.name);
                let log = std::fs::read_to_string(&log).unwrap();
                assert!(
                    log.contains("qcow2: Marking image as corrupt"),
                    "{}: {log}",
                    c.name
                );
                names_both(&c, &log);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        unchanged(&c, &std::fs::read(&p).unwrap(), "zcow-nbd");
    }
}
