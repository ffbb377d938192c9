//! An in-memory [`ZoneStore`] for tests and fuzzing, with a simple power-loss
//! model: everything written since the last [`ZoneStore::sync`] can be
//! dropped with [`MemZoneStore::crash`].

use super::store::{StoreResult, ZoneStore};
use crate::format::wp::WpEntry;
use crate::format::FormatError;
use crate::zone::ZoneGeometry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Allocation unit of the data map.
const CHUNK: u64 = 4096;

/// Default bound on allocated guest data.
pub const MEM_ZONE_STORE_LIMIT: u64 = 256 << 20;

#[derive(Debug, Default)]
struct Inner {
    chunks: HashMap<u64, Box<[u8]>>,
    /// Chunk contents as of the last sync, for chunks changed since.
    undo: HashMap<u64, Option<Box<[u8]>>>,
    entries: Vec<u64>,
    durable_entries: Vec<u64>,
}

impl Inner {
    fn save(&mut self, c: u64) {
        if !self.undo.contains_key(&c) {
            let old = self.chunks.get(&c).cloned();
            self.undo.insert(c, old);
        }
    }
}

/// Guest data in sparse 4 KiB chunks (bounded), wp entries in a vector.
#[derive(Debug)]
pub struct MemZoneStore {
    geo: ZoneGeometry,
    limit: u64,
    read_only: AtomicBool,
    inner: Mutex<Inner>,
}

impl MemZoneStore {
    /// A fresh device: every zone empty (entry = zone start, conventional
    /// zones with bit 59). Fails if zone size or zone count are unusable.
    pub fn new(geo: ZoneGeometry) -> StoreResult<Self> {
        if geo.zone_size == 0 || u64::from(geo.nr_zones) != geo.device_size.div_ceil(geo.zone_size)
        {
            return Err(FormatError::BadOption(format!(
                "zone size {:#x} and {} zones do not fit a device of {:#x} bytes",
                geo.zone_size, geo.nr_zones, geo.device_size
            )));
        }
        let entries: Vec<u64> = (0..geo.nr_zones)
            .map(|i| WpEntry::new(geo.zone_start(i), geo.is_conventional(i)).0)
            .collect();
        Ok(MemZoneStore {
            geo,
            limit: MEM_ZONE_STORE_LIMIT,
            read_only: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                durable_entries: entries.clone(),
                entries,
                ..Inner::default()
            }),
        })
    }

    /// The same with a different bound on allocated data (bytes).
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wp entries as last written (durable or not).
    pub fn entries(&self) -> Vec<u64> {
        self.lock().entries.clone()
    }

    /// The wp entries as of the last sync.
    pub fn durable_entries(&self) -> Vec<u64> {
        self.lock().durable_entries.clone()
    }

    /// Overwrite entry `i` (durably), e.g. to plant an invalid one.
    pub fn set_entry(&self, i: u32, raw: u64) {
        let mut g = self.lock();
        if let Some(e) = g.entries.get_mut(i as usize) {
            *e = raw;
        }
        if let Some(d) = g.durable_entries.get_mut(i as usize) {
            *d = raw;
        }
    }

    /// Simulate power loss: data and entries written since the last sync
    /// are lost.
    pub fn crash(&self) {
        let mut g = self.lock();
        let undo = std::mem::take(&mut g.undo);
        for (c, old) in undo {
            match old {
                Some(b) => {
                    g.chunks.insert(c, b);
                }
                None => {
                    g.chunks.remove(&c);
                }
            }
        }
        g.entries = g.durable_entries.clone();
    }

    /// Bytes of guest data held.
    pub fn allocated_bytes(&self) -> u64 {
        self.lock().chunks.len() as u64 * CHUNK
    }

    /// Make the store refuse (or accept again) writes.
    pub fn set_read_only(&self, ro: bool) {
        self.read_only.store(ro, Ordering::SeqCst);
    }

    fn check(&self, offset: u64, len: u64) -> StoreResult<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.geo.device_size => Ok(()),
            _ => Err(FormatError::OutOfRange {
                offset,
                len,
                size: self.geo.device_size,
            }),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> StoreResult<()> {
        if self.read_only.load(Ordering::SeqCst) {
            return Err(FormatError::ReadOnly);
        }
        self.check(offset, len)
    }
}

/// Split `[offset, offset+len)` into (chunk, offset in chunk, length).
fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let c = pos / CHUNK;
        let o = pos % CHUNK;
        let n = (CHUNK - o).min(end - pos);
        pos += n;
        Some((c, o as usize, n as usize))
    })
}

impl ZoneStore for MemZoneStore {
    fn geometry(&self) -> ZoneGeometry {
        self.geo
    }

    fn load_wp_entries(&self, first: u32, out: &mut [u64]) -> StoreResult<()> {
        let g = self.lock();
        let first = first as usize;
        match first.checked_add(out.len()) {
            Some(end) if end <= g.entries.len() => {
                out.copy_from_slice(&g.entries[first..end]);
                Ok(())
            }
            _ => Err(FormatError::Invalid(format!(
                "write-pointer entries {first}..+{} are past the {} zones",
                out.len(),
                g.entries.len()
            ))),
        }
    }

    fn store_wp_entries(&self, first: u32, entries: &[u64]) -> StoreResult<()> {
        if self.read_only.load(Ordering::SeqCst) {
            return Err(FormatError::ReadOnly);
        }
        let mut g = self.lock();
        let first = first as usize;
        match first.checked_add(entries.len()) {
            Some(end) if end <= g.entries.len() => {
                g.entries[first..end].copy_from_slice(entries);
                Ok(())
            }
            _ => Err(FormatError::Invalid(format!(
                "write-pointer entries {first}..+{} are past the {} zones",
                entries.len(),
                g.entries.len()
            ))),
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
        self.check(offset, buf.len() as u64)?;
        let g = self.lock();
        let mut done = 0;
        for (c, o, n) in pieces(offset, buf.len() as u64) {
            let out = &mut buf[done..done + n];
            match g.chunks.get(&c) {
                Some(b) => out.copy_from_slice(&b[o..o + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.check_write(offset, data.len() as u64)?;
        let mut g = self.lock();
        let new = pieces(offset, data.len() as u64)
            .filter(|(c, _, _)| !g.chunks.contains_key(c))
            .count() as u64;
        if (g.chunks.len() as u64 + new) * CHUNK > self.limit {
            return Err(FormatError::NoSpace(format!(
                "in-memory zone store limit of {:#x} bytes reached",
                self.limit
            )));
        }
        let mut done = 0;
        for (c, o, n) in pieces(offset, data.len() as u64) {
            g.save(c);
            let b = g
                .chunks
                .entry(c)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            b[o..o + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn deallocate(&self, offset: u64, len: u64) -> StoreResult<()> {
        self.check_write(offset, len)?;
        let mut g = self.lock();
        for (c, o, n) in pieces(offset, len) {
            if !g.chunks.contains_key(&c) {
                continue;
            }
            g.save(c);
            if n == CHUNK as usize {
                g.chunks.remove(&c);
            } else if let Some(b) = g.chunks.get_mut(&c) {
                b[o..o + n].fill(0);
            }
        }
        Ok(())
    }

    fn sync(&self) -> StoreResult<()> {
        let mut g = self.lock();
        g.undo.clear();
        g.durable_entries = g.entries.clone();
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }
}
