//! The reference model of the zone transition table
//! (`design/zone-model.md`), written from the document alone, shared by the
//! engine's model-based tests (`tests/engine_model.rs`) and the `engine`
//! fuzz target: zones as (cond, wp), resource counts derived from the
//! conditions, the IMP_OPEN zones ordered by last write, the device contents
//! as reads must return them, and what a crash would keep. It is test
//! oracle code and deliberately independent of the engine.
#![allow(missing_docs)]

use crate::zone::{ZoneCond, ZoneErrorKind as K, ZoneGeometry, ZoneOp};
use ZoneCond::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MZone {
    pub cond: ZoneCond,
    pub wp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MFault {
    ReadOnly,
    Offline,
    Clear,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub g: ZoneGeometry,
    pub zones: Vec<MZone>,
    /// IMP_OPEN zones, least recently written first.
    pub lru: Vec<u32>,
    pub data: Vec<u8>,
    /// What survives a crash: wp + fault per zone, and the device contents.
    pub durable: Vec<MZone>,
    pub durable_data: Vec<u8>,
}

pub type R<T> = Result<T, K>;

/// The management operation a fuzz/proptest byte selects.
pub fn mgmt_op(op: u8) -> ZoneOp {
    [ZoneOp::Open, ZoneOp::Close, ZoneOp::Finish, ZoneOp::Reset][op as usize % 4]
}

impl Model {
    /// Zone management of zone `i` alone.
    pub fn mgmt(&mut self, op: ZoneOp, i: u32) -> Result<(), K> {
        match op {
            ZoneOp::Open => self.open(i),
            ZoneOp::Close => self.close(i),
            ZoneOp::Finish => self.finish(i),
            ZoneOp::Reset => self.reset_range(i, i),
        }
    }

    /// Management of zones `first..=last` as one request: a reset of every
    /// zone is RESET ALL (skips conventional zones); other ranges go zone by
    /// zone and stop at the first failure.
    pub fn mgmt_range(&mut self, op: ZoneOp, first: u32, last: u32) -> R<()> {
        if op == ZoneOp::Reset && first == 0 && last + 1 == self.g.nr_zones {
            self.reset_all();
            Ok(())
        } else if op == ZoneOp::Reset {
            self.reset_range(first, last)
        } else {
            (first..=last).try_for_each(|i| self.mgmt(op, i))
        }
    }

    pub fn new(g: ZoneGeometry) -> Self {
        let zones: Vec<MZone> = (0..g.nr_zones)
            .map(|i| MZone {
                cond: if i < g.conventional_zones {
                    NotWp
                } else {
                    Empty
                },
                wp: g.zone_start(i),
            })
            .collect();
        Model {
            g,
            durable: zones.clone(),
            zones,
            lru: Vec::new(),
            data: vec![0; g.device_size as usize],
            durable_data: vec![0; g.device_size as usize],
        }
    }

    fn start(&self, i: u32) -> u64 {
        i as u64 * self.g.zone_size
    }
    fn end(&self, i: u32) -> u64 {
        (self.start(i) + self.g.zone_size).min(self.g.device_size)
    }
    fn cap_end(&self, i: u32) -> u64 {
        if self.conv(i) {
            return self.end(i);
        }
        self.start(i) + self.g.zone_capacity.min(self.end(i) - self.start(i))
    }
    fn conv(&self, i: u32) -> bool {
        i < self.g.conventional_zones
    }
    pub fn open_count(&self) -> u32 {
        self.zones
            .iter()
            .filter(|z| matches!(z.cond, ImpOpen | ExpOpen))
            .count() as u32
    }
    pub fn active_count(&self) -> u32 {
        self.zones
            .iter()
            .filter(|z| matches!(z.cond, ImpOpen | ExpOpen | Closed))
            .count() as u32
    }

    fn need_active(&self) -> R<()> {
        let m = self.g.max_active_zones;
        if m != 0 && self.active_count() >= m {
            Err(K::ActiveResource)
        } else {
            Ok(())
        }
    }

    /// Ok(Some(v)) = zone v must be implicitly closed first.
    fn need_open(&self) -> R<Option<u32>> {
        let m = self.g.max_open_zones;
        if m != 0 && self.open_count() >= m {
            self.lru.first().copied().map(Some).ok_or(K::OpenResource)
        } else {
            Ok(None)
        }
    }

    pub fn set_cond(&mut self, i: u32, c: ZoneCond) {
        self.lru.retain(|&z| z != i);
        if c == ImpOpen {
            self.lru.push(i);
        }
        self.zones[i as usize].cond = c;
    }

    /// Resources for writing/opening a zone in EMPTY or CLOSED.
    fn acquire(&mut self, i: u32) -> R<()> {
        let victim = match self.zones[i as usize].cond {
            Empty => {
                self.need_active()?;
                self.need_open()?
            }
            Closed => self.need_open()?,
            _ => None,
        };
        if let Some(v) = victim {
            self.set_cond(v, Closed);
        }
        Ok(())
    }

    fn seq_write(&mut self, i: u32, at: Option<u64>, len: u64, fill: &[u8]) -> R<u64> {
        let z = self.zones[i as usize];
        match z.cond {
            ReadOnly => return Err(K::ReadOnly),
            Offline => return Err(K::Offline),
            Full => return Err(K::ZoneFull),
            _ => {}
        }
        if len == 0 || len % 512 != 0 || at.is_some_and(|o| o % 512 != 0) {
            return Err(K::InvalidCommand);
        }
        match at {
            Some(o) if o != z.wp => return Err(K::UnalignedWrite),
            None if len > self.g.max_append_bytes as u64 => return Err(K::InvalidCommand),
            _ => {}
        }
        let end = z.wp + len;
        if end > self.cap_end(i) {
            return Err(K::Boundary);
        }
        self.acquire(i)?;
        let new = if end == self.cap_end(i) {
            Full
        } else if z.cond == ExpOpen {
            ExpOpen
        } else {
            ImpOpen
        };
        self.set_cond(i, new);
        self.zones[i as usize].wp = end;
        self.data[z.wp as usize..end as usize].copy_from_slice(fill);
        Ok(z.wp)
    }

    /// A write (`zeroes`: write-zeroes) of `data` at `offset`, in range.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> R<()> {
        let len = data.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let i = (offset / self.g.zone_size) as u32;
        if self.conv(i) {
            let last = ((offset + len - 1) / self.g.zone_size) as u32;
            for j in i..=last {
                if !self.conv(j) {
                    return Err(K::Boundary);
                }
                match self.zones[j as usize].cond {
                    ReadOnly => return Err(K::ReadOnly),
                    Offline => return Err(K::Offline),
                    _ => {}
                }
            }
            self.data[offset as usize..(offset + len) as usize].copy_from_slice(data);
            return Ok(());
        }
        self.seq_write(i, Some(offset), len, data).map(|_| ())
    }

    pub fn append(&mut self, zone_start: u64, data: &[u8]) -> R<u64> {
        let i = (zone_start / self.g.zone_size) as u32;
        if zone_start != self.start(i) || self.conv(i) {
            return Err(K::InvalidCommand);
        }
        if self.g.max_append_bytes == 0 {
            return Err(K::Unsupported);
        }
        self.seq_write(i, None, data.len() as u64, data)
    }

    pub fn read(&self, offset: u64, len: u64) -> R<Vec<u8>> {
        if len > 0 {
            let last = ((offset + len - 1) / self.g.zone_size) as u32;
            for j in (offset / self.g.zone_size) as u32..=last {
                if self.zones[j as usize].cond == Offline {
                    return Err(K::Offline);
                }
            }
        }
        Ok(self.data[offset as usize..(offset + len) as usize].to_vec())
    }

    fn mgmt_check(&self, i: u32) -> R<()> {
        if self.conv(i) {
            return Err(K::InvalidCommand);
        }
        match self.zones[i as usize].cond {
            ReadOnly | Offline => Err(K::InvalidTransition),
            _ => Ok(()),
        }
    }

    pub fn open(&mut self, i: u32) -> R<()> {
        self.mgmt_check(i)?;
        match self.zones[i as usize].cond {
            Full => Err(K::InvalidTransition),
            ExpOpen => Ok(()),
            _ => {
                self.acquire(i)?;
                self.set_cond(i, ExpOpen);
                Ok(())
            }
        }
    }

    pub fn close(&mut self, i: u32) -> R<()> {
        self.mgmt_check(i)?;
        let z = self.zones[i as usize];
        if matches!(z.cond, ImpOpen | ExpOpen) {
            let c = if z.wp == self.start(i) { Empty } else { Closed };
            self.set_cond(i, c);
        }
        Ok(())
    }

    pub fn finish(&mut self, i: u32) -> R<()> {
        self.mgmt_check(i)?;
        match self.zones[i as usize].cond {
            Full => return Ok(()),
            Empty => self.need_active()?,
            _ => {}
        }
        self.set_cond(i, Full);
        self.zones[i as usize].wp = self.end(i);
        Ok(())
    }

    fn do_reset(&mut self, i: u32) {
        self.set_cond(i, Empty);
        let (s, e) = (self.start(i), self.end(i));
        self.zones[i as usize].wp = s;
        self.data[s as usize..e as usize].fill(0);
        // Reset is durable on return.
        self.durable[i as usize] = self.zones[i as usize];
    }

    fn sync_all_data(&mut self) {
        self.durable_data = self.data.clone();
    }

    /// Reset of zones `first..=last`, stopping at the first failure.
    pub fn reset_range(&mut self, first: u32, last: u32) -> R<()> {
        let mut changed = false;
        let mut res = Ok(());
        for i in first..=last {
            if let Err(e) = self.mgmt_check(i) {
                res = Err(e);
                break;
            }
            if self.zones[i as usize].cond != Empty {
                self.do_reset(i);
                changed = true;
            }
        }
        if changed {
            self.sync_all_data();
        }
        res
    }

    pub fn reset_all(&mut self) {
        let mut changed = false;
        for i in 0..self.g.nr_zones {
            if !self.conv(i)
                && matches!(
                    self.zones[i as usize].cond,
                    ImpOpen | ExpOpen | Closed | Full
                )
            {
                self.do_reset(i);
                changed = true;
            }
        }
        if changed {
            self.sync_all_data();
        }
    }

    /// Condition of zone `i` from its wp, as a power cycle gives it.
    fn derived(&self, i: u32, wp: u64) -> ZoneCond {
        if self.conv(i) {
            NotWp
        } else if wp == self.start(i) {
            Empty
        } else if wp >= self.cap_end(i) {
            Full
        } else {
            Closed
        }
    }

    pub fn set_condition(&mut self, i: u32, f: MFault) -> R<()> {
        let cur = self.zones[i as usize].cond;
        let target = match f {
            MFault::ReadOnly => ReadOnly,
            MFault::Offline => Offline,
            MFault::Clear => {
                if !matches!(cur, ReadOnly | Offline) {
                    return Ok(());
                }
                let c = self.derived(i, self.zones[i as usize].wp);
                if c == Closed {
                    self.need_active()?;
                }
                c
            }
        };
        if target == cur {
            return Ok(());
        }
        self.set_cond(i, target);
        self.sync_all_data();
        self.durable[i as usize] = MZone {
            cond: target,
            wp: self.zones[i as usize].wp,
        };
        Ok(())
    }

    /// Flush: everything written becomes durable.
    pub fn flush(&mut self) {
        self.sync_all_data();
        self.durable = self.zones.clone();
    }

    /// Power cycle after a clean close (`crash` = false: flush first) or a
    /// crash (only what was durable survives).
    pub fn reopen(&mut self, crash: bool) {
        if !crash {
            self.flush();
        }
        let durable = self.durable.clone();
        self.data = self.durable_data.clone();
        for i in 0..self.g.nr_zones {
            let d = durable[i as usize];
            let cond = match d.cond {
                ReadOnly | Offline => d.cond,
                _ => self.derived(i, d.wp),
            };
            self.zones[i as usize] = MZone { cond, wp: d.wp };
            if !self.conv(i) {
                // Anything at or past the wp reads as zeroes.
                let end = self.end(i) as usize;
                self.data[d.wp as usize..end].fill(0);
            }
        }
        self.lru.clear();
        self.durable = self.zones.clone();
        self.durable_data = self.data.clone();
    }
}
