//! Target `engine`: differential fuzzing of the zone engine against the
//! reference model of the zone transition table ([`super::zone_model`]).
//!
//! Input: a geometry (zone size 1–8 KiB, 1–8 zones, an odd last zone,
//! capacity, conventional zones, open/active limits, append limit), then up
//! to [`MAX_OPS`] operations decoded with [`ByteReader`]: writes and
//! write-zeroes near the write pointer (and anywhere in conventional zones),
//! appends (also misplaced), open/close/finish/reset of one zone and of zone
//! ranges, reset-all, flush, clean reopen, simulated power loss, fault
//! conditions, reads. After every step conditions, write pointers, open and
//! active counts, error kinds and the whole device contents must equal the
//! model's; at the end a clean reopen must too.

use super::zone_model::{mgmt_op, MFault, Model};
use super::ByteReader;
use crate::engine::{Engine, EngineError, MemZoneStore, StoreResult, ZoneFault, ZoneStore};
use crate::format::FormatError;
use crate::storage::{InjectedKind, Op as SOp, StorageError};
use crate::zone::{ZoneErrorKind, ZoneGeometry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Most operations one input runs.
pub const MAX_OPS: usize = 128;

/// A store that forwards to a shared [`MemZoneStore`] until it is cut off;
/// after that every write and sync fails. Used to simulate power loss
/// without leaking the engine: the old engine is cut off (so its flush on
/// drop changes nothing), the store drops what was not synced, and a new
/// engine opens on it.
#[derive(Debug)]
struct Cuttable {
    inner: Arc<MemZoneStore>,
    cut: AtomicBool,
}

impl Cuttable {
    fn dead(&self, offset: u64) -> StoreResult<()> {
        if self.cut.load(Ordering::SeqCst) {
            Err(FormatError::Storage(StorageError::Injected {
                op: SOp::Write,
                offset,
                kind: InjectedKind::Eio,
            }))
        } else {
            Ok(())
        }
    }
}

impl ZoneStore for Cuttable {
    fn geometry(&self) -> ZoneGeometry {
        self.inner.geometry()
    }
    fn load_wp_entries(&self, first: u32, out: &mut [u64]) -> StoreResult<()> {
        self.inner.load_wp_entries(first, out)
    }
    fn store_wp_entries(&self, first: u32, entries: &[u64]) -> StoreResult<()> {
        self.dead(0)?;
        self.inner.store_wp_entries(first, entries)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.dead(offset)?;
        self.inner.write(offset, data)
    }
    fn deallocate(&self, offset: u64, len: u64) -> StoreResult<()> {
        self.dead(offset)?;
        self.inner.deallocate(offset, len)
    }
    fn sync(&self) -> StoreResult<()> {
        self.dead(0)?;
        self.inner.sync()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
}

/// The engine under test with its (cuttable) store.
struct Dut {
    mem: Arc<MemZoneStore>,
    store: Arc<Cuttable>,
    e: Engine,
}

impl Dut {
    fn open(mem: &Arc<MemZoneStore>) -> Option<Dut> {
        let store = Arc::new(Cuttable {
            inner: mem.clone(),
            cut: AtomicBool::new(false),
        });
        let e = Engine::open(store.clone()).ok()?;
        Some(Dut {
            mem: mem.clone(),
            store,
            e,
        })
    }
    /// Clean close and reopen.
    fn reopen(self) -> Dut {
        let mem = self.mem.clone();
        drop(self);
        Dut::open(&mem).expect("engine: reopen after a clean close failed")
    }
    /// Power loss and reopen.
    fn crash(self) -> Dut {
        let mem = self.mem.clone();
        self.store.cut.store(true, Ordering::SeqCst);
        drop(self);
        mem.crash();
        Dut::open(&mem).expect("engine: reopen after a crash failed")
    }
}

fn decode_geometry(r: &mut ByteReader) -> ZoneGeometry {
    let zs = 1u64 << (10 + r.below(4));
    let nr = 1 + r.below(8) as u32;
    let spz = zs / 512;
    let last = 1 + r.below(spz);
    let min_cap = (spz / 4).max(1);
    let cap = min_cap + r.below(spz - min_cap + 1);
    let conv = r.below(nr as u64) as u32;
    let mo = [0u32, 0, 1, 1, 2, 2, 3][r.below(7) as usize];
    let ma = [0u32, 0, 2, 3, 4, 5][r.below(6) as usize];
    let app = [0u32, 512, 1024, 2048][r.below(4) as usize];
    let size = (nr as u64 - 1) * zs + last * 512;
    ZoneGeometry {
        device_size: size,
        zone_size: zs,
        zone_capacity: cap * 512,
        nr_zones: size.div_ceil(zs) as u32,
        conventional_zones: conv,
        max_open_zones: mo,
        max_active_zones: ma,
        max_append_bytes: app,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| seed.wrapping_mul(31).wrapping_add((k / 512) as u8) | 1)
        .collect()
}

/// Zone chosen by `sel`: mostly a sequential zone, sometimes any zone.
fn pick(g: &ZoneGeometry, sel: u32) -> u32 {
    let seq = g.nr_zones - g.conventional_zones;
    if sel % 5 == 0 || seq == 0 {
        (sel / 5) % g.nr_zones
    } else {
        g.conventional_zones + sel % seq
    }
}

fn kind<T>(r: Result<T, EngineError>, what: &str) -> Result<T, ZoneErrorKind> {
    r.map_err(|e| match e.zone_kind() {
        Some(k) => k,
        None => panic!("engine: {what}: unexpected non-zone error: {e}"),
    })
}

fn compare(m: &Model, e: &Engine, what: &str) {
    let g = m.g;
    for i in 0..g.nr_zones {
        let d = e
            .zone(i)
            .unwrap_or_else(|| panic!("engine: {what}: no zone {i}"));
        let mz = m.zones[i as usize];
        assert_eq!(
            (d.cond, d.wp),
            (mz.cond, mz.wp),
            "engine: {what}: zone {i} differs from the model"
        );
    }
    assert_eq!(e.open_zones(), m.open_count(), "engine: {what}: open count");
    assert_eq!(
        e.active_zones(),
        m.active_count(),
        "engine: {what}: active count"
    );
    let mut buf = vec![0u8; g.device_size as usize];
    let er = kind(e.read(0, &mut buf), what);
    match (er, m.read(0, g.device_size)) {
        (Ok(()), Ok(v)) => assert!(buf == v, "engine: {what}: device contents differ"),
        (a, b) => assert_eq!(a.err(), b.err(), "engine: {what}: whole-device read"),
    }
}

/// Target `engine` (see the module documentation).
pub fn fuzz_engine(data: &[u8]) {
    let mut r = ByteReader::new(data);
    let g = decode_geometry(&mut r);
    let Ok(mem) = MemZoneStore::new(g) else {
        return;
    };
    let mem = Arc::new(mem);
    let Some(mut d) = Dut::open(&mem) else {
        return;
    };
    // The engine may normalise nothing here: the geometry is the store's.
    let g = d.e.geometry();
    let mut m = Model::new(g);
    let (nr, zs, size) = (g.nr_zones, g.zone_size, g.device_size);
    for step in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let tag = r.u8();
        let what = format!("step {step} op {tag:#04x}");
        let what = what.as_str();
        match tag % 16 {
            // Write near the wp (or anywhere in a conventional zone).
            0..=4 => {
                let i = pick(&g, r.u8() as u32);
                let delta = [0i64, 0, 0, 0, 0, 0, -1, 1, 2][r.below(9) as usize];
                let sectors = 1 + r.below(4);
                let odd = r.u8() < 13;
                let seed = r.u8();
                let fua = r.u8() < 26;
                let base = if i < g.conventional_zones {
                    i as u64 * zs + (seed as u64 * 97) % zs
                } else {
                    m.zones[i as usize].wp
                };
                let off = base as i64 + delta * 512;
                let len = sectors * 512 + if odd { 100 } else { 0 };
                if off < 0 || off as u64 + len > size {
                    continue;
                }
                let off = off as u64;
                let buf = pattern(seed, len as usize);
                let er = kind(d.e.write(off, &buf, fua), what);
                let mr = m.write(off, &buf);
                if fua && mr.is_ok() {
                    m.flush();
                }
                assert_eq!(er, mr, "engine: {what}: write {off:#x}+{len:#x}");
            }
            5 => {
                let i = pick(&g, r.u8() as u32);
                let delta = [0i64, 0, 0, 0, 0, 0, -1, 1, 2][r.below(9) as usize];
                let len = (1 + r.below(3)) * 512;
                let off = m.zones[i as usize].wp as i64 + delta * 512;
                if off < 0 || off as u64 + len > size {
                    continue;
                }
                let off = off as u64;
                let er = kind(d.e.write_zeroes(off, len, false), what);
                let mr = m.write(off, &vec![0u8; len as usize]);
                assert_eq!(er, mr, "engine: {what}: write_zeroes {off:#x}+{len:#x}");
            }
            6 | 7 => {
                let i = pick(&g, r.u8() as u32);
                let misplace = r.u8() < 13;
                let sectors = [0usize, 1, 1, 1, 2, 2, 3, 4][r.below(8) as usize];
                let seed = r.u8();
                let mut start = i as u64 * zs;
                if misplace {
                    start += 512;
                }
                if start >= size {
                    continue;
                }
                let buf = pattern(seed, sectors * 512);
                let er = kind(d.e.append(start, &buf, false), what);
                let mr = m.append(start, &buf);
                assert_eq!(er, mr, "engine: {what}: append at {start:#x}");
            }
            8 | 9 => {
                let zop = mgmt_op(r.u8());
                let i = pick(&g, r.u8() as u32);
                let er = kind(d.e.zone_op(zop, i), what);
                let mr = m.mgmt(zop, i);
                assert_eq!(er, mr, "engine: {what}: {zop:?} zone {i}");
            }
            10 => {
                let zop = mgmt_op(r.u8());
                let first = pick(&g, r.u8() as u32);
                let count = 1 + r.below(3) as u32;
                let to_device_end = r.bool();
                let last = (first + count - 1).min(nr - 1);
                let off = first as u64 * zs;
                let end = if to_device_end && last == nr - 1 {
                    size
                } else {
                    (last as u64 + 1) * zs
                };
                let er = kind(d.e.zone_mgmt(zop, off, end - off), what);
                let mr = m.mgmt_range(zop, first, last);
                assert_eq!(er, mr, "engine: {what}: {zop:?} {off:#x}+{:#x}", end - off);
            }
            11 => match r.u8() % 4 {
                0 => {
                    kind(d.e.reset_all(), what).expect("engine: reset_all failed");
                    m.reset_all();
                }
                1 => {
                    d.e.flush().expect("engine: flush failed");
                    m.flush();
                }
                2 => {
                    d = d.reopen();
                    m.reopen(false);
                }
                _ => {
                    d = d.crash();
                    m.reopen(true);
                }
            },
            12 => {
                let i = pick(&g, r.u8() as u32);
                let (ef, mf) = match r.u8() % 4 {
                    0 => (ZoneFault::ReadOnly, MFault::ReadOnly),
                    1 => (ZoneFault::Offline, MFault::Offline),
                    _ => (ZoneFault::Clear, MFault::Clear),
                };
                let er = kind(d.e.set_condition(i, ef), what);
                let mr = m.set_condition(i, mf);
                assert_eq!(er, mr, "engine: {what}: set_condition {i} {ef:?}");
            }
            13 => {
                // Zone report from an arbitrary offset must agree too.
                let off = r.below(size);
                let max = r.u8() as u32 % 10;
                if let Ok(rep) = d.e.report(off, max) {
                    let first = (off / zs) as u32;
                    assert_eq!(
                        rep.len() as u32,
                        max.min(nr - first),
                        "engine: {what}: report({off:#x}, {max}) zone count"
                    );
                    for (k, z) in rep.iter().enumerate() {
                        let mz = m.zones[first as usize + k];
                        assert_eq!(
                            (z.cond, z.wp),
                            (mz.cond, mz.wp),
                            "engine: {what}: report zone {}",
                            first as usize + k
                        );
                    }
                }
            }
            _ => {
                let i = pick(&g, r.u8() as u32);
                let off = i as u64 * zs + r.below(16) * 512;
                let len = r.below(16) * 512;
                if off + len > size {
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                let er = kind(d.e.read(off, &mut buf), what).map(|()| buf);
                assert_eq!(
                    er,
                    m.read(off, len),
                    "engine: {what}: read {off:#x}+{len:#x}"
                );
            }
        }
        compare(&m, &d.e, what);
    }
    let d = d.reopen();
    m.reopen(false);
    compare(&m, &d.e, "final reopen");
}
