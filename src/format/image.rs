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

use super::bytes::be64;
use super::cache::TableCache;
use super::compress::decompress;
use super::error::{invalid, FormatError, Result};
use super::features::*;
use super::header::{field, Header, ParseMode, MAX_HOST_OFFSET};
use super::l2::*;
use super::refcount;
use super::snapshot::{read_table, Snapshot};
use super::types::{GuestOffset, HostCluster, HostOffset};
use super::wp::WpEntry;
use super::zoned::{decode_wp_array, encode_wp_entries, WpByteOrder, ZonedExt};
use crate::storage::{FileStorage, Storage, StorageError};
use crate::zone::ZoneGeometry;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
}

/// Immutable parameters of an open image.
#[derive(Debug, Clone, Copy)]
struct Params {
    cluster_bits: u32,
    cs: u64,
    size: u64,
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
            .field("size", &self.p.size)
            .field("cluster_bits", &self.p.cluster_bits)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl GuestRead for Qcow2 {
    fn guest_size(&self) -> u64 {
        self.p.size
    }
    fn read_guest(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.p.size;
        let n = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            self.read(offset, &mut buf[..n])?;
        }
        buf[n..].fill(0);
        Ok(())
    }
}

/// A piece of a guest range after mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
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

/// Read the first cluster of a store (bounded by the file length).
pub fn read_header_cluster(store: &dyn Storage) -> Result<Vec<u8>> {
    let len = store.len()?;
    let mut first = vec![0u8; len.min(112) as usize];
    store.read_at(0, &mut first)?;
    let cs = Header::peek_cluster_size(&first)?;
    let mut c0 = vec![0u8; cs.min(len) as usize];
    store.read_at(0, &mut c0)?;
    Ok(c0)
}

/// Read and parse the header as `opts` asks (check mode is lenient).
fn read_header(store: &dyn Storage, opts: &OpenOptions) -> Result<Header> {
    let c0 = read_header_cluster(store)?;
    Header::parse(
        &c0,
        ParseMode {
            allow_empty_reftable: opts.check_mode,
        },
    )
}

fn lock(m: &Mutex<Meta>) -> MutexGuard<'_, Meta> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_u64_table(store: &dyn Storage, off: u64, n: u64, what: &str) -> Result<Vec<u64>> {
    let bytes = n * 8;
    let len = store.len()?;
    if off.checked_add(bytes).is_none_or(|e| e > len) {
        return Err(invalid!(
            "{what} at offset {off:#x} ({n} entries) runs past the end of the file ({len} bytes)"
        ));
    }
    let mut raw = vec![0u8; bytes as usize];
    store.read_at(off, &mut raw)?;
    Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

impl Qcow2 {
    /// Open the image at `path`, following its backing chain and data file
    /// as `opts` allows.
    pub fn open_path(path: &Path, opts: &OpenOptions) -> Result<Qcow2> {
        let mut visited = HashSet::new();
        Self::open_path_depth(path, opts, 0, &mut visited)
    }

    fn open_path_depth(
        path: &Path,
        opts: &OpenOptions,
        depth: u32,
        visited: &mut HashSet<PathBuf>,
    ) -> Result<Qcow2> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !visited.insert(canon) {
            return Err(invalid!(
                "backing chain loops: '{}' is its own ancestor",
                path.display()
            ));
        }
        let store = FileStorage::open(path, opts.read_only).map_err(|e| {
            FormatError::Storage(StorageError::Io {
                op: crate::storage::Op::Read,
                offset: 0,
                len: 0,
                source: e,
            })
        })?;
        let store: Arc<dyn Storage> = Arc::new(store);
        let header = read_header(store.as_ref(), opts)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Data file (read path only; writes are refused later).
        let data: Option<Arc<dyn Storage>> = match header.data_file() {
            Some(name) if opts.backing == BackingPolicy::Follow => {
                let p = dir.join(name);
                let s = FileStorage::open(&p, true)
                    .map_err(|e| invalid!("Could not open data file '{}': {e}", p.display()))?;
                Some(Arc::new(s))
            }
            _ => None,
        };
        let mut chain = Vec::new();
        let backing: Option<Arc<dyn GuestRead>> = match (&header.backing_file, opts.backing) {
            (Some(name), BackingPolicy::Follow) => {
                if depth + 1 > MAX_BACKING_DEPTH {
                    return Err(invalid!(
                        "backing chain deeper than {MAX_BACKING_DEPTH} images at '{name}'"
                    ));
                }
                let p = if Path::new(name).is_absolute() {
                    PathBuf::from(name)
                } else {
                    dir.join(name)
                };
                let fmt = header.backing_format().map(str::to_string);
                let is_qcow2 = match fmt.as_deref() {
                    Some("qcow2") => true,
                    Some("raw") => false,
                    Some(other) => {
                        return Err(FormatError::Unsupported(format!(
                            "backing file format '{other}' is not supported"
                        )))
                    }
                    None => probe_is_qcow2(&p)?,
                };
                let bopts = OpenOptions {
                    read_only: true,
                    ..opts.clone()
                };
                if is_qcow2 {
                    let b = Self::open_path_depth(&p, &bopts, depth + 1, visited).map_err(|e| {
                        invalid!("Could not open backing file '{}': {e}", p.display())
                    })?;
                    chain.push(name.clone());
                    chain.extend(b.backing_chain.iter().cloned());
                    Some(Arc::new(b))
                } else {
                    let s = FileStorage::open(&p, true).map_err(|e| {
                        invalid!("Could not open backing file '{}': {e}", p.display())
                    })?;
                    chain.push(name.clone());
                    Some(Arc::new(RawBacking::new(Arc::new(s))?))
                }
            }
            (Some(name), BackingPolicy::Refuse) => {
                return Err(FormatError::Unsupported(format!(
                "the image names a backing file '{name}', which this caller does not allow opening"
            )))
            }
            _ => None,
        };
        let mut img = Self::open_parsed(store, header, data, backing, opts)?;
        img.path = Some(path.to_path_buf());
        img.backing_chain = chain;
        Ok(img)
    }

    /// Open an image on a store. Backing files are never opened here: with
    /// [`BackingPolicy::Follow`] use [`Qcow2::open_path`] or
    /// [`Qcow2::open_with_backing`].
    pub fn open(store: Arc<dyn Storage>, opts: &OpenOptions) -> Result<Qcow2> {
        Self::open_with_backing(store, None, opts)
    }

    /// Open an image on a store with an explicit backing image.
    pub fn open_with_backing(
        store: Arc<dyn Storage>,
        backing: Option<Arc<dyn GuestRead>>,
        opts: &OpenOptions,
    ) -> Result<Qcow2> {
        let header = read_header(store.as_ref(), opts)?;
        if let Some(name) = &header.backing_file {
            if backing.is_none() && opts.backing == BackingPolicy::Refuse {
                return Err(FormatError::Unsupported(format!(
                    "the image names a backing file '{name}', which this caller does not allow opening"
                )));
            }
        }
        Self::open_parsed(store, header, None, backing, opts)
    }

    fn open_parsed(
        store: Arc<dyn Storage>,
        mut header: Header,
        data_file: Option<Arc<dyn Storage>>,
        backing: Option<Arc<dyn GuestRead>>,
        opts: &OpenOptions,
    ) -> Result<Qcow2> {
        let read_only = opts.read_only || store.is_read_only();
        let file_len = store.len()?;
        let cs = header.cluster_size();
        let p = Params {
            cluster_bits: header.cluster_bits,
            cs,
            size: header.size,
            l2_entries: header.l2_entries(),
            extended: header.extended_l2(),
            refcount_order: header.refcount_order,
            rb_entries: refcount::entries_per_block(header.cluster_bits, header.refcount_order),
            compression_type: header.compression_type,
            has_data_file: header.incompatible_features & INCOMPAT_DATA_FILE != 0,
            version: header.version,
            names_backing: header.backing_file.is_some(),
        };
        if !opts.check_mode && !read_only {
            if header.incompatible_features & INCOMPAT_CORRUPT != 0 {
                return Err(invalid!(
                    "qcow2: Image is corrupt; cannot be opened read/write"
                ));
            }
            if header.incompatible_features & INCOMPAT_DIRTY != 0 {
                return Err(invalid!(
                    "the image's dirty bit is set (lazy refcounts were in use); run 'zcow-img check -r all' before opening it read/write"
                ));
            }
        }
        let l1 = read_u64_table(
            store.as_ref(),
            header.l1_table_offset,
            header.l1_size as u64,
            "Active L1 table",
        )?;
        let rt_entries = header.refcount_table_clusters as u64 * cs / 8;
        let reftable = if rt_entries == 0 {
            Vec::new()
        } else {
            read_u64_table(
                store.as_ref(),
                header.refcount_table_offset,
                rt_entries,
                "Reference count table",
            )?
        };
        let snapshots = if header.nb_snapshots > 0 {
            match read_table(store.as_ref(), header.snapshots_offset, header.nb_snapshots) {
                Ok((s, _)) => s,
                Err(e) if opts.check_mode => {
                    let _ = e;
                    Vec::new()
                }
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        let zoned = Self::load_zoned(store.as_ref(), &header, file_len, &snapshots)?;
        if let Some(z) = &zoned {
            if !read_only && !opts.check_mode {
                if let Some(problem) = &z.problem {
                    return Err(invalid!(
                        "zoned image cannot be opened read/write: {problem}; run 'zcow-img repair'"
                    ));
                }
            }
        }
        if header.incompatible_features & INCOMPAT_ZONED != 0 && zoned.is_none() && !opts.check_mode
        {
            return Err(invalid!(
                "incompatible feature bit 5 (zoned format) is set but the zoned header extension is missing"
            ));
        }
        if header.incompatible_features & INCOMPAT_ZONED == 0 && zoned.is_some() && !opts.check_mode
        {
            return Err(invalid!(
                "the zoned header extension is present but incompatible feature bit 5 (zoned format) is clear"
            ));
        }
        let alloc_end = file_len.div_ceil(cs);
        let data = data_file.unwrap_or_else(|| store.clone());
        let img = Qcow2 {
            store,
            data,
            backing,
            p,
            meta: Mutex::new(Meta {
                header: header.clone(),
                l1,
                l1_dirty: BTreeSet::new(),
                reftable,
                l2: TableCache::new(opts.l2_cache_tables),
                rb: TableCache::new(opts.refblock_cache_tables),
                free_hint: 0,
                alloc_end,
                file_len,
                pending_decrements: Vec::new(),
            }),
            read_only,
            zoned,
            snapshots,
            path: None,
            backing_chain: Vec::new(),
            unlocked_io: AtomicUsize::new(0),
        };
        // A read-write open clears autoclear bits zcow does not maintain
        // (bitmaps are not updated by zcow's writes, so they become invalid).
        if !read_only && !opts.check_mode && header.version >= 3 {
            let keep = header.autoclear_features & AUTOCLEAR_DATA_FILE_RAW;
            if header.autoclear_features != keep {
                img.store.write_at(field::AUTOCLEAR, &keep.to_be_bytes())?;
                img.store.sync()?;
                header.autoclear_features = keep;
                lock(&img.meta).header.autoclear_features = keep;
            }
        }
        Ok(img)
    }

    fn load_zoned(
        store: &dyn Storage,
        header: &Header,
        file_len: u64,
        snapshots: &[Snapshot],
    ) -> Result<Option<ZonedInfo>> {
        let Some(ext) = header.zoned() else {
            return Ok(None);
        };
        let geometry = ext.geometry(header.size);
        let mut problem = ext
            .validate(header.size, header.cluster_size(), file_len)
            .err()
            .map(|e| e.to_string());
        if problem.is_none() {
            let forbidden = [
                (header.backing_file.is_some(), "a backing file"),
                (header.data_file().is_some(), "an external data file"),
                (!snapshots.is_empty(), "internal snapshots"),
                (header.extended_l2(), "extended L2 entries"),
                (header.crypt_method != 0, "encryption"),
                (header.version < 3, "qcow2 version 2"),
            ];
            if let Some((_, what)) = forbidden.iter().find(|(c, _)| *c) {
                problem = Some(format!("zoned images cannot have {what}"));
            }
        }
        let mut order = None;
        if problem.is_none() {
            // Paged, never read whole: constant memory for any zone count.
            let scan = super::zoned::scan_wp_array(&geometry, |at, buf| {
                store.read_at(ext.zonedmeta_offset + at, buf)
            })?;
            order = scan.order;
            match scan.order {
                None => {
                    let (i, why) = scan.first_bad.unwrap_or((0, "invalid".into()));
                    problem = Some(format!("write-pointer entry of zone {i}: {why}"));
                }
                Some(WpByteOrder::LittleEndian) => {
                    problem = Some(
                        "the write-pointer array is little-endian (written by an old QEMU patch version)"
                            .into(),
                    )
                }
                Some(WpByteOrder::BigEndian) => {}
            }
        }
        Ok(Some(ZonedInfo {
            ext: ext.clone(),
            geometry,
            order,
            problem,
        }))
    }

    // ---- accessors -------------------------------------------------------

    /// A copy of the current header.
    pub fn header(&self) -> Header {
        lock(&self.meta).header.clone()
    }
    /// Virtual size.
    pub fn size(&self) -> u64 {
        self.p.size
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
        if lock(&self.meta).header.crypt_method != 0 {
            return Err(FormatError::Unsupported(
                "encrypted images are not supported".into(),
            ));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.p.size => Ok(()),
            _ => Err(FormatError::OutOfRange {
                offset,
                len,
                size: self.p.size,
            }),
        }
    }

    // ---- tables ------------------------------------------------------------

    fn validate_table_offset(&self, off: u64, what: &str, owner: &str) -> Result<()> {
        if off % self.p.cs != 0 || off >= MAX_HOST_OFFSET {
            return Err(FormatError::Corrupt(format!(
                "{what} offset {off:#x} ({owner}) is not cluster aligned"
            )));
        }
        Ok(())
    }

    /// Write back every dirty L2 table, after making the refcounts they
    /// depend on durable (one sync for all of them, not one per table).
    fn write_back_l2_tables(&self, m: &mut Meta) -> Result<()> {
        self.flush_refblocks(m)?;
        for off in m.l2.dirty() {
            if let Some(d) = m.l2.peek(off) {
                self.store.write_at(off.0, d)?;
                m.file_len = m.file_len.max(off.0 + self.p.cs);
            }
            m.l2.mark_clean(off);
        }
        Ok(())
    }

    fn make_room_l2(&self, m: &mut Meta) -> Result<()> {
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

    fn load_l2(&self, m: &mut Meta, off: HostOffset) -> Result<()> {
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

    fn l2_get(&self, m: &mut Meta, off: HostOffset, idx: u64) -> Result<(u64, u64)> {
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

    fn l2_set(&self, m: &mut Meta, off: HostOffset, idx: u64, val: u64) -> Result<()> {
        self.load_l2(m, off)?;
        let t =
            m.l2.get_mut(off)
                .ok_or_else(|| FormatError::Corrupt("L2 cache miss".into()))?;
        let i = (idx * 8) as usize;
        t[i..i + 8].copy_from_slice(&val.to_be_bytes());
        Ok(())
    }

    /// L2 table offset for guest cluster `gc` (0 if none).
    fn l2_offset(&self, m: &Meta, gc: u64) -> Result<HostOffset> {
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

    // ---- refcounts -----------------------------------------------------

    fn flush_refblocks(&self, m: &mut Meta) -> Result<()> {
        let dirty = m.rb.dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        for off in dirty {
            if let Some(d) = m.rb.peek(off) {
                self.store.write_at(off.0, d)?;
                m.file_len = m.file_len.max(off.0 + self.p.cs);
            }
            m.rb.mark_clean(off);
        }
        self.store.sync()?;
        Ok(())
    }

    fn load_rb(&self, m: &mut Meta, off: HostOffset) -> Result<()> {
        if m.rb.contains(off) {
            return Ok(());
        }
        while m.rb.is_full() {
            let Some((victim, dirty)) = m.rb.victim() else {
                break;
            };
            if dirty {
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

    fn refblock_offset(&self, m: &Meta, cluster: u64) -> Result<Option<HostOffset>> {
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
    fn refcount(&self, m: &mut Meta, c: u64) -> Result<u64> {
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

    fn set_refcount(&self, m: &mut Meta, c: u64, v: u64) -> Result<()> {
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
    fn is_free(&self, m: &mut Meta, c: u64) -> Result<bool> {
        if c >= m.alloc_end {
            return Ok(true);
        }
        Ok(self.refcount(m, c)? == 0)
    }

    /// Create the refblock for reftable index `rti`, placing it inside its
    /// own range (so it describes itself) at a cluster other than
    /// `reserved`. Every cluster of a range without a refblock is free, so
    /// no search (and no recursion into other ranges) is needed.
    fn new_refblock(&self, m: &mut Meta, rti: u64, reserved: u64) -> Result<HostOffset> {
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
        m.alloc_end = m.alloc_end.max(b + 1);
        // The block is durable before the reftable points at it.
        self.store.write_at(off.0, &block)?;
        m.file_len = m.file_len.max(off.0 + self.p.cs);
        self.store.sync()?;
        m.reftable[rti as usize] = off.0;
        let rt_off = m.header.refcount_table_offset + rti * 8;
        self.store.write_at(rt_off, &off.0.to_be_bytes())?;
        self.store.sync()?;
        m.rb.remove(off);
        Ok(off)
    }

    /// Replace the refcount table by a larger one at the end of the file.
    /// The new table goes past both the end of the file and `reserved` (the
    /// cluster being allocated when the table ran out).
    fn grow_reftable(&self, m: &mut Meta, min_entries: u64, reserved: u64) -> Result<()> {
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
        if k * cs > super::header::MAX_REFTABLE_BYTES {
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
        self.store.write_at(field::REFTABLE_OFFSET, &hdr)?;
        self.store.sync()?;
        let old_off = m.header.refcount_table_offset;
        let old_clusters = m.header.refcount_table_clusters as u64;
        m.header.refcount_table_offset = t * cs;
        m.header.refcount_table_clusters = k as u32;
        m.reftable = table;
        m.alloc_end = m.alloc_end.max(t + k + nb);
        // The old table is unreferenced now that the header is durable.
        if old_clusters > 0 {
            m.pending_decrements.push((old_off / cs, old_clusters));
        }
        Ok(())
    }

    /// Allocate one cluster with refcount 1: the lowest free one, so a
    /// sequential stream gets consecutive clusters at the end of the file.
    fn alloc(&self, m: &mut Meta) -> Result<u64> {
        let mut c = m.free_hint;
        while c < m.alloc_end && !self.is_free(m, c)? {
            c += 1;
        }
        if (c + 1) << self.p.cluster_bits > MAX_HOST_OFFSET {
            return Err(FormatError::NoSpace(
                "image file would exceed 2^56 bytes".into(),
            ));
        }
        self.set_refcount(m, c, 1)?;
        m.alloc_end = m.alloc_end.max(c + 1);
        m.free_hint = c + 1;
        Ok(c)
    }

    fn queue_decrement(&self, m: &mut Meta, ct: ClusterType) {
        let cb = self.p.cluster_bits;
        match ct {
            ClusterType::Normal(h) | ClusterType::ZeroAlloc(h) if !self.p.has_data_file => {
                m.pending_decrements.push((h.0 >> cb, 1));
            }
            ClusterType::Compressed { offset, size } => {
                let first = offset >> cb;
                let last = (offset + size.max(1) - 1) >> cb;
                m.pending_decrements.push((first, last - first + 1));
            }
            _ => {}
        }
    }

    fn apply_decrements(&self, m: &mut Meta) -> Result<()> {
        // New unlocked I/O cannot start while we hold the lock; wait for the
        // running ones, which may still target the clusters about to be freed.
        while self.unlocked_io.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        let list = std::mem::take(&mut m.pending_decrements);
        let cs = self.p.cs;
        let mut punch: Vec<(u64, u64)> = Vec::new();
        for (k, &(first, n)) in list.iter().enumerate() {
            for c in first..first + n {
                let step = self.refcount(m, c).and_then(|rc| {
                    if rc > 0 {
                        self.set_refcount(m, c, rc - 1)?;
                    }
                    Ok(rc)
                });
                match step {
                    Ok(1) => {
                        m.free_hint = m.free_hint.min(c);
                        match punch.last_mut() {
                            Some((s, l)) if *s + *l == c => *l += 1,
                            _ => punch.push((c, 1)),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Keep what is left for the next flush.
                        m.pending_decrements.push((c, first + n - c));
                        m.pending_decrements.extend_from_slice(&list[k + 1..]);
                        return Err(e);
                    }
                }
            }
        }
        for (s, l) in punch {
            // Give the space back; failure to punch is harmless.
            let _ = self.data.discard(s * cs, l * cs);
        }
        Ok(())
    }

    // ---- flush -------------------------------------------------------------

    fn flush_locked(&self, m: &mut Meta) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // Data and refcounts, then L2 tables, then L1 entries.
        self.write_back_l2_tables(m)?;
        self.store.sync()?;
        if !m.l1_dirty.is_empty() {
            let l1_off = m.header.l1_table_offset;
            let dirty: Vec<usize> = m.l1_dirty.iter().copied().collect();
            for i in dirty {
                self.store
                    .write_at(l1_off + i as u64 * 8, &m.l1[i].to_be_bytes())?;
                // Only a written entry stops being dirty: after a failed
                // write the rest is retried by the next flush.
                m.l1_dirty.remove(&i);
            }
            self.store.sync()?;
        }
        if !m.pending_decrements.is_empty() {
            self.apply_decrements(m)?;
        }
        Ok(())
    }

    /// Write back every cached table in dependency order and sync.
    pub fn flush(&self) -> Result<()> {
        let mut m = lock(&self.meta);
        self.flush_locked(&mut m)?;
        // Decrements applied by the first pass are written now, so a clean
        // close leaves no leaks.
        if m.rb.any_dirty() {
            self.flush_refblocks(&mut m)?;
        }
        Ok(())
    }

    // ---- mapping and reads ---------------------------------------------------

    fn map_range(&self, m: &mut Meta, offset: u64, len: u64) -> Result<Vec<Piece>> {
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

    fn read_compressed(&self, offset: u64, size: u64) -> Result<Vec<u8>> {
        if self.p.has_data_file {
            return Err(FormatError::Corrupt(
                "compressed cluster in an image with an external data file".into(),
            ));
        }
        let size = size.min(2 * self.p.cs + 512);
        let mut src = vec![0u8; size as usize];
        self.store.read_at_zero_fill(offset, &mut src)?;
        let mut out = vec![0u8; self.p.cs as usize];
        decompress(self.p.compression_type, &src, &mut out).map_err(|e| {
            FormatError::Corrupt(format!(
                "compressed cluster at host offset {offset:#x}: {e}"
            ))
        })?;
        Ok(out)
    }

    fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<()> {
        match self.data.read_at(host, buf) {
            Ok(()) => Ok(()),
            // Clusters of a sparse tail past EOF read as zero.
            Err(StorageError::ShortRead { .. }) => Ok(self.data.read_at_zero_fill(host, buf)?),
            Err(e) => Err(e.into()),
        }
    }

    fn read_unalloc(&self, guest: u64, buf: &mut [u8]) -> Result<()> {
        match &self.backing {
            Some(b) => b.read_guest(guest, buf),
            None => {
                // No lock here: this runs as unlocked I/O (see UnlockedIo).
                if self.p.names_backing {
                    return Err(FormatError::Unsupported(
                        "the backing file was not opened".into(),
                    ));
                }
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn encryption_check(&self) -> Result<()> {
        if lock(&self.meta).header.crypt_method != 0 {
            return Err(FormatError::Unsupported(
                "Parameter 'encrypt.key-secret' is required for cipher: zcow does not decrypt images".into(),
            ));
        }
        Ok(())
    }

    /// Read guest bytes.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.encryption_check()?;
        let (pieces, _io) = {
            let mut m = lock(&self.meta);
            let p = self.map_range(&mut m, offset, buf.len() as u64)?;
            (p, UnlockedIo::start(&self.unlocked_io))
        };
        let mut at = 0usize;
        for p in pieces {
            match p {
                Piece::Zero(l) => {
                    buf[at..at + l as usize].fill(0);
                    at += l as usize;
                }
                Piece::Unalloc { guest, len } => {
                    self.read_unalloc(guest, &mut buf[at..at + len as usize])?;
                    at += len as usize;
                }
                Piece::Data { host, len } => {
                    self.read_data(host, &mut buf[at..at + len as usize])?;
                    at += len as usize;
                }
                Piece::Compressed {
                    offset: co,
                    size,
                    in_off,
                    len,
                } => {
                    let c = self.read_compressed(co, size)?;
                    buf[at..at + len as usize]
                        .copy_from_slice(&c[in_off as usize..(in_off + len) as usize]);
                    at += len as usize;
                }
            }
        }
        Ok(())
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

    // ---- writes --------------------------------------------------------------

    /// L2 table for writing guest cluster `gc`: allocates a new table or
    /// copies a shared one.
    fn l2_for_write(&self, m: &mut Meta, gc: u64) -> Result<HostOffset> {
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
            let c = self.alloc(m)?;
            let new = HostCluster(c).offset(self.p.cluster_bits);
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
        self.make_room_l2(m)?;
        m.l2.insert(new, copy, true);
        m.l1[l1i] = new.0 | COPIED;
        m.l1_dirty.insert(l1i);
        m.pending_decrements.push((off.0 >> self.p.cluster_bits, 1));
        Ok(new)
    }

    /// Current contents of one guest cluster (for copy-on-write).
    fn cluster_contents(&self, m: &mut Meta, gc: u64, ct: ClusterType) -> Result<Vec<u8>> {
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

    /// Write guest bytes.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.writable()?;
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let mut m = lock(&self.meta);
        // Fast path: every cluster already allocated and owned: write in place
        // outside the lock.
        if let Some(runs) = self.inplace_runs(&mut m, offset, data.len() as u64)? {
            let _io = UnlockedIo::start(&self.unlocked_io);
            drop(m);
            let mut at = 0usize;
            for (host, len) in runs {
                self.data.write_at(host, &data[at..at + len as usize])?;
                at += len as usize;
            }
            return Ok(());
        }
        self.write_slow(&mut m, offset, data)
    }

    fn inplace_runs(&self, m: &mut Meta, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
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

    fn write_slow(&self, m: &mut Meta, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.p.cs;
        let cb = self.p.cluster_bits;
        struct Step {
            gc: u64,
            l2: HostOffset,
            host: u64,
            in_off: u64,
            n: u64,
            // Full-cluster buffer to write instead of the caller's slice.
            buf: Option<Vec<u8>>,
            new_entry: Option<u64>,
            old: Option<ClusterType>,
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut pos = offset;
        let end = offset + data.len() as u64;
        // Phase 1: decide where each cluster goes, allocating as needed.
        while pos < end {
            let gc = pos >> cb;
            let in_off = pos & (cs - 1);
            let n = (cs - in_off).min(end - pos);
            let l2 = self.l2_for_write(m, gc)?;
            let idx = gc % self.p.l2_entries;
            let (w0, _) = self.l2_get(m, l2, idx)?;
            if w0 & COMPRESSED == 0 && w0 & L2_RESERVED != 0 {
                return Err(FormatError::Corrupt(format!(
                    "L2 entry {idx} of the table at {l2} has reserved bits set ({w0:#x})"
                )));
            }
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
                let new_entry = (w0 & COPIED == 0).then_some(h.0 | COPIED);
                steps.push(Step {
                    gc,
                    l2,
                    host: h.0 + in_off,
                    in_off,
                    n,
                    buf: None,
                    new_entry,
                    old: None,
                });
            } else {
                let full = in_off == 0 && n == cs;
                let c = self.alloc(m)?;
                let host = c << cb;
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
                    b[in_off as usize..(in_off + n) as usize]
                        .copy_from_slice(&data[s..s + n as usize]);
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
                    in_off,
                    n,
                    buf,
                    new_entry: Some(host | COPIED),
                    old,
                });
            }
            pos += n;
        }
        // Phase 2: write the data, coalescing contiguous pieces.
        let mut run: Option<(u64, usize, usize)> = None; // (host, data start, len)
        let mut data_pos = 0usize;
        let flush_run = |run: &mut Option<(u64, usize, usize)>| -> Result<()> {
            if let Some((h, s, l)) = run.take() {
                self.data.write_at(h, &data[s..s + l])?;
            }
            Ok(())
        };
        let mut max_end = m.file_len;
        for st in &steps {
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
        // Phase 3: publish the mappings.
        for st in steps {
            let _ = st.in_off;
            if let Some(e) = st.new_entry {
                self.l2_set(m, st.l2, st.gc % self.p.l2_entries, e)?;
            }
            if let Some(old) = st.old {
                self.queue_decrement(m, old);
            }
        }
        Ok(())
    }

    /// How a range of whole clusters should end up.
    fn set_whole_clusters(
        &self,
        m: &mut Meta,
        first_gc: u64,
        count: u64,
        mode: ClearMode,
    ) -> Result<()> {
        let cb = self.p.cluster_bits;
        for gc in first_gc..first_gc + count {
            let l2 = self.l2_offset(m, gc)?;
            let idx = gc % self.p.l2_entries;
            let cur = if l2.0 == 0 {
                ClusterType::Unallocated
            } else {
                let (w0, _) = self.l2_get(m, l2, idx)?;
                decode_l2(w0, cb, false, false)
            };
            let want_zero_flag = match mode {
                ClearMode::Zero => true,
                ClearMode::Unallocate => false,
                ClearMode::Discard => self.backing.is_some() || m.header.backing_file.is_some(),
            };
            let target = if want_zero_flag { ZERO } else { 0 };
            let already = match cur {
                ClusterType::Unallocated => target == 0 || (l2.0 == 0 && !want_zero_flag),
                ClusterType::ZeroPlain => target == ZERO,
                _ => false,
            };
            if already {
                continue;
            }
            if cur == ClusterType::Unallocated && target == 0 {
                continue;
            }
            let l2w = self.l2_for_write(m, gc)?;
            self.l2_set(m, l2w, idx, target)?;
            self.queue_decrement(m, cur);
        }
        Ok(())
    }

    fn clear_range(&self, offset: u64, len: u64, mode: ClearMode) -> Result<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let cs = self.p.cs;
        let end = offset + len;
        let first_full = offset.div_ceil(cs) * cs;
        let last_full = end / cs * cs;
        // Partial head/tail: discard leaves them; zeroing writes zeroes.
        let partial: Vec<(u64, u64)> = if first_full >= last_full {
            vec![(offset, len)]
        } else {
            let mut v = Vec::new();
            if offset < first_full {
                v.push((offset, first_full - offset));
            }
            if last_full < end {
                v.push((last_full, end - last_full));
            }
            v
        };
        if mode != ClearMode::Discard {
            for (o, l) in &partial {
                if first_full >= last_full || *o != first_full {
                    self.zero_partial(*o, *l)?;
                }
            }
        }
        if first_full < last_full {
            let mut m = lock(&self.meta);
            self.set_whole_clusters(&mut m, first_full / cs, (last_full - first_full) / cs, mode)?;
        }
        Ok(())
    }

    fn zero_partial(&self, offset: u64, len: u64) -> Result<()> {
        // Skip work when the range already reads as zero.
        let st = self.block_status(offset, len)?;
        let covered: u64 = st.iter().map(|r| r.0).sum();
        if covered == len && st.iter().all(|&(_, _, zero)| zero) {
            return Ok(());
        }
        let z = vec![0u8; len as usize];
        self.write(offset, &z)
    }

    /// Make a range read as zero (zero flag on whole clusters, written zeroes
    /// at the unaligned edges); whole clusters lose their host cluster.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.clear_range(offset, len, ClearMode::Zero)
    }

    /// Discard: whole clusters are deallocated (they read as zero, or as
    /// zero-flagged when a backing file would otherwise show through);
    /// partial clusters are left alone.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.clear_range(offset, len, ClearMode::Discard)
    }

    /// Make a range read as zero and free every whole cluster in it (the
    /// zone engine's reset and finish).
    pub fn deallocate(&self, offset: u64, len: u64) -> Result<()> {
        self.clear_range(offset, len, ClearMode::Unallocate)
    }

    // ---- zoned ----------------------------------------------------------------

    /// Read and decode the whole write-pointer array.
    pub fn read_wp_entries(&self) -> Result<Vec<WpEntry>> {
        let z = self
            .zoned
            .as_ref()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        // A check-mode open keeps an extension that failed validation: its
        // size may be anything and its geometry overflows the decoder.
        z.ext.validate(self.p.size, self.p.cs, self.store.len()?)?;
        if z.ext.zonedmeta_size > super::zoned::WP_WHOLE_LIMIT {
            return Err(FormatError::Unsupported(format!(
                "the write-pointer array of {} zones ({} MiB) is too large to read whole (limit {} MiB); it is read in pages instead",
                z.ext.nr_zones,
                z.ext.zonedmeta_size >> 20,
                super::zoned::WP_WHOLE_LIMIT >> 20
            )));
        }
        let mut raw = vec![0u8; z.ext.zonedmeta_size as usize];
        self.store.read_at(z.ext.zonedmeta_offset, &mut raw)?;
        let (entries, _) = decode_wp_array(&z.geometry, &raw);
        let _ = GuestOffset(0);
        Ok(entries)
    }

    /// Read the entries of zones `first..first+out.len()` (in the byte order
    /// the array was found in at open) without reading the rest.
    pub fn read_wp_range(&self, first: u32, out: &mut [u64]) -> Result<()> {
        let z = self
            .zoned
            .as_ref()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        z.ext.validate(self.p.size, self.p.cs, self.store.len()?)?;
        if u64::from(first) + out.len() as u64 > u64::from(z.ext.nr_zones) {
            return Err(FormatError::OutOfRange {
                offset: u64::from(first),
                len: out.len() as u64,
                size: u64::from(z.ext.nr_zones),
            });
        }
        let order = z.order.unwrap_or(WpByteOrder::BigEndian);
        let mut raw = vec![0u8; out.len().min(super::zoned::WP_PAGE as usize) * 8];
        let mut done = 0usize;
        while done < out.len() {
            let k = (out.len() - done).min(super::zoned::WP_PAGE as usize);
            let at = z.ext.zonedmeta_offset + (u64::from(first) + done as u64) * 8;
            self.store.read_at(at, &mut raw[..k * 8])?;
            for (o, c) in out[done..done + k].iter_mut().zip(raw.chunks_exact(8)) {
                *o = order.decode(c).0;
            }
            done += k;
        }
        Ok(())
    }

    /// Write the entries of zones `first..` big-endian (not synced).
    pub fn write_wp_entries(&self, first: u32, entries: &[WpEntry]) -> Result<()> {
        if self.read_only {
            return Err(FormatError::ReadOnly);
        }
        let z = self
            .zoned
            .as_ref()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        // Never write through an extension that failed validation.
        z.ext.validate(self.p.size, self.p.cs, self.store.len()?)?;
        if first as u64 + entries.len() as u64 > z.ext.nr_zones as u64 {
            return Err(FormatError::OutOfRange {
                offset: first as u64,
                len: entries.len() as u64,
                size: z.ext.nr_zones as u64,
            });
        }
        self.store.write_at(
            z.ext.zonedmeta_offset + first as u64 * 8,
            &encode_wp_entries(entries),
        )?;
        Ok(())
    }

    /// Sync the image file (after the caller wrote write-pointer entries).
    pub fn sync_file(&self) -> Result<()> {
        Ok(self.store.sync()?)
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

    /// Set or clear the corrupt bit (v3 only) durably.
    pub fn set_corrupt_bit(&self, on: bool) -> Result<()> {
        let mut m = lock(&self.meta);
        if m.header.version < 3 || self.read_only {
            return Ok(());
        }
        let mut f = m.header.incompatible_features;
        if on {
            f |= INCOMPAT_CORRUPT;
        } else {
            f &= !INCOMPAT_CORRUPT;
        }
        self.store.write_at(field::INCOMPAT, &f.to_be_bytes())?;
        self.store.sync()?;
        m.header.incompatible_features = f;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClearMode {
    Zero,
    Discard,
    Unallocate,
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.flush();
        }
    }
}

fn probe_is_qcow2(p: &Path) -> Result<bool> {
    let s = FileStorage::open(p, true)
        .map_err(|e| invalid!("Could not open backing file '{}': {e}", p.display()))?;
    let mut m = [0u8; 4];
    if s.len()? < 4 {
        return Ok(false);
    }
    s.read_at(0, &mut m)?;
    Ok(u32::from_be_bytes(m) == super::header::QCOW_MAGIC)
}
