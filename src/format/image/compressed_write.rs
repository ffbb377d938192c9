//! Compressed writes (qemu-io's `write -c`, `convert -c`): each whole
//! guest cluster is compressed with the image's compression type; a stream
//! smaller than the cluster is packed, byte-granular as QEMU packs it, into
//! host clusters shared by several streams, each host cluster counting one
//! reference per stream that touches it. A cluster that does not compress
//! is written uncompressed.
//!
//! Ordering is the format layer's: the stream's bytes and refcounts are in
//! the file (and synced by the refcount barrier of the next L2 write-back)
//! before its L2 entry is written; the cluster it replaces is released only
//! after the new entry is durable. Packing only ever fills bytes no
//! published stream uses, so a crash leaves at worst a leak.
//!
//! Zoned images never hold compressed clusters (not even in conventional
//! zones): the request is refused.

use super::super::compress::compress;
use super::*;

impl Qcow2 {
    /// Write `data` at `offset` compressed. `offset` must be cluster
    /// aligned and `data` whole clusters, except that the last cluster of
    /// an image whose size is not a cluster multiple may be written short
    /// (it is compressed padded with zeroes), as in QEMU.
    ///
    /// Unlike QEMU, which fails with EIO on a cluster that is already
    /// allocated, the cluster is replaced (its old host cluster is released
    /// once the new mapping is durable).
    pub fn write_compressed(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.writable()?;
        if self.zoned.is_some() {
            return Err(FormatError::Unsupported(
                "compressed writes are not possible on a zoned image (zoned images cannot contain compressed clusters)".into(),
            ));
        }
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        let cs = self.p.cs;
        if offset % cs != 0 {
            return Err(FormatError::BadOption(format!(
                "compressed write at offset {offset:#x}: not aligned to the cluster size ({cs} bytes)"
            )));
        }
        if len % cs != 0 && offset + len != self.size() {
            return Err(FormatError::BadOption(format!(
                "compressed write of {len} bytes at offset {offset:#x}: not whole clusters of {cs} bytes (only the last cluster of the image may be short)"
            )));
        }
        let mut buf = vec![0u8; cs as usize];
        for (k, chunk) in data.chunks(cs as usize).enumerate() {
            let pos = offset + k as u64 * cs;
            buf[..chunk.len()].copy_from_slice(chunk);
            buf[chunk.len()..].fill(0);
            // CPU work outside the metadata lock.
            match compress(self.p.compression_type, &buf, cs as usize - 1)? {
                Some(stream) => {
                    let mut m = lock(&self.meta);
                    self.place_compressed(&mut m, pos >> self.p.cluster_bits, &stream)?;
                }
                // Not smaller than the cluster: store it as it is.
                None => self.write(pos, chunk)?,
            }
        }
        Ok(())
    }

    /// Store one compressed stream and point guest cluster `gc` at it.
    fn place_compressed(&self, m: &mut Meta, gc: u64, stream: &[u8]) -> Result<()> {
        let cb = self.p.cluster_bits;
        let (l2, idx, w0) = self.l2_entry_for_write(m, gc)?;
        let old = decode_l2(w0, cb, false, false);
        let len = stream.len() as u64;
        let host = self.alloc_bytes(m, len)?;
        let entry = compressed_entry(host, len, cb).ok_or_else(|| {
            FormatError::NoSpace(format!(
                "host offset {host:#x} does not fit a compressed cluster descriptor ({} bits with {}-byte clusters)",
                62 - (cb - 8),
                self.p.cs
            ))
        })?;
        // Zero-padded to the end of its last sector (bytes no stream uses
        // yet), so the file ends on a sector boundary as QEMU leaves it.
        let padded = (host + len).next_multiple_of(512) - host;
        self.guard_as(m, None, host, padded, || {
            format!("compressed data of guest cluster {gc}")
        })?;
        let mut sectors = Vec::with_capacity(padded as usize);
        sectors.extend_from_slice(stream);
        sectors.resize(padded as usize, 0);
        self.data.write_at(host, &sectors)?;
        m.file_len = m.file_len.max(host + padded);
        self.l2_set(m, l2, idx, entry)?;
        if matches!(
            old,
            ClusterType::Normal(_) | ClusterType::ZeroAlloc(_) | ClusterType::Compressed { .. }
        ) {
            self.queue_decrement(m, old);
        }
        Ok(())
    }

    /// Reserve `size` bytes (less than a cluster) for a compressed stream,
    /// after the last one when it fits in that host cluster or runs on into
    /// the next one (when that is the next cluster allocated), else at the
    /// start of a new cluster. Every host cluster the bytes touch gains one
    /// reference, as QEMU counts them.
    fn alloc_bytes(&self, m: &mut Meta, size: u64) -> Result<u64> {
        let cs = self.p.cs;
        let cb = self.p.cluster_bits;
        let max = refcount::max_value(self.p.refcount_order);
        let mut tail = m.compressed_tail;
        if let Some(t) = tail {
            // A full refcount cannot count another stream.
            let rc = self.refcount(m, t >> cb)?;
            if rc == 0 || rc >= max {
                tail = None;
            }
        }
        let start = match tail {
            Some(t) if cs - t % cs >= size => {
                let c = t >> cb;
                let rc = self.refcount(m, c)?;
                self.set_refcount(m, c, rc + 1)?;
                t
            }
            _ => {
                let new = self.alloc(m)? << cb;
                match tail {
                    // Runs on from the old cluster into the new one: both count it.
                    Some(t) if t.next_multiple_of(cs) == new => {
                        let c = t >> cb;
                        let rc = self.refcount(m, c)?;
                        self.set_refcount(m, c, rc + 1)?;
                        t
                    }
                    _ => new,
                }
            }
        };
        let end = start + size;
        m.compressed_tail = (end % cs != 0).then_some(end);
        Ok(start)
    }
}
