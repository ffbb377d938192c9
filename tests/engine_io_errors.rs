//! Failures of the store underneath: the request fails with an error naming
//! the zone, the zone is as if the request never happened, later requests
//! work.

mod common;

use common::faulty::{Fail, FaultyStore};
use common::{geo, pattern};
use std::sync::Arc;
use zcow::device::BlockDevice;
use zcow::engine::{Engine, EngineError, MemZoneStore, ZoneFault};
use zcow::zone::{ZoneCond, ZoneErrorKind, ZoneGeometry, ZoneOp};

const ZS: u64 = 0x10000;
const TS: u64 = 2 * ZS;
const W: u64 = 0x1000;

fn g() -> ZoneGeometry {
    geo(8 * ZS, ZS, 0x8000, 1, 2, 2, 0x2000)
}

fn faulty() -> (Arc<MemZoneStore>, Arc<FaultyStore>, Engine) {
    let mem = Arc::new(MemZoneStore::new(g()).unwrap());
    let f = FaultyStore::new(mem.clone());
    let e = Engine::open(f.clone()).unwrap();
    (mem, f, e)
}

#[test]
fn failed_write_changes_nothing_and_later_writes_work() {
    let (_m, f, e) = faulty();
    f.fail_next(Fail::Write, 1);
    let err = e.write(TS, &pattern(1, W as usize), false).unwrap_err();
    assert!(matches!(err, EngineError::Store { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "zone 2 (start 0x20000, EMPTY, wp 0x20000): write of 0x1000 bytes at 0x20000 failed: injected EIO error on write at offset 0x20000"
    );
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::Empty, TS));
    assert_eq!((e.open_zones(), e.active_zones()), (0, 0));
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::ImpOpen);
}

#[test]
fn failed_write_to_open_zone_keeps_wp_and_condition() {
    let (_m, f, e) = faulty();
    e.zone_op(ZoneOp::Open, 2).unwrap();
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    f.fail_next(Fail::Write, 1);
    e.write(TS + W, &pattern(2, W as usize), false).unwrap_err();
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::ExpOpen, TS + W));
    let mut buf = vec![0xff; 2 * W as usize];
    e.read(TS, &mut buf).unwrap();
    assert_eq!(&buf[..W as usize], &pattern(1, W as usize)[..]);
    assert!(buf[W as usize..].iter().all(|&b| b == 0));
}

#[test]
fn failed_write_that_would_fill_the_zone_keeps_its_resources() {
    let (_m, f, e) = faulty();
    e.write(TS, &pattern(1, 0x7000), false).unwrap();
    e.write(3 * ZS, &pattern(1, W as usize), false).unwrap();
    f.fail_next(Fail::Write, 1);
    e.write(TS + 0x7000, &pattern(2, W as usize), false)
        .unwrap_err();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::ImpOpen);
    assert_eq!((e.open_zones(), e.active_zones()), (2, 2));
    // The active limit is still taken by zones 2 and 3.
    let err = e.write(4 * ZS, &pattern(1, W as usize), false).unwrap_err();
    assert_eq!(err.zone_kind(), Some(ZoneErrorKind::ActiveResource));
    e.write(TS + 0x7000, &pattern(2, W as usize), false)
        .unwrap();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::Full);
    assert_eq!((e.open_zones(), e.active_zones()), (1, 1));
}

#[test]
fn failed_append_leaves_wp_for_the_next_one() {
    let (_m, f, e) = faulty();
    f.fail_next(Fail::Write, 1);
    e.append(TS, &pattern(1, 512), false).unwrap_err();
    assert_eq!(e.append(TS, &pattern(1, 512), false).unwrap(), TS);
}

#[test]
fn failed_flush_keeps_entries_dirty_and_retries() {
    let (m, f, e) = faulty();
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    f.fail_next(Fail::Sync, 1);
    let err = e.flush().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("flush: injected EIO error on sync"),
        "{err}"
    );
    assert_eq!(m.durable_entries()[2], TS);
    f.fail_next(Fail::StoreWp, 1);
    e.flush().unwrap_err();
    assert_eq!(m.durable_entries()[2], TS);
    e.flush().unwrap();
    assert_eq!(m.durable_entries()[2], TS + W);
}

#[test]
fn failed_fua_write_reports_the_flush_error() {
    let (_m, f, e) = faulty();
    f.fail_next(Fail::Sync, 1);
    let err = BlockDevice::write(&e, TS, &pattern(1, W as usize), true).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    // The data write itself went through; the pointer is persisted later.
    assert_eq!(e.zone(2).unwrap().wp, TS + W);
    e.flush().unwrap();
}

#[test]
fn failed_reset_changes_nothing() {
    let (m, f, e) = faulty();
    e.write(TS, &pattern(1, W as usize), true).unwrap();
    f.fail_next(Fail::StoreWp, 1);
    let err = e.zone_op(ZoneOp::Reset, 2).unwrap_err();
    assert!(
        err.to_string()
            .contains("reset: persisting the write pointer failed"),
        "{err}"
    );
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::ImpOpen, TS + W));
    let mut buf = vec![0; W as usize];
    e.read(TS, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, W as usize));
    assert_eq!(m.durable_entries()[2], TS + W);
    e.zone_op(ZoneOp::Reset, 2).unwrap();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::Empty);
    assert_eq!(m.durable_entries()[2], TS);
}

#[test]
fn failed_sync_during_reset_rewrites_old_pointer_at_next_flush() {
    let (m, f, e) = faulty();
    e.write(TS, &pattern(1, W as usize), true).unwrap();
    f.fail_next(Fail::Sync, 1);
    e.zone_op(ZoneOp::Reset, 2).unwrap_err();
    assert_eq!(e.zone(2).unwrap().wp, TS + W);
    e.flush().unwrap();
    assert_eq!(m.durable_entries()[2], TS + W);
}

#[test]
fn failed_deallocation_after_reset_pointer_is_durable_leaves_zone_reset() {
    let (m, f, e) = faulty();
    e.write(TS, &pattern(1, W as usize), true).unwrap();
    f.fail_next(Fail::Dealloc, 1);
    let err = e.zone_op(ZoneOp::Reset, 2).unwrap_err();
    assert!(err.to_string().contains("reset done, but freeing"), "{err}");
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::Empty, TS));
    assert_eq!(m.durable_entries()[2], TS);
    let mut buf = vec![0xff; W as usize];
    e.read(TS, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "stale clusters are never read");
}

#[test]
fn failed_finish_changes_nothing() {
    let (_m, f, e) = faulty();
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    f.fail_next(Fail::Dealloc, 1);
    let err = e.zone_op(ZoneOp::Finish, 2).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "zone 2 (start 0x20000, IMP_OPEN, wp 0x21000): finish: freeing 0xf000 bytes at 0x21000"
        ),
        "{err}"
    );
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::ImpOpen, TS + W));
    assert_eq!((e.open_zones(), e.active_zones()), (1, 1));
    e.zone_op(ZoneOp::Finish, 2).unwrap();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::Full);
}

#[test]
fn failed_fault_setting_changes_nothing() {
    let (m, f, e) = faulty();
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    f.fail_next(Fail::StoreWp, 1);
    e.set_condition(2, ZoneFault::Offline).unwrap_err();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::ImpOpen);
    assert_eq!(m.durable_entries()[2], TS);
    e.flush().unwrap();
    assert_eq!(m.durable_entries()[2], TS + W);
}

#[test]
fn failed_conventional_write_names_the_zone() {
    let (_m, f, e) = faulty();
    f.fail_next(Fail::Write, 1);
    let err = e.write(0x200, &[1; 3], false).unwrap_err();
    assert!(
        err.to_string().starts_with("zone 0 (start 0x0, NOT_WP"),
        "{err}"
    );
    e.write(0x200, &[1; 3], false).unwrap();
}
