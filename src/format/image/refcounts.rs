//! Refcounts: the refcount block cache, reading and setting a cluster's
//! refcount, new refcount blocks and growing the refcount table.

use super::*;

impl Qcow2 {
    pub(super) fn flush_refblocks(&self, m: &mut Meta) -> Result<()> {
        let dirty = m.rb.dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        for off in dirty {
            self.guard(m, Some(Kind::RefcountBlock), off.0, self.p.cs)?;
            if let Some(d) = m.rb.peek(off) {
                self.store.write_at(off.0, d)?;
                m.file_len = m.file_len.max(off.0 + self.p.cs);
            }
            m.rb.mark_clean(off);
        }
        self.store.sync()?;
        Ok(())
    }

    pub(super) fn load_rb(&self, m: &mut Meta, off: HostOffset) -> Result<()> {
        if m.rb.contains(off) {
            return Ok(());
        }
        while m.rb.is_full() {
            let Some((victim, dirty)) = m.rb.victim() else {
                break;
            };
            if dirty {
                self.guard(m, Some(Kind::RefcountBlock), victim.0, self.p.cs)?;
                if let Some(d) = m.rb.peek(victim) {
                    self.store.write_at(victim.0, d)?;
                }
            }
            m.rb.remove(victim);
        }
        let mut buf = vec![0u8; self.p.cs as usize];
        if off.0 + self.p.cs > m.file_len {
            self.store.read_at_zero_fill(off.0, &mut buf)?;
        } else {
            self.store.read_at(off.0, &mut buf)?;
        }
        m.rb.insert(off, buf, false);
        Ok(())
    }

    pub(super) fn refblock_offset(&self, m: &Meta, cluster: u64) -> Result<Option<HostOffset>> {
        let rti = (cluster / self.p.rb_entries) as usize;
        let Some(&e) = m.reftable.get(rti) else {
            return Ok(None);
        };
        let off = e & !0x1ff;
        if off == 0 {
            return Ok(None);
        }
        self.validate_table_offset(off, "refcount block", &format!("reftable index {rti}"))?;
        Ok(Some(HostOffset(off)))
    }

    /// Refcount of host cluster `c`.
    pub(super) fn refcount(&self, m: &mut Meta, c: u64) -> Result<u64> {
        let Some(off) = self.refblock_offset(m, c)? else {
            return Ok(0);
        };
        self.load_rb(m, off)?;
        let b =
            m.rb.get(off)
                .ok_or_else(|| FormatError::Corrupt("refblock cache miss".into()))?;
        Ok(refcount::get(
            b,
            self.p.refcount_order,
            (c % self.p.rb_entries) as usize,
        ))
    }

    pub(super) fn set_refcount(&self, m: &mut Meta, c: u64, v: u64) -> Result<()> {
        if v > refcount::max_value(self.p.refcount_order) {
            return Err(FormatError::Corrupt(format!(
                "refcount of cluster {c} would overflow the {}-bit width",
                1u32 << self.p.refcount_order
            )));
        }
        let off = match self.refblock_offset(m, c)? {
            Some(o) => o,
            None => self.new_refblock(m, c / self.p.rb_entries, c)?,
        };
        self.load_rb(m, off)?;
        let b =
            m.rb.get_mut(off)
                .ok_or_else(|| FormatError::Corrupt("refblock cache miss".into()))?;
        refcount::set(
            b,
            self.p.refcount_order,
            (c % self.p.rb_entries) as usize,
            v,
        );
        Ok(())
    }

    /// Whether cluster `c` is free for allocation.
    pub(super) fn is_free(&self, m: &mut Meta, c: u64) -> Result<bool> {
        if c >= m.alloc_end {
            return Ok(true);
        }
        Ok(self.refcount(m, c)? == 0)
    }

    /// Create the refblock for reftable index `rti`, placing it inside its
    /// own range (so it describes itself) at a cluster other than
    /// `reserved`. Every cluster of a range without a refblock is free, so
    /// no search (and no recursion into other ranges) is needed.
    pub(super) fn new_refblock(&self, m: &mut Meta, rti: u64, reserved: u64) -> Result<HostOffset> {
        let first = rti * self.p.rb_entries;
        if rti as usize >= m.reftable.len() {
            self.grow_reftable(m, rti + 1, reserved)?;
            // The new table may have brought a block for this range along.
            if let Some(o) = self.refblock_offset(m, first)? {
                return Ok(o);
            }
        }
        let b = if first != reserved { first } else { first + 1 };
        if (b + 1) << self.p.cluster_bits > MAX_HOST_OFFSET {
            return Err(FormatError::NoSpace(
                "image file would exceed 2^56 bytes".into(),
            ));
        }
        let off = HostCluster(b).offset(self.p.cluster_bits);
        let mut block = vec![0u8; self.p.cs as usize];
        refcount::set(&mut block, self.p.refcount_order, (b - first) as usize, 1);
        self.add_region(m, Region::RefcountBlock(rti), off.0, self.p.cs)?;
        m.alloc_end = m.alloc_end.max(b + 1);
        // The block is durable before the reftable points at it.
        self.store.write_at(off.0, &block)?;
        m.file_len = m.file_len.max(off.0 + self.p.cs);
        self.store.sync()?;
        m.reftable[rti as usize] = off.0;
        let rt_off = m.header.refcount_table_offset + rti * 8;
        self.guard(m, Some(Kind::RefcountTable), rt_off, 8)?;
        self.store.write_at(rt_off, &off.0.to_be_bytes())?;
        self.store.sync()?;
        m.rb.remove(off);
        Ok(off)
    }

    /// Replace the refcount table by a larger one at the end of the file.
    /// The new table goes past both the end of the file and `reserved` (the
    /// cluster being allocated when the table ran out).
    pub(super) fn grow_reftable(
        &self,
        m: &mut Meta,
        min_entries: u64,
        reserved: u64,
    ) -> Result<()> {
        let cs = self.p.cs;
        let rbe = self.p.rb_entries;
        let old_len = m.reftable.len() as u64;
        let mut entries = min_entries.max(old_len * 2).max(cs / 8);
        let t = m.alloc_end.max(reserved + 1);
        let (k, newblocks) = loop {
            let k = (entries * 8).div_ceil(cs);
            // Refblocks needed to cover [t, t+k+nb).
            let mut nb = 0u64;
            loop {
                let end = t + k + nb;
                let mut need = 0;
                let mut idx = t / rbe;
                while idx * rbe < end {
                    let have = (idx as usize) < m.reftable.len() && m.reftable[idx as usize] != 0;
                    if !have {
                        need += 1;
                    }
                    idx += 1;
                }
                if need == nb {
                    break;
                }
                nb = need;
            }
            let last_idx = (t + k + nb - 1) / rbe;
            if last_idx < entries {
                let mut v = Vec::new();
                let mut idx = t / rbe;
                while idx * rbe < t + k + nb {
                    let have = (idx as usize) < m.reftable.len() && m.reftable[idx as usize] != 0;
                    if !have {
                        v.push(idx);
                    }
                    idx += 1;
                }
                break (k, v);
            }
            entries = last_idx + 1;
        };
        if k * cs > crate::format::header::MAX_REFTABLE_BYTES {
            return Err(FormatError::NoSpace(
                "the refcount table would exceed 8 MiB".into(),
            ));
        }
        let nb = newblocks.len() as u64;
        if (t + k + nb) << self.p.cluster_bits > MAX_HOST_OFFSET {
            return Err(FormatError::NoSpace(
                "image file would exceed 2^56 bytes".into(),
            ));
        }
        self.add_region(m, Region::RefcountTable, t * cs, k * cs)?;
        for (j, &idx) in newblocks.iter().enumerate() {
            self.add_region(m, Region::RefcountBlock(idx), (t + k + j as u64) * cs, cs)?;
        }
        // Build the new refblocks: they count the new table and themselves.
        let mut table: Vec<u64> = m.reftable.clone();
        table.resize((k * cs / 8) as usize, 0);
        for (j, &idx) in newblocks.iter().enumerate() {
            let bc = t + k + j as u64;
            let mut block = vec![0u8; cs as usize];
            for c in t..t + k + nb {
                if c / rbe == idx {
                    refcount::set(&mut block, self.p.refcount_order, (c % rbe) as usize, 1);
                }
            }
            self.store.write_at(bc * cs, &block)?;
            table[idx as usize] = bc * cs;
        }
        // Existing refblocks also count the new clusters falling into them.
        for c in t..t + k + nb {
            let idx = (c / rbe) as usize;
            if idx < m.reftable.len() && m.reftable[idx] != 0 {
                self.set_refcount(m, c, 1)?;
            }
        }
        self.flush_refblocks(m)?;
        let mut raw = Vec::with_capacity(table.len() * 8);
        for e in &table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.store.write_at(t * cs, &raw)?;
        m.file_len = m.file_len.max((t + k + nb) * cs);
        self.store.sync()?;
        // Switch the header over in one write.
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&(t * cs).to_be_bytes());
        hdr[8..].copy_from_slice(&(k as u32).to_be_bytes());
        self.guard(m, Some(Kind::Header), field::REFTABLE_OFFSET, 12)?;
        self.store.write_at(field::REFTABLE_OFFSET, &hdr)?;
        self.store.sync()?;
        let old_off = m.header.refcount_table_offset;
        let old_clusters = m.header.refcount_table_clusters as u64;
        m.header.refcount_table_offset = t * cs;
        m.header.refcount_table_clusters = k as u32;
        m.reftable = table;
        m.alloc_end = m.alloc_end.max(t + k + nb);
        if old_clusters > 0 {
            m.overlap.remove(old_off);
        }
        // The old table is unreferenced now that the header is durable.
        if old_clusters > 0 {
            m.pending_decrements.push((old_off / cs, old_clusters));
        }
        Ok(())
    }
}
