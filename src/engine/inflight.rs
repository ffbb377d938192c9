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
use std::collections::{HashMap, VecDeque};
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

/// What a zone's lock protects. Exists only while the zone has writes in
/// flight or results to hand out (see [`ZoneLocks`]).
#[derive(Debug, Default)]
pub(crate) struct ZoneIo {
    /// Writes issued and not yet resolved, in write-pointer order.
    pub flights: VecDeque<Flight>,
    /// Lowest offset of a failed write; set until the zone is rolled back.
    pub poison: Option<u64>,
    /// Writes resolved but not yet collected by their waiters: (seq, ok).
    pub resolved: Vec<(u64, bool)>,
    /// Next sequence number (only compared among the zone's own writes in
    /// flight, so it may start over once the zone is idle).
    pub next_seq: u64,
}

impl ZoneIo {
    /// Take the result of write `seq` if it has been resolved.
    pub(crate) fn take_resolved(&mut self, seq: u64) -> Option<bool> {
        let pos = self.resolved.iter().position(|r| r.0 == seq)?;
        Some(self.resolved.swap_remove(pos).1)
    }

    fn idle(&self) -> bool {
        self.flights.is_empty() && self.poison.is_none() && self.resolved.is_empty()
    }
}

/// Stripes of the zone lock table: zone `i` is guarded by stripe
/// `i % stripes`. A fixed table instead of one lock per zone keeps the cost
/// per zone at zero (a million-zone device would otherwise spend ~100 bytes
/// a zone on mutexes, condition variables and queues).
const MAX_STRIPES: u32 = 1024;

#[derive(Debug, Default)]
struct StripeIo {
    /// In-flight bookkeeping of the stripe's busy zones only.
    zones: HashMap<u32, ZoneIo>,
    /// Management requests waiting for zones of this stripe to become idle;
    /// new writes to the stripe wait behind them, so a steady stream of
    /// writes cannot starve a reset or finish.
    idle_waiters: u32,
    /// Threads asleep on the stripe's condition variable: a wake-up is a
    /// system call even with nobody to wake, and a lone writer would pay
    /// one per write.
    sleepers: u32,
}

#[derive(Debug, Default)]
struct Stripe {
    io: Mutex<StripeIo>,
    cv: Condvar,
}

impl Stripe {
    /// Lock the stripe. A panic elsewhere while holding the lock leaves
    /// consistent data (every update is completed before any call that can
    /// panic), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, StripeIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The per-zone locks: requests to one zone are ordered, requests to
/// different zones run in parallel (unless they share a stripe, and then
/// only for the few instructions the lock is held).
#[derive(Debug)]
pub(crate) struct ZoneLocks {
    stripes: Box<[Stripe]>,
}

impl ZoneLocks {
    /// Locks for a device of `nr_zones` zones.
    pub(crate) fn new(nr_zones: u32) -> Self {
        let n = nr_zones.clamp(1, MAX_STRIPES);
        ZoneLocks {
            stripes: (0..n).map(|_| Stripe::default()).collect(),
        }
    }

    fn stripe_of(&self, i: u32) -> usize {
        (i % self.stripes.len() as u32) as usize
    }

    /// Lock zone `i` (its stripe).
    pub(crate) fn lock(&self, i: u32) -> ZoneGuard<'_> {
        let stripe = &self.stripes[self.stripe_of(i)];
        let mut g = stripe.lock();
        g.zones.entry(i).or_default();
        ZoneGuard {
            stripe,
            g: Some(g),
            zone: i,
        }
    }

    /// Lock zones `first..=last` once none of them has a write in flight;
    /// the returned guard keeps new writes to them out until dropped.
    /// Stripes are taken in ascending order, so range locks never deadlock.
    pub(crate) fn lock_idle(&self, first: u32, last: u32) -> RangeGuard<'_> {
        let n = self.stripes.len() as u32;
        let span = u64::from(last - first) + 1;
        let mut which: Vec<usize> = if span >= u64::from(n) {
            (0..n as usize).collect()
        } else {
            (first..=last).map(|i| self.stripe_of(i)).collect()
        };
        which.sort_unstable();
        which.dedup();
        let mut guards = Vec::with_capacity(which.len());
        for k in which {
            let stripe = &self.stripes[k];
            let mut g = stripe.lock();
            g.idle_waiters += 1;
            while g
                .zones
                .iter()
                .any(|(&z, io)| z >= first && z <= last && !io.flights.is_empty())
            {
                g.sleepers += 1;
                g = stripe.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                g.sleepers -= 1;
            }
            g.idle_waiters -= 1;
            // Writers held back for us wake up and queue for the lock we hold.
            if g.sleepers > 0 {
                stripe.cv.notify_all();
            }
            guards.push(g);
        }
        RangeGuard { _guards: guards }
    }
}

/// Zones locked idle by [`ZoneLocks::lock_idle`].
pub(crate) struct RangeGuard<'a> {
    _guards: Vec<MutexGuard<'a, StripeIo>>,
}

/// Zone `zone` locked for a write: gives its [`ZoneIo`].
pub(crate) struct ZoneGuard<'a> {
    stripe: &'a Stripe,
    /// Always `Some` outside `wait`.
    g: Option<MutexGuard<'a, StripeIo>>,
    zone: u32,
}

impl ZoneGuard<'_> {
    fn stripe_io(&mut self) -> &mut StripeIo {
        self.g.as_mut().expect("zone guard holds its stripe")
    }

    /// The zone's in-flight bookkeeping.
    pub(crate) fn io(&mut self) -> &mut ZoneIo {
        let z = self.zone;
        self.stripe_io().zones.entry(z).or_default()
    }

    /// Whether a new write must wait before it is issued: the zone is being
    /// rolled back, or a management request awaits its stripe.
    pub(crate) fn write_must_wait(&mut self) -> bool {
        let waiters = self.stripe_io().idle_waiters;
        waiters > 0 || self.io().poison.is_some()
    }

    /// Sleep until notified (the stripe lock is released meanwhile).
    pub(crate) fn wait(&mut self) {
        if let Some(mut g) = self.g.take() {
            g.sleepers += 1;
            let mut g = self.stripe.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            g.sleepers -= 1;
            self.g = Some(g);
        }
    }

    /// Wake every waiter of the stripe (none asleep: nothing to do; the
    /// count is read under the stripe lock that sleepers hold to enter
    /// their wait, so no wake-up is lost).
    pub(crate) fn notify(&self) {
        if self.g.as_ref().is_some_and(|g| g.sleepers > 0) {
            self.stripe.cv.notify_all();
        }
    }
}

impl Drop for ZoneGuard<'_> {
    fn drop(&mut self) {
        // Forget the zone's bookkeeping once it holds nothing.
        let z = self.zone;
        if let Some(g) = self.g.as_mut() {
            if g.zones.get(&z).is_some_and(ZoneIo::idle) {
                g.zones.remove(&z);
            }
        }
    }
}

/// Lock a mutex, ignoring poisoning (see [`Stripe::lock`]).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
