//! Write-back cache of cluster-sized metadata tables (L2 tables, refcount
//! blocks), keyed by host offset.
//!
//! The cache itself knows nothing about ordering; the image decides when to
//! write back, and flushes the refcount cache before the L2 cache (a
//! refcount is durable before an L2 entry points at its cluster).

use super::types::HostOffset;
use std::collections::HashMap;

#[derive(Debug)]
struct Slot {
    data: Vec<u8>,
    dirty: bool,
    last_use: u64,
}

/// A bounded table cache with LRU eviction.
#[derive(Debug)]
pub struct TableCache {
    slots: HashMap<u64, Slot>,
    capacity: usize,
    tick: u64,
}

impl TableCache {
    /// A cache holding at most `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            capacity: capacity.max(2),
            tick: 0,
        }
    }

    /// Whether the table at `off` is cached.
    pub fn contains(&self, off: HostOffset) -> bool {
        self.slots.contains_key(&off.0)
    }

    /// The cached table (marks it recently used).
    pub fn get(&mut self, off: HostOffset) -> Option<&[u8]> {
        self.tick += 1;
        let t = self.tick;
        self.slots.get_mut(&off.0).map(|s| {
            s.last_use = t;
            s.data.as_slice()
        })
    }

    /// The cached table for modification; marks it dirty.
    pub fn get_mut(&mut self, off: HostOffset) -> Option<&mut [u8]> {
        self.tick += 1;
        let t = self.tick;
        self.slots.get_mut(&off.0).map(|s| {
            s.last_use = t;
            s.dirty = true;
            s.data.as_mut_slice()
        })
    }

    /// Whether the cache is full (an insert would need an eviction).
    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// The least recently used table, for eviction: (offset, dirty).
    pub fn victim(&self) -> Option<(HostOffset, bool)> {
        self.slots
            .iter()
            .min_by_key(|(_, s)| s.last_use)
            .map(|(k, s)| (HostOffset(*k), s.dirty))
    }

    /// Drop a table (the caller wrote it back if dirty).
    pub fn remove(&mut self, off: HostOffset) -> Option<Vec<u8>> {
        self.slots.remove(&off.0).map(|s| s.data)
    }

    /// Insert a table.
    pub fn insert(&mut self, off: HostOffset, data: Vec<u8>, dirty: bool) {
        self.tick += 1;
        self.slots.insert(
            off.0,
            Slot {
                data,
                dirty,
                last_use: self.tick,
            },
        );
    }

    /// Offsets of dirty tables, sorted (so write-back is sequential).
    pub fn dirty(&self) -> Vec<HostOffset> {
        let mut v: Vec<HostOffset> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| HostOffset(*k))
            .collect();
        v.sort();
        v
    }

    /// Contents of a table without touching its use time.
    pub fn peek(&self, off: HostOffset) -> Option<&[u8]> {
        self.slots.get(&off.0).map(|s| s.data.as_slice())
    }

    /// Mark a table clean after write-back.
    pub fn mark_clean(&mut self, off: HostOffset) {
        if let Some(s) = self.slots.get_mut(&off.0) {
            s.dirty = false;
        }
    }

    /// Whether anything is dirty.
    pub fn any_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty)
    }
}
