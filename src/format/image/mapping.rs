//! Mapping guest ranges to host pieces, block status and the allocated
//! cluster list.

use super::*;

/// A piece of a guest range after mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Piece {
    Zero(u64),
    Unalloc {
        guest: u64,
        len: u64,
    },
    Data {
        host: u64,
        len: u64,
    },
    Compressed {
        offset: u64,
        size: u64,
        in_off: u64,
        len: u64,
    },
}

impl Qcow2 {
    pub(super) fn map_range(&self, m: &mut Meta, offset: u64, len: u64) -> Result<Vec<Piece>> {
        let cs = self.p.cs;
        let cb = self.p.cluster_bits;
        let mut out: Vec<Piece> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        let push = |out: &mut Vec<Piece>, p: Piece| {
            if let Some(last) = out.last_mut() {
                match (last, p) {
                    (Piece::Zero(a), Piece::Zero(b)) => {
                        *a += b;
                        return;
                    }
                    (Piece::Data { host, len }, Piece::Data { host: h2, len: l2 })
                        if *host + *len == h2 =>
                    {
                        *len += l2;
                        return;
                    }
                    (Piece::Unalloc { guest, len }, Piece::Unalloc { guest: g2, len: l2 })
                        if *guest + *len == g2 =>
                    {
                        *len += l2;
                        return;
                    }
                    _ => {}
                }
            }
            out.push(p);
        };
        while pos < end {
            let gc = pos >> cb;
            let in_off = pos & (cs - 1);
            let n = (cs - in_off).min(end - pos);
            let l2 = self.l2_offset(m, gc)?;
            if l2.0 == 0 {
                // No L2 table: its whole span is unallocated, skipped in one
                // step (a sparse 1 PiB image is 2M steps, not 2^34).
                let span_end = (gc / self.p.l2_entries + 1)
                    .saturating_mul(self.p.l2_entries)
                    .saturating_mul(cs);
                let n = span_end.min(end) - pos;
                push(&mut out, Piece::Unalloc { guest: pos, len: n });
                pos += n;
                continue;
            }
            let idx = gc % self.p.l2_entries;
            let (w0, w1) = self.l2_get(m, l2, idx)?;
            let ct = decode_l2(w0, cb, self.p.extended, self.p.has_data_file);
            match ct {
                ClusterType::Normal(h) | ClusterType::ZeroAlloc(h) if h.0 % cs != 0 => {
                    return Err(FormatError::Corrupt(format!(
                        "Cluster allocation offset {:#x} unaligned (L2 offset: {:#x}, L2 index: {:#x})",
                        h.0, l2.0, idx
                    )));
                }
                _ => {}
            }
            if self.p.extended {
                if let ClusterType::Compressed { offset: co, size } = ct {
                    if w1 != 0 {
                        return Err(FormatError::Corrupt(format!(
                            "compressed cluster at guest offset {pos:#x} has a non-zero subcluster bitmap"
                        )));
                    }
                    push(
                        &mut out,
                        Piece::Compressed {
                            offset: co,
                            size,
                            in_off,
                            len: n,
                        },
                    );
                    pos += n;
                    continue;
                }
                // Walk subclusters.
                let sc = cs / SUBCLUSTERS as u64;
                let host = match ct {
                    ClusterType::Normal(h) => Some(h.0),
                    _ => None,
                };
                let mut p2 = pos;
                while p2 < pos + n {
                    let so = p2 & (cs - 1);
                    let si = (so / sc) as u32;
                    let m2 = (sc - so % sc).min(pos + n - p2);
                    match subcluster_state(w1, si) {
                        SubclusterState::Alloc => match host {
                            Some(h) => push(&mut out, Piece::Data { host: h + so, len: m2 }),
                            None => {
                                return Err(FormatError::Corrupt(format!(
                                    "subcluster {si} at guest offset {p2:#x} is allocated in an unallocated cluster"
                                )))
                            }
                        },
                        SubclusterState::Zero => push(&mut out, Piece::Zero(m2)),
                        SubclusterState::Unallocated => {
                            push(&mut out, Piece::Unalloc { guest: p2, len: m2 })
                        }
                        SubclusterState::Invalid => {
                            return Err(FormatError::Corrupt(format!(
                                "subcluster {si} at guest offset {p2:#x} is both allocated and zero"
                            )))
                        }
                    }
                    p2 += m2;
                }
                pos += n;
                continue;
            }
            let piece = match ct {
                ClusterType::Unallocated => Piece::Unalloc { guest: pos, len: n },
                ClusterType::ZeroPlain | ClusterType::ZeroAlloc(_) => Piece::Zero(n),
                ClusterType::Normal(h) => Piece::Data {
                    host: h.0 + in_off,
                    len: n,
                },
                ClusterType::Compressed { offset: co, size } => Piece::Compressed {
                    offset: co,
                    size,
                    in_off,
                    len: n,
                },
            };
            push(&mut out, piece);
            pos += n;
        }
        Ok(out)
    }

    /// Allocation status of a guest range: runs of (length, allocated here,
    /// reads as zero).
    ///
    /// Bounded work and memory whatever the range: it is mapped one L2
    /// table's span at a time (the metadata lock is released in between),
    /// and the answer stops, possibly short of `len`, once it holds
    /// [`MAX_STATUS_RUNS`] runs; the caller asks again for the rest.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<(u64, bool, bool)>> {
        self.check_range(offset, len)?;
        let span = self.p.l2_entries.saturating_mul(self.p.cs);
        let end = offset + len;
        let mut pos = offset;
        let mut out: Vec<(u64, bool, bool)> = Vec::new();
        while pos < end && out.len() < MAX_STATUS_RUNS {
            let mut pieces = Vec::new();
            {
                let mut m = lock(&self.meta);
                // Runs of L1 entries without a table: a few ns each, so a
                // sparse 1 PiB image (2M entries) is skipped in one go.
                let from = pos;
                while pos < end && self.l2_offset(&m, pos >> self.p.cluster_bits)?.0 == 0 {
                    pos = (pos / span).saturating_add(1).saturating_mul(span).min(end);
                }
                if pos > from {
                    pieces.push(Piece::Unalloc {
                        guest: from,
                        len: pos - from,
                    });
                }
                if pos < end {
                    let stop = (pos / span).saturating_add(1).saturating_mul(span).min(end);
                    pieces.extend(self.map_range(&mut m, pos, stop - pos)?);
                    pos = stop;
                }
            }
            self.status_runs(pieces, &mut out);
        }
        Ok(out)
    }

    fn status_runs(&self, pieces: Vec<Piece>, out: &mut Vec<(u64, bool, bool)>) {
        let has_backing = self.backing.is_some();
        for p in pieces {
            let (l, alloc, zero) = match p {
                Piece::Zero(l) => (l, true, true),
                Piece::Unalloc { len, .. } => (len, false, !has_backing),
                Piece::Data { len, .. } => (len, true, false),
                Piece::Compressed { len, .. } => (len, true, false),
            };
            match out.last_mut() {
                Some(last) if last.1 == alloc && last.2 == zero => last.0 += l,
                _ => out.push((l, alloc, zero)),
            }
        }
    }

    /// Host clusters of a guest range that are allocated (for `check`'s
    /// stale-data scan and tests): (guest offset, host offset) per cluster.
    pub fn allocated_clusters(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        self.check_range(offset, len)?;
        let cs = self.p.cs;
        let cb = self.p.cluster_bits;
        let mut m = lock(&self.meta);
        let mut out = Vec::new();
        let mut gc = offset >> cb;
        while gc << cb < offset + len {
            let l2 = self.l2_offset(&m, gc)?;
            if l2.0 != 0 {
                let (w0, _) = self.l2_get(&mut m, l2, gc % self.p.l2_entries)?;
                match decode_l2(w0, cb, self.p.extended, self.p.has_data_file) {
                    ClusterType::Normal(h) | ClusterType::ZeroAlloc(h) => out.push((gc * cs, h.0)),
                    ClusterType::Compressed { offset, .. } => out.push((gc * cs, offset)),
                    _ => {}
                }
            }
            gc += 1;
        }
        Ok(out)
    }
}
