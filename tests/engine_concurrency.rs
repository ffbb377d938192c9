//! The engine shared between threads: appends to one zone get distinct,
//! contiguous ranges; different zones proceed independently; a failed write
//! among concurrent appends rolls the zone back consistently.

mod common;

use common::faulty::FaultyStore;
use common::{engine, geo, pattern};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use zcow::engine::{Engine, EngineError, MemZoneStore};
use zcow::zone::{ZoneCond, ZoneErrorKind};

const MB: u64 = 1 << 20;

#[test]
fn concurrent_appends_get_distinct_contiguous_ranges() {
    let (_s, e) = engine(geo(4 * MB, MB, MB, 0, 0, 0, 4096));
    let e = Arc::new(e);
    let zs = MB; // zone 1
    let handles: Vec<_> = (0..8u8)
        .map(|t| {
            let e = e.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for k in 0..32u8 {
                    let len = 512 * (1 + (t as usize + k as usize) % 8);
                    let seed = t.wrapping_mul(37).wrapping_add(k);
                    let at = e.append(zs, &pattern(seed, len), false).unwrap();
                    got.push((at, len as u64, seed));
                }
                got
            })
        })
        .collect();
    let mut all: Vec<(u64, u64, u8)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    let mut pos = zs;
    for &(at, len, seed) in &all {
        assert_eq!(at, pos, "ranges must be contiguous and disjoint");
        let mut buf = vec![0; len as usize];
        e.read(at, &mut buf).unwrap();
        assert_eq!(buf, pattern(seed, len as usize), "data at {at:#x}");
        pos += len;
    }
    assert_eq!(e.zone(1).unwrap().wp, pos);
}

#[test]
fn concurrent_appends_until_full() {
    let (_s, e) = engine(geo(2 * MB, MB, 64 * 1024, 0, 0, 0, 4096));
    let e = Arc::new(e);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            thread::spawn(move || {
                let mut ok = Vec::new();
                for _ in 0..20 {
                    match e.append(0, &[7u8; 4096], false) {
                        Ok(at) => ok.push(at),
                        Err(err) => assert_eq!(err.zone_kind(), Some(ZoneErrorKind::ZoneFull)),
                    }
                }
                ok
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (0..16).map(|k| k * 4096).collect::<Vec<_>>());
    assert_eq!(e.zone(0).unwrap().cond, ZoneCond::Full);
    assert_eq!((e.open_zones(), e.active_zones()), (0, 0));
}

#[test]
fn threads_on_different_zones() {
    let (s, e) = engine(geo(8 * MB, MB, MB, 1, 0, 0, 4096));
    let e = Arc::new(e);
    let handles: Vec<_> = (1..8u32)
        .map(|z| {
            let e = e.clone();
            thread::spawn(move || {
                let start = z as u64 * MB;
                for k in 0..64u64 {
                    e.write(start + k * 4096, &pattern(z as u8, 4096), k % 16 == 0)
                        .unwrap();
                    let mut buf = vec![0; 4096];
                    e.read(start + k * 4096, &mut buf).unwrap();
                    assert_eq!(buf, pattern(z as u8, 4096));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    e.flush().unwrap();
    for z in 1..8u32 {
        assert_eq!(e.zone(z).unwrap().wp, z as u64 * MB + 64 * 4096);
        assert_eq!(s.durable_entries()[z as usize], z as u64 * MB + 64 * 4096);
    }
}

fn gated() -> (Arc<FaultyStore>, Arc<Engine>) {
    let mem = Arc::new(MemZoneStore::new(geo(4 * MB, MB, MB, 0, 0, 0, 4096)).unwrap());
    let f = FaultyStore::new(mem);
    let e = Arc::new(Engine::open(f.clone()).unwrap());
    (f, e)
}

/// Append A is held in the store while append B, issued after it, has
/// completed its I/O; then A is released with `fail_a`.
fn two_appends(
    fail_a: bool,
) -> (
    Arc<Engine>,
    Result<u64, EngineError>,
    Result<u64, EngineError>,
) {
    let (f, e) = gated();
    f.hold(MB);
    let ea = e.clone();
    let a = thread::spawn(move || ea.append(MB, &[1u8; 4096], false));
    f.wait_arrived(MB);
    let eb = e.clone();
    let b = thread::spawn(move || eb.append(MB, &[2u8; 4096], false));
    while f.writes.load(Ordering::SeqCst) < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20));
    // B's data is written, but B is not acknowledged before A.
    assert!(!b.is_finished());
    f.release(MB, fail_a);
    let ra = a.join().unwrap();
    let rb = b.join().unwrap();
    (e, ra, rb)
}

#[test]
fn later_append_waits_for_earlier_one() {
    let (e, ra, rb) = two_appends(false);
    assert_eq!(ra.unwrap(), MB);
    assert_eq!(rb.unwrap(), MB + 4096);
    assert_eq!(e.zone(1).unwrap().wp, MB + 8192);
    let mut buf = vec![0; 8192];
    e.read(MB, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 1) && buf[4096..].iter().all(|&b| b == 2));
}

#[test]
fn failed_append_aborts_later_in_flight_appends_and_rolls_back() {
    let (e, ra, rb) = two_appends(true);
    assert!(matches!(ra, Err(EngineError::Store { .. })), "{ra:?}");
    let rb = rb.unwrap_err();
    assert!(
        matches!(rb, EngineError::Aborted { offset, .. } if offset == MB + 4096),
        "{rb:?}"
    );
    let d = e.zone(1).unwrap();
    assert_eq!((d.cond, d.wp), (ZoneCond::Empty, MB));
    assert_eq!((e.open_zones(), e.active_zones()), (0, 0));
    // B's bytes may be in the store but lie past the wp: they read as zero.
    let mut buf = vec![0xff; 8192];
    e.read(MB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(e.append(MB, &[3u8; 512], false).unwrap(), MB);
    e.flush().unwrap();
}

#[test]
fn mixed_concurrent_operations_keep_resource_counts_consistent() {
    // Open limit 2, active limit 3, 16 small zones: threads write, append,
    // open, close, finish and reset at random; afterwards the counts must
    // match the conditions and every zone must read back consistently.
    let (s, e) = engine(geo(16 * 0x8000, 0x8000, 0x6000, 1, 2, 3, 0x1000));
    let e = Arc::new(e);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let e = e.clone();
            thread::spawn(move || {
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..400 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let z = 1 + (x % 15) as u32;
                    let start = z as u64 * 0x8000;
                    let r = match (x >> 8) % 8 {
                        0 | 1 => e.append(start, &[t as u8 + 1; 1024], false).map(|_| ()),
                        2 | 3 => {
                            let wp = e.zone(z).unwrap().wp;
                            e.write(wp, &[t as u8 + 1; 512], false)
                        }
                        4 => e.zone_op(zcow::zone::ZoneOp::Open, z),
                        5 => e.zone_op(zcow::zone::ZoneOp::Close, z),
                        6 => e.zone_op(zcow::zone::ZoneOp::Finish, z),
                        _ => e.zone_op(zcow::zone::ZoneOp::Reset, z),
                    };
                    if let Err(err) = r {
                        // (a finished last zone's wp is the device end)
                        let ok = err.zone_kind().is_some()
                            || matches!(err, EngineError::OutOfRange { .. });
                        assert!(ok, "{err}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let count = |f: &dyn Fn(ZoneCond) -> bool| {
        (0..16).filter(|&z| f(e.zone(z).unwrap().cond)).count() as u32
    };
    let open = count(&|c| matches!(c, ZoneCond::ImpOpen | ZoneCond::ExpOpen));
    let active = count(&|c| matches!(c, ZoneCond::ImpOpen | ZoneCond::ExpOpen | ZoneCond::Closed));
    assert_eq!((e.open_zones(), e.active_zones()), (open, active));
    assert!(open <= 2 && active <= 3);
    let e = Arc::try_unwrap(e).unwrap();
    let before: Vec<_> = (0..16).map(|z| e.zone(z).unwrap().wp).collect();
    drop(e);
    let e = Engine::open(s).unwrap();
    let after: Vec<_> = (0..16).map(|z| e.zone(z).unwrap().wp).collect();
    assert_eq!(before, after);
}

#[test]
fn zone_with_write_in_flight_is_not_closed_implicitly() {
    let mem = Arc::new(MemZoneStore::new(geo(4 * MB, MB, MB, 0, 2, 3, 4096)).unwrap());
    let f = FaultyStore::new(mem);
    let e = Arc::new(Engine::open(f.clone()).unwrap());
    e.write(0, &[1; 512], false).unwrap();
    e.write(MB, &[1; 512], false).unwrap(); // LRU: zone 0, then zone 1
    f.hold(512);
    let ea = e.clone();
    let a = thread::spawn(move || ea.append(0, &[2; 512], false));
    f.wait_arrived(512);
    // Zone 0 is least recently written but busy: zone 1 is closed instead.
    e.write(2 * MB, &[3; 512], false).unwrap();
    assert_eq!(e.zone(0).unwrap().cond, ZoneCond::ImpOpen);
    assert_eq!(e.zone(1).unwrap().cond, ZoneCond::Closed);
    f.release(512, false);
    assert_eq!(a.join().unwrap().unwrap(), 512);
    // Zone 0's append completed after zone 2's write: zone 2 is now the
    // least recently written.
    e.write(MB + 512, &[4; 512], false).unwrap();
    assert_eq!(e.zone(2).unwrap().cond, ZoneCond::Closed);
    assert_eq!(e.zone(0).unwrap().cond, ZoneCond::ImpOpen);
}
