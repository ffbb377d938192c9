//! Cluster allocation and the deferred refcount decrements that free
//! clusters once their last reference is durably gone.
//!
//! Freed clusters are given back to the file system (punched), but not at
//! once: up to [`REUSE_POOL_BYTES`] (1 GiB) of the most recently freed stay
//! in the file and are the next allocations' first choice; they are punched when
//! they leave that pool still free or when the image is closed. A zoned
//! disk frees a zone's clusters at every reset and writes as many again;
//! punching and refilling them costs the file system a page (or block)
//! allocation per page, which overwriting an existing page does not (under
//! emulation it was most of a sequential write's cost). Nothing relies on
//! a freed cluster reading as zeroes: a partly written new cluster is
//! written whole. Once a read reply may hold the file's pages
//! ([`Qcow2::read_direct`]), freed clusters are punched at once: a reused
//! page would change bytes already queued in a socket.

use super::*;

impl Qcow2 {
    /// Allocate one cluster with refcount 1: the oldest one of the reuse
    /// pool that is still free, else the lowest free one, so a sequential
    /// stream gets consecutive clusters (of a freed run, or at the end of
    /// the file).
    pub(super) fn alloc(&self, m: &mut Meta) -> Result<u64> {
        self.alloc_for(m, None)
    }

    /// [`Qcow2::alloc`] for a metadata `table`: refcounts that offer
    /// cluster 0 (the header) get QEMU's own message for that lie.
    pub(super) fn alloc_for(&self, m: &mut Meta, table: Option<&str>) -> Result<u64> {
        let (c, scanned) = match self.take_from_reuse_pool(m)? {
            Some(c) => (c, false),
            None => {
                let mut c = m.free_hint;
                while c < m.alloc_end && !self.is_free(m, c)? {
                    c += 1;
                }
                (c, true)
            }
        };
        if let (0, Some(t)) = (c, table) {
            return Err(self.mark_corrupt(
                m,
                format!("Preventing invalid allocation of {t} at offset 0"),
            ));
        }
        if (c + 1) << self.p.cluster_bits > MAX_HOST_OFFSET {
            return Err(FormatError::NoSpace(
                "image file would exceed 2^56 bytes".into(),
            ));
        }
        // Refcounts that call a metadata cluster free are lying.
        self.guard_as(m, None, c << self.p.cluster_bits, self.p.cs, || {
            "a newly allocated cluster".into()
        })?;
        self.set_refcount(m, c, 1)?;
        m.alloc_end = m.alloc_end.max(c + 1);
        if scanned {
            // Everything below c was in use; a cluster from the pool says
            // nothing about the ones below it.
            m.free_hint = c + 1;
        }
        Ok(c)
    }

    /// The oldest cluster of the reuse pool that is still free, if any
    /// (consecutive allocations get consecutive clusters of a run).
    fn take_from_reuse_pool(&self, m: &mut Meta) -> Result<Option<u64>> {
        while let Some((first, n)) = m.reuse_pool.front_mut() {
            let c = *first;
            if *n <= 1 {
                m.reuse_pool.pop_front();
            } else {
                *first += 1;
                *n -= 1;
            }
            m.reuse_pool_clusters = m.reuse_pool_clusters.saturating_sub(1);
            if self.is_free(m, c)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    pub(super) fn queue_decrement(&self, m: &mut Meta, ct: ClusterType) {
        let cb = self.p.cluster_bits;
        match ct {
            ClusterType::Normal(h) | ClusterType::ZeroAlloc(h) if !self.p.has_data_file => {
                m.pending_decrements.push((h.0 >> cb, 1));
            }
            ClusterType::Compressed { offset, size } => {
                let first = offset >> cb;
                let last = (offset + size.max(1) - 1) >> cb;
                m.pending_decrements.push((first, last - first + 1));
            }
            _ => {}
        }
    }

    pub(super) fn apply_decrements(&self, m: &mut Meta) -> Result<()> {
        // New unlocked I/O cannot start while we hold the lock; wait for the
        // running ones, which may still target the clusters about to be freed.
        while self.unlocked_io.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        let list = std::mem::take(&mut m.pending_decrements);
        let cs = self.p.cs;
        let mut punch: Vec<(u64, u64)> = Vec::new();
        for (k, &(first, n)) in list.iter().enumerate() {
            for c in first..first + n {
                // A reference into metadata (a lying L2 entry) must not
                // free, punch or later reuse that metadata.
                let step = self
                    .guard_as(m, None, c * cs, cs, || "freeing a data cluster".into())
                    .and_then(|()| self.refcount(m, c));
                let step = step.and_then(|rc| {
                    if rc > 0 {
                        self.set_refcount(m, c, rc - 1)?;
                    }
                    Ok(rc)
                });
                match step {
                    Ok(1) => {
                        m.free_hint = m.free_hint.min(c);
                        // Freed: compressed data must not be packed into it
                        // any more (it may be reused for anything).
                        if m.compressed_tail.is_some_and(|t| t / cs == c) {
                            m.compressed_tail = None;
                        }
                        push_run(&mut punch, c);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Keep what is left for the next flush.
                        m.pending_decrements.push((c, first + n - c));
                        m.pending_decrements.extend_from_slice(&list[k + 1..]);
                        return Err(e);
                    }
                }
            }
        }
        if m.pages_lent {
            self.punch_reuse_pool(m, 0);
            self.punch_runs(&punch);
        } else {
            for run in punch {
                m.reuse_pool_clusters += run.1;
                m.reuse_pool.push_back(run);
            }
            self.punch_reuse_pool(m, m.reuse_pool_limit / cs);
        }
        Ok(())
    }

    /// How many bytes of freed clusters may stay in the file for reuse
    /// before they are punched ([`REUSE_POOL_BYTES`] unless set; 0: punch
    /// every freed cluster at once). Lowering it punches the excess now.
    pub fn set_reuse_pool_limit(&self, bytes: u64) {
        let mut m = lock(&self.meta);
        m.reuse_pool_limit = bytes;
        self.punch_reuse_pool(&mut m, bytes / self.p.cs);
    }

    /// Shrink the reuse pool to at most `keep` clusters, oldest runs first,
    /// punching the clusters of each that are still free.
    pub(super) fn punch_reuse_pool(&self, m: &mut Meta, keep: u64) {
        if m.corrupt {
            // Nothing more is written to an image marked corrupt.
            m.reuse_pool.clear();
            m.reuse_pool_clusters = 0;
            return;
        }
        while m.reuse_pool_clusters > keep || m.reuse_pool.len() > REUSE_POOL_RUNS {
            let excess = m.reuse_pool_clusters.saturating_sub(keep);
            let Some(front) = m.reuse_pool.front_mut() else {
                m.reuse_pool_clusters = 0;
                break;
            };
            // Only as much of the oldest run as needs to go (all of it when
            // there are too many runs).
            let n = if excess > 0 {
                front.1.min(excess)
            } else {
                front.1
            };
            let first = front.0;
            if n < front.1 {
                *front = (first + n, front.1 - n);
            } else {
                m.reuse_pool.pop_front();
            }
            m.reuse_pool_clusters = m.reuse_pool_clusters.saturating_sub(n);
            let mut free = Vec::new();
            for c in first..first + n {
                // A cluster reused since (or whose refcount cannot be read)
                // is left alone.
                if matches!(self.is_free(m, c), Ok(true)) {
                    push_run(&mut free, c);
                }
            }
            self.punch_runs(&free);
        }
    }

    /// Give runs of (first cluster, count) back to the file system.
    fn punch_runs(&self, runs: &[(u64, u64)]) {
        let cs = self.p.cs;
        for &(s, l) in runs {
            // Failure to punch is harmless: the clusters stay free.
            let _ = self.data.discard(s * cs, l * cs);
        }
    }
}

/// Append cluster `c` to `runs`, extending the last run when adjacent.
fn push_run(runs: &mut Vec<(u64, u64)>, c: u64) {
    match runs.last_mut() {
        Some((s, l)) if *s + *l == c => *l += 1,
        _ => runs.push((c, 1)),
    }
}

/// Most runs the reuse pool keeps (its memory: 16 bytes a run), whatever
/// the cluster size and however scattered the frees.
const REUSE_POOL_RUNS: usize = 65536;

/// Most freed bytes kept in the file for reuse before they are punched, by
/// default: enough for a reset of every zone of a small device (or many
/// zones of a large one) and the rewrite after it (see the module comment).
pub const REUSE_POOL_BYTES: u64 = 1 << 30;
