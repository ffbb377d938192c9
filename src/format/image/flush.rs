//! Flush: write back the caches in dependency order (refcounts, L2
//! tables, L1 entries), then apply the queued decrements.

use super::*;

impl Qcow2 {
    pub(super) fn flush_locked(&self, m: &mut Meta) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // Data and refcounts, then L2 tables, then L1 entries.
        self.write_back_l2_tables(m)?;
        self.store.sync()?;
        if !m.l1_dirty.is_empty() {
            let l1_off = m.header.l1_table_offset;
            let dirty: Vec<usize> = m.l1_dirty.iter().copied().collect();
            for i in dirty {
                self.guard(m, Some(Kind::ActiveL1), l1_off + i as u64 * 8, 8)?;
                self.store
                    .write_at(l1_off + i as u64 * 8, &m.l1[i].to_be_bytes())?;
                // Only a written entry stops being dirty: after a failed
                // write the rest is retried by the next flush.
                m.l1_dirty.remove(&i);
            }
            self.store.sync()?;
        }
        if !m.pending_decrements.is_empty() {
            self.apply_decrements(m)?;
        }
        Ok(())
    }

    /// Write back every cached table in dependency order and sync.
    pub fn flush(&self) -> Result<()> {
        let mut m = lock(&self.meta);
        self.flush_locked(&mut m)?;
        // Decrements applied by the first pass are written now, so a clean
        // close leaves no leaks.
        if m.rb.any_dirty() {
            self.flush_refblocks(&mut m)?;
        }
        Ok(())
    }
}
