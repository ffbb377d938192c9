//! The zone state machine of `design/zone-model.md`: conditions, issued write
//! pointers, open/active resources and the implicit-close list. Pure
//! bookkeeping, no I/O; the engine keeps one instance behind its small global
//! lock and does the I/O around the calls.

use super::lru::Lru;
use crate::format::wp::WpEntry;
use crate::zone::{ZoneCond, ZoneCtx, ZoneError, ZoneErrorKind, ZoneGeometry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Write granularity in sequential zones.
pub(crate) const SECTOR: u64 = 512;

/// Where a sequential write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// A write (or write-zeroes) that must be at the write pointer.
    At(u64),
    /// A zone append: lands at the write pointer, wherever it is.
    Append,
}

/// `write of 0x1000 bytes at 0x3000`, `append of 0x1000 bytes`.
pub(crate) fn describe_write(verb: &str, kind: WriteKind, len: u64) -> String {
    match kind {
        WriteKind::At(o) => format!("{verb} of {len:#x} bytes at {o:#x}"),
        WriteKind::Append => format!("{verb} of {len:#x} bytes"),
    }
}

/// A reserved write range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Issued {
    /// Where the data goes.
    pub at: u64,
    /// The zone's condition before the write was issued (for rollback).
    pub prev: ZoneCond,
}

/// One zone's state, decoded from its packed byte (and, for the write
/// pointer, from the published entry or the issued map).
#[derive(Debug, Clone, Copy)]
struct ZState {
    cond: ZoneCond,
    /// Issued write pointer: where the next write must go.
    wp: u64,
    holds_open: bool,
    holds_active: bool,
    /// Writes are in flight: never implicitly closed, and its place in the
    /// LRU list is only updated when they have all completed.
    busy: bool,
}

/// Packed per-zone byte: bits 0-2 the condition (its place in
/// [`ZoneCond::ALL`]), bit 3 holds an open resource, bit 4 an active one,
/// bit 5 writes in flight.
const COND_MASK: u8 = 0x7;
const HOLDS_OPEN: u8 = 1 << 3;
const HOLDS_ACTIVE: u8 = 1 << 4;
const BUSY: u8 = 1 << 5;

fn cond_bits(c: ZoneCond) -> u8 {
    ZoneCond::ALL.iter().position(|x| *x == c).unwrap_or(0) as u8
}

/// Conditions, write pointers and resources of every zone.
///
/// One byte per zone: a zone's write pointer is the published entry (shared
/// with the engine) unless writes are in flight; only those zones have an
/// issued write pointer of their own, in a map as small as the I/O depth.
#[derive(Debug)]
pub(crate) struct State {
    geo: ZoneGeometry,
    flags: Vec<u8>,
    /// Published entries (the engine's; read here for the write pointer).
    entries: Arc<Vec<AtomicU64>>,
    /// Issued write pointer of every busy zone.
    issued: HashMap<u32, u64>,
    open: u32,
    active: u32,
    /// IMP_OPEN zones, least recently written first. A zone with writes in
    /// flight keeps its place (a failed write must not move it) but is
    /// skipped when a victim is chosen.
    lru: Lru,
    /// IMP_OPEN and CLOSED zones, least recently written first: the
    /// candidates for [`State::finish_victim`] (EXP_OPEN zones are held on
    /// purpose by a zone-aware user and are never chosen). Kept only with
    /// an active limit, the only case that needs a victim, so it links at
    /// most that many zones.
    active_lru: Lru,
}

impl State {
    /// State after a power cycle: `conds[i]` is zone `i`'s condition as
    /// derived from its entry in `entries`. CLOSED zones hold an active
    /// resource; nothing is open.
    pub(crate) fn new(
        geo: ZoneGeometry,
        entries: Arc<Vec<AtomicU64>>,
        conds: Vec<ZoneCond>,
    ) -> Self {
        let mut active = 0;
        let mut active_lru = Lru::new(geo.max_active_zones != 0);
        for (i, cond) in (0u32..).zip(&conds) {
            if *cond == ZoneCond::Closed {
                active_lru.push_back(i);
            }
        }
        let flags = conds
            .into_iter()
            .map(|cond| {
                let holds_active = cond == ZoneCond::Closed;
                active += u32::from(holds_active);
                cond_bits(cond) | if holds_active { HOLDS_ACTIVE } else { 0 }
            })
            .collect();
        State {
            geo,
            flags,
            entries,
            issued: HashMap::new(),
            open: 0,
            active,
            lru: Lru::new(geo.max_open_zones != 0),
            active_lru,
        }
    }

    /// The least recently written active zone that an implicit finish may
    /// take: IMP_OPEN or CLOSED, no writes in flight.
    pub(crate) fn finish_victim(&self) -> Option<u32> {
        self.active_lru.iter().find(|&v| {
            let z = self.get(v);
            !z.busy && matches!(z.cond, ZoneCond::ImpOpen | ZoneCond::Closed)
        })
    }

    fn get(&self, i: u32) -> ZState {
        let f = self.flags[i as usize];
        let busy = f & BUSY != 0;
        let wp = if self.geo.is_conventional(i) {
            self.geo.zone_start(i)
        } else if busy {
            self.issued
                .get(&i)
                .copied()
                .unwrap_or_else(|| self.published_wp(i))
        } else {
            self.published_wp(i)
        };
        ZState {
            cond: ZoneCond::ALL[(f & COND_MASK) as usize],
            wp,
            holds_open: f & HOLDS_OPEN != 0,
            holds_active: f & HOLDS_ACTIVE != 0,
            busy,
        }
    }

    fn published_wp(&self, i: u32) -> u64 {
        WpEntry(self.entries[i as usize].load(Ordering::SeqCst)).wp()
    }

    /// Store `z`; the write pointer is kept only while the zone is busy
    /// (otherwise the engine publishes it in the entry).
    fn put(&mut self, i: u32, z: ZState) {
        self.flags[i as usize] = cond_bits(z.cond)
            | if z.holds_open { HOLDS_OPEN } else { 0 }
            | if z.holds_active { HOLDS_ACTIVE } else { 0 }
            | if z.busy { BUSY } else { 0 };
        if z.busy {
            self.issued.insert(i, z.wp);
        } else {
            self.issued.remove(&i);
        }
    }

    /// Condition of zone `i`.
    pub(crate) fn cond(&self, i: u32) -> ZoneCond {
        self.get(i).cond
    }

    /// Issued write pointer of zone `i`.
    pub(crate) fn wp(&self, i: u32) -> u64 {
        self.get(i).wp
    }

    /// Zones holding an open resource.
    pub(crate) fn open_count(&self) -> u32 {
        self.open
    }

    /// Zones holding an active resource.
    pub(crate) fn active_count(&self) -> u32 {
        self.active
    }

    /// The zone as error messages show it.
    pub(crate) fn ctx(&self, i: u32) -> ZoneCtx {
        let z = self.get(i);
        ZoneCtx {
            index: i,
            start: self.geo.zone_start(i),
            cond: z.cond,
            wp: z.wp,
        }
    }

    fn err(&self, i: u32, kind: ZoneErrorKind, detail: String) -> ZoneError {
        ZoneError {
            kind,
            zone: Some(self.ctx(i)),
            detail,
        }
    }

    fn check_active(&self, i: u32, what: &str) -> Result<(), ZoneError> {
        let max = self.geo.max_active_zones;
        if max != 0 && self.active >= max {
            return Err(self.err(
                i,
                ZoneErrorKind::ActiveResource,
                format!(
                    "{what} needs an active zone resource but {} of {max} are in use",
                    self.active
                ),
            ));
        }
        Ok(())
    }

    /// Whether an open resource is available, possibly after implicitly
    /// closing the least recently written idle IMP_OPEN zone (returned).
    fn check_open(&self, i: u32, what: &str) -> Result<Option<u32>, ZoneError> {
        let max = self.geo.max_open_zones;
        if max == 0 || self.open < max {
            return Ok(None);
        }
        // Busy zones are skipped; there are at most as many as requests in
        // flight, and none at all for a caller issuing one request at a time.
        match self.lru.iter().find(|&v| !self.get(v).busy) {
            Some(v) => Ok(Some(v)),
            None => Err(self.err(
                i,
                ZoneErrorKind::OpenResource,
                format!(
                    "{what} needs an open zone resource but {} of {max} are in use and no implicitly open zone can be closed",
                    self.open
                ),
            )),
        }
    }

    fn implicit_close(&mut self, v: u32) {
        self.lru.remove(v);
        let mut z = self.get(v);
        debug_assert_eq!(z.cond, ZoneCond::ImpOpen);
        z.cond = ZoneCond::Closed;
        if z.holds_open {
            z.holds_open = false;
            self.open -= 1;
        }
        self.put(v, z);
    }

    fn acquire(&mut self, i: u32, open: bool, active: bool) {
        let mut z = self.get(i);
        if open && !z.holds_open {
            z.holds_open = true;
            self.open += 1;
        }
        if active && !z.holds_active {
            z.holds_active = true;
            self.active += 1;
        }
        self.put(i, z);
    }

    /// Drop resources down to what `open`/`active` say.
    fn release_to(&mut self, i: u32, open: bool, active: bool) {
        let mut z = self.get(i);
        if !open && z.holds_open {
            z.holds_open = false;
            self.open -= 1;
        }
        if !active && z.holds_active {
            z.holds_active = false;
            self.active -= 1;
        }
        self.put(i, z);
    }

    /// Validate a sequential write or append of `len` bytes to zone `i` and,
    /// if allowed, reserve its range: the issued wp moves past it and the
    /// condition changes as the transition table says. A zone that becomes
    /// FULL keeps its resources until [`State::end_writes`], so a failed
    /// write can be rolled back without needing resources again.
    pub(crate) fn begin_write(
        &mut self,
        i: u32,
        kind: WriteKind,
        len: u64,
        verb: &str,
    ) -> Result<Issued, ZoneError> {
        // Formatted only for an error: this runs for every write.
        let what = || describe_write(verb, kind, len);
        use ZoneCond::*;
        use ZoneErrorKind as K;
        let z = self.get(i);
        let start = self.geo.zone_start(i);
        let zone_end = self.geo.zone_end(i);
        let cap_end = start + self.geo.zone_cap(i);
        match z.cond {
            ReadOnly => {
                return Err(self.err(i, K::ReadOnly, format!("{} to a read-only zone", what())))
            }
            Offline => {
                return Err(self.err(i, K::Offline, format!("{} to an offline zone", what())))
            }
            Full => return Err(self.err(i, K::ZoneFull, format!("{} to a full zone", what()))),
            NotWp => {
                return Err(self.err(
                    i,
                    K::InvalidCommand,
                    format!("{} to a conventional zone", what()),
                ))
            }
            _ => {}
        }
        let off_ok = match kind {
            WriteKind::At(o) => o % SECTOR == 0,
            WriteKind::Append => true,
        };
        if len == 0 || len % SECTOR != 0 || !off_ok {
            return Err(self.err(
                i,
                K::InvalidCommand,
                format!(
                    "{} is not a non-empty multiple of {SECTOR} bytes at a {SECTOR}-byte boundary",
                    what()
                ),
            ));
        }
        if let WriteKind::At(o) = kind {
            if o != z.wp {
                return Err(self.err(
                    i,
                    K::UnalignedWrite,
                    format!("{verb} at {o:#x} is not at the write pointer"),
                ));
            }
        } else {
            let max = u64::from(self.geo.max_append_bytes);
            if len > max {
                return Err(self.err(
                    i,
                    K::InvalidCommand,
                    format!("{} exceeds max_append_bytes {max:#x}", what()),
                ));
            }
        }
        // A request length is the peer's word: never let it wrap.
        let end = z.wp.saturating_add(len);
        if end > zone_end {
            return Err(self.err(
                i,
                K::Boundary,
                format!("{} would cross the zone boundary at {zone_end:#x}", what()),
            ));
        }
        if end > cap_end {
            return Err(self.err(
                i,
                K::Boundary,
                format!(
                    "{} would pass the zone capacity (writable up to {cap_end:#x})",
                    what()
                ),
            ));
        }
        let victim = match z.cond {
            Empty => {
                self.check_active(i, &what())?;
                self.check_open(i, &what())?
            }
            Closed => self.check_open(i, &what())?,
            _ => None,
        };
        // Everything checked: from here on the write is issued.
        if let Some(v) = victim {
            self.implicit_close(v);
        }
        self.acquire(i, true, true);
        let mut zs = self.get(i);
        zs.busy = true;
        zs.wp = end;
        zs.cond = if end == cap_end {
            Full
        } else if z.cond == ExpOpen {
            ExpOpen
        } else {
            ImpOpen
        };
        self.put(i, zs);
        Ok(Issued {
            at: z.wp,
            prev: z.cond,
        })
    }

    /// Every write issued to zone `i` completed: a FULL zone gives back its
    /// resources, an IMP_OPEN zone becomes the most recently written.
    pub(crate) fn end_writes(&mut self, i: u32) {
        let mut z = self.get(i);
        z.busy = false;
        self.put(i, z);
        match z.cond {
            ZoneCond::ImpOpen => {
                self.lru.push_back(i);
                self.active_lru.push_back(i);
            }
            ZoneCond::Full => {
                self.release_to(i, false, false);
                self.lru.remove(i);
                self.active_lru.remove(i);
            }
            _ => {
                self.lru.remove(i);
                self.active_lru.remove(i);
            }
        }
    }

    /// Undo the writes issued from `wp` on: the zone gets back that write
    /// pointer and the condition `prev` it had before the first of them.
    /// A zone with writes in flight holds both resources, so every previous
    /// condition is reachable by releasing only.
    pub(crate) fn rollback(&mut self, i: u32, wp: u64, prev: ZoneCond) {
        use ZoneCond::*;
        let (open, active) = match prev {
            Empty => (false, false),
            Closed => (false, true),
            _ => (true, true),
        };
        self.release_to(i, open, active);
        let mut z = self.get(i);
        debug_assert!(self.geo.is_conventional(i) || wp == self.published_wp(i));
        z.wp = wp;
        z.cond = prev;
        z.busy = false;
        self.put(i, z);
        match prev {
            ImpOpen | Closed => {
                if !self.active_lru.contains(i) {
                    self.active_lru.push_back(i);
                }
            }
            _ => self.active_lru.remove(i),
        }
        if prev != ImpOpen {
            self.lru.remove(i);
        } else if !self.lru.contains(i) {
            // It became IMP_OPEN through an earlier write of the same batch,
            // which succeeded: that is its most recent write.
            self.lru.push_back(i);
        }
    }

    fn mgmt_fault(&self, i: u32, verb: &str) -> Option<ZoneError> {
        use ZoneCond::*;
        let c = self.get(i).cond;
        if self.geo.is_conventional(i) {
            return Some(self.err(
                i,
                ZoneErrorKind::InvalidCommand,
                format!("{verb} of a conventional zone"),
            ));
        }
        match c {
            ReadOnly | Offline => Some(self.err(
                i,
                ZoneErrorKind::InvalidTransition,
                format!("{verb} of a {c} zone is not allowed"),
            )),
            _ => None,
        }
    }

    /// Explicit open.
    pub(crate) fn open_zone(&mut self, i: u32) -> Result<(), ZoneError> {
        use ZoneCond::*;
        if let Some(e) = self.mgmt_fault(i, "open") {
            return Err(e);
        }
        let victim = match self.get(i).cond {
            Empty => {
                self.check_active(i, "open")?;
                self.check_open(i, "open")?
            }
            Closed => self.check_open(i, "open")?,
            ImpOpen | ExpOpen => None,
            c => {
                return Err(self.err(
                    i,
                    ZoneErrorKind::InvalidTransition,
                    format!("open of a {c} zone is not allowed"),
                ))
            }
        };
        if let Some(v) = victim {
            self.implicit_close(v);
        }
        self.acquire(i, true, true);
        self.lru.remove(i);
        self.active_lru.remove(i);
        self.set_cond(i, ExpOpen);
        Ok(())
    }

    /// Close.
    pub(crate) fn close_zone(&mut self, i: u32) -> Result<(), ZoneError> {
        use ZoneCond::*;
        if let Some(e) = self.mgmt_fault(i, "close") {
            return Err(e);
        }
        let z = self.get(i);
        if matches!(z.cond, ImpOpen | ExpOpen) {
            self.lru.remove(i);
            if z.wp == self.geo.zone_start(i) {
                self.release_to(i, false, false);
                self.active_lru.remove(i);
                self.set_cond(i, Empty);
            } else {
                self.release_to(i, false, true);
                if !self.active_lru.contains(i) {
                    self.active_lru.push_back(i);
                }
                self.set_cond(i, Closed);
            }
        }
        Ok(())
    }

    /// Whether finish is allowed and changes anything (FULL: no-op).
    pub(crate) fn check_finish(&self, i: u32) -> Result<bool, ZoneError> {
        use ZoneCond::*;
        if let Some(e) = self.mgmt_fault(i, "finish") {
            return Err(e);
        }
        match self.get(i).cond {
            Empty => {
                self.check_active(i, "finish")?;
                Ok(true)
            }
            Full => Ok(false),
            _ => Ok(true),
        }
    }

    /// Finish: FULL, resources released. The engine has published the
    /// write pointer at the zone end first.
    pub(crate) fn apply_finish(&mut self, i: u32) {
        self.release_to(i, false, false);
        self.lru.remove(i);
        self.active_lru.remove(i);
        self.set_cond(i, ZoneCond::Full);
    }

    fn set_cond(&mut self, i: u32, cond: ZoneCond) {
        let mut z = self.get(i);
        z.cond = cond;
        self.put(i, z);
    }

    /// Whether reset is allowed and changes anything (EMPTY: no-op).
    pub(crate) fn check_reset(&self, i: u32) -> Result<bool, ZoneError> {
        if let Some(e) = self.mgmt_fault(i, "reset") {
            return Err(e);
        }
        Ok(self.get(i).cond != ZoneCond::Empty)
    }

    /// Whether reset-all resets zone `i` (others are skipped).
    pub(crate) fn reset_all_applies(&self, i: u32) -> bool {
        use ZoneCond::*;
        !self.geo.is_conventional(i)
            && matches!(self.get(i).cond, ImpOpen | ExpOpen | Closed | Full)
    }

    /// Reset: EMPTY, resources released. The engine has published the
    /// write pointer at the zone start first.
    pub(crate) fn apply_reset(&mut self, i: u32) {
        self.release_to(i, false, false);
        self.lru.remove(i);
        self.active_lru.remove(i);
        self.set_cond(i, ZoneCond::Empty);
    }

    /// Whether a zone whose fault is cleared can take the condition `cond`
    /// it derives from its write pointer (CLOSED needs an active resource).
    pub(crate) fn check_clear(&self, i: u32, cond: ZoneCond) -> Result<(), ZoneError> {
        if cond == ZoneCond::Closed {
            self.check_active(i, "clearing the fault condition")?;
        }
        Ok(())
    }

    /// Put zone `i` in `cond` (a fault condition, or the condition derived
    /// when clearing one), releasing what it held first.
    pub(crate) fn apply_condition(&mut self, i: u32, cond: ZoneCond) {
        self.release_to(i, false, false);
        self.lru.remove(i);
        self.active_lru.remove(i);
        if cond == ZoneCond::Closed {
            self.acquire(i, false, true);
            self.active_lru.push_back(i);
        }
        self.set_cond(i, cond);
    }
}
