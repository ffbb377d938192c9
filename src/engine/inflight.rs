//! Per-zone bookkeeping of writes in flight.
//!
//! A write reserves its range under the zone lock, does its I/O with no lock
//! held, and then waits until every write issued before it in the same zone
//! has completed; only then is it published (the readable write pointer moves
//! past it) and acknowledged. So the I/O of concurrent appends runs in
//! parallel while their acknowledgements stay in write-pointer order.
//!
//! If one fails, the zone is *poisoned* at its offset: later writes of the
//! zone that are already in flight fail too (their data, if written, lies past
//! the restored write pointer and reads as zeroes), new writes wait, and when
//! nothing is pending any more the zone is rolled back to the failed offset and
//! the condition it had before that write.

use crate::zone::ZoneCond;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Progress of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// I/O under way.
    Pending,
    /// I/O succeeded; waiting for earlier writes.
    Done,
    /// I/O failed.
    Failed,
}

/// One issued write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flight {
    /// Identifies the write to its waiter.
    pub seq: u64,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Progress.
    pub status: Status,
    /// Zone condition before the write was issued.
    pub prev: ZoneCond,
}

/// What a zone's lock protects.
#[derive(Debug, Default)]
pub(crate) struct ZoneIo {
    /// Writes issued and not yet resolved, in write-pointer order.
    pub flights: VecDeque<Flight>,
    /// Lowest offset of a failed write; set until the zone is rolled back.
    pub poison: Option<u64>,
    /// Writes resolved but not yet collected by their waiters: (seq, ok).
    pub resolved: Vec<(u64, bool)>,
    /// Next sequence number.
    pub next_seq: u64,
    /// Requests waiting for the zone to become idle; new writes wait behind
    /// them so a steady stream of writes cannot starve a reset or finish.
    pub idle_waiters: u32,
}

impl ZoneIo {
    /// Whether a new write must wait before it is issued.
    pub(crate) fn write_must_wait(&self) -> bool {
        self.poison.is_some() || self.idle_waiters > 0
    }
}

impl ZoneIo {
    /// Take the result of write `seq` if it has been resolved.
    pub(crate) fn take_resolved(&mut self, seq: u64) -> Option<bool> {
        let pos = self.resolved.iter().position(|r| r.0 == seq)?;
        Some(self.resolved.swap_remove(pos).1)
    }
}

/// A zone's lock and the condition variable its waiters sleep on.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    io: Mutex<ZoneIo>,
    cv: Condvar,
}

impl Slot {
    /// Lock the zone. A panic elsewhere while holding the lock leaves
    /// consistent data (every update is completed before any call that can
    /// panic), so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ZoneIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleep until notified.
    pub(crate) fn wait<'a>(&self, g: MutexGuard<'a, ZoneIo>) -> MutexGuard<'a, ZoneIo> {
        self.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    /// Wake every waiter of the zone.
    pub(crate) fn notify(&self) {
        self.cv.notify_all();
    }

    /// Lock the zone once no write is in flight in it.
    pub(crate) fn lock_idle(&self) -> MutexGuard<'_, ZoneIo> {
        let mut g = self.lock();
        g.idle_waiters += 1;
        while !g.flights.is_empty() {
            g = self.wait(g);
        }
        g.idle_waiters -= 1;
        // Writers held back for us wake up and queue for the lock we hold.
        self.notify();
        g
    }
}

/// Lock a mutex, ignoring poisoning (see [`Slot::lock`]).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
