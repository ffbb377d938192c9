//! Guest writes: in place outside the metadata lock when every cluster
//! is owned, otherwise allocate, write the data, then publish the mapping.

use super::*;

impl Qcow2 {
    /// Write guest bytes.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_from(offset, &data)
    }

    /// Write guest bytes taken from `src`: where they land in clusters of
    /// this file, `src` may put them there itself
    /// ([`Payload::write_to_file`]); else through memory.
    pub fn write_from(&self, offset: u64, src: &dyn Payload) -> Result<()> {
        self.writable()?;
        self.check_range(offset, src.len() as u64)?;
        self.write_mapped(offset, src)
    }

    /// Bytes `[at, at + len)` of `src` to host offset `host` of the data
    /// file.
    fn put(&self, src: &dyn Payload, at: usize, len: usize, host: u64) -> Result<()> {
        if let Some(f) = self.direct.as_ref().filter(|_| !self.p.has_data_file) {
            if src
                .write_to_file(at, len, std::os::fd::AsFd::as_fd(f), host)
                .map_err(FormatError::Payload)?
            {
                return Ok(());
            }
        }
        let mut r = Ok(());
        src.with_bytes(at, len, &mut |d| r = self.data.write_at(host, d))
            .map_err(FormatError::Payload)?;
        Ok(r?)
    }

    /// Write through the mapping at any offset the L1 table covers (the
    /// caller checked writability and the range).
    pub(super) fn write_mapped(&self, offset: u64, src: &dyn Payload) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut m = lock(&self.meta);
        // Fast path: every cluster already allocated and owned: write in place
        // outside the lock.
        if let Some(runs) = self.inplace_runs(&mut m, offset, src.len() as u64)? {
            for &(host, len) in &runs {
                self.guard(&mut m, None, host, len)?;
            }
            let _io = UnlockedIo::start(&self.unlocked_io);
            drop(m);
            let mut at = 0usize;
            for (host, len) in runs {
                self.put(src, at, len as usize, host)?;
                at += len as usize;
            }
            return Ok(());
        }
        self.write_slow(&mut m, offset, src)
    }

    pub(super) fn inplace_runs(
        &self,
        m: &mut Meta,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        let cs = self.p.cs;
        let cb = self.p.cluster_bits;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let gc = pos >> cb;
            let in_off = pos & (cs - 1);
            let n = (cs - in_off).min(end - pos);
            let l1i = (gc / self.p.l2_entries) as usize;
            if m.l1.get(l1i).is_none_or(|e| e & COPIED == 0) {
                return Ok(None);
            }
            let l2 = self.l2_offset(m, gc)?;
            let (w0, _) = self.l2_get(m, l2, gc % self.p.l2_entries)?;
            match decode_l2(w0, cb, false, false) {
                ClusterType::Normal(h) if w0 & COPIED != 0 && h.0 % cs == 0 => {
                    let host = h.0 + in_off;
                    match runs.last_mut() {
                        Some((s, l)) if *s + *l == host => *l += n,
                        _ => runs.push((host, n)),
                    }
                }
                _ => return Ok(None),
            }
            pos += n;
        }
        Ok(Some(runs))
    }

    /// Write with allocation: plan each cluster (allocating where needed),
    /// write the data, then publish the mappings. A failure before
    /// publishing gives the clusters allocated for it back (at the next
    /// flush) instead of leaking them; once writing began, part of them
    /// may hold some of the data, so they count as written (`file_len`)
    /// and a partial write reusing one writes it whole.
    pub(super) fn write_slow(&self, m: &mut Meta, offset: u64, src: &dyn Payload) -> Result<()> {
        let mut fresh = Vec::new();
        let mut began = false;
        let planned = self.plan_write(m, offset, src, &mut fresh);
        let written = planned.and_then(|steps| {
            began = true;
            self.write_steps(m, src, &steps)?;
            Ok(steps)
        });
        let steps = match written {
            Ok(steps) => steps,
            Err(e) => {
                for h in fresh {
                    if began {
                        m.file_len = m.file_len.max(h.0 + self.p.cs);
                    }
                    self.queue_decrement(m, ClusterType::Normal(h));
                }
                return Err(e);
            }
        };
        for st in steps {
            if let Some(e) = st.new_entry {
                self.l2_set(m, st.l2, st.gc % self.p.l2_entries, e)?;
            }
            if let Some(old) = st.old {
                self.queue_decrement(m, old);
            }
        }
        Ok(())
    }

    /// Decide where each cluster of the write goes, allocating as needed
    /// (each new cluster is recorded in `fresh` as soon as it is taken).
    fn plan_write(
        &self,
        m: &mut Meta,
        offset: u64,
        src: &dyn Payload,
        fresh: &mut Vec<HostOffset>,
    ) -> Result<Vec<Step>> {
        let cs = self.p.cs;
        let cb = self.p.cluster_bits;
        let mut steps: Vec<Step> = Vec::new();
        let mut pos = offset;
        let end = offset + src.len() as u64;
        while pos < end {
            let gc = pos >> cb;
            let in_off = pos & (cs - 1);
            let n = (cs - in_off).min(end - pos);
            let (l2, idx, w0) = self.l2_entry_for_write(m, gc)?;
            let ct = decode_l2(w0, cb, false, false);
            let owned = match ct {
                ClusterType::Normal(h) => {
                    if h.0 % cs != 0 {
                        return Err(FormatError::Corrupt(format!(
                            "Cluster allocation offset {:#x} unaligned (L2 offset: {:#x}, L2 index: {:#x})",
                            h.0, l2.0, idx
                        )));
                    }
                    w0 & COPIED != 0 || self.refcount(m, h.0 >> cb)? == 1
                }
                _ => false,
            };
            if let (true, ClusterType::Normal(h)) = (owned, ct) {
                self.guard_as(m, None, h.0, cs, || {
                    format!("guest data of L2 entry {idx} of the table at {l2}")
                })?;
                let new_entry = (w0 & COPIED == 0).then_some(h.0 | COPIED);
                steps.push(Step {
                    gc,
                    l2,
                    host: h.0 + in_off,
                    n,
                    buf: None,
                    new_entry,
                    old: None,
                });
            } else {
                let full = in_off == 0 && n == cs;
                let c = self.alloc(m)?;
                let host = c << cb;
                fresh.push(HostOffset(host));
                let base_zero = match ct {
                    ClusterType::ZeroPlain | ClusterType::ZeroAlloc(_) => true,
                    ClusterType::Unallocated => self.backing.is_none(),
                    _ => false,
                };
                let buf = if full || (base_zero && host >= m.file_len) {
                    None
                } else {
                    let mut b = self.cluster_contents(m, gc, ct)?;
                    let s = (pos - offset) as usize;
                    let part = &mut b[in_off as usize..(in_off + n) as usize];
                    src.with_bytes(s, n as usize, &mut |d| part.copy_from_slice(d))
                        .map_err(FormatError::Payload)?;
                    Some(b)
                };
                let old = match ct {
                    ClusterType::Normal(_)
                    | ClusterType::ZeroAlloc(_)
                    | ClusterType::Compressed { .. } => Some(ct),
                    _ => None,
                };
                steps.push(Step {
                    gc,
                    l2,
                    host: if buf.is_some() { host } else { host + in_off },
                    n,
                    buf,
                    new_entry: Some(host | COPIED),
                    old,
                });
            }
            pos += n;
        }
        Ok(steps)
    }

    /// Write the planned data, coalescing contiguous pieces.
    fn write_steps(&self, m: &mut Meta, src: &dyn Payload, steps: &[Step]) -> Result<()> {
        let cs = self.p.cs;
        let mut run: Option<(u64, usize, usize)> = None; // (host, data start, len)
        let mut data_pos = 0usize;
        let flush_run = |run: &mut Option<(u64, usize, usize)>| -> Result<()> {
            if let Some((h, s, l)) = run.take() {
                self.put(src, s, l, h)?;
            }
            Ok(())
        };
        let mut max_end = m.file_len;
        for st in steps {
            match &st.buf {
                Some(b) => {
                    flush_run(&mut run)?;
                    self.data.write_at(st.host, b)?;
                    max_end = max_end.max(st.host + cs);
                }
                None => {
                    let n = st.n as usize;
                    match &mut run {
                        Some((h, s, l)) if *h + *l as u64 == st.host && *s + *l == data_pos => {
                            *l += n
                        }
                        _ => {
                            flush_run(&mut run)?;
                            run = Some((st.host, data_pos, n));
                        }
                    }
                    max_end = max_end.max(st.host + st.n);
                }
            }
            data_pos += st.n as usize;
        }
        flush_run(&mut run)?;
        m.file_len = max_end;
        Ok(())
    }
}

/// One cluster of an allocating write.
struct Step {
    gc: u64,
    l2: HostOffset,
    host: u64,
    n: u64,
    // Full-cluster buffer to write instead of the caller's bytes.
    buf: Option<Vec<u8>>,
    new_entry: Option<u64>,
    old: Option<ClusterType>,
}
