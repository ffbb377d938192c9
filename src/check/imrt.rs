//! The in-memory refcount table (IMRT): the reference count check computes
//! for every host cluster, stored with the image's own entry width so that a
//! slice of it is a valid refblock (the rebuild writes slices directly).

use super::errno::{Errno, ENOMEM};
use crate::format::refcount;

/// Refcount entry `i` of a block (inlined fast paths for whole-byte widths;
/// sub-byte widths go through the format layer).
#[inline(always)]
pub(crate) fn rc_get(b: &[u8], order: u32, i: usize) -> u64 {
    match order {
        4 => u16::from_be_bytes([b[2 * i], b[2 * i + 1]]) as u64,
        3 => b[i] as u64,
        _ => refcount::get(b, order, i),
    }
}

#[inline(always)]
pub(crate) fn rc_set(b: &mut [u8], order: u32, i: usize, v: u64) {
    match order {
        4 => b[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        3 => b[i] = v as u8,
        _ => refcount::set(b, order, i, v),
    }
}

/// Borrowed counts of an [`Imrt`]: whoever increments through `data`
/// sets `raised` when a count was not zero before.
pub(crate) struct CountsMut<'a> {
    pub data: &'a mut [u8],
    pub order: u32,
    pub max: u64,
    pub raised: &'a mut bool,
}

/// Computed reference counts, grown in whole clusters like QEMU's.
#[derive(Debug)]
pub(crate) struct Imrt {
    order: u32,
    cs: u64,
    data: Vec<u8>,
    max: u64,
    /// Number of clusters covered (QEMU's `nb_clusters`).
    pub n: u64,
    /// Whether any count was raised from a non-zero value (some cluster
    /// has more than one reference): the fused COPIED-flag check is exact
    /// only when none was.
    raised: bool,
}

impl Imrt {
    fn bytes_for(&self, n: u64) -> u64 {
        ((n << self.order).div_ceil(8)).div_ceil(self.cs) * self.cs
    }

    /// A zeroed table for `n` clusters.
    pub fn new(order: u32, cs: u64, n: u64) -> Result<Self, Errno> {
        let mut t = Imrt {
            order,
            cs,
            data: Vec::new(),
            max: refcount::max_value(order),
            n: 0,
            raised: false,
        };
        t.data = zeroed(t.bytes_for(n))?;
        t.grow(n)?;
        Ok(t)
    }

    /// Grow to cover `n` clusters (never shrinks).
    pub fn grow(&mut self, n: u64) -> Result<(), Errno> {
        let bytes = self.bytes_for(n);
        if bytes > self.data.len() as u64 {
            let extra = (bytes - self.data.len() as u64) as usize;
            self.data.try_reserve_exact(extra).map_err(|_| ENOMEM)?;
            self.data.resize(bytes as usize, 0);
        }
        if n > self.n {
            self.n = n;
        }
        Ok(())
    }

    /// Count of cluster `i` (0 past the end).
    #[inline]
    pub fn get(&self, i: u64) -> u64 {
        if i >= self.n {
            return 0;
        }
        rc_get(&self.data, self.order, i as usize)
    }

    /// Set the count of cluster `i`, growing the table.
    pub fn set(&mut self, i: u64, v: u64) -> Result<(), Errno> {
        if i >= self.n {
            self.grow(i + 1)?;
        }
        rc_set(&mut self.data, self.order, i as usize, v);
        Ok(())
    }

    /// Add one to cluster `i` unless it is at the maximum; returns whether
    /// it overflowed. The caller has grown the table to cover `i`.
    #[inline]
    pub fn inc(&mut self, i: u64) -> bool {
        self.inc_from(i).is_none()
    }

    /// Add one to cluster `i` and return its count before, or `None` if
    /// it is at the maximum (then nothing changes). The caller has grown
    /// the table to cover `i`. The 16-bit width (the default) is the hot
    /// path of every big image's walk.
    #[inline(always)]
    pub fn inc_from(&mut self, i: u64) -> Option<u64> {
        let r = if self.order == 4 {
            let j = 2 * i as usize;
            let b = &mut self.data[j..j + 2];
            let r = u16::from_be_bytes([b[0], b[1]]);
            if r == u16::MAX {
                return None;
            }
            b.copy_from_slice(&(r + 1).to_be_bytes());
            r as u64
        } else {
            let r = rc_get(&self.data, self.order, i as usize);
            if r == self.max {
                return None;
            }
            rc_set(&mut self.data, self.order, i as usize, r + 1);
            r
        };
        self.raised |= r != 0;
        Some(r)
    }

    /// The table's counts for a loop that increments many of them
    /// (`inc_from`'s work without a call per count).
    pub fn counts_mut(&mut self) -> CountsMut<'_> {
        CountsMut {
            data: &mut self.data,
            order: self.order,
            max: self.max,
            raised: &mut self.raised,
        }
    }

    /// Whether some cluster has been counted more than once.
    pub fn raised(&self) -> bool {
        self.raised
    }

    /// If refblock `index` on disk (`None`: no block, all zero) holds
    /// exactly the computed counts: `Some(the index in the block of the
    /// last non-zero count, if any)`; otherwise `None`.
    pub fn same_block(&self, index: u64, disk: Option<&[u8]>) -> Option<Option<u64>> {
        let start = (index * self.cs) as usize;
        let mem = self.data.get(start..start + self.cs as usize)?;
        let same = match disk {
            Some(d) => d == mem,
            None => mem.iter().all(|&b| b == 0),
        };
        if !same {
            return None;
        }
        let Some(p) = mem.iter().rposition(|&b| b != 0) else {
            return Some(None);
        };
        // The entries sharing byte p (several when entries are sub-byte).
        let (first, last) = (
            (p as u64 * 8) >> self.order,
            (p as u64 * 8 + 7) >> self.order,
        );
        let at = (first..=last)
            .rev()
            .find(|&e| rc_get(mem, self.order, e as usize) != 0);
        Some(at)
    }

    /// Refblock `index` as bytes (a slice of the table).
    pub fn block(&self, index: u64) -> Vec<u8> {
        let start = (index * self.cs) as usize;
        let mut v = vec![0u8; self.cs as usize];
        if start < self.data.len() {
            let end = (start + self.cs as usize).min(self.data.len());
            v[..end - start].copy_from_slice(&self.data[start..end]);
        }
        v
    }
}

/// `len` zero bytes, allocated fallibly and not written: the pages are
/// the kernel's zero pages until counted into, so a 32 MiB table of a
/// 1 TiB image costs no memset, and (on kernels with transparent huge
/// pages on request) is faulted in 2 MiB at a time rather than 4 KiB.
fn zeroed(len: u64) -> Result<Vec<u8>, Errno> {
    let len = usize::try_from(len).map_err(|_| ENOMEM)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).map_err(|_| ENOMEM)?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(ENOMEM);
    }
    const HUGE: usize = 2 << 20;
    if len >= 2 * HUGE {
        // Only a hint (the whole pages inside the block); failure is fine.
        let page = 4096;
        let start = (p as usize).next_multiple_of(page);
        let end = (p as usize + len) / page * page;
        // SAFETY: [start, end) lies inside the block just allocated;
        // MADV_HUGEPAGE changes no contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    // SAFETY: p was allocated by the global allocator with the layout of
    // `len` u8s, and all `len` bytes are initialised (zeroed).
    Ok(unsafe { Vec::from_raw_parts(p, len, len) })
}

/// A growable bit set over cluster indices.
#[derive(Debug, Default)]
pub(crate) struct BitSet(Vec<u64>);

impl BitSet {
    /// Set bit `i`.
    pub fn set(&mut self, i: u64) {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }
    /// Bit `i`.
    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w >> (i % 64) & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_block_finds_the_last_used_cluster_at_every_width() {
        let cs = 512u64;
        for order in 0..=6u32 {
            let per_block = (cs * 8) >> order;
            for last in [0, 1, 2, 5, per_block / 2 + 3, per_block - 1] {
                let mut t = Imrt::new(order, cs, 2 * per_block).unwrap();
                t.set(per_block + last, 1).unwrap();
                if last > 0 {
                    t.set(per_block, 1).unwrap();
                }
                let disk = t.block(1);
                assert_eq!(
                    t.same_block(1, Some(&disk)),
                    Some(Some(last)),
                    "order {order}"
                );
                assert_eq!(t.same_block(0, None), Some(None), "order {order}");
                assert_eq!(t.same_block(1, None), None, "order {order}");
                let mut other = disk.clone();
                other[cs as usize - 1] ^= 1;
                assert_eq!(t.same_block(1, Some(&other)), None, "order {order}");
            }
        }
    }
}
