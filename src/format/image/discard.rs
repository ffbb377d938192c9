//! Write-zeroes, discard and deallocation of guest ranges.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClearMode {
    Zero,
    Discard,
    Unallocate,
}

impl Qcow2 {
    /// How a range of whole clusters should end up.
    pub(super) fn set_whole_clusters(
        &self,
        m: &mut Meta,
        first_gc: u64,
        count: u64,
        mode: ClearMode,
    ) -> Result<()> {
        let cb = self.p.cluster_bits;
        for gc in first_gc..first_gc + count {
            let l2 = self.l2_offset(m, gc)?;
            let idx = gc % self.p.l2_entries;
            let cur = if l2.0 == 0 {
                ClusterType::Unallocated
            } else {
                let (w0, _) = self.l2_get(m, l2, idx)?;
                decode_l2(w0, cb, false, false)
            };
            let want_zero_flag = match mode {
                ClearMode::Zero => true,
                ClearMode::Unallocate => false,
                ClearMode::Discard => self.backing.is_some() || m.header.backing_file.is_some(),
            };
            let target = if want_zero_flag { ZERO } else { 0 };
            let already = match cur {
                ClusterType::Unallocated => target == 0 || (l2.0 == 0 && !want_zero_flag),
                ClusterType::ZeroPlain => target == ZERO,
                _ => false,
            };
            if already {
                continue;
            }
            if cur == ClusterType::Unallocated && target == 0 {
                continue;
            }
            let l2w = self.l2_for_write(m, gc)?;
            self.l2_set(m, l2w, idx, target)?;
            self.queue_decrement(m, cur);
        }
        Ok(())
    }

    pub(super) fn clear_range(&self, offset: u64, len: u64, mode: ClearMode) -> Result<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let cs = self.p.cs;
        let end = offset + len;
        let first_full = offset.div_ceil(cs) * cs;
        let last_full = end / cs * cs;
        // Partial head/tail: discard leaves them; zeroing writes zeroes.
        let partial: Vec<(u64, u64)> = if first_full >= last_full {
            vec![(offset, len)]
        } else {
            let mut v = Vec::new();
            if offset < first_full {
                v.push((offset, first_full - offset));
            }
            if last_full < end {
                v.push((last_full, end - last_full));
            }
            v
        };
        if mode != ClearMode::Discard {
            for (o, l) in &partial {
                if first_full >= last_full || *o != first_full {
                    self.zero_partial(*o, *l)?;
                }
            }
        }
        if first_full < last_full {
            let mut m = lock(&self.meta);
            self.set_whole_clusters(&mut m, first_full / cs, (last_full - first_full) / cs, mode)?;
        }
        Ok(())
    }

    pub(super) fn zero_partial(&self, offset: u64, len: u64) -> Result<()> {
        // Skip work when the range already reads as zero.
        let st = self.block_status(offset, len)?;
        let covered: u64 = st.iter().map(|r| r.0).sum();
        if covered == len && st.iter().all(|&(_, _, zero)| zero) {
            return Ok(());
        }
        let z = vec![0u8; len as usize];
        self.write(offset, &z)
    }

    /// Make a range read as zero (zero flag on whole clusters, written zeroes
    /// at the unaligned edges); whole clusters lose their host cluster.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.clear_range(offset, len, ClearMode::Zero)
    }

    /// Discard: whole clusters are deallocated (they read as zero, or as
    /// zero-flagged when a backing file would otherwise show through);
    /// partial clusters are left alone.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.clear_range(offset, len, ClearMode::Discard)
    }

    /// Make a range read as zero and free every whole cluster in it (the
    /// zone engine's reset and finish).
    pub fn deallocate(&self, offset: u64, len: u64) -> Result<()> {
        self.clear_range(offset, len, ClearMode::Unallocate)
    }
}
