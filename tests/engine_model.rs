//! Random operation sequences on random geometries, run against the
//! reference model (src/fuzzing/zone_model.rs) and the engine on a
//! MemZoneStore; conditions, write pointers, resource counts, error kinds and
//! the bytes read back must agree after every step, including after a clean
//! reopen and after a simulated crash.

mod common;

use common::zone_model::{mgmt_op, MFault, Model};
use common::{geo, pattern};
use proptest::prelude::*;
use std::sync::Arc;
use zcow::engine::{Engine, EngineError, MemZoneStore, ZoneFault};
use zcow::zone::{ZoneCond, ZoneErrorKind, ZoneGeometry, ZoneOp};

#[derive(Debug, Clone)]
enum Op {
    Write {
        zone: u32,
        delta: i8,
        sectors: u8,
        odd: bool,
        seed: u8,
        fua: bool,
    },
    Zeroes {
        zone: u32,
        delta: i8,
        sectors: u8,
    },
    Append {
        zone: u32,
        misplace: bool,
        sectors: u8,
        seed: u8,
    },
    Mgmt {
        op: u8,
        zone: u32,
    },
    Range {
        op: u8,
        first: u32,
        count: u32,
        to_device_end: bool,
    },
    ResetAll,
    Flush,
    Reopen,
    Crash,
    Fault {
        zone: u32,
        f: u8,
    },
    Read {
        zone: u32,
        off_sectors: u8,
        sectors: u8,
    },
}

fn geometry() -> impl Strategy<Value = ZoneGeometry> {
    (
        10u32..=13,
        prop::sample::select(vec![1u32, 2, 3, 4, 5, 6, 7, 8, 8, 8]),
    )
        .prop_flat_map(|(zexp, nr)| {
            let zs = 1u64 << zexp;
            let spz = zs / 512;
            (
                Just(zs),
                Just(nr),
                1..=spz,
                (spz / 4).max(1)..=spz,
                0..nr,
                prop::sample::select(vec![0u32, 0, 1, 1, 2, 2, 3]),
                prop::sample::select(vec![0u32, 0, 2, 3, 4, 5]),
                prop::sample::select(vec![0u32, 512, 1024, 2048]),
            )
        })
        .prop_map(|(zs, nr, last, cap, conv, mo, ma, app)| {
            let size = (nr as u64 - 1) * zs + last * 512;
            geo(size, zs, cap * 512, conv, mo, ma, app)
        })
}

fn op() -> impl Strategy<Value = Op> {
    let z = 0u32..64;
    let delta = prop::sample::select(vec![0i8, 0, 0, 0, 0, 0, -1, 1, 2]);
    prop_oneof![
        10 => (z.clone(), delta.clone(), 1u8..=4, prop::bool::weighted(0.05), any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(zone, delta, sectors, odd, seed, fua)| Op::Write { zone, delta, sectors, odd, seed, fua }),
        1 => (z.clone(), delta, 1u8..=3).prop_map(|(zone, delta, sectors)| Op::Zeroes { zone, delta, sectors }),
        4 => (z.clone(), prop::bool::weighted(0.05), prop::sample::select(vec![0u8, 1, 1, 1, 2, 2, 3, 4]), any::<u8>())
            .prop_map(|(zone, misplace, sectors, seed)| Op::Append { zone, misplace, sectors, seed }),
        4 => (0u8..4, z.clone()).prop_map(|(op, zone)| Op::Mgmt { op, zone }),
        1 => (0u8..4, z.clone(), 1u32..4, any::<bool>())
            .prop_map(|(op, first, count, to_device_end)| Op::Range { op, first, count, to_device_end }),
        1 => Just(Op::ResetAll),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => (z.clone(), prop::sample::select(vec![0u8, 1, 2, 2])).prop_map(|(zone, f)| Op::Fault { zone, f }),
        2 => (z, 0u8..16, 0u8..16).prop_map(|(zone, off_sectors, sectors)| Op::Read { zone, off_sectors, sectors }),
    ]
}

/// Zone chosen by `sel`: mostly a sequential zone, sometimes any zone.
fn pick(g: &ZoneGeometry, sel: u32) -> u32 {
    let seq = g.nr_zones - g.conventional_zones;
    if sel % 5 == 0 {
        (sel / 5) % g.nr_zones
    } else {
        g.conventional_zones + sel % seq
    }
}

/// Where a generated write lands (near the model's wp in a sequential
/// zone, anywhere in a conventional one) and its data; None when it would
/// fall off the device.
fn place_write(
    g: &ZoneGeometry,
    m: &Model,
    zone: u32,
    delta: i8,
    sectors: u8,
    odd: bool,
    seed: u8,
) -> Option<(u64, Vec<u8>)> {
    let zs = g.zone_size;
    let i = pick(g, zone);
    let base = if i < g.conventional_zones {
        i as u64 * zs + (seed as u64 * 97) % zs
    } else {
        m.zones[i as usize].wp
    };
    let off = base as i64 + delta as i64 * 512;
    let len = sectors as u64 * 512 + if odd { 100 } else { 0 };
    if off < 0 || off as u64 + len > g.device_size {
        return None;
    }
    Some((off as u64, pattern(seed, len as usize)))
}

fn kind<T>(r: Result<T, EngineError>) -> Result<T, ZoneErrorKind> {
    r.map_err(|e| match e.zone_kind() {
        Some(k) => k,
        None => panic!("unexpected non-zone error: {e}"),
    })
}

fn compare(m: &Model, e: &Engine, step: usize, op: &Op) {
    let g = m.g;
    for i in 0..g.nr_zones {
        let d = e.zone(i).unwrap();
        let mz = m.zones[i as usize];
        assert_eq!(
            (d.cond, d.wp),
            (mz.cond, mz.wp),
            "step {step} {op:?}: zone {i} differs"
        );
    }
    assert_eq!(
        e.open_zones(),
        m.open_count(),
        "step {step} {op:?}: open count"
    );
    assert_eq!(
        e.active_zones(),
        m.active_count(),
        "step {step} {op:?}: active count"
    );
    let mut buf = vec![0u8; g.device_size as usize];
    let er = kind(e.read(0, &mut buf));
    let mr = m.read(0, g.device_size);
    match (er, mr) {
        (Ok(()), Ok(v)) => assert!(buf == v, "step {step} {op:?}: device contents differ"),
        (a, b) => assert_eq!(a.err(), b.err(), "step {step} {op:?}: whole-device read"),
    }
}

/// Where the engine's store lives: in memory, or in a zoned qcow2 file
/// (reopened from disk on every reopen).
enum Backing {
    Mem(Arc<MemZoneStore>),
    File {
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    },
}

impl Backing {
    fn open(&self) -> Engine {
        match self {
            Backing::Mem(m) => Engine::open(m.clone()).unwrap(),
            Backing::File { path, .. } => {
                let img =
                    zcow::format::Qcow2::open_path(path, &zcow::format::OpenOptions::default())
                        .unwrap();
                let st = zcow::engine::Qcow2ZoneStore::new(img).unwrap();
                Engine::open(Arc::new(st)).unwrap()
            }
        }
    }
}

/// A zoned qcow2 file for geometry `g`, if `zcow-img create` accepts it;
/// returns the geometry the image really has (create normalises limits).
fn file_backing(g: &ZoneGeometry) -> Option<(Backing, ZoneGeometry)> {
    use zcow::format::create::{create, CreateOptions};
    use zcow::format::zoned::ZonedCreateOptions;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("z.qcow2");
    let st = zcow::storage::FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: g.device_size,
            cluster_size: 512,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(g.zone_size),
                zone_capacity: Some(g.zone_capacity),
                conventional_zones: Some(g.conventional_zones),
                max_open_zones: Some(g.max_open_zones),
                max_active_zones: Some(g.max_active_zones),
                max_append_bytes: Some(g.max_append_bytes as u64),
            }),
            ..Default::default()
        },
    )
    .ok()?;
    // The creating handle holds the image's write lock until closed.
    drop(st);
    let b = Backing::File { path: p, _dir: d };
    let real = b.open().geometry();
    Some((b, real))
}

fn run(g: ZoneGeometry, ops: Vec<Op>) {
    run_on(
        g,
        Backing::Mem(Arc::new(MemZoneStore::new(g).unwrap())),
        ops,
    )
}

fn run_on(g: ZoneGeometry, store: Backing, ops: Vec<Op>) {
    let mut e = store.open();
    let mut m = Model::new(g);
    let nr = g.nr_zones;
    let zs = g.zone_size;
    let size = g.device_size;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Write {
                zone,
                delta,
                sectors,
                odd,
                seed,
                fua,
            } => {
                let Some((off, data)) = place_write(&g, &m, zone, delta, sectors, odd, seed) else {
                    continue;
                };
                let er = kind(e.write(off, &data, fua));
                let mr = m.write(off, &data);
                if fua && mr.is_ok() {
                    m.flush();
                }
                assert_eq!(er, mr, "step {step} {op:?}");
            }
            Op::Zeroes {
                zone,
                delta,
                sectors,
            } => {
                let i = pick(&g, zone);
                let base = m.zones[i as usize].wp;
                let off = base as i64 + delta as i64 * 512;
                let len = sectors as u64 * 512;
                if off < 0 || off as u64 + len > size {
                    continue;
                }
                let off = off as u64;
                let er = kind(e.write_zeroes(off, len, false));
                let mr = m.write(off, &vec![0u8; len as usize]);
                assert_eq!(er, mr, "step {step} {op:?}");
            }
            Op::Append {
                zone,
                misplace,
                sectors,
                seed,
            } => {
                let i = pick(&g, zone);
                let mut start = i as u64 * zs;
                if misplace {
                    start += 512;
                }
                let len = sectors as usize * 512;
                if start >= size {
                    continue;
                }
                let data = pattern(seed, len);
                let er = kind(e.append(start, &data, false));
                let mr = m.append(start, &data);
                assert_eq!(er, mr, "step {step} {op:?}");
            }
            Op::Mgmt { op: o, zone } => {
                let i = pick(&g, zone);
                let zop = mgmt_op(o);
                let er = kind(e.zone_op(zop, i));
                let mr = m.mgmt(zop, i);
                assert_eq!(er, mr, "step {step} {op:?}");
            }
            Op::Range {
                op: o,
                first,
                count,
                to_device_end,
            } => {
                let first = pick(&g, first);
                let last = (first + count - 1).min(nr - 1);
                let off = first as u64 * zs;
                let end = if to_device_end && last == nr - 1 {
                    size
                } else {
                    (last as u64 + 1) * zs
                };
                let zop = mgmt_op(o);
                let er = kind(e.zone_mgmt(zop, off, end - off));
                let mr = m.mgmt_range(zop, first, last);
                assert_eq!(er, mr, "step {step} {op:?}");
            }
            Op::ResetAll => {
                kind(e.reset_all()).unwrap();
                m.reset_all();
            }
            Op::Flush => {
                e.flush().unwrap();
                m.flush();
            }
            Op::Reopen => {
                drop(e);
                e = store.open();
                m.reopen(false);
            }
            Op::Crash => match &store {
                Backing::Mem(mem) => {
                    std::mem::forget(e);
                    mem.crash();
                    e = store.open();
                    m.reopen(true);
                }
                // Power loss on files is covered by tests/engine_crash.rs;
                // here a crash is a clean close and reopen.
                Backing::File { .. } => {
                    drop(e);
                    e = store.open();
                    m.reopen(false);
                }
            },
            Op::Fault { zone, f } => {
                let i = pick(&g, zone);
                let (ef, mf) = match f {
                    0 => (ZoneFault::ReadOnly, MFault::ReadOnly),
                    1 => (ZoneFault::Offline, MFault::Offline),
                    _ => (ZoneFault::Clear, MFault::Clear),
                };
                let er = kind(e.set_condition(i, ef));
                let mr = m.set_condition(i, mf);
                assert_eq!(er, mr, "step {step} {op:?}");
            }
            Op::Read {
                zone,
                off_sectors,
                sectors,
            } => {
                let off = pick(&g, zone) as u64 * zs + off_sectors as u64 * 512;
                let len = sectors as u64 * 512;
                if off + len > size {
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                let er = kind(e.read(off, &mut buf)).map(|()| buf);
                assert_eq!(er, m.read(off, len), "step {step} {op:?}");
            }
        }
        compare(&m, &e, step, op);
    }
    drop(e);
    let e = store.open();
    m.reopen(false);
    compare(&m, &e, ops.len(), &Op::Reopen);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(g in geometry(), ops in prop::collection::vec(op(), 1..100)) {
        run(g, ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The same on real files: zoned qcow2 images with 512-byte clusters,
    /// reopened from disk.
    #[test]
    fn engine_on_qcow2_files_matches_model(g in geometry(), ops in prop::collection::vec(op(), 1..60)) {
        if let Some((b, real)) = file_backing(&g) {
            run_on(real, b, ops);
        }
    }
}

// ------------------------------------------------------------ with I/O errors

/// Outcome of a request: success, a zone error, or a store failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Ok,
    Zone(ZoneErrorKind),
    Io,
}

fn out<T>(r: Result<T, EngineError>) -> Out {
    match r {
        Ok(_) => Out::Ok,
        Err(EngineError::Store { .. }) => Out::Io,
        Err(e) => Out::Zone(
            e.zone_kind()
                .unwrap_or_else(|| panic!("unexpected error: {e}")),
        ),
    }
}

/// What the model predicts when the store call the request reaches fails:
/// run it on a copy; a zone error stays a zone error, a success that
/// changed something becomes an I/O error that leaves the zone as it was,
/// except that an implicit close done to make room stays (as the engine
/// documents).
/// `data_io`: the request always reaches the store when it is valid (data
/// writes); otherwise only when it changes some zone.
fn predict_failed(
    m: &mut Model,
    data_io: bool,
    f: impl FnOnce(&mut Model) -> Result<(), ZoneErrorKind>,
) -> Out {
    let mut c = m.clone();
    match f(&mut c) {
        Err(k) => Out::Zone(k),
        Ok(()) if !data_io && c.zones == m.zones => Out::Ok,
        Ok(()) => {
            for v in 0..m.g.nr_zones {
                let (a, b) = (m.zones[v as usize].cond, c.zones[v as usize].cond);
                if a == ZoneCond::ImpOpen && b == ZoneCond::Closed {
                    m.set_cond(v, ZoneCond::Closed);
                }
            }
            Out::Io
        }
    }
}

fn run_io(g: ZoneGeometry, ops: Vec<(Op, bool)>) {
    use common::faulty::{Fail, FaultyStore};
    let mem = Arc::new(MemZoneStore::new(g).unwrap());
    let fs = FaultyStore::new(mem.clone());
    let mut e = Engine::open(fs.clone()).unwrap();
    let mut m = Model::new(g);
    let nr = g.nr_zones;
    let zs = g.zone_size;
    let size = g.device_size;
    for (step, (op, fail)) in ops.iter().enumerate() {
        let arm = |f: Fail| {
            if *fail {
                fs.fail_next(f, 1);
            }
        };
        let (eo, mo) = match *op {
            Op::Write {
                zone,
                delta,
                sectors,
                odd,
                seed,
                fua,
            } => {
                let Some((off, data)) = place_write(&g, &m, zone, delta, sectors, odd, seed) else {
                    continue;
                };
                arm(Fail::Write);
                let eo = out(e.write(off, &data, fua));
                let mo = if *fail {
                    predict_failed(&mut m, true, |c| c.write(off, &data))
                } else {
                    let r = m.write(off, &data);
                    if fua && r.is_ok() {
                        m.flush();
                    }
                    r.map_or_else(Out::Zone, |_| Out::Ok)
                };
                (eo, mo)
            }
            Op::Zeroes {
                zone,
                delta,
                sectors,
            } => {
                let i = pick(&g, zone);
                let off = m.zones[i as usize].wp as i64 + delta as i64 * 512;
                let len = sectors as u64 * 512;
                if off < 0 || off as u64 + len > size {
                    continue;
                }
                let off = off as u64;
                arm(Fail::Dealloc);
                let eo = out(e.write_zeroes(off, len, false));
                let z = vec![0u8; len as usize];
                let mo = if *fail {
                    predict_failed(&mut m, true, |c| c.write(off, &z))
                } else {
                    m.write(off, &z).map_or_else(Out::Zone, |_| Out::Ok)
                };
                (eo, mo)
            }
            Op::Append {
                zone,
                misplace,
                sectors,
                seed,
            } => {
                let start = pick(&g, zone) as u64 * zs + if misplace { 512 } else { 0 };
                if start >= size {
                    continue;
                }
                let data = pattern(seed, sectors as usize * 512);
                arm(Fail::Write);
                let eo = out(e.append(start, &data, false));
                let mo = if *fail {
                    predict_failed(&mut m, true, |c| c.append(start, &data).map(|_| ()))
                } else {
                    m.append(start, &data).map_or_else(Out::Zone, |_| Out::Ok)
                };
                (eo, mo)
            }
            Op::Mgmt { op: o, zone } => {
                let i = pick(&g, zone);
                let zop = mgmt_op(o);
                let what = if zop == ZoneOp::Finish {
                    Fail::Dealloc
                } else {
                    Fail::StoreWp
                };
                arm(what);
                let eo = out(e.zone_op(zop, i));
                let mo = if *fail && matches!(zop, ZoneOp::Finish | ZoneOp::Reset) {
                    predict_failed(&mut m, false, |c| c.mgmt(zop, i))
                } else {
                    m.mgmt(zop, i).map_or_else(Out::Zone, |_| Out::Ok)
                };
                (eo, mo)
            }
            Op::ResetAll => {
                arm(Fail::StoreWp);
                let eo = out(e.reset_all());
                let mo = if *fail {
                    predict_failed(&mut m, false, |c| {
                        c.reset_all();
                        Ok(())
                    })
                } else {
                    m.reset_all();
                    Out::Ok
                };
                (eo, mo)
            }
            Op::Fault { zone, f } => {
                let i = pick(&g, zone);
                let (ef, mf) = match f {
                    0 => (ZoneFault::ReadOnly, MFault::ReadOnly),
                    1 => (ZoneFault::Offline, MFault::Offline),
                    _ => (ZoneFault::Clear, MFault::Clear),
                };
                arm(Fail::StoreWp);
                let eo = out(e.set_condition(i, ef));
                let mo = if *fail {
                    predict_failed(&mut m, false, |c| c.set_condition(i, mf))
                } else {
                    m.set_condition(i, mf).map_or_else(Out::Zone, |_| Out::Ok)
                };
                (eo, mo)
            }
            Op::Flush => {
                arm(Fail::Sync);
                let eo = out(e.flush());
                if !*fail {
                    m.flush();
                }
                (eo, if *fail { Out::Io } else { Out::Ok })
            }
            Op::Reopen => {
                drop(e);
                e = Engine::open(fs.clone()).unwrap();
                m.reopen(false);
                (Out::Ok, Out::Ok)
            }
            Op::Read {
                zone,
                off_sectors,
                sectors,
            } => {
                let off = pick(&g, zone) as u64 * zs + off_sectors as u64 * 512;
                let len = sectors as u64 * 512;
                if off + len > size {
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                let er = kind(e.read(off, &mut buf)).map(|()| buf);
                assert_eq!(er, m.read(off, len), "step {step} {op:?}");
                (Out::Ok, Out::Ok)
            }
            // Crashes after partial syncs are not modelled here; ranges are
            // covered without failures above.
            Op::Crash | Op::Range { .. } => continue,
        };
        // Disarm whatever the request did not reach.
        for f in [Fail::Write, Fail::Dealloc, Fail::StoreWp, Fail::Sync] {
            fs.fail_next(f, 0);
        }
        assert_eq!(eo, mo, "step {step} {op:?} fail={fail}");
        compare(&m, &e, step, op);
    }
    let _ = nr;
    drop(e);
    let e = Engine::open(fs.clone()).unwrap();
    m.reopen(false);
    compare(&m, &e, ops.len(), &Op::Reopen);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model_with_io_errors(
        g in geometry(),
        ops in prop::collection::vec((op(), prop::bool::weighted(0.25)), 1..80),
    ) {
        run_io(g, ops);
    }
}
