//! The image as `check` sees it: the parsed header plus the raw tables QEMU
//! keeps in memory (active L1, refcount table), and on-disk refcount access
//! with QEMU's semantics (reads past EOF are zeros, an unaligned refblock is
//! an I/O error).

use super::errno::{Errno, EIO};
use crate::format::header::{Header, ParseMode};
use crate::format::refcount;
use crate::storage::Storage;
use std::io::Write;
use std::sync::Arc;

/// Bits of a reftable entry holding the refblock offset.
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Refblocks kept in memory.
const RB_CACHE: usize = 16;

/// Reserved reftable entry bits.
pub const REFT_RESERVED_MASK: u64 = 0x1ff;

/// Why an image could not be opened for checking.
#[derive(Debug)]
pub enum OpenError {
    /// Not a qcow2 image at all (QEMU probes it as raw or qcow): exit 63.
    NotSupported,
    /// A qcow2 image that QEMU would refuse to open: exit 1.
    Refused(String),
}

/// The image under check.
pub(crate) struct CheckImage {
    pub store: Arc<dyn Storage>,
    pub header: Header,
    /// nb_snapshots as stored (the header parse sees 0: check validates the
    /// snapshot table itself, like QEMU's check mode).
    pub raw_nb_snapshots: u32,
    /// snapshots_offset as stored.
    pub raw_snapshots_offset: u64,
    pub cb: u32,
    pub cs: u64,
    pub order: u32,
    /// log2(entries per refblock).
    pub rb_bits: u32,
    pub reftable_offset: u64,
    pub reftable: Vec<u64>,
    /// Active L1 table as loaded at open.
    pub l1: Vec<u64>,
    pub rw: bool,
    /// Refblock cache, most recent first (a short list: lookups are far
    /// more frequent than misses, and hashing cost more than the scan).
    rb_cache: Vec<(u64, Vec<u8>)>,
    /// QEMU reports the first corruption signal only.
    pub signaled_corruption: bool,
    /// Cached file length.
    file_len: u64,
    /// Writes made through this image (a walk's view of the tables is
    /// current while this has not moved).
    writes: u64,
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Read `n` big-endian u64 at `off`, zero-filled past EOF.
pub(crate) fn read_u64s(store: &dyn Storage, off: u64, n: u64) -> Result<Vec<u64>, Errno> {
    // Decoded in place: no second copy of a table that may be 32 MiB.
    let mut t: Vec<u64> = Vec::new();
    t.try_reserve_exact(n as usize)
        .map_err(|_| super::errno::ENOMEM)?;
    t.resize(n as usize, 0);
    store
        .read_at_zero_fill(off, zerocopy::IntoBytes::as_mut_bytes(t.as_mut_slice()))
        .map_err(|e| e.errno())?;
    for x in &mut t {
        *x = u64::from_be(*x);
    }
    Ok(t)
}

impl CheckImage {
    /// Open like QEMU's check mode: the header must parse; the snapshot
    /// table is not validated; `refcount_table_clusters == 0` is accepted.
    pub fn open(store: Arc<dyn Storage>, rw: bool) -> Result<Self, OpenError> {
        let len = store.len().map_err(|e| OpenError::Refused(e.to_string()))?;
        let mut first = vec![0u8; len.min(112) as usize];
        store
            .read_at(0, &mut first)
            .map_err(|e| OpenError::Refused(e.to_string()))?;
        // QEMU probes the format: a file without the qcow2 magic is raw, and
        // version 1 is the old qcow format; neither supports checks.
        if first.len() < 8 || be32(&first[0..4]) != crate::format::header::QCOW_MAGIC {
            return Err(OpenError::NotSupported);
        }
        if be32(&first[4..8]) == 1 {
            return Err(OpenError::NotSupported);
        }
        let cs =
            Header::peek_cluster_size(&first).map_err(|e| OpenError::Refused(e.to_string()))?;
        // Zero-filled past EOF, as QEMU's reads of a short file are: an
        // image cut inside cluster 0 still opens (and checks as QEMU's).
        let mut c0 = vec![0u8; cs as usize];
        store
            .read_at_zero_fill(0, &mut c0)
            .map_err(|e| OpenError::Refused(e.to_string()))?;
        let (raw_nb, raw_off) = if c0.len() >= 72 {
            (be32(&c0[60..64]), be64(&c0[64..72]))
        } else {
            (0, 0)
        };
        // Check mode does not validate the snapshot table pointer at open.
        let mut patched = c0.clone();
        if patched.len() >= 72 {
            patched[60..72].fill(0);
        }
        let mut header = Header::parse(
            &patched,
            ParseMode {
                allow_empty_reftable: true,
            },
        )
        .map_err(|e| OpenError::Refused(e.to_string()))?;
        header.nb_snapshots = raw_nb;
        header.snapshots_offset = raw_off;
        let cb = header.cluster_bits;
        let order = header.refcount_order;
        let rt_entries = (header.refcount_table_clusters as u64) << (cb - 3);
        let reftable = read_u64s(&*store, header.refcount_table_offset, rt_entries)
            .map_err(|e| OpenError::Refused(super::errno::strerror(e)))?;
        let l1 = read_u64s(&*store, header.l1_table_offset, header.l1_size as u64)
            .map_err(|e| OpenError::Refused(super::errno::strerror(e)))?;
        Ok(CheckImage {
            reftable_offset: header.refcount_table_offset,
            raw_nb_snapshots: raw_nb,
            raw_snapshots_offset: raw_off,
            cb,
            cs: 1 << cb,
            order,
            rb_bits: cb + 3 - order,
            reftable,
            l1,
            rw,
            rb_cache: Vec::new(),
            signaled_corruption: false,
            file_len: len,
            writes: 0,
            header,
            store,
        })
    }

    /// Current file length.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Whether the image keeps guest data in an external file.
    pub fn has_data_file(&self) -> bool {
        self.header.incompatible_features & crate::format::features::INCOMPAT_DATA_FILE != 0
    }

    /// Whether extended L2 entries are used.
    pub fn extended(&self) -> bool {
        self.header.extended_l2()
    }

    /// How many writes were made through this image so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Read bytes, zero-filled past EOF.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        // Inside the file as last seen: one pread, without asking the
        // file's length again (the L2 walk reads thousands of tables).
        if off
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.file_len)
        {
            match self.store.read_at(off, buf) {
                Ok(()) => return Ok(()),
                // Shrunk since: read as zeros past the new end, below.
                Err(crate::storage::StorageError::ShortRead { .. }) => {}
                Err(e) => return Err(e.errno()),
            }
        }
        self.store
            .read_at_zero_fill(off, buf)
            .map_err(|e| e.errno())
    }

    /// Write bytes (refused unless opened for repair).
    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), Errno> {
        if !self.rw {
            return Err(super::errno::EROFS);
        }
        self.writes += 1;
        self.store.write_at(off, data).map_err(|e| e.errno())?;
        let end = off + data.len() as u64;
        if end > self.file_len {
            self.file_len = end;
        }
        // Keep cached refblocks coherent with direct writes.
        let cs = self.cs;
        let first = off & !(cs - 1);
        let mut c = first;
        while c < end {
            self.rb_cache.retain(|e| e.0 != c);
            c += cs;
        }
        Ok(())
    }

    /// Forget every cached refblock (after a rebuild).
    pub fn drop_cache(&mut self) {
        self.rb_cache.clear();
    }

    fn refblock(&mut self, off: u64) -> Result<&mut Vec<u8>, Errno> {
        match self.rb_cache.iter().position(|e| e.0 == off) {
            Some(0) => {}
            Some(i) => {
                let e = self.rb_cache.remove(i);
                self.rb_cache.insert(0, e);
            }
            None => {
                let mut b = vec![0u8; self.cs as usize];
                self.read(off, &mut b)?;
                self.rb_cache.truncate(RB_CACHE - 1);
                self.rb_cache.insert(0, (off, b));
            }
        }
        Ok(&mut self.rb_cache[0].1)
    }

    /// Signal a corruption like QEMU: the first one is printed. zcow never
    /// writes the corrupt bit from check (QEMU does in read-write mode).
    pub fn signal_corruption(&mut self, err: &mut dyn Write, msg: &str) {
        if self.signaled_corruption {
            return;
        }
        let _ = writeln!(
            err,
            "qcow2: Image is corrupt: {msg}; further non-fatal corruption events will be suppressed"
        );
        self.signaled_corruption = true;
    }

    /// Refblock offset for cluster `i` (None = no refblock).
    fn refblock_for(&mut self, i: u64, err: &mut dyn Write) -> Result<Option<u64>, Errno> {
        let rti = i >> self.rb_bits;
        let Some(&e) = self.reftable.get(rti as usize) else {
            return Ok(None);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if off & (self.cs - 1) != 0 {
            self.signal_corruption(
                err,
                &format!(
                    "Refblock offset {} unaligned (reftable index: {})",
                    hash_x(off),
                    hash_x(rti)
                ),
            );
            return Err(EIO);
        }
        Ok(Some(off))
    }

    /// On-disk refcount of cluster `i` (QEMU `qcow2_get_refcount`).
    pub fn get_refcount(&mut self, i: u64, err: &mut dyn Write) -> Result<u64, Errno> {
        let Some(off) = self.refblock_for(i, err)? else {
            return Ok(0);
        };
        let order = self.order;
        let idx = (i & ((1u64 << self.rb_bits) - 1)) as usize;
        let b = self.refblock(off)?;
        Ok(super::imrt::rc_get(b, order, idx))
    }

    /// A copy of the refblock holding cluster `i`'s refcount (None: no
    /// refblock, every count in its range is 0).
    pub fn refblock_copy(&mut self, i: u64, err: &mut dyn Write) -> Result<Option<Vec<u8>>, Errno> {
        match self.refblock_for(i, err)? {
            None => Ok(None),
            Some(off) => Ok(Some(self.refblock(off)?.clone())),
        }
    }

    /// Set the on-disk refcount of cluster `i`; its refblock must exist.
    pub fn set_refcount(&mut self, i: u64, v: u64, err: &mut dyn Write) -> Result<(), Errno> {
        if !self.rw {
            return Err(super::errno::EROFS);
        }
        let Some(off) = self.refblock_for(i, err)? else {
            return Err(EIO);
        };
        let order = self.order;
        let idx = (i & ((1u64 << self.rb_bits) - 1)) as usize;
        let b = self.refblock(off)?;
        refcount::set(b, order, idx, v);
        let copy = b.clone();
        self.writes += 1;
        self.store.write_at(off, &copy).map_err(|e| e.errno())?;
        Ok(())
    }

    /// Whether cluster `i`'s refcount could be stored without a new refblock.
    pub fn has_refblock(&mut self, i: u64, err: &mut dyn Write) -> bool {
        matches!(self.refblock_for(i, err), Ok(Some(_)))
    }

    /// Write one header field in place.
    pub fn write_header_field(&mut self, off: u64, data: &[u8]) -> Result<(), Errno> {
        self.write(off, data)
    }

    /// Flush to disk.
    pub fn sync(&self) -> Result<(), Errno> {
        if self.rw {
            self.store.sync().map_err(|e| e.errno())?;
        }
        Ok(())
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// C's `%#x`: `0` for zero, `0x…` otherwise.
pub fn hash_x(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("0x{v:x}")
    }
}
