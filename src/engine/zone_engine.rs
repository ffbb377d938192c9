//! The engine: zone state machine, write-pointer cache and I/O ordering over
//! a [`ZoneStore`].
//!
//! Locks, always taken in this order: one zone's lock (several only in
//! ascending zone order, for range resets), then `meta` (serialises every
//! write of wp entries), then `state` or `dirty` (small, never held across
//! I/O). Flush takes `meta` without any zone lock.

use super::error::{EngineError, EngineResult};
use super::inflight::{lock, Flight, Status, ZoneIo, ZoneLocks};
use super::state::{describe_write, State, WriteKind};
use super::store::{StoreResult, ZoneStore};
use crate::device::Extent;
use crate::format::wp::WpEntry;
use crate::format::Payload;
use crate::zone::{
    ZoneCond, ZoneCtx, ZoneDescriptor, ZoneError, ZoneErrorKind, ZoneGeometry, ZoneOp,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Dirty wp entries closer than this many entries are written as one run
/// (one 512-byte sector of the array): fewer store calls, same bytes moved.
const RUN_GAP: u32 = 64;

/// A fault condition to set on a zone, or `Clear` to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneFault {
    /// READ_ONLY: readable, not writable (wp entry bit 60).
    ReadOnly,
    /// OFFLINE: neither readable nor writable (wp entry bit 61).
    Offline,
    /// Back to the condition the write pointer gives, as after a power cycle.
    Clear,
}

/// The zone emulation engine. Shared between threads: requests to different
/// zones run in parallel, requests to one zone are ordered.
pub struct Engine {
    store: Arc<dyn ZoneStore>,
    geo: ZoneGeometry,
    read_only: bool,
    locks: ZoneLocks,
    state: Mutex<State>,
    /// Published entry of every zone (readable wp and fault bits): what a
    /// flush persists and what reads go by. Shared with `state`, which
    /// takes idle zones' write pointers from here.
    entries: Arc<Vec<AtomicU64>>,
    /// Zones whose entry changed since it was last persisted: one bit each.
    dirty: Box<[AtomicU64]>,
    /// Serialises writes of wp entries (flush, reset, fault conditions).
    meta: Mutex<()>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("geometry", &self.geo)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Condition and reported wp of zone `i` from its entry, as after a power
/// cycle; an error names the zone if the entry is invalid.
fn derive(geo: &ZoneGeometry, i: u32, raw: u64) -> Result<(ZoneCond, u64), String> {
    let e = WpEntry(raw);
    let start = geo.zone_start(i);
    let end = start + geo.zone_len(i);
    let conv = geo.is_conventional(i);
    let name = || format!("zone {i} (start {start:#x})");
    if e.reserved() != 0 {
        return Err(format!(
            "{}: write-pointer entry {raw:#018x} has reserved bits 62-63 set",
            name()
        ));
    }
    if e.conventional() != conv {
        return Err(format!(
            "{}: write-pointer entry {raw:#018x} {} the conventional bit but the zone is {}",
            name(),
            if e.conventional() { "has" } else { "lacks" },
            if conv { "conventional" } else { "sequential" }
        ));
    }
    let wp = e.wp();
    if wp < start || wp > end {
        return Err(format!(
            "{}: write pointer {wp:#x} is outside the zone [{start:#x}, {end:#x}]",
            name()
        ));
    }
    let cond = if e.offline() {
        ZoneCond::Offline
    } else if e.read_only() {
        ZoneCond::ReadOnly
    } else if conv {
        ZoneCond::NotWp
    } else if wp == start {
        ZoneCond::Empty
    } else if wp >= start + geo.zone_cap(i) {
        ZoneCond::Full
    } else {
        ZoneCond::Closed
    };
    Ok((cond, if conv { start } else { wp }))
}

/// Runs of ascending indices no more than `gap` apart: (first, last)
/// inclusive.
fn runs(idx: impl IntoIterator<Item = u32>, gap: u32) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for i in idx {
        match out.last_mut() {
            Some(r) if i <= r.1.saturating_add(gap) => r.1 = r.1.max(i),
            _ => out.push((i, i)),
        }
    }
    out
}

/// Entries read from the store per call at open (512 KiB).
const LOAD_CHUNK: usize = 65536;

/// Most dirty entries one flush round snapshots (8 MiB); more are written
/// in further rounds, each with its own pair of syncs.
const FLUSH_BATCH: usize = 1 << 20;

/// Memory the engine may spend on per-zone state: a device needing more
/// is refused at open with a clear error instead of an allocation abort.
pub const ZONE_STATE_LIMIT: u64 = 1 << 30;

/// Bytes of engine memory per zone: the published entry (8), the packed
/// condition byte (1) and a dirty bit, rounded up.
pub const ZONE_STATE_BYTES: u64 = 10;

fn describe(verb: &str, offset: u64, len: u64) -> String {
    format!("{verb} of {len:#x} bytes at {offset:#x}")
}

impl Engine {
    /// The image format holding the zones (for `info`).
    pub fn store_format_info(&self) -> Option<crate::device::FormatInfo> {
        self.store.format_info()
    }

    /// Open the engine over `store`: read the geometry and the write-pointer
    /// entries and derive every zone's condition as a power cycle does (open
    /// zones come back CLOSED, or EMPTY if nothing was written; nothing is
    /// open; every CLOSED zone holds an active resource).
    pub fn open(store: Arc<dyn ZoneStore>) -> EngineResult<Engine> {
        let geo = store.geometry();
        geo.validate()
            .map_err(|e| EngineError::Invalid(format!("invalid zone geometry: {e}")))?;
        let need = u64::from(geo.nr_zones) * ZONE_STATE_BYTES;
        if need > ZONE_STATE_LIMIT {
            return Err(EngineError::Invalid(format!(
                "{} zones need {} MiB of zone state, more than the limit of {} MiB",
                geo.nr_zones,
                need >> 20,
                ZONE_STATE_LIMIT >> 20
            )));
        }
        // The array is paged in one chunk at a time: the entries kept are
        // the only per-zone copy.
        let n = geo.nr_zones as usize;
        let mut entries = Vec::with_capacity(n);
        let mut conds = Vec::with_capacity(n);
        let mut buf = vec![0u64; LOAD_CHUNK.min(n)];
        let mut first = 0u32;
        while (first as usize) < n {
            let k = LOAD_CHUNK.min(n - first as usize);
            store
                .load_wp_entries(first, &mut buf[..k])
                .map_err(|e| EngineError::store("loading the write-pointer entries", e))?;
            for (i, &r) in (first..).zip(&buf[..k]) {
                conds.push(derive(&geo, i, r).map_err(EngineError::Invalid)?.0);
                entries.push(AtomicU64::new(r));
            }
            first += k as u32;
        }
        drop(buf);
        // Arc::new moves the vector; `into()` an `Arc<[_]>` would copy it.
        let entries = Arc::new(entries);
        let read_only = store.is_read_only();
        Ok(Engine {
            store,
            geo,
            read_only,
            locks: ZoneLocks::new(geo.nr_zones),
            state: Mutex::new(State::new(geo, entries.clone(), conds)),
            entries,
            dirty: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            meta: Mutex::new(()),
        })
    }

    /// The zone geometry.
    pub fn geometry(&self) -> ZoneGeometry {
        self.geo
    }

    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.geo.device_size
    }

    /// Whether the store is read-only (every modifying request fails).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Zones currently holding an open resource (IMP_OPEN, EXP_OPEN).
    pub fn open_zones(&self) -> u32 {
        self.state().open_count()
    }

    /// Zones currently holding an active resource (open or CLOSED).
    pub fn active_zones(&self) -> u32 {
        self.state().active_count()
    }

    /// The descriptor of zone `index`, if it exists.
    pub fn zone(&self, index: u32) -> Option<ZoneDescriptor> {
        (index < self.geo.nr_zones).then(|| self.descriptor(&self.state(), index))
    }

    /// Up to `max` zone descriptors, from the zone holding `offset` on.
    pub fn report(&self, offset: u64, max: u32) -> EngineResult<Vec<ZoneDescriptor>> {
        let first = self.geo.zone_index(offset).ok_or(EngineError::OutOfRange {
            offset,
            len: 0,
            size: self.geo.device_size,
        })?;
        let last = first.saturating_add(max).min(self.geo.nr_zones);
        let st = self.state();
        Ok((first..last).map(|i| self.descriptor(&st, i)).collect())
    }

    fn descriptor(&self, st: &State, i: u32) -> ZoneDescriptor {
        ZoneDescriptor {
            index: i,
            start: self.geo.zone_start(i),
            len: self.geo.zone_len(i),
            cap: self.geo.zone_cap(i),
            wp: st.wp(i),
            zone_type: self.geo.zone_type(i),
            cond: st.cond(i),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn ctx(&self, i: u32) -> ZoneCtx {
        self.state().ctx(i)
    }

    fn zone_err(&self, i: u32, kind: ZoneErrorKind, detail: String) -> EngineError {
        EngineError::Zone(ZoneError {
            kind,
            zone: Some(self.ctx(i)),
            detail,
        })
    }

    /// `what` prefixed with the zone, for store errors.
    fn in_zone(&self, i: u32, what: &str) -> String {
        let c = self.ctx(i);
        format!(
            "zone {} (start {:#x}, {}, wp {:#x}): {what}",
            c.index, c.start, c.cond, c.wp
        )
    }

    fn entry(&self, i: u32) -> WpEntry {
        WpEntry(self.entries[i as usize].load(Ordering::SeqCst))
    }

    fn set_entry(&self, i: u32, e: WpEntry) {
        self.entries[i as usize].store(e.0, Ordering::SeqCst);
    }

    fn mark_dirty(&self, zones: impl IntoIterator<Item = u32>) {
        for i in zones {
            self.dirty[i as usize / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
        }
    }

    /// Take up to `max` dirty zones, in ascending order, from word `*word`
    /// on (moving it past the words taken whole).
    fn take_dirty(&self, word: &mut usize, max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        while *word < self.dirty.len() && out.len() < max {
            let w = &self.dirty[*word];
            let bits = w.load(Ordering::SeqCst);
            // Take at most what fits; the rest of the word stays dirty.
            let room = max - out.len();
            let take = if (bits.count_ones() as usize) <= room {
                bits
            } else {
                let mut t = 0u64;
                let mut b = bits;
                for _ in 0..room {
                    let low = b & b.wrapping_neg();
                    t |= low;
                    b &= !low;
                }
                t
            };
            w.fetch_and(!take, Ordering::SeqCst);
            let mut b = take;
            while b != 0 {
                out.push((*word * 64) as u32 + b.trailing_zeros());
                b &= b - 1;
            }
            if take == bits {
                *word += 1;
            }
        }
        out
    }

    fn writable(&self) -> EngineResult<()> {
        if self.read_only {
            Err(EngineError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> EngineResult<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.device_size => Ok(()),
            _ => Err(EngineError::OutOfRange {
                offset,
                len,
                size: self.geo.device_size,
            }),
        }
    }

    fn zone_end(&self, i: u32) -> u64 {
        self.geo.zone_end(i)
    }

    /// Zones `first..=last` covering `[offset, offset+len)`, `len > 0`.
    fn zones_of(&self, offset: u64, len: u64) -> (u32, u32) {
        let first = (offset / self.geo.zone_size) as u32;
        let last = ((offset + len - 1) / self.geo.zone_size) as u32;
        (first, last)
    }

    /// Fault check for a data request touching zone `i`.
    fn check_fault(&self, i: u32, writing: bool, what: &str) -> EngineResult<()> {
        let e = self.entry(i);
        if e.offline() {
            return Err(self.zone_err(
                i,
                ZoneErrorKind::Offline,
                format!("{what} in an offline zone"),
            ));
        }
        if writing && e.read_only() {
            return Err(self.zone_err(
                i,
                ZoneErrorKind::ReadOnly,
                format!("{what} in a read-only zone"),
            ));
        }
        Ok(())
    }

    /// Checks for a write to conventional zones: every zone it touches must
    /// be conventional and free of faults.
    fn check_conventional(&self, offset: u64, len: u64, what: &str) -> EngineResult<()> {
        let (first, last) = self.zones_of(offset, len);
        for i in first..=last {
            if !self.geo.is_conventional(i) {
                return Err(self.zone_err(
                    first,
                    ZoneErrorKind::Boundary,
                    format!("{what} would cross into sequential zone {i}"),
                ));
            }
            self.check_fault(i, true, what)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- reads

    /// [`Engine::read`] without the copy: hand `sink` the host runs of
    /// `[offset, offset+len)` (data below the write pointer from the store,
    /// zeroes past it). False (sink not called): read instead; so for a
    /// range crossing a zone boundary, an OFFLINE zone, or a store that
    /// cannot.
    pub fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: crate::format::PageUse,
        sink: &mut dyn FnMut(&[crate::format::HostRun<'_>]),
    ) -> EngineResult<bool> {
        use crate::format::HostRun;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(false);
        }
        let i = (offset / self.geo.zone_size) as u32;
        let end = offset + len;
        if end > self.zone_end(i) || self.entry(i).offline() {
            return Ok(false);
        }
        let data_end = if self.geo.is_conventional(i) {
            end
        } else {
            self.entry(i).wp().clamp(offset, end)
        };
        if data_end == offset {
            sink(&[HostRun::Zero(len)]);
            return Ok(true);
        }
        let tail = end - data_end;
        let mut with_tail = |runs: &[HostRun<'_>]| {
            if tail == 0 {
                sink(runs);
            } else {
                let mut v = runs.to_vec();
                match v.last_mut() {
                    Some(HostRun::Zero(z)) => *z += tail,
                    _ => v.push(HostRun::Zero(tail)),
                }
                sink(&v);
            }
        };
        self.store
            .read_direct(offset, data_end - offset, use_, &mut with_tail)
            .map_err(|e| EngineError::store(describe("read", offset, len), e))
    }

    /// Read `buf.len()` bytes at `offset`. Bytes at or past a sequential
    /// zone's write pointer read as zeroes; OFFLINE zones fail.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> EngineResult<()> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let i = (pos / self.geo.zone_size) as u32;
            let seg_end = self.zone_end(i).min(offset + len);
            let n = (seg_end - pos) as usize;
            // The description is built only for an error: a read is hot.
            let what = || describe("read", pos, n as u64);
            if self.entry(i).offline() {
                self.check_fault(i, false, &what())?;
            }
            let data_end = if self.geo.is_conventional(i) {
                seg_end
            } else {
                self.entry(i).wp().clamp(pos, seg_end)
            };
            let d = (data_end - pos) as usize;
            let out = &mut buf[done..done + n];
            if d > 0 {
                self.store
                    .read(pos, &mut out[..d])
                    .map_err(|e| EngineError::store(self.in_zone(i, &what()), e))?;
            }
            out[d..].fill(0);
            done += n;
            pos = seg_end;
        }
        Ok(())
    }

    /// Allocation status from `offset`, at most `len` bytes: below a
    /// sequential zone's wp data, from the wp to the zone end a zero hole;
    /// conventional zones data (the store gives no allocation information).
    /// OFFLINE zones are data, not known to be zero (their reads fail).
    pub fn block_status(&self, offset: u64, len: u64) -> EngineResult<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let push = |out: &mut Vec<Extent>, len: u64, hole: bool| {
            if len == 0 {
                return;
            }
            match out.last_mut() {
                Some(e) if e.hole == hole => e.len += len,
                _ => out.push(Extent {
                    len,
                    hole,
                    zero: hole,
                }),
            }
        };
        let end = offset + len;
        let mut pos = offset;
        // Bounded answer: at most MAX_STATUS_RUNS extents (a prefix of the
        // range); the caller asks again for the rest.
        while pos < end && out.len() < crate::format::MAX_STATUS_RUNS {
            let i = (pos / self.geo.zone_size) as u32;
            let seg_end = self.zone_end(i).min(end);
            if self.entry(i).offline() {
                // Data, not known zero: reads there fail, and a status
                // query (a client mapping the zones) must not.
                push(&mut out, seg_end - pos, false);
                pos = seg_end;
                continue;
            }
            let data_end = if self.geo.is_conventional(i) {
                seg_end
            } else {
                self.entry(i).wp().clamp(pos, seg_end)
            };
            push(&mut out, data_end - pos, false);
            push(&mut out, seg_end - data_end, true);
            pos = seg_end;
        }
        Ok(out)
    }

    // --------------------------------------------------------------- writes

    /// Write `data` at `offset`. In a sequential zone the write must be at
    /// the write pointer, 512-byte granular and within the capacity; in
    /// conventional zones anything goes, and a write may run on into the
    /// next conventional zone. With `fua` it is durable on return.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> EngineResult<()> {
        self.write_from(offset, &data, fua)
    }

    /// [`Engine::write`] with the bytes taken from `src` (see
    /// [`crate::format::Qcow2::write_from`]).
    pub fn write_from(&self, offset: u64, src: &dyn Payload, fua: bool) -> EngineResult<()> {
        self.writable()?;
        let len = src.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let i = (offset / self.geo.zone_size) as u32;
        if self.geo.is_conventional(i) {
            // Only here: a sequential write formats no text unless it fails.
            let what = describe("write", offset, len);
            self.check_conventional(offset, len, &what)?;
            self.store
                .write_from(offset, src)
                .map_err(|e| EngineError::store(self.in_zone(i, &what), e))?;
        } else {
            self.seq_write(i, WriteKind::At(offset), len, "write", &|at| {
                self.store.write_from(at, src)
            })?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeroes. In a sequential zone this
    /// is a write of zeroes at the write pointer (same rules as a write; the
    /// range is deallocated rather than written); in conventional zones the
    /// range is deallocated.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> EngineResult<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let i = (offset / self.geo.zone_size) as u32;
        let what = describe("write-zeroes", offset, len);
        if self.geo.is_conventional(i) {
            self.check_conventional(offset, len, &what)?;
            self.store
                .deallocate(offset, len)
                .map_err(|e| EngineError::store(self.in_zone(i, &what), e))?;
        } else {
            // Deallocating (not skipping) matters: stale clusters left by a
            // crash may lie past the wp and must not become readable.
            self.seq_write(i, WriteKind::At(offset), len, "write-zeroes", &|at| {
                self.store.deallocate(at, len)
            })?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Zone append: write `data` at the write pointer of the zone starting at
    /// `zone_start`; returns the offset where it landed.
    pub fn append(&self, zone_start: u64, data: &[u8], fua: bool) -> EngineResult<u64> {
        self.append_from(zone_start, &data, fua)
    }

    /// [`Engine::append`] with the bytes taken from `src`.
    pub fn append_from(&self, zone_start: u64, src: &dyn Payload, fua: bool) -> EngineResult<u64> {
        self.writable()?;
        let len = src.len() as u64;
        let i = self
            .geo
            .zone_index(zone_start)
            .ok_or(EngineError::OutOfRange {
                offset: zone_start,
                len,
                size: self.geo.device_size,
            })?;
        let what = || format!("append of {len:#x} bytes");
        if zone_start != self.geo.zone_start(i) {
            return Err(self.zone_err(
                i,
                ZoneErrorKind::InvalidCommand,
                format!("{} at {zone_start:#x} is not at a zone start", what()),
            ));
        }
        if self.geo.is_conventional(i) {
            return Err(self.zone_err(
                i,
                ZoneErrorKind::InvalidCommand,
                format!("{} to a conventional zone", what()),
            ));
        }
        if self.geo.max_append_bytes == 0 {
            return Err(self.zone_err(
                i,
                ZoneErrorKind::Unsupported,
                format!(
                    "{}: zone append is not supported (max_append_bytes is 0)",
                    what()
                ),
            ));
        }
        let at = self.seq_write(i, WriteKind::Append, len, "append", &|at| {
            self.store.write_from(at, src)
        })?;
        if fua {
            self.flush()?;
        }
        Ok(at)
    }

    /// Issue a write to sequential zone `i`, run `io` at the reserved
    /// offset, then publish it in order (see `inflight.rs`).
    fn seq_write(
        &self,
        i: u32,
        kind: WriteKind,
        len: u64,
        verb: &str,
        io: &dyn Fn(u64) -> StoreResult<()>,
    ) -> EngineResult<u64> {
        let mut g = self.locks.lock(i);
        // A zone being rolled back, or awaited by a management request, takes
        // no new writes until that is done.
        while g.write_must_wait() {
            g.wait();
        }
        let issued = self.state().begin_write(i, kind, len, verb)?;
        let io_state = g.io();
        let seq = io_state.next_seq;
        io_state.next_seq += 1;
        io_state.flights.push_back(Flight {
            seq,
            start: issued.at,
            end: issued.at + len,
            status: Status::Pending,
            prev: issued.prev,
        });
        drop(g);

        let res = io(issued.at);

        let mut g = self.locks.lock(i);
        let zio = g.io();
        if let Some(f) = zio.flights.iter_mut().find(|f| f.seq == seq) {
            f.status = if res.is_ok() {
                Status::Done
            } else {
                Status::Failed
            };
        }
        if res.is_err() {
            zio.poison = Some(zio.poison.map_or(issued.at, |p| p.min(issued.at)));
        }
        // Waiters wait for a resolution (theirs, or a zone going idle):
        // a write completing behind a pending one resolves nothing, and
        // waking the stripe for it would only make every waiter look again.
        if self.settle(i, zio) {
            g.notify();
        }
        let ok = loop {
            if let Some(ok) = g.io().take_resolved(seq) {
                break ok;
            }
            g.wait();
        };
        drop(g);
        let what = || describe_write(verb, WriteKind::At(issued.at), len);
        match res {
            Err(e) => Err(EngineError::store(
                self.in_zone(i, &format!("{} failed", what())),
                e,
            )),
            Ok(()) if !ok => Err(EngineError::Aborted {
                what: self.in_zone(i, &what()),
                offset: issued.at,
                len,
            }),
            Ok(()) => Ok(issued.at),
        }
    }

    /// Publish completed writes in order; when a poisoned zone has nothing
    /// pending any more, roll it back. Whether any write was resolved.
    fn settle(&self, i: u32, g: &mut ZoneIo) -> bool {
        let before = g.resolved.len();
        let mut published = None;
        while let Some(f) = g.flights.front().copied() {
            let below_poison = g.poison.is_none_or(|p| f.start < p);
            if f.status != Status::Done || !below_poison {
                break;
            }
            g.flights.pop_front();
            g.resolved.push((f.seq, true));
            published = Some(f.end);
        }
        if let Some(wp) = published {
            self.set_entry(i, self.entry(i).with_wp(wp));
            self.mark_dirty([i]);
        }
        if let Some(p) = g.poison {
            if g.flights.iter().all(|f| f.status != Status::Pending) {
                // Everything below p was published above, so the first
                // remaining write is the one that failed at p.
                let prev = g.flights.front().map_or(ZoneCond::Empty, |f| f.prev);
                self.state().rollback(i, p, prev);
                for f in g.flights.drain(..) {
                    g.resolved.push((f.seq, false));
                }
                g.poison = None;
            }
        } else if g.flights.is_empty() && published.is_some() {
            self.state().end_writes(i);
        }
        g.resolved.len() != before
    }

    /// Discard: conventional parts are deallocated; in sequential zones it
    /// is a no-op (the data and write pointer stay; use reset to drop them).
    pub fn discard(&self, offset: u64, len: u64) -> EngineResult<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (first, last) = self.zones_of(offset, len);
        for i in first..=last.min(self.geo.conventional_zones.saturating_sub(1)) {
            if !self.geo.is_conventional(i) {
                break;
            }
            let s = offset.max(self.geo.zone_start(i));
            let e = (offset + len).min(self.zone_end(i));
            let what = describe("discard", s, e - s);
            self.check_fault(i, true, &what)?;
            self.store
                .deallocate(s, e - s)
                .map_err(|err| EngineError::store(self.in_zone(i, &what), err))?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ management

    /// Zone management over `[offset, offset+len)`: `offset` zone-aligned,
    /// `len` a multiple of the zone size (the smaller last zone counts
    /// whole, and the device size is accepted as the end too). A reset of the
    /// whole device is reset-all. The zones are handled in ascending order;
    /// the first that fails stops the operation, the ones before it stay done.
    pub fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> EngineResult<()> {
        self.writable()?;
        let (first, last) = self.mgmt_range(op, offset, len)?;
        let whole = first == 0 && last + 1 == self.geo.nr_zones;
        self.mgmt(op, first, last, whole)
    }

    fn mgmt(&self, op: ZoneOp, first: u32, last: u32, whole: bool) -> EngineResult<()> {
        match op {
            ZoneOp::Reset => self.reset_range(first, last, whole),
            ZoneOp::Open | ZoneOp::Close => {
                for i in first..=last {
                    let _g = self.locks.lock_idle(i, i);
                    let mut st = self.state();
                    if op == ZoneOp::Open {
                        st.open_zone(i)?;
                    } else {
                        st.close_zone(i)?;
                    }
                }
                Ok(())
            }
            ZoneOp::Finish => (first..=last).try_for_each(|i| self.finish_one(i)),
        }
    }

    /// Apply `op` to the single zone `index` (a reset here is never
    /// reset-all, even on a device of one zone).
    pub fn zone_op(&self, op: ZoneOp, index: u32) -> EngineResult<()> {
        self.writable()?;
        if index >= self.geo.nr_zones {
            return Err(EngineError::Invalid(format!(
                "zone {index} does not exist (the device has {} zones)",
                self.geo.nr_zones
            )));
        }
        self.mgmt(op, index, index, false)
    }

    /// Reset every written sequential zone (EMPTY, READ_ONLY, OFFLINE and
    /// conventional zones are skipped).
    pub fn reset_all(&self) -> EngineResult<()> {
        self.zone_mgmt(ZoneOp::Reset, 0, self.geo.device_size)
    }

    fn mgmt_range(&self, op: ZoneOp, offset: u64, len: u64) -> EngineResult<(u32, u32)> {
        let g = &self.geo;
        let rounded = u64::from(g.nr_zones) * g.zone_size;
        let end = offset.checked_add(len);
        if offset >= g.device_size || end.is_none_or(|e| e > rounded) {
            return Err(EngineError::OutOfRange {
                offset,
                len,
                size: g.device_size,
            });
        }
        let end = offset + len;
        let first = (offset / g.zone_size) as u32;
        if offset % g.zone_size != 0 || len == 0 || (end % g.zone_size != 0 && end != g.device_size)
        {
            return Err(self.zone_err(
                first,
                ZoneErrorKind::InvalidCommand,
                format!(
                    "{} of {len:#x} bytes at {offset:#x} is not a whole number of zones",
                    op.verb()
                ),
            ));
        }
        let last = ((end - 1) / g.zone_size) as u32;
        Ok((first, last))
    }

    /// Implicitly finish the least recently written active zone (IMP_OPEN or
    /// CLOSED, no writes in flight; EXP_OPEN zones are never taken), so a
    /// zone-unaware writer at the active-zone limit can go on to a new zone.
    /// Returns the zone finished, or `None` if no zone qualifies. Its data is
    /// kept; the unwritten rest reads as zeroes, as before.
    pub fn finish_least_recent_active(&self) -> EngineResult<Option<u32>> {
        self.writable()?;
        let Some(v) = self.state().finish_victim() else {
            return Ok(None);
        };
        self.finish_one(v)?;
        Ok(Some(v))
    }

    fn finish_one(&self, i: u32) -> EngineResult<()> {
        let _g = self.locks.lock_idle(i, i);
        if !self.state().check_finish(i)? {
            return Ok(());
        }
        let wp = self.entry(i).wp();
        let end = self.zone_end(i);
        if wp < end {
            // Stale clusters past the wp (after a crash) must read as zeroes
            // once the wp moves over them; freed before the wp is persisted
            // (a flush syncs before writing entries).
            self.store.deallocate(wp, end - wp).map_err(|e| {
                EngineError::store(
                    self.in_zone(
                        i,
                        &format!("finish: freeing {:#x} bytes at {wp:#x}", end - wp),
                    ),
                    e,
                )
            })?;
        }
        // Published first: the state takes an idle zone's wp from it.
        self.set_entry(i, self.entry(i).with_wp(end));
        self.state().apply_finish(i);
        self.mark_dirty([i]);
        Ok(())
    }

    fn reset_range(&self, first: u32, last: u32, all: bool) -> EngineResult<()> {
        let _guard = self.locks.lock_idle(first, last);
        let mut targets = Vec::new();
        let mut failed = None;
        {
            let st = self.state();
            for i in first..=last {
                if all {
                    if st.reset_all_applies(i) {
                        targets.push(i);
                    }
                    continue;
                }
                match st.check_reset(i) {
                    Ok(true) => targets.push(i),
                    Ok(false) => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        if !targets.is_empty() {
            self.persist_resets(&targets)?;
            {
                let mut st = self.state();
                for &i in &targets {
                    st.apply_reset(i);
                }
            }
            // Rule 2 holds: the pointers are durable, now free the clusters.
            // A failure leaves the zones reset (reads past the wp are zero)
            // with space not given back until `check`/`repair`.
            let mut first_err = None;
            for &i in &targets {
                let (s, l) = (self.geo.zone_start(i), self.geo.zone_len(i));
                if let Err(e) = self.store.deallocate(s, l) {
                    first_err.get_or_insert_with(|| {
                        EngineError::store(
                            self.in_zone(
                                i,
                                "reset done, but freeing the zone's clusters failed (space is kept until repair)",
                            ),
                            e,
                        )
                    });
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Make wp = start durable for every zone of `targets` (rule 2: before
    /// any of their clusters is freed). On failure nothing changes in memory.
    fn persist_resets(&self, targets: &[u32]) -> EngineResult<()> {
        let _m = lock(&self.meta);
        let old: Vec<WpEntry> = targets.iter().map(|&i| self.entry(i)).collect();
        for &i in targets {
            self.set_entry(i, self.entry(i).with_wp(self.geo.zone_start(i)));
        }
        let r = (|| {
            // Exact runs, no gaps: there is no sync before this write, so
            // only entries whose new value needs no data may go out.
            for (a, b) in runs(targets.iter().copied(), 1) {
                let vals: Vec<u64> = (a..=b).map(|i| self.entry(i).0).collect();
                self.store.store_wp_entries(a, &vals)?;
            }
            self.store.sync()
        })();
        if let Err(e) = r {
            for (&i, &o) in targets.iter().zip(&old) {
                self.set_entry(i, o);
            }
            // The disk may hold either value; the next flush rewrites ours.
            self.mark_dirty(targets.iter().copied());
            return Err(EngineError::store(
                self.in_zone(targets[0], "reset: persisting the write pointer failed"),
                e,
            ));
        }
        Ok(())
    }

    /// Set or clear a persistent fault condition on zone `index`. Setting one
    /// releases the zone's open/active resources first; the write pointer is
    /// kept. Clearing gives the condition the write pointer implies (a zone
    /// that would be CLOSED needs an active resource). Durable on return.
    pub fn set_condition(&self, index: u32, fault: ZoneFault) -> EngineResult<()> {
        self.writable()?;
        if index >= self.geo.nr_zones {
            return Err(EngineError::Invalid(format!(
                "zone {index} does not exist (the device has {} zones)",
                self.geo.nr_zones
            )));
        }
        let i = index;
        let _g = self.locks.lock_idle(i, i);
        let old = self.entry(i);
        let (ro, off) = match fault {
            ZoneFault::ReadOnly => (true, false),
            ZoneFault::Offline => (false, true),
            ZoneFault::Clear => (false, false),
        };
        if old.read_only() == ro && old.offline() == off {
            return Ok(());
        }
        let new = old.with_faults(ro, off);
        let cond = derive(&self.geo, i, new.0).map_err(EngineError::Invalid)?.0;
        self.state().check_clear(i, cond)?;
        {
            let _m = lock(&self.meta);
            self.set_entry(i, new);
            // The entry carries the wp too: its data must be durable first.
            let r = self
                .store
                .sync()
                .and_then(|()| self.store.store_wp_entries(i, &[new.0]))
                .and_then(|()| self.store.sync());
            if let Err(e) = r {
                self.set_entry(i, old);
                self.mark_dirty([i]);
                return Err(EngineError::store(
                    self.in_zone(i, "persisting the fault condition failed"),
                    e,
                ));
            }
        }
        self.state().apply_condition(i, cond);
        Ok(())
    }

    // ------------------------------------------------------------ durability

    /// Make every completed write durable, then the write pointers that
    /// cover them: snapshot the dirty entries, sync (data and mapping
    /// metadata), write the dirty entries, sync again.
    pub fn flush(&self) -> EngineResult<()> {
        if self.read_only {
            return Ok(());
        }
        let _m = lock(&self.meta);
        // One pass over the dirty bits, in bounded batches: zones marked
        // before the flush began are all taken; later ones may wait.
        let mut word = 0;
        let mut first_round = true;
        loop {
            let dirty = self.take_dirty(&mut word, FLUSH_BATCH);
            if dirty.is_empty() && !first_round {
                return Ok(());
            }
            first_round = false;
            // Snapshot before the first sync: every value taken here was
            // published after its I/O completed, so that sync covers its data.
            let snap: Vec<(u32, Vec<u64>)> = runs(dirty.iter().copied(), RUN_GAP)
                .into_iter()
                .map(|(a, b)| (a, (a..=b).map(|i| self.entry(i).0).collect()))
                .collect();
            let r = (|| {
                self.store.sync()?;
                if snap.is_empty() {
                    return Ok(());
                }
                for (a, vals) in &snap {
                    self.store.store_wp_entries(*a, vals)?;
                }
                self.store.sync()
            })();
            if let Err(e) = r {
                self.mark_dirty(dirty);
                return Err(EngineError::store("flush", e));
            }
            if snap.is_empty() {
                return Ok(());
            }
        }
    }

    /// Flush everything; the engine stays usable.
    pub fn close(&self) -> EngineResult<()> {
        self.flush()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Best effort: an error here has nowhere to go; the data below the
        // last persisted pointers is safe either way.
        let _ = self.flush();
    }
}
