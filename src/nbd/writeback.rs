//! Writes acknowledged ahead of the write pointer (`spec/nbd-zoned.md`
//! §9.1). An out-of-order loader (`qemu-img convert -W`) may send a chunk
//! before the one in front of it, and may hold back the rest of that front
//! chunk until the early chunk is answered. So a zone-unaware write ahead of
//! the write pointer is answered at once and applied when the gap before it
//! fills, as a write-back cache would: a later FLUSH waits for it and
//! reports with `EIO` any that could not be applied, and a read of its
//! range waits for it. This is the bookkeeping shared by every connection
//! of an export, since a FLUSH or a read on one connection covers the
//! writes answered on another.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Writes answered but not yet applied, and how many of them failed.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    m: Mutex<State>,
    cv: Condvar,
    /// How many writes are open, kept beside the list so a read or FLUSH
    /// with nothing pending (nearly always) takes no lock. Written under
    /// the lock; an early answer is sent after its write is counted, so a
    /// request that follows the answer sees the count.
    open: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// (id, offset, length) of each write answered but not yet applied.
    open: Vec<(u64, u64, u64)>,
    /// Writes answered early that could not be applied, ever (reported to
    /// each connection once, at its next FLUSH).
    failed: u64,
}

impl Pending {
    /// Record a write of `[offset, offset+len)` about to be answered before
    /// it is applied; the id is for [`Pending::resolve`].
    pub(crate) fn add(&self, offset: u64, len: u64) -> u64 {
        let Ok(mut g) = self.m.lock() else { return 0 };
        let id = g.next;
        g.next += 1;
        g.open.push((id, offset, len));
        self.open.store(g.open.len(), Ordering::SeqCst);
        id
    }

    /// The write `id` was applied (`ok`) or failed for good.
    pub(crate) fn resolve(&self, id: u64, ok: bool) {
        if let Ok(mut g) = self.m.lock() {
            g.open.retain(|x| x.0 != id);
            self.open.store(g.open.len(), Ordering::SeqCst);
            if !ok {
                g.failed += 1;
            }
        }
        self.cv.notify_all();
    }

    /// How many answered writes failed since the export started.
    pub(crate) fn failures(&self) -> u64 {
        self.m.lock().map_or(0, |g| g.failed)
    }

    /// Wait up to `limit` until no pending write overlaps `[offset,
    /// offset+len)` (every pending write if `len` is `u64::MAX`); false if
    /// some still does.
    pub(crate) fn wait_clear(&self, offset: u64, len: u64, limit: Duration) -> bool {
        if self.open.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let end = offset.saturating_add(len);
        let deadline = Instant::now() + limit;
        let Ok(mut g) = self.m.lock() else {
            return false;
        };
        loop {
            let busy = g
                .open
                .iter()
                .any(|&(_, o, l)| o < end && offset < o.saturating_add(l));
            if !busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_flushes_wait_for_overlapping_writes_only() {
        let p = Pending::default();
        let a = p.add(0x1000, 0x1000);
        let z = Duration::from_millis(1);
        assert!(p.wait_clear(0, 0x1000, z), "the range before is free");
        assert!(p.wait_clear(0x2000, 0x1000, z), "the range after is free");
        assert!(!p.wait_clear(0x1fff, 1, z));
        assert!(!p.wait_clear(0, u64::MAX, z));
        p.resolve(a, false);
        assert!(p.wait_clear(0, u64::MAX, z));
        assert_eq!(p.failures(), 1);
        let b = p.add(0, 10);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                p.resolve(b, true);
            });
            assert!(p.wait_clear(0, 10, Duration::from_secs(10)));
        });
        assert_eq!(p.failures(), 1);
    }
}
