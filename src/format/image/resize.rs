//! Changing the virtual size (QEMU's qcow2 truncate) and the VM-state area
//! past the end of the virtual disk; both may need a larger L1 table.
//!
//! Ordering: a new L1 table (and the refcounts of its clusters) is durable
//! before the header points at it, the header switches table and size in
//! separate single-sector writes (either state is a valid image), and the
//! old table is freed only after the switch.

use super::discard::ClearMode;
use super::*;

/// Byte offset of the header's `size` field (u64).
const SIZE_FIELD: u64 = 24;

impl Qcow2 {
    /// Grow or shrink the virtual disk to `new_size` bytes, as QEMU's
    /// `truncate` with preallocation off: growing reads as zeroes in the new
    /// range (also where a longer backing image would show through);
    /// shrinking frees the clusters past the new end.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.writable()?;
        if self.zoned.is_some() {
            return Err(FormatError::Unsupported(
                "a zoned image cannot be resized (its zone layout is fixed)".into(),
            ));
        }
        if !self.snapshots.is_empty() {
            return Err(FormatError::Unsupported(
                "Can't resize an image which has snapshots".into(),
            ));
        }
        if new_size % 512 != 0 {
            return Err(FormatError::BadOption(
                "The new size must be a multiple of 512".into(),
            ));
        }
        let old = self.size();
        let entry = if self.p.extended { 16 } else { 8 };
        let need = super::super::header::required_l1_entries(new_size, self.p.cluster_bits, entry);
        if need * 8 > super::super::header::MAX_L1_BYTES {
            return Err(FormatError::BadOption(format!(
                "File too large: a virtual size of {new_size} bytes needs an L1 table of {need} entries (at most {})",
                super::super::header::MAX_L1_BYTES / 8
            )));
        }
        if new_size == old {
            return Ok(());
        }
        if new_size < old {
            // Free what lies past the new end (a partial last cluster keeps
            // its allocation and is zeroed), then publish the size.
            self.clear_range(new_size, old - new_size, ClearMode::Unallocate)?;
            let mut m = lock(&self.meta);
            self.flush_locked(&mut m)?;
            self.write_size(&mut m, new_size)?;
            return Ok(());
        }
        {
            let mut m = lock(&self.meta);
            if (m.l1.len() as u64) < need {
                self.grow_l1(&mut m, need)?;
            }
        }
        // The new range must read as zeroes: whatever a shrink left in the
        // last partial cluster, and a longer backing image, must not show.
        let cs = self.p.cs;
        let backing = self.backing.as_ref().map_or(0, |b| b.guest_size());
        let zero_end = new_size
            .min(old.div_ceil(cs) * cs)
            .max(new_size.min(backing));
        self.size.store(new_size, Ordering::Release);
        if zero_end > old {
            if let Err(e) = self.clear_range(old, zero_end - old, ClearMode::Zero) {
                self.size.store(old, Ordering::Release);
                return Err(e);
            }
        }
        let mut m = lock(&self.meta);
        // The zeroes are durable before the size that exposes them.
        let r = self
            .flush_locked(&mut m)
            .and_then(|()| self.write_size(&mut m, new_size));
        if r.is_err() {
            self.size.store(old, Ordering::Release);
        }
        r
    }

    fn write_size(&self, m: &mut Meta, size: u64) -> Result<()> {
        self.guard(m, Some(Kind::Header), SIZE_FIELD, 8)?;
        self.store.write_at(SIZE_FIELD, &size.to_be_bytes())?;
        self.store.sync()?;
        m.header.size = size;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Replace the L1 table by one of at least `min_entries` entries at the
    /// end of the file (QEMU grows by half again, as here).
    pub(super) fn grow_l1(&self, m: &mut Meta, min_entries: u64) -> Result<()> {
        let cs = self.p.cs;
        let max = super::super::header::MAX_L1_BYTES / 8;
        let old_len = m.l1.len() as u64;
        if min_entries > max {
            return Err(FormatError::NoSpace(format!(
                "the L1 table would need {min_entries} entries (at most {max})"
            )));
        }
        let entries = min_entries.max(old_len + old_len / 2).min(max);
        // L2 tables and L1 entries written so far become durable first: the
        // new table is a copy of a clean in-memory table.
        self.flush_locked(m)?;
        let k = (entries * 8).div_ceil(cs);
        // Every cluster of [t, t+k) needs a refblock before the range is
        // reserved; creating one moves the end of the file, so retry.
        let t = loop {
            let t = m.alloc_end;
            let missing = (t..t + k).find_map(|c| match self.refblock_offset(m, c) {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok(c)),
                Err(e) => Some(Err(e)),
            });
            match missing {
                None => break t,
                Some(Err(e)) => return Err(e),
                Some(Ok(c)) => {
                    self.new_refblock(m, c / self.p.rb_entries, u64::MAX)?;
                }
            }
        };
        if (t + k) << self.p.cluster_bits > MAX_HOST_OFFSET {
            return Err(FormatError::NoSpace(
                "image file would exceed 2^56 bytes".into(),
            ));
        }
        let new_off = t * cs;
        self.add_region(m, Region::ActiveL1, new_off, entries * 8)?;
        m.alloc_end = t + k;
        for c in t..t + k {
            self.set_refcount(m, c, 1)?;
        }
        self.flush_refblocks(m)?;
        let mut raw = vec![0u8; (k * cs) as usize];
        for (i, e) in m.l1.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.store.write_at(new_off, &raw)?;
        m.file_len = m.file_len.max((t + k) * cs);
        self.store.sync()?;
        // Switch l1_size and l1_table_offset in one write.
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(entries as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        self.guard(m, Some(Kind::Header), field::L1_SIZE, 12)?;
        self.store.write_at(field::L1_SIZE, &hdr)?;
        self.store.sync()?;
        let old_off = m.header.l1_table_offset;
        let old_bytes = m.header.l1_size as u64 * 8;
        m.header.l1_size = entries as u32;
        m.header.l1_table_offset = new_off;
        m.l1.resize(entries as usize, 0);
        if old_bytes > 0 {
            m.overlap.remove(old_off);
            // The old table is unreferenced now that the header is durable.
            m.pending_decrements
                .push((old_off / cs, old_bytes.div_ceil(cs)));
        }
        Ok(())
    }

    /// Where QEMU keeps VM state: the first L1 span past the virtual disk.
    pub fn vmstate_offset(&self) -> u64 {
        let per_l1 = self.p.cs.saturating_mul(self.p.l2_entries);
        self.size().div_ceil(per_l1).saturating_mul(per_l1)
    }

    fn vmstate_range(&self, pos: u64, len: u64) -> Result<u64> {
        let base = self.vmstate_offset();
        let max_guest = (super::super::header::MAX_L1_BYTES / 8)
            .saturating_mul(self.p.cs)
            .saturating_mul(self.p.l2_entries);
        match base.checked_add(pos).and_then(|s| s.checked_add(len)) {
            Some(end) if end <= max_guest => Ok(base + pos),
            _ => Err(FormatError::OutOfRange {
                offset: pos,
                len,
                size: max_guest.saturating_sub(base),
            }),
        }
    }

    /// Write `data` at `pos` of the VM-state area (qemu-io `write -b`).
    pub fn write_vmstate(&self, pos: u64, data: &[u8]) -> Result<()> {
        self.writable()?;
        if self.zoned.is_some() {
            return Err(FormatError::Unsupported(
                "a zoned image has no VM-state area".into(),
            ));
        }
        let at = self.vmstate_range(pos, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let last = (at + data.len() as u64 - 1) >> self.p.cluster_bits;
        let need = last / self.p.l2_entries + 1;
        {
            let mut m = lock(&self.meta);
            if (m.l1.len() as u64) < need {
                self.grow_l1(&mut m, need)?;
            }
        }
        self.write_mapped(at, &data)
    }

    /// Read from `pos` of the VM-state area (qemu-io `read -b`); what was
    /// never written reads as zeroes.
    pub fn read_vmstate(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.vmstate_range(pos, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.read_mapped(at, buf, true)
    }
}
