//! Durability rules 1–5 of `design/zone-model.md`: order of data, sync and
//! write-pointer writes, dirty-range flushing, and what survives a crash.

mod common;

use common::faulty::{Call, FaultyStore};
use common::{geo, pattern};
use std::sync::Arc;
use zcow::engine::{Engine, MemZoneStore};
use zcow::zone::{ZoneCond, ZoneGeometry, ZoneOp};

const ZS: u64 = 0x10000;
const TS: u64 = 2 * ZS;
const W: u64 = 0x1000;

fn g8() -> ZoneGeometry {
    geo(8 * ZS, ZS, ZS, 1, 0, 0, 0x2000)
}

fn recorded(g: ZoneGeometry) -> (Arc<MemZoneStore>, Arc<FaultyStore>, Engine) {
    let mem = Arc::new(MemZoneStore::new(g).unwrap());
    let f = FaultyStore::new(mem.clone());
    let e = Engine::open(f.clone()).unwrap();
    (mem, f, e)
}

#[test]
fn write_pointer_is_written_only_at_flush_after_data_is_synced() {
    let (mem, f, e) = recorded(g8());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    assert_eq!(f.take_log(), vec![Call::Write(TS, W)]);
    assert_eq!(mem.durable_entries()[2], TS);
    e.flush().unwrap();
    assert_eq!(
        f.take_log(),
        vec![Call::Sync, Call::StoreWp(2, 1), Call::Sync]
    );
    assert_eq!(mem.durable_entries()[2], TS + W);
}

#[test]
fn flush_with_nothing_dirty_only_syncs() {
    let (_mem, f, e) = recorded(g8());
    e.flush().unwrap();
    assert_eq!(f.take_log(), vec![Call::Sync]);
}

#[test]
fn flush_writes_only_dirty_entries() {
    let zs = 0x1000;
    let (_mem, f, e) = recorded(geo(1000 * zs, zs, zs, 0, 0, 0, 0));
    for z in [500u64, 900, 10, 12] {
        e.write(z * zs, &pattern(1, 512), false).unwrap();
    }
    f.take_log();
    e.flush().unwrap();
    // Nearby dirty entries (10, 12) go as one run; far ones separately.
    assert_eq!(
        f.take_log(),
        vec![
            Call::Sync,
            Call::StoreWp(10, 3),
            Call::StoreWp(500, 1),
            Call::StoreWp(900, 1),
            Call::Sync
        ]
    );
    e.flush().unwrap();
    assert_eq!(f.take_log(), vec![Call::Sync]);
}

#[test]
fn fua_write_is_durable_on_return() {
    let (mem, _f, e) = recorded(g8());
    e.write(TS, &pattern(1, W as usize), true).unwrap();
    assert_eq!(mem.durable_entries()[2], TS + W);
    let at = e.append(3 * ZS, &pattern(2, 512), true).unwrap();
    assert_eq!(mem.durable_entries()[3], at + 512);
}

#[test]
fn reset_makes_pointer_durable_before_freeing() {
    let (mem, f, e) = recorded(g8());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    e.flush().unwrap();
    f.take_log();
    e.zone_op(ZoneOp::Reset, 2).unwrap();
    assert_eq!(
        f.take_log(),
        vec![Call::StoreWp(2, 1), Call::Sync, Call::Dealloc(TS, ZS)]
    );
    assert_eq!(mem.durable_entries()[2], TS);
}

#[test]
fn reset_all_syncs_once() {
    let (_mem, f, e) = recorded(g8());
    for z in 2..6u64 {
        e.write(z * ZS, &pattern(1, W as usize), false).unwrap();
    }
    f.take_log();
    e.reset_all().unwrap();
    let log = f.take_log();
    assert_eq!(
        log.iter().filter(|c| **c == Call::Sync).count(),
        1,
        "{log:?}"
    );
    assert_eq!(log[0], Call::StoreWp(2, 4));
    assert_eq!(
        log.iter()
            .filter(|c| matches!(c, Call::Dealloc(..)))
            .count(),
        4
    );
}

#[test]
fn finish_frees_stale_range_before_pointer_is_persisted() {
    let (_mem, f, e) = recorded(g8());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    f.take_log();
    e.zone_op(ZoneOp::Finish, 2).unwrap();
    assert_eq!(f.take_log(), vec![Call::Dealloc(TS + W, ZS - W)]);
    e.flush().unwrap();
    assert_eq!(
        f.take_log(),
        vec![Call::Sync, Call::StoreWp(2, 1), Call::Sync]
    );
}

fn crash_reopen(mem: &Arc<MemZoneStore>, e: Engine) -> Engine {
    // No flush on the way down: the engine vanishes as in a power loss.
    std::mem::forget(e);
    mem.crash();
    Engine::open(mem.clone()).unwrap()
}

#[test]
fn crash_loses_unflushed_writes_and_their_pointer() {
    let mem = Arc::new(MemZoneStore::new(g8()).unwrap());
    let e = Engine::open(mem.clone()).unwrap();
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    e.flush().unwrap();
    e.write(TS + W, &pattern(2, W as usize), false).unwrap();
    let e = crash_reopen(&mem, e);
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::Closed, TS + W));
    let mut buf = vec![0xff; 2 * W as usize];
    e.read(TS, &mut buf).unwrap();
    assert_eq!(&buf[..W as usize], &pattern(1, W as usize)[..]);
    assert!(buf[W as usize..].iter().all(|&b| b == 0));
    // The zone goes on from the durable wp.
    e.write(TS + W, &pattern(3, W as usize), false).unwrap();
}

#[test]
fn crash_after_finish_without_flush_keeps_old_pointer() {
    let mem = Arc::new(MemZoneStore::new(g8()).unwrap());
    let e = Engine::open(mem.clone()).unwrap();
    e.write(TS, &pattern(1, W as usize), true).unwrap();
    e.zone_op(ZoneOp::Finish, 2).unwrap();
    let e = crash_reopen(&mem, e);
    assert_eq!(e.zone(2).unwrap().wp, TS + W);
}

#[test]
fn crash_after_reset_keeps_zone_empty() {
    let mem = Arc::new(MemZoneStore::new(g8()).unwrap());
    let e = Engine::open(mem.clone()).unwrap();
    e.write(TS, &pattern(1, W as usize), true).unwrap();
    e.zone_op(ZoneOp::Reset, 2).unwrap();
    let e = crash_reopen(&mem, e);
    let d = e.zone(2).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::Empty, TS));
    let mut buf = vec![0xff; W as usize];
    e.read(TS, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn close_and_drop_flush() {
    let mem = Arc::new(MemZoneStore::new(g8()).unwrap());
    let e = Engine::open(mem.clone()).unwrap();
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    e.close().unwrap();
    assert_eq!(mem.durable_entries()[2], TS + W);
    e.write(TS + W, &pattern(1, W as usize), false).unwrap();
    drop(e);
    assert_eq!(mem.durable_entries()[2], TS + 2 * W);
}

#[test]
fn reset_writes_only_the_reset_zones_entries() {
    let (_mem, f, e) = recorded(g8());
    e.write(2 * ZS, &pattern(1, W as usize), false).unwrap();
    e.write(4 * ZS, &pattern(1, W as usize), false).unwrap();
    e.write(6 * ZS, &pattern(1, W as usize), false).unwrap();
    f.take_log();
    // Zone 3 (EMPTY) lies between; zone 6 is dirty but outside the range:
    // its unsynced wp must not go out with the reset's entries.
    e.zone_mgmt(ZoneOp::Reset, 2 * ZS, 3 * ZS).unwrap();
    let log = f.take_log();
    assert_eq!(
        &log[..3],
        &[Call::StoreWp(2, 1), Call::StoreWp(4, 1), Call::Sync]
    );
}
