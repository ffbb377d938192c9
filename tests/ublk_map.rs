//! The ublk request mapping (`zcow::ublk::map`) against real images: a zoned
//! qcow2 image through the engine, a raw file. What the kernel would see:
//! completion codes, bytes read back, append sectors, `struct blk_zone`
//! records, and what survives a reopen. Built with `--features ublk`.
#![cfg(feature = "ublk")]

mod common;
use common::*;
use std::path::Path;
use std::sync::Arc;
use zcow::device::BlockDevice;
use zcow::engine::{Engine, Qcow2ZoneStore, ZoneFault};
use zcow::format::create::{create, CreateOptions};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{OpenOptions as FmtOpen, Qcow2};
use zcow::open::{open_device, OpenOptions};
use zcow::storage::FileStorage;
use zcow::ublk::{execute, layout, Completion, Layout, Op, Request};
use zcow::zone::ZoneCond;

const MIB: u64 = 1 << 20;
const ZONE: u64 = MIB;
const ZS: u64 = ZONE / 512; // zone size in sectors
const IO: u32 = 256 << 10;

/// Zoned image: 16 zones of 1 MiB (capacity 768 KiB), 2 conventional,
/// open limit 3, active limit 4, append limit 128 KiB.
fn zoned_image(path: &Path, size: u64) {
    let st = FileStorage::create(path).unwrap();
    create(
        &st,
        &CreateOptions {
            size,
            cluster_size: 65536,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(ZONE),
                zone_capacity: Some(768 << 10),
                conventional_zones: Some(2),
                max_open_zones: Some(3),
                max_active_zones: Some(4),
                max_append_bytes: Some(128 << 10),
            }),
            ..Default::default()
        },
    )
    .unwrap();
}

fn open(path: &Path, read_only: bool) -> Arc<dyn BlockDevice> {
    open_device(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap()
}

fn engine(path: &Path) -> Arc<Engine> {
    let img = Qcow2::open_path(path, &FmtOpen::default()).unwrap();
    Arc::new(Engine::open(Arc::new(Qcow2ZoneStore::new(img).unwrap())).unwrap())
}

struct Dev {
    dev: Arc<dyn BlockDevice>,
    lay: Layout,
    buf: Vec<u8>,
}

impl Dev {
    fn new(dev: Arc<dyn BlockDevice>) -> Dev {
        let lay = layout(dev.as_ref(), IO).unwrap();
        Dev {
            dev,
            lay,
            buf: vec![0; IO as usize],
        }
    }
    fn req(&mut self, op: Op, sector: u64, n: u32, fua: bool) -> Completion {
        execute(
            self.dev.as_ref(),
            &self.lay,
            &Request::new(op, sector, n, fua),
            &mut self.buf,
        )
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Completion {
        self.buf[..data.len()].copy_from_slice(data);
        self.req(Op::Write, sector, (data.len() / 512) as u32, false)
    }
    fn append(&mut self, zone: u64, data: &[u8]) -> Completion {
        self.buf[..data.len()].copy_from_slice(data);
        self.req(Op::ZoneAppend, zone * ZS, (data.len() / 512) as u32, false)
    }
    fn read(&mut self, sector: u64, len: usize) -> Vec<u8> {
        let c = self.req(Op::Read, sector, (len / 512) as u32, false);
        assert_eq!(c.result, len as i32, "read at sector {sector}");
        assert_eq!(c.copy_out, len);
        self.buf[..len].to_vec()
    }
    fn mgmt(&mut self, op: Op, zone: u64) -> i32 {
        self.req(op, zone * ZS, 0, false).result
    }
    fn cond(&self, zone: u32) -> ZoneCond {
        self.dev.zone_report(u64::from(zone) * ZONE, 1).unwrap()[0].cond
    }
    fn wp_sectors(&self, zone: u32) -> u64 {
        self.dev.zone_report(u64::from(zone) * ZONE, 1).unwrap()[0].wp / 512
    }
}

/// A decoded `struct blk_zone`.
#[derive(Debug, PartialEq, Eq)]
struct BlkZone {
    start: u64,
    len: u64,
    wp: u64,
    ztype: u8,
    cond: u8,
    capacity: u64,
}

fn decode(rec: &[u8]) -> BlkZone {
    let u = |a: usize| u64::from_ne_bytes(rec[a..a + 8].try_into().unwrap());
    assert!(rec[26..32].iter().all(|b| *b == 0), "non_seq/reset/resv");
    assert!(rec[40..64].iter().all(|b| *b == 0), "reserved");
    BlkZone {
        start: u(0),
        len: u(8),
        wp: u(16),
        ztype: rec[24],
        cond: rec[25],
        capacity: u(32),
    }
}

#[test]
fn layout_and_params_of_a_zoned_image() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let dev = Dev::new(open(&p, false));
    let z = dev.lay.zoned.unwrap();
    assert_eq!((dev.lay.size, dev.lay.hidden), (16 * ZONE, 0));
    assert_eq!(
        (z.nr_zones, z.max_open_zones, z.max_active_zones),
        (16, 3, 4)
    );
    assert_eq!(z.max_append_sectors, 256);
    let prm = dev.lay.params();
    assert_eq!(prm.basic.chunk_sectors as u64, ZS);
    assert_eq!(prm.basic.dev_sectors, 16 * ZS);
    assert_eq!(prm.basic.max_sectors, IO / 512);
    assert_ne!(prm.types & libublk::sys::UBLK_PARAM_TYPE_ZONED, 0);
    assert_eq!(prm.basic.attrs & libublk::sys::UBLK_ATTR_READ_ONLY, 0);
    assert_eq!(
        (
            prm.zoned.max_open_zones,
            prm.zoned.max_active_zones,
            prm.zoned.max_zone_append_sectors
        ),
        (3, 4, 256)
    );
    let f = dev.lay.ctrl_flags();
    assert_ne!(f & u64::from(libublk::sys::UBLK_F_ZONED), 0);
    assert_ne!(f & u64::from(libublk::sys::UBLK_F_USER_COPY), 0);
}

#[test]
fn a_smaller_last_zone_is_not_exposed() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE + 512 * 1024);
    let mut dev = Dev::new(open(&p, false));
    assert_eq!(dev.lay.size, 16 * ZONE);
    assert_eq!(dev.lay.hidden, 512 * 1024);
    assert_eq!(dev.lay.zoned.unwrap().nr_zones, 16);
    // A report from the last exposed zone stops there.
    let c = dev.req(Op::ReportZones, 15 * ZS, 4, false);
    assert!(c.result > 0);
    assert_eq!(decode(&dev.buf[..64]).start, 15 * ZS);
    assert_eq!(
        decode(&dev.buf[64..128]).len,
        0,
        "zero record ends the report"
    );
    // A request past the exposed end fails rather than reaching the tail.
    assert_eq!(dev.req(Op::Read, 16 * ZS, 8, false).result, -libc::EINVAL);
}

#[test]
fn report_zones_encodes_blk_zone_records() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, false));
    assert_eq!(dev.write(2 * ZS, &pattern(1, 8192)).result, 8192);
    assert_eq!(dev.mgmt(Op::ZoneOpen, 3), 0);
    assert_eq!(dev.mgmt(Op::ZoneFinish, 4), 0);
    let c = dev.req(Op::ReportZones, 0, 16, false);
    // The whole buffer goes back (zero padded): the driver wants its
    // buffer answered in full.
    assert_eq!(c.copy_out, IO as usize);
    assert_eq!(c.result, IO as i32);
    let zones: Vec<BlkZone> = dev.buf[..16 * 64].chunks(64).map(decode).collect();
    // Conventional: capacity == length (Linux refuses anything else) even
    // though the image's capacity is 768 KiB; type 1, NOT_WP.
    for (i, z) in zones.iter().take(2).enumerate() {
        assert_eq!(
            *z,
            BlkZone {
                start: i as u64 * ZS,
                len: ZS,
                wp: i as u64 * ZS,
                ztype: 1,
                cond: 0,
                capacity: ZS
            }
        );
    }
    let seq = |i: u64, wp: u64, cond: u8| BlkZone {
        start: i * ZS,
        len: ZS,
        wp,
        ztype: 2,
        cond,
        capacity: 1536,
    };
    assert_eq!(zones[2], seq(2, 2 * ZS + 16, 2));
    assert_eq!(zones[3], seq(3, 3 * ZS, 3));
    assert_eq!(zones[4].cond, 0xE);
    assert_eq!(zones[5], seq(5, 5 * ZS, 1));
    assert!(dev.buf[16 * 64..].iter().all(|b| *b == 0));
    // From the middle, asking for more zones than exist.
    let c = dev.req(Op::ReportZones, 14 * ZS, 100, false);
    assert!(c.result > 0);
    assert_eq!(decode(&dev.buf[..64]).start, 14 * ZS);
    assert_eq!(decode(&dev.buf[64..128]).start, 15 * ZS);
    assert_eq!(decode(&dev.buf[128..192]).len, 0);
}

#[test]
fn report_zones_bounded_by_the_buffer() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let dev = open(&p, false);
    let lay = layout(dev.as_ref(), IO).unwrap();
    let mut small = vec![0xAAu8; 3 * 64 + 10];
    let c = execute(
        dev.as_ref(),
        &lay,
        &Request::new(Op::ReportZones, 0, 16, false),
        &mut small,
    );
    assert_eq!(c.result, small.len() as i32);
    assert_eq!(decode(&small[128..192]).start, 2 * ZS);
    assert!(small[192..].iter().all(|b| *b == 0));
    let mut tiny = vec![0u8; 63];
    let c = execute(
        dev.as_ref(),
        &lay,
        &Request::new(Op::ReportZones, 0, 16, false),
        &mut tiny,
    );
    assert_eq!(c.result, -libc::EINVAL);
    // Past the end.
    let c = execute(
        dev.as_ref(),
        &lay,
        &Request::new(Op::ReportZones, 16 * ZS, 1, false),
        &mut small,
    );
    assert_eq!(c.result, -libc::EINVAL);
}

#[test]
fn writes_reads_and_the_write_pointer() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, false));
    let a = pattern(3, 64 << 10);
    assert_eq!(dev.write(5 * ZS, &a).result, a.len() as i32);
    assert_eq!(dev.cond(5), ZoneCond::ImpOpen);
    assert_eq!(dev.wp_sectors(5), 5 * ZS + 128);
    assert_eq!(dev.read(5 * ZS, a.len()), a);
    // Past the wp reads zeroes.
    assert!(dev.read(5 * ZS + 128, 4096).iter().all(|b| *b == 0));
    // Not at the wp: completed with EIO (as null_blk), nothing changes.
    assert_eq!(dev.write(5 * ZS + 256, &a[..4096]).result, -libc::EIO);
    assert_eq!(dev.write(5 * ZS, &a[..4096]).result, -libc::EIO);
    assert_eq!(dev.wp_sectors(5), 5 * ZS + 128);
    // Past the capacity (768 KiB = 1536 sectors).
    let big = pattern(4, 256 << 10);
    for k in 0..2 {
        assert_eq!(dev.write(6 * ZS + k * 512, &big).result, big.len() as i32);
    }
    assert_eq!(dev.write(6 * ZS + 1024, &big).result, big.len() as i32);
    assert_eq!(dev.cond(6), ZoneCond::Full);
    assert_eq!(dev.write(6 * ZS + 1536, &a[..4096]).result, -libc::EIO);
    // Conventional zones take writes anywhere and rewrites.
    assert_eq!(dev.write(100, &a[..8192]).result, 8192);
    assert_eq!(dev.write(100, &big[..8192]).result, 8192);
    assert_eq!(dev.read(100, 8192), big[..8192]);
    // A write running from a conventional into a sequential zone fails.
    assert_eq!(dev.write(2 * ZS - 8, &a[..8192]).result, -libc::EIO);
}

#[test]
fn zone_append_returns_the_sector_written() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, false));
    let a = pattern(5, 16 << 10);
    let b = pattern(6, 4 << 10);
    let c1 = dev.append(7, &a);
    assert_eq!(
        (c1.result, c1.append_sector),
        (a.len() as i32, Some(7 * ZS))
    );
    let c2 = dev.append(7, &b);
    assert_eq!(c2.append_sector, Some(7 * ZS + 32));
    assert_eq!(dev.read(7 * ZS, a.len()), a);
    assert_eq!(dev.read(7 * ZS + 32, b.len()), b);
    // Too large for the append limit (128 KiB): error, no sector.
    let big = pattern(7, 132 << 10);
    let c = dev.append(7, &big);
    assert!(c.result < 0 && c.append_sector.is_none(), "{c:?}");
    // On a conventional zone.
    assert_eq!(dev.append(0, &b).result, -libc::EIO);
    // Not at a zone start.
    dev.buf[..4096].copy_from_slice(&b);
    assert!(dev.req(Op::ZoneAppend, 7 * ZS + 8, 8, false).result < 0);
}

#[test]
fn zone_management_and_limits() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, false));
    for z in 2..5 {
        assert_eq!(dev.mgmt(Op::ZoneOpen, z), 0);
        assert_eq!(dev.cond(z as u32), ZoneCond::ExpOpen);
    }
    // Open limit 3.
    assert_eq!(dev.mgmt(Op::ZoneOpen, 5), -libc::ETOOMANYREFS);
    assert_eq!(dev.mgmt(Op::ZoneClose, 4), 0);
    assert_eq!(
        dev.cond(4),
        ZoneCond::Empty,
        "closing an empty open zone empties it"
    );
    assert_eq!(dev.write(4 * ZS, &pattern(1, 4096)).result, 4096);
    assert_eq!(dev.mgmt(Op::ZoneClose, 4), 0);
    assert_eq!(dev.cond(4), ZoneCond::Closed);
    // Active limit 4: 2, 3 open, 4 closed, 5 opened = 4 active.
    assert_eq!(dev.mgmt(Op::ZoneOpen, 5), 0);
    assert_eq!(
        dev.write(6 * ZS, &pattern(2, 4096)).result,
        -libc::EOVERFLOW
    );
    assert_eq!(dev.mgmt(Op::ZoneFinish, 5), 0);
    assert_eq!(dev.cond(5), ZoneCond::Full);
    // A FULL zone's wp is the zone end (as Linux reports full zones).
    assert_eq!(dev.wp_sectors(5), 6 * ZS);
    assert_eq!(dev.mgmt(Op::ZoneReset, 5), 0);
    assert_eq!(dev.cond(5), ZoneCond::Empty);
    assert_eq!(dev.wp_sectors(5), 5 * ZS);
    // Management on a conventional zone, or not at a zone start.
    assert!(dev.mgmt(Op::ZoneOpen, 0) < 0);
    assert!(dev.req(Op::ZoneReset, 4 * ZS + 8, 0, false).result < 0);
    assert_eq!(dev.cond(4), ZoneCond::Closed);
    // Reset all.
    assert_eq!(dev.req(Op::ZoneResetAll, 0, 0, false).result, 0);
    for z in 2..16 {
        assert_eq!(dev.cond(z), ZoneCond::Empty, "zone {z}");
    }
}

#[test]
fn read_only_and_offline_zones() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let e = engine(&p);
    let mut dev = Dev::new(e.clone());
    assert_eq!(dev.write(8 * ZS, &pattern(1, 4096)).result, 4096);
    e.set_condition(8, ZoneFault::ReadOnly).unwrap();
    e.set_condition(9, ZoneFault::Offline).unwrap();
    assert_eq!(dev.read(8 * ZS, 4096), pattern(1, 4096));
    assert_eq!(dev.write(8 * ZS + 8, &pattern(2, 4096)).result, -libc::EIO);
    assert_eq!(dev.req(Op::Read, 9 * ZS, 8, false).result, -libc::EIO);
    assert_eq!(dev.write(9 * ZS, &pattern(2, 4096)).result, -libc::EIO);
    dev.req(Op::ReportZones, 8 * ZS, 2, false);
    assert_eq!(decode(&dev.buf[..64]).cond, 0xD);
    assert_eq!(decode(&dev.buf[64..128]).cond, 0xF);
}

#[test]
fn discard_and_write_zeroes() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, false));
    assert_eq!(dev.write(0, &pattern(1, 128 << 10)).result, 128 << 10);
    // Conventional: discard deallocates whole clusters, reads zero.
    assert_eq!(dev.req(Op::Discard, 0, 128, false).result, 0);
    assert!(dev.read(0, 64 << 10).iter().all(|b| *b == 0));
    assert_eq!(dev.read(128, 64 << 10), pattern(1, 128 << 10)[64 << 10..]);
    // Sequential: discard keeps data and wp.
    assert_eq!(dev.write(3 * ZS, &pattern(2, 8192)).result, 8192);
    assert_eq!(dev.req(Op::Discard, 3 * ZS, 16, false).result, 0);
    assert_eq!(dev.read(3 * ZS, 8192), pattern(2, 8192));
    // Write-zeroes at the wp advances it; elsewhere it fails.
    assert_eq!(dev.req(Op::WriteZeroes, 3 * ZS + 16, 16, false).result, 0);
    assert_eq!(dev.wp_sectors(3), 3 * ZS + 32);
    assert!(dev.read(3 * ZS + 16, 8192).iter().all(|b| *b == 0));
    assert_eq!(
        dev.req(Op::WriteZeroes, 3 * ZS + 64, 16, false).result,
        -libc::EIO
    );
}

#[test]
fn flushed_and_fua_writes_survive_a_reopen() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    {
        let mut dev = Dev::new(open(&p, false));
        assert_eq!(dev.write(10 * ZS, &pattern(1, 8192)).result, 8192);
        assert_eq!(dev.req(Op::Flush, 0, 0, false).result, 0);
        dev.buf[..4096].copy_from_slice(&pattern(2, 4096));
        assert_eq!(dev.req(Op::Write, 11 * ZS, 8, true).result, 4096);
        let c = dev.append(12, &pattern(3, 4096));
        assert_eq!(c.append_sector, Some(12 * ZS));
        dev.req(Op::Flush, 0, 0, false);
        // Dropping the device is not relied on: the image file is copied
        // as it is now (as after a crash).
        std::fs::copy(&p, d.path().join("copy.qcow2")).unwrap();
    }
    let mut dev = Dev::new(open(&d.path().join("copy.qcow2"), false));
    assert_eq!(dev.wp_sectors(10), 10 * ZS + 16);
    assert_eq!(dev.wp_sectors(11), 11 * ZS + 8);
    assert_eq!(dev.wp_sectors(12), 12 * ZS + 8);
    assert_eq!(dev.read(10 * ZS, 8192), pattern(1, 8192));
    assert_eq!(dev.read(11 * ZS, 4096), pattern(2, 4096));
    assert_eq!(dev.read(12 * ZS, 4096), pattern(3, 4096));
}

#[test]
fn malformed_requests_complete_with_errors() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, false));
    let lay = dev.lay;
    let run = |op_flags: u32, start_sector: u64, nr_sectors: u32, buf: &mut [u8]| {
        execute(
            dev.dev.as_ref(),
            &lay,
            &Request {
                op_flags,
                start_sector,
                nr_sectors,
            },
            buf,
        )
        .result
    };
    let mut buf = vec![0u8; IO as usize];
    // WRITE_SAME (4) and unknown codes.
    assert_eq!(run(4, 0, 8, &mut buf), -libc::EOPNOTSUPP);
    assert_eq!(run(0xff, 0, 8, &mut buf), -libc::EOPNOTSUPP);
    // Offsets that overflow or pass the end.
    assert_eq!(run(0, u64::MAX, 8, &mut buf), -libc::EINVAL);
    assert_eq!(run(0, u64::MAX / 512, 8, &mut buf), -libc::EINVAL);
    assert_eq!(run(0, 16 * ZS - 4, 8, &mut buf), -libc::EINVAL);
    assert_eq!(
        run(libublk::sys::UBLK_IO_OP_ZONE_OPEN, u64::MAX, 0, &mut buf),
        -libc::EINVAL
    );
    // Larger than the buffer.
    assert_eq!(run(0, 0, u32::MAX, &mut buf), -libc::EINVAL);
    let mut small = vec![0u8; 4096];
    assert_eq!(run(1, 0, 16, &mut small), -libc::EINVAL);
    // A zero-length read completes with 0 bytes (the driver turns that into
    // EIO), never a panic.
    assert_eq!(run(0, 0, 0, &mut buf), 0);
    let _ = &mut dev.buf;
}

#[test]
fn plain_raw_image_is_an_ordinary_disk() {
    let d = tmp();
    let p = d.path().join("disk.raw");
    std::fs::write(&p, vec![0u8; (4 * MIB + 100) as usize]).unwrap();
    let mut dev = Dev::new(open(&p, false));
    assert!(dev.lay.zoned.is_none());
    // A raw file's length is rounded up to whole sectors, as QEMU's raw
    // driver does (the tail past the end reads as zeroes): nothing hidden.
    assert_eq!((dev.lay.size, dev.lay.hidden), (4 * MIB + 512, 0));
    let prm = dev.lay.params();
    assert_eq!(prm.types & libublk::sys::UBLK_PARAM_TYPE_ZONED, 0);
    assert_eq!(prm.basic.chunk_sectors, 0);
    assert_eq!(
        dev.lay.ctrl_flags() & u64::from(libublk::sys::UBLK_F_ZONED),
        0
    );
    let a = pattern(9, 12 << 10);
    assert_eq!(dev.write(1000, &a).result, a.len() as i32);
    assert_eq!(dev.write(1000, &a).result, a.len() as i32);
    assert_eq!(dev.read(1000, a.len()), a);
    assert_eq!(dev.req(Op::Flush, 0, 0, false).result, 0);
    for op in [
        Op::ZoneOpen,
        Op::ZoneReset,
        Op::ZoneResetAll,
        Op::ReportZones,
        Op::ZoneAppend,
    ] {
        assert_eq!(dev.req(op, 0, 8, false).result, -libc::EOPNOTSUPP, "{op:?}");
    }
    drop(dev);
    assert_eq!(
        &std::fs::read(&p).unwrap()[512_000..512_000 + a.len()],
        &a[..]
    );
}

#[test]
fn read_only_device() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    zoned_image(&p, 16 * ZONE);
    let mut dev = Dev::new(open(&p, true));
    assert!(dev.lay.read_only);
    let prm = dev.lay.params();
    assert_ne!(prm.basic.attrs & libublk::sys::UBLK_ATTR_READ_ONLY, 0);
    assert_eq!(prm.types & libublk::sys::UBLK_PARAM_TYPE_DISCARD, 0);
    assert!(dev.write(2 * ZS, &pattern(1, 4096)).result < 0);
    assert!(dev.mgmt(Op::ZoneOpen, 2) < 0);
    assert_eq!(dev.read(2 * ZS, 4096), vec![0u8; 4096]);
}

#[test]
fn layout_refuses_what_linux_cannot_show() {
    // Zone size not a power of two: zcow's engine refuses such images, but
    // another zoned BlockDevice (an NBD export) may have one.
    let err = layout(&OddZones, IO).unwrap_err().to_string();
    assert!(err.contains("not a power of two"), "{err}");
    // Smaller than one zone.
    let (_, e) = common::engine(geo(MIB / 2, MIB, MIB, 0, 0, 0, 4096));
    let err = layout(&e, IO).unwrap_err().to_string();
    assert!(err.contains("no whole zone"), "{err}");
    // Limits above the zone count are clamped; append 0 still gives the
    // kernel a limit (appends then fail with EOPNOTSUPP).
    let (_, e) = common::engine(geo(4 * MIB, MIB, MIB, 0, 9, 9, 0));
    let e: Arc<dyn BlockDevice> = Arc::new(e);
    let mut dev = Dev::new(e);
    let z = dev.lay.zoned.unwrap();
    assert_eq!((z.max_open_zones, z.max_active_zones), (4, 4));
    assert_eq!(z.max_append_sectors, IO / 512);
    assert_eq!(dev.append(1, &pattern(1, 4096)).result, -libc::EOPNOTSUPP);
}

/// A zoned device with 3 MiB zones (only its geometry is used).
#[derive(Debug)]
struct OddZones;

impl BlockDevice for OddZones {
    fn size(&self) -> u64 {
        12 * MIB
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, _: u64, _: &mut [u8]) -> zcow::device::DevResult<()> {
        unreachable!()
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> zcow::device::DevResult<()> {
        unreachable!()
    }
    fn write_zeroes(
        &self,
        _: u64,
        _: u64,
        _: zcow::device::ZeroFlags,
    ) -> zcow::device::DevResult<()> {
        unreachable!()
    }
    fn discard(&self, _: u64, _: u64) -> zcow::device::DevResult<()> {
        unreachable!()
    }
    fn flush(&self) -> zcow::device::DevResult<()> {
        unreachable!()
    }
    fn block_status(&self, _: u64, _: u64) -> zcow::device::DevResult<Vec<zcow::device::Extent>> {
        unreachable!()
    }
    fn zone_geometry(&self) -> Option<zcow::zone::ZoneGeometry> {
        Some(geo(12 * MIB, 3 * MIB, 3 * MIB, 0, 0, 0, 4096))
    }
}
