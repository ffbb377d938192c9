//! Cluster allocation and the deferred refcount decrements that free
//! clusters once their last reference is durably gone.

use super::*;

impl Qcow2 {
    /// Allocate one cluster with refcount 1: the lowest free one, so a
    /// sequential stream gets consecutive clusters at the end of the file.
    pub(super) fn alloc(&self, m: &mut Meta) -> Result<u64> {
        self.alloc_for(m, None)
    }

    /// [`Qcow2::alloc`] for a metadata `table`: refcounts that offer
    /// cluster 0 (the header) get QEMU's own message for that lie.
    pub(super) fn alloc_for(&self, m: &mut Meta, table: Option<&str>) -> Result<u64> {
        let mut c = m.free_hint;
        while c < m.alloc_end && !self.is_free(m, c)? {
            c += 1;
        }
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
        m.free_hint = c + 1;
        Ok(c)
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
                        match punch.last_mut() {
                            Some((s, l)) if *s + *l == c => *l += 1,
                            _ => punch.push((c, 1)),
                        }
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
        for (s, l) in punch {
            // Give the space back; failure to punch is harmless.
            let _ = self.data.discard(s * cs, l * cs);
        }
        Ok(())
    }
}
