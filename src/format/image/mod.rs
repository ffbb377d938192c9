//! An open qcow2 image: mapping, reads, writes, allocation, refcounts,
//! metadata caches with dependency-ordered write-back.
//!
//! Ordering rules (crash safety, like QEMU):
//! * a cluster's refcount reaches the disk before any L2 entry pointing at it
//!   (the refcount cache is written and synced before L2 write-back);
//! * an L2 table reaches the disk before the L1 entry pointing at it (L1
//!   entries are written only in `flush`, after the L2 tables are synced);
//! * a reference is removed durably before the refcount drops (decrements are
//!   queued and applied only after the L2/L1 changes are synced).
//!
//! After a crash the worst case is therefore a leak, never a corruption.
//!
//! One file per concern: `open` (header, tables, backing chain, open-time
//! checks), `guard` (overlap protection, corrupt marking), `l2_tables` (L2
//! cache), `refcounts` (refblock cache, refcount table growth), `allocation`
//! (allocation, deferred frees), `flush`, `mapping` (guest to host pieces,
//! block status), `read`, `cow` (L2 copy-on-write, old cluster contents),
//! `write`, `compressed_write` (whole clusters compressed and packed into
//! shared host clusters), `discard` (write-zeroes, discard, deallocate) and `wp_array`
//! (zoned write pointers). This file holds the types they share and the
//! accessors; its imports are the prelude of the files (`use super::*`).

use super::bytes::be64;
use super::cache::TableCache;
use super::compress::decompress;
use super::error::{invalid, FormatError, Result};
use super::features::*;
use super::header::{field, Header, ParseMode, MAX_HOST_OFFSET};
use super::l2::*;
use super::overlap::{ImageRegions, Kind, MetadataMap, Region};
use super::payload::Payload;
use super::refcount;
use super::snapshot::{read_table, Snapshot};
use super::types::{GuestOffset, HostCluster, HostOffset};
use super::wp::WpEntry;
use super::zoned::{decode_wp_array, encode_wp_entries, WpByteOrder, ZonedExt};
use crate::storage::{FileStorage, Storage, StorageError};
use crate::zone::ZoneGeometry;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod allocation;
mod compressed_write;
mod cow;
mod discard;
mod flush;
mod guard;
mod l2_tables;
mod mapping;
mod open;
mod read;
mod refcounts;
mod resize;
mod wp_array;
mod write;

pub use allocation::REUSE_POOL_BYTES;
pub use open::read_header_cluster;
pub use read::{HostRun, PageUse};

/// Deepest backing chain zcow follows.
pub const MAX_BACKING_DEPTH: u32 = 16;

/// Anything that can serve guest reads (a backing image).
pub trait GuestRead: Send + Sync + fmt::Debug {
    /// Virtual size.
    fn guest_size(&self) -> u64;
    /// Read guest bytes; bytes past the size read as zero.
    fn read_guest(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// A raw file as a backing image.
#[derive(Debug)]
pub struct RawBacking {
    store: Arc<dyn Storage>,
    size: u64,
}

impl RawBacking {
    /// Wrap a store.
    pub fn new(store: Arc<dyn Storage>) -> Result<Self> {
        let size = store.len()?;
        Ok(Self { store, size })
    }
}

impl GuestRead for RawBacking {
    fn guest_size(&self) -> u64 {
        self.size
    }
    fn read_guest(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.store.read_at_zero_fill(offset, buf)?)
    }
}

/// What to do with a backing file the image names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingPolicy {
    /// Open the chain (local CLI tools, as qemu-img does).
    Follow,
    /// Refuse to open an image that names a backing file (untrusted images).
    #[default]
    Refuse,
    /// Do not open it; reads of unallocated clusters fail (metadata-only use
    /// such as `info` and `check`).
    Skip,
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open read-only.
    pub read_only: bool,
    /// Backing file handling.
    pub backing: BackingPolicy,
    /// Relaxed validation for `check` (empty reftable, corrupt/dirty bits,
    /// zoned problems are tolerated).
    pub check_mode: bool,
    /// L2 tables to cache.
    pub l2_cache_tables: usize,
    /// Refcount blocks to cache.
    pub refblock_cache_tables: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            backing: BackingPolicy::Refuse,
            check_mode: false,
            l2_cache_tables: 256,
            refblock_cache_tables: 64,
        }
    }
}

impl OpenOptions {
    /// Read-only, backing file not opened: for tools that only look at an
    /// image's metadata and its own clusters (`info`, `map`, `amend`'s
    /// checks).
    pub fn inspect() -> Self {
        Self {
            read_only: true,
            backing: BackingPolicy::Skip,
            ..Default::default()
        }
    }
}

/// Most runs one [`Qcow2::block_status`] answer holds (an NBD reply holds
/// at most as many extents).
pub const MAX_STATUS_RUNS: usize = 65536;

/// The zoned part of an open image.
#[derive(Debug, Clone)]
pub struct ZonedInfo {
    /// The extension.
    pub ext: ZonedExt,
    /// Geometry derived from it.
    pub geometry: ZoneGeometry,
    /// Byte order the array was found in (None: invalid either way).
    pub order: Option<WpByteOrder>,
    /// Why the zoned metadata is unusable, if it is.
    pub problem: Option<String>,
}

#[derive(Debug)]
struct Meta {
    header: Header,
    l1: Vec<u64>,
    l1_dirty: BTreeSet<usize>,
    reftable: Vec<u64>,
    l2: TableCache,
    rb: TableCache,
    /// Lowest cluster that may be free.
    free_hint: u64,
    /// First cluster past everything allocated or in the file.
    alloc_end: u64,
    /// Current length of the image file.
    file_len: u64,
    /// Refcount decrements waiting for the reference removal to be durable.
    pending_decrements: Vec<(u64, u64)>,
    /// Freed clusters not punched yet, oldest first, kept for reuse (see
    /// `allocation.rs`): runs of (first cluster, count).
    reuse_pool: std::collections::VecDeque<(u64, u64)>,
    /// Clusters in `reuse_pool`.
    reuse_pool_clusters: u64,
    /// Most bytes `reuse_pool` holds ([`Qcow2::set_reuse_pool_limit`]).
    reuse_pool_limit: u64,
    /// A reply may still hold this file's pages ([`Qcow2::read_direct`]):
    /// freed clusters are then punched at once, never kept for reuse.
    pages_lent: bool,
    /// Where the next compressed stream may go: the first free byte in the
    /// host cluster compressed data was last packed into (None: start a
    /// new cluster). Forgotten when that cluster is freed.
    compressed_tail: Option<u64>,
    /// Where the metadata lives; every write is checked against it.
    overlap: MetadataMap,
    /// A write was refused as a metadata overwrite and the image marked
    /// corrupt: nothing more is written (QEMU stops the image too).
    corrupt: bool,
}

/// Immutable parameters of an open image.
#[derive(Debug, Clone, Copy)]
struct Params {
    cluster_bits: u32,
    cs: u64,
    l2_entries: u64,
    extended: bool,
    refcount_order: u32,
    rb_entries: u64,
    compression_type: u8,
    has_data_file: bool,
    version: u32,
    names_backing: bool,
}

/// An open qcow2 image.
pub struct Qcow2 {
    store: Arc<dyn Storage>,
    data: Arc<dyn Storage>,
    backing: Option<Arc<dyn GuestRead>>,
    p: Params,
    meta: Mutex<Meta>,
    read_only: bool,
    zoned: Option<ZonedInfo>,
    snapshots: Vec<Snapshot>,
    path: Option<PathBuf>,
    backing_chain: Vec<String>,
    /// Data I/O running outside the metadata lock on clusters mapped under
    /// it. Freeing clusters waits for it to drain, so such I/O never lands
    /// in (or reads from) a cluster that was freed and reused meanwhile.
    unlocked_io: AtomicUsize,
    /// Virtual size; changes only by [`Qcow2::resize`].
    size: AtomicU64,
    /// A duplicate of `store`'s file descriptor, for [`Qcow2::read_direct`]
    /// and for a [`Payload`] that stores a write's bytes itself
    /// ([`Qcow2::write_from`]; this code never writes through it); None
    /// for images opened on a store or with an external data file.
    direct: Option<std::fs::File>,
    /// Metadata overlap found at a read-only open (a read-write open is
    /// refused instead).
    overlap_warning: Option<String>,
}

/// Counts one unlocked data I/O for as long as it lives.
struct UnlockedIo<'a>(&'a AtomicUsize);

impl<'a> UnlockedIo<'a> {
    /// Must be taken while the metadata lock is held.
    fn start(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        UnlockedIo(c)
    }
}

impl Drop for UnlockedIo<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.path)
            .field("size", &self.size())
            .field("cluster_bits", &self.p.cluster_bits)
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn lock(m: &Mutex<Meta>) -> MutexGuard<'_, Meta> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Qcow2 {
    /// A copy of the current header.
    pub fn header(&self) -> Header {
        lock(&self.meta).header.clone()
    }

    /// Virtual size.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Cluster size.
    pub fn cluster_size(&self) -> u64 {
        self.p.cs
    }

    /// Whether the image is open read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The image's storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// Internal snapshots.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// Zoned metadata, if the image is zoned.
    pub fn zoned(&self) -> Option<&ZonedInfo> {
        self.zoned.as_ref()
    }

    /// Backing file names of the chain, nearest first.
    pub fn backing_chain(&self) -> &[String] {
        &self.backing_chain
    }

    /// Path the image was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether a backing image is attached.
    pub fn has_backing(&self) -> bool {
        self.backing.is_some()
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(FormatError::ReadOnly);
        }
        if self.p.version < 3 {
            return Err(FormatError::Unsupported(
                "writing to qcow2 version 2 (compat=0.10) images is not supported".into(),
            ));
        }
        if self.p.extended {
            return Err(FormatError::Unsupported(
                "writing to images with extended L2 entries is not supported".into(),
            ));
        }
        if self.p.has_data_file {
            return Err(FormatError::Unsupported(
                "writing to images with an external data file is not supported".into(),
            ));
        }
        let m = lock(&self.meta);
        if m.header.crypt_method != 0 {
            return Err(FormatError::Unsupported(
                "encrypted images are not supported".into(),
            ));
        }
        if m.corrupt {
            return Err(FormatError::Corrupt(
                "the image was marked corrupt after a refused metadata overwrite; no further writes"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.size() => Ok(()),
            _ => Err(FormatError::OutOfRange {
                offset,
                len,
                size: self.size(),
            }),
        }
    }

    /// The persistent bitmaps, when the bitmaps extension is valid (its
    /// autoclear bit set), as `qemu-img info` lists them.
    pub fn bitmaps(&self) -> Result<Vec<super::bitmap::BitmapEntry>> {
        let h = self.header();
        let Some(b) = h.bitmaps() else {
            return Ok(Vec::new());
        };
        if h.autoclear_features & AUTOCLEAR_BITMAPS == 0 || b.nb_bitmaps == 0 {
            return Ok(Vec::new());
        }
        if b.directory_size > super::bitmap::MAX_DIRECTORY
            || b.directory_offset
                .checked_add(b.directory_size)
                .is_none_or(|e| e > self.store.len().unwrap_or(0))
        {
            return Err(invalid!(
                "bitmap directory at {:#x} ({} bytes) is too large or past the end of the file",
                b.directory_offset,
                b.directory_size
            ));
        }
        let mut dir = vec![0u8; b.directory_size as usize];
        self.store.read_at(b.directory_offset, &mut dir)?;
        super::bitmap::parse_directory(&dir, b.nb_bitmaps).map_err(FormatError::Invalid)
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.flush();
            let mut m = lock(&self.meta);
            self.punch_reuse_pool(&mut m, 0);
        }
    }
}
