//! One test per cell of the transition table of `design/zone-model.md` and
//! per item of its "More rules", asserting the exact outcome.

mod common;

use common::{engine, geo, pattern};
use std::sync::Arc;
use zcow::device::BlockDevice;
use zcow::engine::{Engine, EngineError, MemZoneStore, ZoneFault, ZoneStore};
use zcow::zone::{
    ZoneCond, ZoneCond as C, ZoneErrorKind, ZoneErrorKind as K, ZoneGeometry, ZoneOp,
};

const ZS: u64 = 0x10000;
const CAP: u64 = 0xC000;
/// The sequential zone the table tests work on.
const T: u32 = 2;
const TS: u64 = T as u64 * ZS;
const W: u64 = 0x1000;

/// 8 zones of 64 KiB, capacity 48 KiB, zone 0 conventional, no limits,
/// appends up to 8 KiB.
fn table_geo() -> ZoneGeometry {
    geo(8 * ZS, ZS, CAP, 1, 0, 0, 0x2000)
}

#[derive(Debug, Clone, Copy)]
enum St {
    Empty,
    ImpOpen,
    ExpOpen,
    ExpOpenAtStart,
    Closed,
    Full,
    ReadOnly,
    Offline,
    Conv,
}

#[derive(Debug, Clone, Copy)]
enum Act {
    WriteAtWp,
    Append,
    WriteNotAtWp,
    Open,
    Close,
    Finish,
    Reset,
    ResetAll,
}

#[derive(Debug, Clone, Copy)]
enum Exp {
    /// Succeeds; the zone ends in this condition.
    To(ZoneCond),
    /// Succeeds and changes nothing (no-op or skipped).
    Same,
    /// Fails with this kind and changes nothing.
    Fail(ZoneErrorKind),
}

fn kind(r: Result<(), EngineError>) -> Result<(), ZoneErrorKind> {
    r.map_err(|e| {
        e.zone_kind()
            .unwrap_or_else(|| panic!("not a zone error: {e}"))
    })
}

fn setup(st: St) -> (Arc<MemZoneStore>, Engine, u32) {
    let (s, e) = engine(table_geo());
    let z = if matches!(st, St::Conv) { 0 } else { T };
    match st {
        St::Empty | St::Conv => {}
        St::ImpOpen => e.write(TS, &pattern(1, W as usize), false).unwrap(),
        St::ExpOpen => {
            e.zone_op(ZoneOp::Open, T).unwrap();
            e.write(TS, &pattern(1, W as usize), false).unwrap();
        }
        St::ExpOpenAtStart => e.zone_op(ZoneOp::Open, T).unwrap(),
        St::Closed => {
            e.write(TS, &pattern(1, W as usize), false).unwrap();
            e.zone_op(ZoneOp::Close, T).unwrap();
        }
        St::Full => e.zone_op(ZoneOp::Finish, T).unwrap(),
        St::ReadOnly => {
            e.write(TS, &pattern(1, W as usize), false).unwrap();
            e.set_condition(T, ZoneFault::ReadOnly).unwrap();
        }
        St::Offline => e.set_condition(T, ZoneFault::Offline).unwrap(),
    }
    (s, e, z)
}

fn act(e: &Engine, z: u32, a: Act) -> Result<(), ZoneErrorKind> {
    let start = z as u64 * ZS;
    let wp = e.zone(z).unwrap().wp;
    let data = pattern(7, W as usize);
    match a {
        // A FULL zone's wp may be the zone end: write just below it.
        Act::WriteAtWp => kind(e.write(wp.min(start + ZS - W), &data, false)),
        Act::Append => kind(e.append(start, &data, false).map(|_| ())),
        Act::WriteNotAtWp => {
            kind(e.write(if wp == start { start + W } else { start }, &data, false))
        }
        Act::Open => kind(e.zone_op(ZoneOp::Open, z)),
        Act::Close => kind(e.zone_op(ZoneOp::Close, z)),
        Act::Finish => kind(e.zone_op(ZoneOp::Finish, z)),
        Act::Reset => kind(e.zone_op(ZoneOp::Reset, z)),
        Act::ResetAll => kind(e.reset_all()),
    }
}

fn cell(st: St, a: Act, exp: Exp) {
    let (_s, e, z) = setup(st);
    let before = e.zone(z).unwrap();
    let counts = (e.open_zones(), e.active_zones());
    let r = act(&e, z, a);
    let after = e.zone(z).unwrap();
    match exp {
        Exp::Fail(k) => {
            assert_eq!(r, Err(k), "{st:?} {a:?}");
            assert_eq!(after, before, "{st:?} {a:?}: a failed op changes nothing");
            assert_eq!((e.open_zones(), e.active_zones()), counts);
        }
        Exp::Same => {
            assert_eq!(r, Ok(()), "{st:?} {a:?}");
            assert_eq!(after, before, "{st:?} {a:?}: no-op");
        }
        Exp::To(c) => {
            assert_eq!(r, Ok(()), "{st:?} {a:?}");
            assert_eq!(after.cond, c, "{st:?} {a:?}");
            let want_wp = match a {
                Act::WriteAtWp | Act::Append | Act::WriteNotAtWp if z >= 1 => before.wp + W,
                Act::Finish => after.start + after.len,
                Act::Reset | Act::ResetAll => after.start,
                _ => before.wp,
            };
            assert_eq!(after.wp, want_wp, "{st:?} {a:?}: wp");
            let (o, act) = match c {
                C::ImpOpen | C::ExpOpen => (1, 1),
                C::Closed => (0, 1),
                _ => (0, 0),
            };
            assert_eq!(
                (e.open_zones(), e.active_zones()),
                (o, act),
                "{st:?} {a:?}: resources"
            );
        }
    }
}

macro_rules! cells {
    ($($name:ident: $st:ident, $act:ident => $exp:expr;)*) => {
        $(#[test] fn $name() { cell(St::$st, Act::$act, $exp) })*
    };
}

use Exp::{Fail, Same, To};

cells! {
    // EMPTY
    empty_write_at_wp_opens_implicitly: Empty, WriteAtWp => To(C::ImpOpen);
    empty_append_opens_implicitly: Empty, Append => To(C::ImpOpen);
    empty_write_not_at_wp_is_unaligned: Empty, WriteNotAtWp => Fail(K::UnalignedWrite);
    empty_open_opens_explicitly: Empty, Open => To(C::ExpOpen);
    empty_close_is_noop: Empty, Close => Same;
    empty_finish_makes_full: Empty, Finish => To(C::Full);
    empty_reset_is_noop: Empty, Reset => Same;
    empty_reset_all_skips: Empty, ResetAll => Same;
    // IMP_OPEN
    imp_open_write_at_wp_stays: ImpOpen, WriteAtWp => To(C::ImpOpen);
    imp_open_append_stays: ImpOpen, Append => To(C::ImpOpen);
    imp_open_write_not_at_wp_is_unaligned: ImpOpen, WriteNotAtWp => Fail(K::UnalignedWrite);
    imp_open_open_becomes_explicit: ImpOpen, Open => To(C::ExpOpen);
    imp_open_close_closes: ImpOpen, Close => To(C::Closed);
    imp_open_finish_makes_full: ImpOpen, Finish => To(C::Full);
    imp_open_reset_empties: ImpOpen, Reset => To(C::Empty);
    imp_open_reset_all_empties: ImpOpen, ResetAll => To(C::Empty);
    // EXP_OPEN
    exp_open_write_at_wp_stays: ExpOpen, WriteAtWp => To(C::ExpOpen);
    exp_open_append_stays: ExpOpen, Append => To(C::ExpOpen);
    exp_open_write_not_at_wp_is_unaligned: ExpOpen, WriteNotAtWp => Fail(K::UnalignedWrite);
    exp_open_open_is_noop: ExpOpen, Open => Same;
    exp_open_close_closes: ExpOpen, Close => To(C::Closed);
    exp_open_close_at_start_empties: ExpOpenAtStart, Close => To(C::Empty);
    exp_open_finish_makes_full: ExpOpen, Finish => To(C::Full);
    exp_open_reset_empties: ExpOpen, Reset => To(C::Empty);
    exp_open_reset_all_empties: ExpOpen, ResetAll => To(C::Empty);
    // CLOSED
    closed_write_at_wp_opens_implicitly: Closed, WriteAtWp => To(C::ImpOpen);
    closed_append_opens_implicitly: Closed, Append => To(C::ImpOpen);
    closed_write_not_at_wp_is_unaligned: Closed, WriteNotAtWp => Fail(K::UnalignedWrite);
    closed_open_opens_explicitly: Closed, Open => To(C::ExpOpen);
    closed_close_is_noop: Closed, Close => Same;
    closed_finish_makes_full: Closed, Finish => To(C::Full);
    closed_reset_empties: Closed, Reset => To(C::Empty);
    closed_reset_all_empties: Closed, ResetAll => To(C::Empty);
    // FULL
    full_write_is_zone_full: Full, WriteAtWp => Fail(K::ZoneFull);
    full_append_is_zone_full: Full, Append => Fail(K::ZoneFull);
    full_write_not_at_wp_is_zone_full: Full, WriteNotAtWp => Fail(K::ZoneFull);
    full_open_is_invalid_transition: Full, Open => Fail(K::InvalidTransition);
    full_close_is_noop: Full, Close => Same;
    full_finish_is_noop: Full, Finish => Same;
    full_reset_empties: Full, Reset => To(C::Empty);
    full_reset_all_empties: Full, ResetAll => To(C::Empty);
    // READ_ONLY
    read_only_write_fails: ReadOnly, WriteAtWp => Fail(K::ReadOnly);
    read_only_append_fails: ReadOnly, Append => Fail(K::ReadOnly);
    read_only_write_not_at_wp_fails: ReadOnly, WriteNotAtWp => Fail(K::ReadOnly);
    read_only_open_is_invalid_transition: ReadOnly, Open => Fail(K::InvalidTransition);
    read_only_close_is_invalid_transition: ReadOnly, Close => Fail(K::InvalidTransition);
    read_only_finish_is_invalid_transition: ReadOnly, Finish => Fail(K::InvalidTransition);
    read_only_reset_is_invalid_transition: ReadOnly, Reset => Fail(K::InvalidTransition);
    read_only_reset_all_skips: ReadOnly, ResetAll => Same;
    // OFFLINE
    offline_write_fails: Offline, WriteAtWp => Fail(K::Offline);
    offline_append_fails: Offline, Append => Fail(K::Offline);
    offline_write_not_at_wp_fails: Offline, WriteNotAtWp => Fail(K::Offline);
    offline_open_is_invalid_transition: Offline, Open => Fail(K::InvalidTransition);
    offline_close_is_invalid_transition: Offline, Close => Fail(K::InvalidTransition);
    offline_finish_is_invalid_transition: Offline, Finish => Fail(K::InvalidTransition);
    offline_reset_is_invalid_transition: Offline, Reset => Fail(K::InvalidTransition);
    offline_reset_all_skips: Offline, ResetAll => Same;
    // conventional
    conventional_write_is_plain: Conv, WriteAtWp => To(C::NotWp);
    conventional_append_is_invalid_command: Conv, Append => Fail(K::InvalidCommand);
    conventional_write_anywhere_is_plain: Conv, WriteNotAtWp => To(C::NotWp);
    conventional_open_is_invalid_command: Conv, Open => Fail(K::InvalidCommand);
    conventional_close_is_invalid_command: Conv, Close => Fail(K::InvalidCommand);
    conventional_finish_is_invalid_command: Conv, Finish => Fail(K::InvalidCommand);
    conventional_reset_is_invalid_command: Conv, Reset => Fail(K::InvalidCommand);
    conventional_reset_all_skips: Conv, ResetAll => Same;
}

// ------------------------------------------------------------ resources

/// 8 zones of 64 KiB (zone 0 conventional), open limit 2, active limit 3.
fn limited() -> (Arc<MemZoneStore>, Engine) {
    engine(geo(8 * ZS, ZS, CAP, 1, 2, 3, 0x2000))
}

fn w(e: &Engine, z: u32) -> Result<(), ZoneErrorKind> {
    let wp = e.zone(z).unwrap().wp;
    kind(e.write(wp, &pattern(z as u8, W as usize), false))
}

fn cond(e: &Engine, z: u32) -> ZoneCond {
    e.zone(z).unwrap().cond
}

#[test]
fn implicit_close_picks_least_recently_written() {
    let (_s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    w(&e, 1).unwrap(); // zone 2 is now the least recently written
    w(&e, 3).unwrap();
    assert_eq!(cond(&e, 2), C::Closed);
    assert_eq!(cond(&e, 1), C::ImpOpen);
    assert_eq!(cond(&e, 3), C::ImpOpen);
    assert_eq!((e.open_zones(), e.active_zones()), (2, 3));
}

#[test]
fn implicit_close_not_by_open_order() {
    let (_s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    w(&e, 1).unwrap();
    e.zone_op(ZoneOp::Close, 2).unwrap();
    // CLOSED zone 2 written again: needs open, closes zone 1 (the only and
    // least recently written IMP_OPEN zone other than... itself not yet open).
    w(&e, 3).unwrap();
    assert_eq!(cond(&e, 1), C::ImpOpen);
    w(&e, 2).unwrap();
    assert_eq!(cond(&e, 1), C::Closed);
    assert_eq!(cond(&e, 2), C::ImpOpen);
    assert_eq!(cond(&e, 3), C::ImpOpen);
}

#[test]
fn explicit_open_also_closes_implicitly_open_zone() {
    let (_s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    e.zone_op(ZoneOp::Open, 3).unwrap();
    assert_eq!(
        (cond(&e, 1), cond(&e, 2), cond(&e, 3)),
        (C::Closed, C::ImpOpen, C::ExpOpen)
    );
    assert_eq!((e.open_zones(), e.active_zones()), (2, 3));
}

#[test]
fn open_resource_when_no_implicitly_open_zone() {
    let (_s, e) = limited();
    e.zone_op(ZoneOp::Open, 1).unwrap();
    e.zone_op(ZoneOp::Open, 2).unwrap();
    let err = e.write(3 * ZS, &pattern(1, W as usize), false).unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::OpenResource));
    assert_eq!(cond(&e, 3), C::Empty);
    assert_eq!(kind(e.zone_op(ZoneOp::Open, 3)), Err(K::OpenResource));
}

#[test]
fn active_resource_wins_over_open_resource() {
    // open limit 2, active limit 2: both exceeded → ActiveResource.
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 2, 2, 0x2000));
    e.zone_op(ZoneOp::Open, 1).unwrap();
    e.zone_op(ZoneOp::Open, 2).unwrap();
    assert_eq!(w(&e, 3), Err(K::ActiveResource));
    assert_eq!(kind(e.zone_op(ZoneOp::Open, 3)), Err(K::ActiveResource));
}

#[test]
fn active_limit_failure_does_not_close_implicitly() {
    // active limit reached by IMP_OPEN zones: a new zone fails with
    // ActiveResource and no zone is implicitly closed (a failed op changes
    // nothing).
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 2, 2, 0x2000));
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    assert_eq!(w(&e, 3), Err(K::ActiveResource));
    assert_eq!((cond(&e, 1), cond(&e, 2)), (C::ImpOpen, C::ImpOpen));
    assert_eq!((e.open_zones(), e.active_zones()), (2, 2));
}

#[test]
fn closed_zone_write_needs_open_only() {
    let (_s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    w(&e, 3).unwrap(); // closes zone 1: active 3 (1 closed, 2, 3 open)
    assert_eq!(cond(&e, 1), C::Closed);
    assert_eq!(w(&e, 4), Err(K::ActiveResource));
    w(&e, 1).unwrap(); // CLOSED → IMP_OPEN: needs open only; closes zone 2
    assert_eq!(cond(&e, 2), C::Closed);
    assert_eq!((e.open_zones(), e.active_zones()), (2, 3));
}

#[test]
fn finish_from_empty_checks_active_limit() {
    let (_s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    w(&e, 3).unwrap();
    assert_eq!(kind(e.zone_op(ZoneOp::Finish, 4)), Err(K::ActiveResource));
    assert_eq!(cond(&e, 4), C::Empty);
    e.zone_op(ZoneOp::Finish, 3).unwrap(); // not from EMPTY: always allowed
    e.zone_op(ZoneOp::Finish, 4).unwrap();
}

// ------------------------------------------------------------ More rules

#[test]
fn write_reaching_capacity_makes_full_and_frees_resources() {
    let (_s, e) = limited();
    e.write(TS, &pattern(1, (CAP - W) as usize), false).unwrap();
    assert_eq!(
        (cond(&e, T), e.open_zones(), e.active_zones()),
        (C::ImpOpen, 1, 1)
    );
    e.write(TS + CAP - W, &pattern(2, W as usize), false)
        .unwrap();
    let d = e.zone(T).unwrap();
    assert_eq!((d.cond, d.wp), (C::Full, TS + CAP));
    assert_eq!((e.open_zones(), e.active_zones()), (0, 0));
}

#[test]
fn append_reaching_capacity_makes_full() {
    let (_s, e) = engine(geo(8 * ZS, ZS, 0x2000, 1, 0, 0, 0x1000));
    assert_eq!(e.append(TS, &pattern(1, 0x1000), false).unwrap(), TS);
    assert_eq!(
        e.append(TS, &pattern(1, 0x1000), false).unwrap(),
        TS + 0x1000
    );
    assert_eq!(cond(&e, T), C::Full);
    assert_eq!(
        kind(e.append(TS, &pattern(1, 512), false).map(|_| ())),
        Err(K::ZoneFull)
    );
}

#[test]
fn write_passing_capacity_is_boundary_and_changes_nothing() {
    let (_s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    let before = e.zone(T).unwrap();
    let err = e
        .write(TS + W, &pattern(1, CAP as usize), false)
        .unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::Boundary));
    assert_eq!(
        err.to_string(),
        "zone 2 (start 0x20000, IMP_OPEN, wp 0x21000): write of 0xc000 bytes at 0x21000 would pass the zone capacity (writable up to 0x2c000)"
    );
    assert_eq!(e.zone(T).unwrap(), before);
}

#[test]
fn write_spanning_two_zones_is_boundary() {
    let (_s, e) = engine(geo(8 * ZS, ZS, ZS, 1, 0, 0, 0x2000));
    e.write(TS, &pattern(1, (ZS - W) as usize), false).unwrap();
    let err = e
        .write(TS + ZS - W, &pattern(1, 2 * W as usize), false)
        .unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::Boundary));
    assert!(
        err.to_string()
            .contains("would cross the zone boundary at 0x30000"),
        "{err}"
    );
    assert_eq!(e.zone(T).unwrap().wp, TS + ZS - W);
    assert_eq!(cond(&e, T + 1), C::Empty);
}

#[test]
fn conventional_write_may_cross_into_next_conventional_zone() {
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 2, 0, 0, 0x2000));
    let data = pattern(5, 2 * W as usize);
    e.write(ZS - W, &data, false).unwrap();
    let mut buf = vec![0; data.len()];
    e.read(ZS - W, &mut buf).unwrap();
    assert_eq!(buf, data);
    // ... but not into a sequential zone.
    let err = e.write(2 * ZS - W, &data, false).unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::Boundary));
}

#[test]
fn conventional_write_is_byte_granular() {
    let (_s, e) = engine(table_geo());
    e.write(3, b"abc", false).unwrap();
    let mut buf = [0u8; 5];
    e.read(2, &mut buf).unwrap();
    assert_eq!(&buf, b"\0abc\0");
}

#[test]
fn sequential_write_must_be_512_granular() {
    let (_s, e) = engine(table_geo());
    assert_eq!(
        kind(e.write(TS, &[1u8; 100], false)),
        Err(K::InvalidCommand)
    );
    assert_eq!(cond(&e, T), C::Empty);
}

#[test]
fn append_not_at_zone_start_is_invalid_command() {
    let (_s, e) = engine(table_geo());
    let err = e.append(TS + 512, &pattern(1, 512), false).unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::InvalidCommand));
    assert_eq!(
        err.to_string(),
        "zone 2 (start 0x20000, EMPTY, wp 0x20000): append of 0x200 bytes at 0x20200 is not at a zone start"
    );
}

#[test]
fn append_longer_than_max_is_invalid_command() {
    let (_s, e) = engine(table_geo());
    assert_eq!(
        kind(e.append(TS, &pattern(1, 0x2200), false).map(|_| ())),
        Err(K::InvalidCommand)
    );
    assert_eq!(e.append(TS, &pattern(1, 0x2000), false).unwrap(), TS);
}

#[test]
fn append_with_max_append_zero_is_unsupported() {
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 0, 0, 0));
    assert_eq!(
        kind(e.append(TS, &pattern(1, 512), false).map(|_| ())),
        Err(K::Unsupported)
    );
}

#[test]
fn append_returns_where_data_landed() {
    let (_s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    let data = pattern(9, 0x800);
    let at = e.append(TS, &data, false).unwrap();
    assert_eq!(at, TS + W);
    let mut buf = vec![0; data.len()];
    e.read(at, &mut buf).unwrap();
    assert_eq!(buf, data);
    assert_eq!(e.zone(T).unwrap().wp, TS + W + 0x800);
}

#[test]
fn finish_sets_wp_to_zone_end_and_stale_data_reads_zero() {
    let (s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    // Stale data past the wp, as a crash can leave it.
    s.write(TS + 2 * W, &pattern(3, W as usize)).unwrap();
    e.zone_op(ZoneOp::Finish, T).unwrap();
    let d = e.zone(T).unwrap();
    assert_eq!((d.cond, d.wp), (C::Full, TS + ZS));
    let mut buf = vec![0xff; ZS as usize];
    e.read(TS, &mut buf).unwrap();
    assert_eq!(&buf[..W as usize], &pattern(1, W as usize)[..]);
    assert!(buf[W as usize..].iter().all(|&b| b == 0));
}

#[test]
fn finish_of_smaller_last_zone_goes_to_its_end() {
    let (_s, e) = engine(geo(7 * ZS + 0x8000, ZS, CAP, 1, 0, 0, 0x2000));
    e.zone_op(ZoneOp::Finish, 7).unwrap();
    let d = e.zone(7).unwrap();
    assert_eq!((d.len, d.cap, d.wp), (0x8000, 0x8000, 7 * ZS + 0x8000));
}

#[test]
fn smaller_last_zone_capacity_is_its_length() {
    let (_s, e) = engine(geo(7 * ZS + 0x8000, ZS, CAP, 1, 0, 0, 0x2000));
    e.write(7 * ZS, &pattern(1, 0x8000), false).unwrap();
    assert_eq!(cond(&e, 7), C::Full);
}

#[test]
fn reset_frees_the_zone_and_reads_zero() {
    let (s, e) = engine(table_geo());
    e.write(TS, &pattern(1, 0x8000), false).unwrap();
    let used = s.allocated_bytes();
    e.zone_op(ZoneOp::Reset, T).unwrap();
    assert_eq!(s.allocated_bytes(), used - 0x8000);
    let mut buf = vec![0xff; 0x8000];
    e.read(TS, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let d = e.zone(T).unwrap();
    assert_eq!((d.cond, d.wp), (C::Empty, TS));
}

#[test]
fn mgmt_range_covers_several_zones() {
    let (_s, e) = engine(table_geo());
    e.zone_mgmt(ZoneOp::Open, 2 * ZS, 3 * ZS).unwrap();
    for z in 2..5 {
        assert_eq!(cond(&e, z), C::ExpOpen);
    }
    e.zone_mgmt(ZoneOp::Finish, 2 * ZS, 2 * ZS).unwrap();
    assert_eq!(
        (cond(&e, 2), cond(&e, 3), cond(&e, 4)),
        (C::Full, C::Full, C::ExpOpen)
    );
    e.zone_mgmt(ZoneOp::Reset, 2 * ZS, 3 * ZS).unwrap();
    for z in 2..5 {
        assert_eq!(cond(&e, z), C::Empty);
    }
}

#[test]
fn mgmt_range_stops_at_first_failing_zone() {
    let (_s, e) = engine(table_geo());
    e.zone_op(ZoneOp::Finish, 4).unwrap();
    let err = e.zone_mgmt(ZoneOp::Open, 3 * ZS, 3 * ZS).unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::InvalidTransition));
    assert!(
        err.to_string().starts_with("zone 4 (start 0x40000, FULL"),
        "{err}"
    );
    assert_eq!((cond(&e, 3), cond(&e, 5)), (C::ExpOpen, C::Empty));
}

#[test]
fn mgmt_misaligned_offset_is_invalid_command() {
    let (_s, e) = engine(table_geo());
    assert_eq!(
        kind(e.zone_mgmt(ZoneOp::Reset, TS + 512, ZS)),
        Err(K::InvalidCommand)
    );
}

#[test]
fn mgmt_length_not_zone_multiple_is_invalid_command() {
    let (_s, e) = engine(table_geo());
    assert_eq!(
        kind(e.zone_mgmt(ZoneOp::Open, TS, ZS + 512)),
        Err(K::InvalidCommand)
    );
    assert_eq!(
        kind(e.zone_mgmt(ZoneOp::Open, TS, 0)),
        Err(K::InvalidCommand)
    );
    assert_eq!(cond(&e, T), C::Empty);
}

#[test]
fn mgmt_last_smaller_zone_counts_whole() {
    let (_s, e) = engine(geo(7 * ZS + 0x8000, ZS, CAP, 1, 0, 0, 0x2000));
    e.zone_mgmt(ZoneOp::Finish, 6 * ZS, 2 * ZS).unwrap();
    assert_eq!((cond(&e, 6), cond(&e, 7)), (C::Full, C::Full));
    // Its real length is accepted as well.
    e.zone_mgmt(ZoneOp::Reset, 7 * ZS, 0x8000).unwrap();
    assert_eq!(cond(&e, 7), C::Empty);
}

#[test]
fn reset_with_device_length_is_reset_all() {
    let (_s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    e.zone_op(ZoneOp::Finish, 3).unwrap();
    e.set_condition(4, ZoneFault::ReadOnly).unwrap();
    // A plain range reset over zone 4 fails; reset-all skips it.
    assert_eq!(
        kind(e.zone_mgmt(ZoneOp::Reset, ZS, 7 * ZS)),
        Err(K::InvalidTransition)
    );
    e.zone_mgmt(ZoneOp::Reset, 0, 8 * ZS).unwrap();
    assert_eq!(
        (cond(&e, 2), cond(&e, 3), cond(&e, 4)),
        (C::Empty, C::Empty, C::ReadOnly)
    );
}

#[test]
fn reads_cross_zones_and_are_zero_past_wp() {
    let (_s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    e.write(TS + ZS, &pattern(2, W as usize), false).unwrap();
    let mut buf = vec![0xff; 2 * ZS as usize];
    e.read(TS, &mut buf).unwrap();
    assert_eq!(&buf[..W as usize], &pattern(1, W as usize)[..]);
    assert!(buf[W as usize..ZS as usize].iter().all(|&b| b == 0));
    assert_eq!(
        &buf[ZS as usize..(ZS + W) as usize],
        &pattern(2, W as usize)[..]
    );
    assert!(buf[(ZS + W) as usize..].iter().all(|&b| b == 0));
}

#[test]
fn stale_data_past_wp_reads_zero() {
    let (s, e) = engine(table_geo());
    s.write(TS, &pattern(4, W as usize)).unwrap();
    let mut buf = vec![0xff; W as usize];
    e.read(TS, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn read_of_offline_zone_fails() {
    let (_s, e) = engine(table_geo());
    e.set_condition(3, ZoneFault::Offline).unwrap();
    let mut buf = vec![0; 2 * ZS as usize];
    let err = e.read(TS, &mut buf).unwrap_err();
    assert_eq!(err.zone_kind(), Some(K::Offline));
    assert!(
        err.to_string()
            .starts_with("zone 3 (start 0x30000, OFFLINE"),
        "{err}"
    );
    e.read(TS, &mut buf[..ZS as usize]).unwrap();
}

#[test]
fn read_only_zone_is_readable() {
    let (_s, e, _) = setup(St::ReadOnly);
    let mut buf = vec![0; W as usize];
    e.read(TS, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, W as usize));
}

#[test]
fn reopen_is_a_power_cycle() {
    let (s, e) = limited();
    w(&e, 1).unwrap(); // IMP_OPEN
    e.zone_op(ZoneOp::Open, 2).unwrap(); // EXP_OPEN, wp = start
    w(&e, 3).unwrap();
    e.zone_op(ZoneOp::Close, 3).unwrap(); // CLOSED
    drop(e);
    let e = Engine::open(s.clone()).unwrap();
    assert_eq!(
        (cond(&e, 1), cond(&e, 2), cond(&e, 3)),
        (C::Closed, C::Empty, C::Closed)
    );
    assert_eq!((e.open_zones(), e.active_zones()), (0, 2));
    let mut buf = vec![0; W as usize];
    e.read(ZS, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, W as usize));
}

#[test]
fn set_fault_releases_resources_and_persists() {
    let (s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    assert_eq!((e.open_zones(), e.active_zones()), (2, 2));
    e.set_condition(1, ZoneFault::ReadOnly).unwrap();
    e.set_condition(2, ZoneFault::Offline).unwrap();
    assert_eq!((e.open_zones(), e.active_zones()), (0, 0));
    // Durable at once: the on-disk entries carry bits 60 and 61.
    let d = s.durable_entries();
    assert_eq!(d[1], (1 << 60) | (ZS + W));
    assert_eq!(d[2], (1 << 61) | (2 * ZS + W));
    drop(e);
    let e = Engine::open(s.clone()).unwrap();
    assert_eq!((cond(&e, 1), cond(&e, 2)), (C::ReadOnly, C::Offline));
    // Clearing gives back the condition the wp implies.
    e.set_condition(1, ZoneFault::Clear).unwrap();
    let d = e.zone(1).unwrap();
    assert_eq!((d.cond, d.wp), (C::Closed, ZS + W));
    assert_eq!(e.active_zones(), 1);
    assert_eq!(s.durable_entries()[1], ZS + W);
}

#[test]
fn clearing_fault_needs_active_resource_for_closed() {
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 1, 1, 0x2000));
    w(&e, 1).unwrap();
    e.set_condition(1, ZoneFault::ReadOnly).unwrap();
    w(&e, 2).unwrap();
    assert_eq!(
        kind(e.set_condition(1, ZoneFault::Clear)),
        Err(K::ActiveResource)
    );
    assert_eq!(cond(&e, 1), C::ReadOnly);
}

#[test]
fn unaligned_write_message_names_zone_and_request() {
    // The example of the design: zone 12 of 4 MiB zones.
    let (_s, e) = engine(geo(16 << 22, 1 << 22, 1 << 22, 0, 0, 0, 0x10000));
    e.write(0x3000000, &pattern(1, 0x10000), false).unwrap();
    let err = e.write(0x3020000, &pattern(1, 0x1000), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zone 12 (start 0x3000000, IMP_OPEN, wp 0x3010000): write at 0x3020000 is not at the write pointer"
    );
}

#[test]
fn resource_error_messages() {
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 1, 1, 0x2000));
    e.zone_op(ZoneOp::Open, 1).unwrap();
    let err = e.write(TS, &pattern(1, W as usize), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zone 2 (start 0x20000, EMPTY, wp 0x20000): write of 0x1000 bytes at 0x20000 needs an active zone resource but 1 of 1 are in use"
    );
    let err = e.zone_op(ZoneOp::Open, 9).unwrap_err();
    assert!(matches!(err, EngineError::Invalid(_)), "{err}");
}

#[test]
fn full_zone_write_message() {
    let (_s, e, _) = setup(St::Full);
    let err = e.write(TS, &pattern(1, W as usize), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zone 2 (start 0x20000, FULL, wp 0x30000): write of 0x1000 bytes at 0x20000 to a full zone"
    );
}

// ------------------------------------------------------------ device ops

#[test]
fn write_zeroes_in_sequential_zone_is_a_write_at_wp() {
    let (s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    s.write(TS + W, &pattern(2, W as usize)).unwrap(); // stale
    let flags = zcow::device::ZeroFlags::default();
    BlockDevice::write_zeroes(&e, TS + W, W, flags).unwrap();
    assert_eq!(e.zone(T).unwrap().wp, TS + 2 * W);
    let mut buf = vec![0xff; W as usize];
    e.read(TS + W, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let err = BlockDevice::write_zeroes(&e, TS, W, flags).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
}

#[test]
fn discard_is_noop_in_sequential_zones_and_zeroes_conventional() {
    let (_s, e) = engine(table_geo());
    e.write(0, &pattern(1, W as usize), false).unwrap();
    e.write(TS, &pattern(2, W as usize), false).unwrap();
    BlockDevice::discard(&e, 0, 8 * ZS).unwrap();
    let mut buf = vec![0xff; W as usize];
    e.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    e.read(TS, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, W as usize));
    assert_eq!(e.zone(T).unwrap().wp, TS + W);
}

#[test]
fn block_status_reports_hole_past_wp() {
    let (_s, e) = engine(table_geo());
    e.write(TS, &pattern(1, W as usize), false).unwrap();
    let ext = BlockDevice::block_status(&e, ZS, 2 * ZS).unwrap();
    let v: Vec<(u64, bool, bool)> = ext.iter().map(|x| (x.len, x.hole, x.zero)).collect();
    assert_eq!(
        v,
        vec![(ZS, true, true), (W, false, false), (ZS - W, true, true)]
    );
}

#[test]
fn block_device_errors_map_to_errnos() {
    let (_s, e) = engine(table_geo());
    let d: &dyn BlockDevice = &e;
    assert!(d.zone_geometry().is_some());
    let err = d.write(TS + W, &pattern(1, 512), false).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    let err = d.write(8 * ZS, &[0; 512], false).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    d.zone_mgmt(ZoneOp::Finish, TS, ZS).unwrap();
    assert_eq!(
        d.write(TS, &[0; 512], false).unwrap_err().errno(),
        libc::ENOSPC
    );
    let rep = d.zone_report(TS, 100).unwrap();
    assert_eq!(rep.len(), 6);
    assert_eq!(rep[0].cond, C::Full);
    assert_eq!(d.zone_append(TS + ZS, &[1; 512], false).unwrap(), TS + ZS);
}

#[test]
fn read_only_store_refuses_writes() {
    let g = table_geo();
    let s = Arc::new(MemZoneStore::new(g).unwrap());
    s.set_read_only(true);
    let e = Engine::open(s.clone()).unwrap();
    assert!(matches!(
        e.write(TS, &[0; 512], false),
        Err(EngineError::ReadOnly)
    ));
    assert!(matches!(
        e.zone_op(ZoneOp::Open, T),
        Err(EngineError::ReadOnly)
    ));
    let mut buf = [0u8; 512];
    e.read(TS, &mut buf).unwrap();
}

// ------------------------------------------------------------ open validation

fn open_err(g: ZoneGeometry, i: u32, raw: u64) -> String {
    let s = Arc::new(MemZoneStore::new(g).unwrap());
    s.set_entry(i, raw);
    Engine::open(s as Arc<dyn ZoneStore>)
        .unwrap_err()
        .to_string()
}

#[test]
fn open_rejects_wp_outside_zone() {
    let m = open_err(table_geo(), 3, 5 * ZS);
    assert_eq!(
        m,
        "zone 3 (start 0x30000): write pointer 0x50000 is outside the zone [0x30000, 0x40000]"
    );
}

#[test]
fn open_rejects_conventional_bit_mismatch() {
    let m = open_err(table_geo(), 3, (1 << 59) | (3 * ZS));
    assert!(
        m.starts_with("zone 3 (start 0x30000): write-pointer entry"),
        "{m}"
    );
    assert!(
        m.contains("has the conventional bit but the zone is sequential"),
        "{m}"
    );
    let m = open_err(table_geo(), 0, 0);
    assert!(
        m.contains("lacks the conventional bit but the zone is conventional"),
        "{m}"
    );
}

#[test]
fn open_rejects_reserved_bits() {
    let m = open_err(table_geo(), 2, (1 << 62) | TS);
    assert!(m.contains("reserved bits"), "{m}");
}

#[test]
fn open_derives_conditions_from_entries() {
    let g = table_geo();
    let s = Arc::new(MemZoneStore::new(g).unwrap());
    s.set_entry(2, TS + W);
    s.set_entry(3, 3 * ZS + CAP);
    s.set_entry(4, 4 * ZS + ZS);
    s.set_entry(5, (1 << 60) | (5 * ZS));
    s.set_entry(6, (1 << 61) | (6 * ZS + W));
    let e = Engine::open(s).unwrap();
    let conds: Vec<ZoneCond> = (0..8).map(|z| cond(&e, z)).collect();
    assert_eq!(
        conds,
        vec![
            C::NotWp,
            C::Empty,
            C::Closed,
            C::Full,
            C::Full,
            C::ReadOnly,
            C::Offline,
            C::Empty
        ]
    );
    assert_eq!((e.open_zones(), e.active_zones()), (0, 1));
}

// ------------------------------------------- implicit finish (unaware policy)

#[test]
fn finish_least_recent_active_takes_lru_imp_open_or_closed_zone() {
    let (_s, e) = limited();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    w(&e, 3).unwrap(); // zone 1 implicitly closed: active 1 (CLOSED), 2, 3
    w(&e, 2).unwrap(); // order of last writes: 1, 3, 2
    assert_eq!(w(&e, 4), Err(K::ActiveResource));
    assert_eq!(e.finish_least_recent_active().unwrap(), Some(1));
    let z1 = e.zone(1).unwrap();
    assert_eq!((z1.cond, z1.wp), (C::Full, 2 * ZS));
    // The finished zone keeps its data; the rest reads as zeroes.
    let mut b = vec![0u8; ZS as usize];
    e.read(ZS, &mut b).unwrap();
    assert_eq!(&b[..W as usize], &pattern(1, W as usize)[..]);
    assert!(b[W as usize..].iter().all(|&x| x == 0));
    w(&e, 4).unwrap();
    assert_eq!(e.active_zones(), 3);
    // Next victim: zone 3 (written before zone 2).
    assert_eq!(e.finish_least_recent_active().unwrap(), Some(3));
    assert_eq!(cond(&e, 3), C::Full);
}

#[test]
fn finish_least_recent_active_never_takes_explicitly_open_zones() {
    let (_s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 0, 2, 0x2000));
    e.zone_op(ZoneOp::Open, 1).unwrap();
    w(&e, 1).unwrap();
    w(&e, 2).unwrap();
    assert_eq!(e.finish_least_recent_active().unwrap(), Some(2));
    assert_eq!(cond(&e, 1), C::ExpOpen);
    assert_eq!(e.finish_least_recent_active().unwrap(), None);
    // Closing the explicitly opened zone makes it a candidate.
    e.zone_op(ZoneOp::Close, 1).unwrap();
    assert_eq!(e.finish_least_recent_active().unwrap(), Some(1));
    assert_eq!(e.active_zones(), 0);
}

#[test]
fn finish_least_recent_active_after_reopen_sees_closed_zones() {
    // CLOSED zones found at open time are candidates, in index order.
    let (s, e) = engine(geo(8 * ZS, ZS, CAP, 1, 0, 2, 0x2000));
    w(&e, 3).unwrap();
    w(&e, 2).unwrap();
    e.flush().unwrap();
    drop(e);
    let e = Engine::open(s).unwrap();
    assert_eq!(w(&e, 4), Err(K::ActiveResource));
    assert_eq!(e.finish_least_recent_active().unwrap(), Some(2));
    w(&e, 4).unwrap();
    // A zone reset leaves the list.
    e.zone_op(ZoneOp::Reset, 3).unwrap();
    assert_eq!(e.finish_least_recent_active().unwrap(), Some(4));
    assert_eq!(e.finish_least_recent_active().unwrap(), None);
}

#[test]
fn conventional_zone_capacity_is_its_length_and_all_of_it_is_writable() {
    // Zone 0 is conventional; the sequential capacity (48 KiB) does not
    // apply to it: it reports and accepts its whole 64 KiB.
    let (_s, e) = engine(table_geo());
    let d = e.zone(0).unwrap();
    assert_eq!((d.len, d.cap), (ZS, ZS));
    assert_eq!(e.report(0, 2).unwrap()[0].cap, ZS);
    e.write(CAP, &pattern(3, (ZS - CAP) as usize), false)
        .unwrap();
    let mut buf = vec![0u8; (ZS - CAP) as usize];
    e.read(CAP, &mut buf).unwrap();
    assert_eq!(buf, pattern(3, (ZS - CAP) as usize));
    // Sequential zones keep the zone capacity.
    assert_eq!(e.zone(1).unwrap().cap, CAP);
}
