//! A ZoneStore wrapper that records calls, injects failures and can hold
//! writes at given offsets until released (for concurrency tests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use zcow::engine::{MemZoneStore, StoreResult, ZoneStore};
use zcow::format::FormatError;
use zcow::storage::{InjectedKind, Op, StorageError};
use zcow::zone::ZoneGeometry;

/// One call that reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Write(u64, u64),
    Dealloc(u64, u64),
    StoreWp(u32, usize),
    Sync,
}

/// What to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fail {
    Write,
    Dealloc,
    StoreWp,
    Sync,
}

#[derive(Debug, Default)]
pub struct Gates {
    /// offset → None while held, Some(fail) once released.
    held: HashMap<u64, Option<bool>>,
    /// offsets whose write has arrived at the gate.
    arrived: Vec<u64>,
}

#[derive(Debug)]
pub struct FaultyStore {
    pub inner: Arc<MemZoneStore>,
    pub log: Mutex<Vec<Call>>,
    /// Number of upcoming calls of each kind to fail.
    fails: Mutex<HashMap<Fail, u32>>,
    gates: Mutex<Gates>,
    cv: Condvar,
    pub writes: AtomicU32,
}

fn injected(op: Op, offset: u64) -> FormatError {
    FormatError::Storage(StorageError::Injected {
        op,
        offset,
        kind: InjectedKind::Eio,
    })
}

impl FaultyStore {
    pub fn new(inner: Arc<MemZoneStore>) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            log: Mutex::new(Vec::new()),
            fails: Mutex::new(HashMap::new()),
            gates: Mutex::new(Gates::default()),
            cv: Condvar::new(),
            writes: AtomicU32::new(0),
        })
    }

    /// Fail the next `n` calls of kind `f`.
    pub fn fail_next(&self, f: Fail, n: u32) {
        self.fails.lock().unwrap().insert(f, n);
    }

    fn should_fail(&self, f: Fail) -> bool {
        let mut m = self.fails.lock().unwrap();
        match m.get_mut(&f) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn take_log(&self) -> Vec<Call> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Hold writes at `offset` until [`FaultyStore::release`].
    pub fn hold(&self, offset: u64) {
        self.gates.lock().unwrap().held.insert(offset, None);
    }

    /// Wait until a write at `offset` is held at its gate.
    pub fn wait_arrived(&self, offset: u64) {
        let mut g = self.gates.lock().unwrap();
        while !g.arrived.contains(&offset) {
            g = self.cv.wait(g).unwrap();
        }
    }

    /// Let the held write at `offset` go on, failing it if `fail`.
    pub fn release(&self, offset: u64, fail: bool) {
        self.gates.lock().unwrap().held.insert(offset, Some(fail));
        self.cv.notify_all();
    }

    fn gate(&self, offset: u64) -> bool {
        let mut g = self.gates.lock().unwrap();
        if !g.held.contains_key(&offset) {
            return false;
        }
        g.arrived.push(offset);
        self.cv.notify_all();
        loop {
            if let Some(Some(fail)) = g.held.get(&offset).copied() {
                g.held.remove(&offset);
                return fail;
            }
            g = self.cv.wait(g).unwrap();
        }
    }
}

impl ZoneStore for FaultyStore {
    fn geometry(&self) -> ZoneGeometry {
        self.inner.geometry()
    }
    fn load_wp_entries(&self, first: u32, out: &mut [u64]) -> StoreResult<()> {
        self.inner.load_wp_entries(first, out)
    }
    fn store_wp_entries(&self, first: u32, entries: &[u64]) -> StoreResult<()> {
        self.log
            .lock()
            .unwrap()
            .push(Call::StoreWp(first, entries.len()));
        if self.should_fail(Fail::StoreWp) {
            return Err(injected(Op::Write, first as u64 * 8));
        }
        self.inner.store_wp_entries(first, entries)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let gate_fail = self.gate(offset);
        self.log
            .lock()
            .unwrap()
            .push(Call::Write(offset, data.len() as u64));
        if gate_fail || self.should_fail(Fail::Write) {
            return Err(injected(Op::Write, offset));
        }
        self.inner.write(offset, data)
    }
    fn deallocate(&self, offset: u64, len: u64) -> StoreResult<()> {
        self.log.lock().unwrap().push(Call::Dealloc(offset, len));
        if self.should_fail(Fail::Dealloc) {
            return Err(injected(Op::Discard, offset));
        }
        self.inner.deallocate(offset, len)
    }
    fn sync(&self) -> StoreResult<()> {
        self.log.lock().unwrap().push(Call::Sync);
        if self.should_fail(Fail::Sync) {
            return Err(injected(Op::Sync, 0));
        }
        self.inner.sync()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
}
