//! The L2 table cache: loading, lookups, updates and write-back of L2
//! tables (after the refcounts they depend on).

use super::*;

impl Qcow2 {
    pub(super) fn validate_table_offset(&self, off: u64, what: &str, owner: &str) -> Result<()> {
        if off % self.p.cs != 0 || off >= MAX_HOST_OFFSET {
            return Err(FormatError::Corrupt(format!(
                "{what} offset {off:#x} ({owner}) is not cluster aligned"
            )));
        }
        Ok(())
    }

    /// Write back every dirty L2 table, after making the refcounts they
    /// depend on durable (one sync for all of them, not one per table).
    pub(super) fn write_back_l2_tables(&self, m: &mut Meta) -> Result<()> {
        self.flush_refblocks(m)?;
        for off in m.l2.dirty() {
            self.guard(m, Some(Kind::ActiveL2), off.0, self.p.cs)?;
            if let Some(d) = m.l2.peek(off) {
                self.store.write_at(off.0, d)?;
                m.file_len = m.file_len.max(off.0 + self.p.cs);
            }
            m.l2.mark_clean(off);
        }
        Ok(())
    }

    pub(super) fn make_room_l2(&self, m: &mut Meta) -> Result<()> {
        while m.l2.is_full() {
            let Some((victim, dirty)) = m.l2.victim() else {
                break;
            };
            if dirty {
                // Write back all dirty tables at once, so the next evictions
                // find clean ones and the refcount barrier is paid rarely.
                self.write_back_l2_tables(m)?;
            }
            m.l2.remove(victim);
        }
        Ok(())
    }

    pub(super) fn load_l2(&self, m: &mut Meta, off: HostOffset) -> Result<()> {
        if m.l2.contains(off) {
            return Ok(());
        }
        self.make_room_l2(m)?;
        let mut buf = vec![0u8; self.p.cs as usize];
        if off.0 + self.p.cs > m.file_len {
            return Err(FormatError::Corrupt(format!(
                "L2 table at {off} lies past the end of the file ({} bytes)",
                m.file_len
            )));
        }
        self.store.read_at(off.0, &mut buf)?;
        m.l2.insert(off, buf, false);
        Ok(())
    }

    pub(super) fn l2_get(&self, m: &mut Meta, off: HostOffset, idx: u64) -> Result<(u64, u64)> {
        self.load_l2(m, off)?;
        let t =
            m.l2.get(off)
                .ok_or_else(|| FormatError::Corrupt("L2 cache miss".into()))?;
        let es = if self.p.extended { 16 } else { 8 };
        let i = (idx * es) as usize;
        let w0 = be64(t, i);
        let w1 = if self.p.extended { be64(t, i + 8) } else { 0 };
        Ok((w0, w1))
    }

    pub(super) fn l2_set(&self, m: &mut Meta, off: HostOffset, idx: u64, val: u64) -> Result<()> {
        self.load_l2(m, off)?;
        let t =
            m.l2.get_mut(off)
                .ok_or_else(|| FormatError::Corrupt("L2 cache miss".into()))?;
        let i = (idx * 8) as usize;
        t[i..i + 8].copy_from_slice(&val.to_be_bytes());
        Ok(())
    }

    /// L2 table offset for guest cluster `gc` (0 if none).
    pub(super) fn l2_offset(&self, m: &Meta, gc: u64) -> Result<HostOffset> {
        let l1i = (gc / self.p.l2_entries) as usize;
        let e = m.l1.get(l1i).copied().unwrap_or(0);
        if e & L1_RESERVED != 0 && !self.read_only {
            return Err(FormatError::Corrupt(format!(
                "L1 entry {l1i} has reserved bits set ({e:#x})"
            )));
        }
        let off = l1_l2_offset(e);
        if off.0 != 0 {
            self.validate_table_offset(off.0, "L2 table", &format!("L1 index {l1i}"))?;
        }
        Ok(off)
    }
}
