//! zcow-ublk's one-copy path (`zcow::ublk::filemap`) on the host: a
//! regular file stands in for the ublk char device (user copy is a
//! `pread`/`pwrite` at the request's position on it). Reads of written
//! data and writes into clusters already in the file go through the
//! image's mapping; writes that grow the file, raw images and payloads the
//! driver cannot deliver go through the buffer. What is checked: the bytes
//! the "driver" gets back, the image's contents after a reopen, write
//! pointers, and that `zcow-img check` and `qemu-img check` find the image
//! clean. Built with `--features ublk`.
#![cfg(feature = "ublk")]

mod common;
use common::*;
use std::cell::RefCell;
use std::fs::{File, OpenOptions as FsOpen};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use zcow::device::BlockDevice;
use zcow::format::create::{create, CreateOptions};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::open::{open_device, OpenOptions};
use zcow::storage::FileStorage;
use zcow::ublk::filemap::{read_mapped, CdevPayload, FileMap};
use zcow::ublk::{execute, execute_write, layout, Completion, Layout, Op, Request};

const MIB: u64 = 1 << 20;
const ZONE: u64 = 4 * MIB;
const IO: usize = 512 << 10;
/// Where the stand-in driver holds a request's bytes (any position works
/// on a regular file; the real one encodes queue and tag).
const POS: u64 = 1 << 30;

fn image(path: &Path, zoned: bool) {
    let st = FileStorage::create(path).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 16 * ZONE,
            cluster_size: 65536,
            zoned: zoned.then(|| ZonedCreateOptions {
                zone_size: Some(ZONE),
                conventional_zones: Some(1),
                max_append_bytes: Some(IO as u64),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
}

struct Rig {
    dev: Arc<dyn BlockDevice>,
    lay: Layout,
    cdev: File,
    map: FileMap,
    buf: Vec<u8>,
}

impl Rig {
    fn new(path: &Path, cdev: &Path) -> Rig {
        Rig::with_map(path, cdev, FileMap::new())
    }

    fn with_map(path: &Path, cdev: &Path, map: FileMap) -> Rig {
        let dev = open_device(path, &OpenOptions::default()).unwrap();
        let lay = layout(dev.as_ref(), IO as u32).unwrap();
        let cdev = FsOpen::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(cdev)
            .unwrap();
        Rig {
            dev,
            lay,
            cdev,
            map,
            buf: vec![0; IO],
        }
    }

    /// A write or append of `data` as the driver would hand it over.
    fn write_op(&mut self, op: Op, sector: u64, data: &[u8]) -> Completion {
        self.cdev.write_all_at(data, POS).unwrap();
        self.submit(op, sector, POS, data.len())
    }

    /// A write or append of `len` bytes whose payload the driver holds at
    /// `pos` of its char device.
    fn submit(&mut self, op: Op, sector: u64, pos: u64, len: usize) -> Completion {
        let src = CdevPayload {
            cdev: self.cdev.as_raw_fd(),
            pos,
            len,
            map: &self.map,
            buf: RefCell::new(&mut self.buf),
        };
        let req = Request::new(op, sector, (len / 512) as u32, false);
        execute_write(self.dev.as_ref(), &self.lay, &req, &src)
    }

    /// A read through the mapping: what the driver received, or None when
    /// it had to go the buffered way.
    fn read_op(&mut self, sector: u64, len: usize) -> Option<Vec<u8>> {
        // Stale bytes where the reply goes, so a missing copy shows.
        self.cdev.write_all_at(&vec![0xee; len], POS).unwrap();
        let req = Request::new(Op::Read, sector, (len / 512) as u32, false);
        let c = read_mapped(
            self.dev.as_ref(),
            &self.lay,
            &req,
            self.cdev.as_raw_fd(),
            POS,
            &self.map,
        )?;
        assert_eq!(
            c.result, len as i32,
            "read of {len} bytes at sector {sector}"
        );
        let mut out = vec![0; len];
        self.cdev.read_exact_at(&mut out, POS).unwrap();
        Some(out)
    }

    fn plain(&mut self, op: Op, sector: u64) -> i32 {
        let req = Request::new(op, sector, 0, false);
        execute(self.dev.as_ref(), &self.lay, &req, &mut self.buf).result
    }

    fn wp(&self, zone: u64) -> u64 {
        self.dev.zone_report(zone * ZONE, 1).unwrap()[0].wp
    }
}

fn checks_clean(img: &Path) {
    let out = ok(s(&bin("zcow-img")), &["check", s(img)]);
    assert!(out.contains("No errors were found"), "{out}");
    if have("qemu-img") {
        // qemu-img opens a zoned image only with bit 5 (zoned) cleared;
        // the write-pointer array then shows as leaked clusters (exit 3),
        // never as corruption (exit 2).
        let mut bytes = std::fs::read(img).unwrap();
        bytes[79] &= !0x20;
        let copy = img.with_extension("bit5-cleared");
        std::fs::write(&copy, &bytes).unwrap();
        let o = run("qemu-img", &["check", s(&copy)]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            matches!(o.status.code(), Some(0 | 3)) && !out.contains("ERROR"),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn zoned_reads_and_rewrites_take_the_mapping() {
    let d = tmp();
    let img = d.path().join("z.qcow2");
    image(&img, true);
    let mut r = Rig::new(&img, &d.path().join("cdev"));
    let zs = ZONE / 512;
    let a = pattern(1, IO);
    // A first write allocates clusters past the file's end: the buffered
    // way (through the mapping those bytes would be lost).
    assert_eq!(r.write_op(Op::Write, zs, &a).result, IO as i32);
    assert_eq!(r.map.mapped_transfers(), 0);
    // Reading it back, and past the write pointer (zeroes), is mapped.
    assert_eq!(r.read_op(zs, IO).as_deref(), Some(&a[..]));
    assert_eq!(r.map.mapped_transfers(), 1);
    let tail = r.read_op(zs + (IO as u64 / 512) - 8, 8192).unwrap();
    assert_eq!(&tail[..4096], &a[IO - 4096..]);
    assert!(tail[4096..].iter().all(|b| *b == 0));
    assert_eq!(r.map.mapped_transfers(), 2);
    // Reset and rewrite: the freed clusters are reused, inside the file,
    // so the driver copies straight into them.
    assert_eq!(r.plain(Op::ZoneReset, zs), 0);
    assert_eq!(r.plain(Op::Flush, 0), 0);
    let b = pattern(2, IO);
    assert_eq!(r.write_op(Op::Write, zs, &b).result, IO as i32);
    assert!(r.map.mapped_transfers() > 2, "rewrite not mapped");
    let c = pattern(3, IO / 2);
    let done = r.write_op(Op::ZoneAppend, zs, &c);
    assert_eq!(done.result, (IO / 2) as i32);
    assert_eq!(done.append_sector, Some(zs + IO as u64 / 512));
    assert_eq!(r.wp(1), ZONE + IO as u64 + IO as u64 / 2);
    let mut back = vec![0; IO + IO / 2];
    r.dev.read(ZONE, &mut back).unwrap();
    assert_eq!(&back[..IO], &b[..]);
    assert_eq!(&back[IO..], &c[..]);
    // The conventional zone: a new cluster, then an overwrite in place.
    assert_eq!(r.write_op(Op::Write, 0, &a[..65536]).result, 65536);
    let before = r.map.mapped_transfers();
    assert_eq!(r.write_op(Op::Write, 0, &c[..65536]).result, 65536);
    assert_eq!(r.map.mapped_transfers(), before + 1);
    assert_eq!(r.plain(Op::Flush, 0), 0);
    drop(r);
    checks_clean(&img);
    // Durable and in the image: reopened, the bytes are there.
    let dev = open_device(&img, &OpenOptions::default()).unwrap();
    let mut back = vec![0; IO + IO / 2];
    dev.read(ZONE, &mut back).unwrap();
    assert_eq!(&back[..IO], &b[..]);
    assert_eq!(&back[IO..], &c[..]);
    let mut conv = vec![0; 65536];
    dev.read(0, &mut conv).unwrap();
    assert_eq!(conv, c[..65536]);
}

#[test]
fn a_payload_the_driver_cannot_deliver_fails_the_write() {
    let d = tmp();
    let img = d.path().join("z.qcow2");
    image(&img, true);
    let mut r = Rig::new(&img, &d.path().join("cdev"));
    let zs = ZONE / 512;
    assert_eq!(r.write_op(Op::Write, zs, &pattern(1, IO)).result, IO as i32);
    assert_eq!(r.plain(Op::ZoneReset, zs), 0);
    assert_eq!(r.plain(Op::Flush, 0), 0);
    // The "driver" holds only half the request: both ways (the mapping,
    // then the buffer) come up short, and the write fails with EIO.
    r.cdev.set_len(POS + IO as u64 / 2).unwrap();
    assert_eq!(r.submit(Op::Write, zs, POS, IO).result, -libc::EIO);
    // A 4 KiB write fills part of a reused cluster: its bytes are fetched
    // while the write is planned, into the cluster's old contents; that
    // fails too, after the cluster was taken.
    let at = POS + IO as u64 / 2 - 2048;
    assert_eq!(r.submit(Op::Write, zs, at, 4096).result, -libc::EIO);
    // Nothing moved: the zone is still empty, and takes the next write.
    assert_eq!(r.wp(1), ZONE);
    r.cdev.set_len(0).unwrap();
    let b = pattern(2, IO);
    assert_eq!(r.write_op(Op::Write, zs, &b).result, IO as i32);
    assert_eq!(r.read_op(zs, IO).as_deref(), Some(&b[..]));
    assert_eq!(r.plain(Op::Flush, 0), 0);
    drop(r);
    checks_clean(&img);
}

#[test]
fn plain_images_overwrite_in_place_and_raw_goes_buffered() {
    let d = tmp();
    let img = d.path().join("p.qcow2");
    image(&img, false);
    let mut r = Rig::new(&img, &d.path().join("cdev"));
    let a = pattern(4, IO);
    assert_eq!(r.write_op(Op::Write, 2048, &a).result, IO as i32);
    assert_eq!(r.map.mapped_transfers(), 0);
    let b = pattern(5, IO);
    assert_eq!(r.write_op(Op::Write, 2048, &b).result, IO as i32);
    assert_eq!(r.map.mapped_transfers(), 1);
    assert_eq!(r.read_op(2048, IO).as_deref(), Some(&b[..]));
    // Unallocated space reads as zeroes.
    assert_eq!(r.read_op(0, 4096).as_deref(), Some(&[0u8; 4096][..]));
    assert_eq!(r.plain(Op::Flush, 0), 0);
    drop(r);
    checks_clean(&img);

    // A raw image has no clusters to map: every request goes through the
    // buffer, with the same results.
    let raw = d.path().join("r.raw");
    File::create(&raw).unwrap().set_len(16 * MIB).unwrap();
    let mut r = Rig::new(&raw, &d.path().join("cdev2"));
    assert_eq!(r.write_op(Op::Write, 8, &a).result, IO as i32);
    assert_eq!(r.read_op(8, IO), None);
    assert_eq!(r.map.mapped_transfers(), 0);
    drop(r);
    let mut back = vec![0; IO];
    File::open(&raw)
        .unwrap()
        .read_exact_at(&mut back, 8 * 512)
        .unwrap();
    assert_eq!(back, a);
}

#[test]
fn windows_that_touched_their_limit_are_replaced() {
    // The page tables of a mapping are freed only when it is unmapped: a
    // window that requests touched past its limit gives way to a fresh
    // one. Here the limit is one 2 MiB region of the file.
    let d = tmp();
    let img = d.path().join("z.qcow2");
    image(&img, true);
    let map = FileMap::with_touch_limit(2 * MIB);
    let mut r = Rig::with_map(&img, &d.path().join("cdev"), map);
    let zs = ZONE / 512;
    let data: Vec<Vec<u8>> = (0..12).map(|i| pattern(10 + i as u8, IO)).collect();
    for (i, chunk) in data.iter().enumerate() {
        let zone = 1 + i as u64 / 4;
        let sector = zone * zs + (i as u64 % 4) * (IO as u64 / 512);
        assert_eq!(r.write_op(Op::Write, sector, chunk).result, IO as i32);
    }
    assert_eq!(r.map.mapped_transfers(), 0, "growing writes go buffered");

    // 6 MiB of data over at least three regions: reading it all wears out
    // the first window, and the reads after that use a second one.
    for round in 0..2 {
        for (i, chunk) in data.iter().enumerate() {
            let zone = 1 + i as u64 / 4;
            let sector = zone * zs + (i as u64 % 4) * (IO as u64 / 512);
            let got = r.read_op(sector, IO);
            assert_eq!(got.as_deref(), Some(&chunk[..]), "round {round}, chunk {i}");
        }
    }
    // One window at most before the reads (a refused write maps too);
    // a second only because the first wore out.
    assert!(
        r.map.mappings_made() >= 2,
        "{} mappings",
        r.map.mappings_made()
    );
    assert_eq!(r.map.mapped_transfers(), 24);
}
