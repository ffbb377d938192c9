//! Copy-on-write: making an L2 table writable (new or copied from a
//! snapshot) and reading the old contents of a cluster being replaced.

use super::*;

impl Qcow2 {
    /// The writable L2 table of guest cluster `gc`, the entry's index in it
    /// and its current first word, refused when an uncompressed entry has
    /// reserved bits set (the entry cannot be trusted as the old mapping).
    pub(super) fn l2_entry_for_write(
        &self,
        m: &mut Meta,
        gc: u64,
    ) -> Result<(HostOffset, u64, u64)> {
        let l2 = self.l2_for_write(m, gc)?;
        let idx = gc % self.p.l2_entries;
        let (w0, _) = self.l2_get(m, l2, idx)?;
        if w0 & COMPRESSED == 0 && w0 & L2_RESERVED != 0 {
            return Err(FormatError::Corrupt(format!(
                "L2 entry {idx} of the table at {l2} has reserved bits set ({w0:#x})"
            )));
        }
        Ok((l2, idx, w0))
    }

    /// L2 table for writing guest cluster `gc`: allocates a new table or
    /// copies a shared one.
    pub(super) fn l2_for_write(&self, m: &mut Meta, gc: u64) -> Result<HostOffset> {
        let l1i = (gc / self.p.l2_entries) as usize;
        if l1i >= m.l1.len() {
            return Err(FormatError::Corrupt(format!(
                "guest cluster {gc} is beyond the L1 table ({} entries)",
                m.l1.len()
            )));
        }
        let e = m.l1[l1i];
        let off = self.l2_offset(m, gc)?;
        if off.0 == 0 {
            let c = self.alloc_for(m, Some("L2 table"))?;
            let new = HostCluster(c).offset(self.p.cluster_bits);
            self.add_region(m, Region::ActiveL2(l1i as u64), new.0, self.p.cs)?;
            self.make_room_l2(m)?;
            m.l2.insert(new, vec![0u8; self.p.cs as usize], true);
            m.l1[l1i] = new.0 | COPIED;
            m.l1_dirty.insert(l1i);
            return Ok(new);
        }
        if e & COPIED != 0 {
            return Ok(off);
        }
        let rc = self.refcount(m, off.0 >> self.p.cluster_bits)?;
        if rc == 1 {
            m.l1[l1i] = off.0 | COPIED;
            m.l1_dirty.insert(l1i);
            return Ok(off);
        }
        // Shared with a snapshot: copy the table.
        self.load_l2(m, off)?;
        let mut copy = m.l2.peek(off).map(<[u8]>::to_vec).unwrap_or_default();
        for i in 0..self.p.l2_entries as usize {
            let w = be64(&copy, i * 8);
            copy[i * 8..i * 8 + 8].copy_from_slice(&(w & !COPIED).to_be_bytes());
        }
        let c = self.alloc(m)?;
        let new = HostCluster(c).offset(self.p.cluster_bits);
        // The old table stays a snapshot's (inactive L2, not tracked).
        m.overlap.remove(off.0);
        self.add_region(m, Region::ActiveL2(l1i as u64), new.0, self.p.cs)?;
        self.make_room_l2(m)?;
        m.l2.insert(new, copy, true);
        m.l1[l1i] = new.0 | COPIED;
        m.l1_dirty.insert(l1i);
        m.pending_decrements.push((off.0 >> self.p.cluster_bits, 1));
        Ok(new)
    }

    /// Current contents of one guest cluster (for copy-on-write).
    pub(super) fn cluster_contents(
        &self,
        m: &mut Meta,
        gc: u64,
        ct: ClusterType,
    ) -> Result<Vec<u8>> {
        let cs = self.p.cs;
        let mut buf = vec![0u8; cs as usize];
        match ct {
            ClusterType::ZeroPlain | ClusterType::ZeroAlloc(_) => {}
            ClusterType::Unallocated => {
                if let Some(b) = &self.backing {
                    b.read_guest(gc * cs, &mut buf)?;
                }
            }
            ClusterType::Normal(h) => self.read_data(h.0, &mut buf)?,
            ClusterType::Compressed { offset, size } => buf = self.read_compressed(offset, size)?,
        }
        let _ = m;
        Ok(buf)
    }
}
