//! Fuzz target logic, kept in the library so that stable `cargo test` can
//! replay the corpora (`tests/fuzz_corpus.rs`) and the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` stay one-liners.
//!
//! Every `fuzz_*` function takes arbitrary bytes and must never panic, hang
//! or allocate without bound on any input; returning early (an error from
//! the code under test) is fine. A panic is a finding, except for the
//! deliberate `panic!`s of the differential checks in [`fuzz_image_write`],
//! which report a wrong result (a finding too).
//!
//! Structured inputs are decoded with [`ByteReader`], a tiny deterministic
//! reader (like `arbitrary::Unstructured`, but without a dependency of the
//! main package), so a corpus file means the same thing to libFuzzer and to
//! `cargo test`.

use crate::format::create::{create, CreateOptions, Preallocation};
use crate::format::header::{Header, ParseMode};
use crate::format::l2::{decode_l2, l1_l2_offset, ClusterType};
use crate::format::refcount;
use crate::format::snapshot::read_table;
use crate::format::zoned::{decode_wp_array, initial_entries, ZonedCreateOptions, ZonedExt};
use crate::format::{BackingPolicy, OpenOptions, Qcow2};
use crate::storage::{MemStorage, Storage};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest input the image targets look at (bigger inputs are truncated):
/// keeps every image tiny and every execution fast.
pub const MAX_IMAGE_INPUT: usize = 1 << 20;

/// Longest single guest read the read targets issue.
const MAX_READ: u64 = 256 << 10;

/// Total guest bytes one execution of [`fuzz_image_read`] reads at most.
const READ_BUDGET: u64 = 4 << 20;

/// A deterministic reader of structured values from fuzz input. When the
/// input runs out every value reads as zero, so each input decodes to
/// exactly one sequence of values.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
    /// Next byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }
    /// Next big-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// Next big-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Next big-endian u64.
    pub fn u64(&mut self) -> u64 {
        ((self.u32() as u64) << 32) | self.u32() as u64
    }
    /// A value in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.u64() % n
        }
    }
    /// Next boolean.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
}

/// Target `header`: parse cluster 0 (strict and check mode), the zoned
/// extension and, when it validates, the write-pointer array found at its
/// offset in the input; re-encode a parsed header and parse it again.
pub fn fuzz_header(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IMAGE_INPUT)];
    let _ = Header::peek_cluster_size(data);
    let _ = Header::parse(
        data,
        ParseMode {
            allow_empty_reftable: true,
        },
    );
    let Ok(h) = Header::parse(data, ParseMode::default()) else {
        return;
    };
    let _ = h.required_l1_size();
    if let Some(z) = h.zoned() {
        zoned_ext_checks(z, h.size, h.cluster_size(), data);
    }
    // Round trip: what zcow writes back must parse to the same header.
    let mut h2 = h.clone();
    if let Ok(enc) = h2.encode() {
        match Header::parse(&enc, ParseMode::default()) {
            Ok(h3) => {
                if h3.backing_file != h.backing_file || h3.extensions.len() < h.extensions.len() {
                    panic!("header re-encode changed it:\n{h:?}\n{h3:?}");
                }
            }
            Err(e) => panic!("re-encoded header does not parse: {e}\n{h:?}"),
        }
    }
}

fn zoned_ext_checks(z: &ZonedExt, size: u64, cs: u64, file: &[u8]) {
    let _ = z.expected_zones(size);
    let enc = z.encode();
    match ZonedExt::parse(&enc) {
        Ok(z2) if &z2 == z => {}
        other => panic!("zoned extension does not round-trip: {z:?} -> {other:?}"),
    }
    if z.validate(size, cs, file.len() as u64).is_ok() {
        let geo = z.geometry(size);
        let start = z.zonedmeta_offset as usize;
        let end = start + z.zonedmeta_size as usize;
        let (entries, _) = decode_wp_array(&geo, &file[start..end]);
        assert_eq!(entries.len() as u64, z.nr_zones as u64);
    }
}

/// Target `zoned_ext`: [`ZonedExt::parse`] on the raw extension body, and the
/// validation and write-pointer decoding with a virtual size and file taken
/// from the input.
pub fn fuzz_zoned_ext(data: &[u8]) {
    let mut r = ByteReader::new(data);
    let size = r.u64();
    let cs = 1u64 << (9 + r.below(13));
    let body_len = r.u8() as usize;
    let rest = r.rest();
    let body = &rest[..body_len.min(rest.len())];
    let file = &rest[body.len()..];
    if let Ok(z) = ZonedExt::parse(body) {
        zoned_ext_checks(&z, size, cs, file);
    }
}

fn read_budgeted(img: &Qcow2, off: u64, len: u64, budget: &mut u64) {
    let size = img.size();
    if off >= size || *budget == 0 {
        return;
    }
    let len = len.min(size - off).min(MAX_READ).min(*budget);
    *budget -= len;
    let mut buf = vec![0u8; len as usize];
    let _ = img.read(off, &mut buf);
    let _ = img.block_status(off, len);
}

/// Target `image_read`: the input is an image file. Open it read-only
/// (normal and check mode, with tiny table caches so eviction runs) and read
/// from offsets chosen by the last 32 bytes of the input plus a fixed set of
/// probes; then scan the start of the disk. Reads are bounded in length and
/// total.
pub fn fuzz_image_read(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IMAGE_INPUT)];
    let tail = &data[data.len().saturating_sub(32)..];
    for check_mode in [false, true] {
        let store: Arc<dyn Storage> = Arc::new(MemStorage::read_only(data.to_vec()));
        let opts = OpenOptions {
            read_only: true,
            check_mode,
            l2_cache_tables: 1 + tail.first().copied().unwrap_or(0) as usize % 4,
            refblock_cache_tables: 1,
            // Check mode is what `info`/`check` use: a named backing file is
            // skipped rather than refused, so such images get read too.
            backing: if check_mode {
                BackingPolicy::Skip
            } else {
                BackingPolicy::Refuse
            },
        };
        let Ok(img) = Qcow2::open(store, &opts) else {
            continue;
        };
        let _ = img.header();
        let _ = img.snapshots();
        let _ = img.read_wp_entries();
        let _ = img.allocated_clusters(0, img.size().min(1 << 20));
        let size = img.size();
        let cs = img.cluster_size();
        let mut budget = READ_BUDGET;
        let mut r = ByteReader::new(tail);
        for _ in 0..4 {
            let off = r.below(size.max(1));
            let len = 1 + r.u32() as u64 % (3 * cs);
            read_budgeted(&img, off, len, &mut budget);
        }
        for off in [0, size / 2, size.saturating_sub(1), size.saturating_sub(cs)] {
            read_budgeted(&img, off, cs + 1, &mut budget);
        }
        let mut off = 0;
        while off < size && budget > 0 {
            read_budgeted(&img, off, MAX_READ, &mut budget);
            off += MAX_READ;
        }
    }
}

/// A store that refuses to grow past a fixed size, so hostile metadata cannot
/// make the in-memory image big (writes past the cap fail with ENOSPC). For
/// targets that write to untrusted images (`image_rw`, later `check -r`).
#[derive(Debug)]
pub struct CappedStorage {
    inner: MemStorage,
    cap: u64,
}

impl CappedStorage {
    /// A store holding `bytes` that cannot grow past `cap` bytes.
    pub fn new(bytes: Vec<u8>, cap: u64) -> Self {
        Self {
            inner: MemStorage::from_bytes(bytes),
            cap,
        }
    }
    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.inner.to_vec()
    }
    fn enospc(&self, op: crate::storage::Op, offset: u64) -> crate::storage::StorageError {
        crate::storage::StorageError::Injected {
            op,
            offset,
            kind: crate::storage::InjectedKind::Enospc,
        }
    }
}

impl Storage for CappedStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::storage::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> crate::storage::Result<()> {
        if offset.saturating_add(data.len() as u64) > self.cap {
            return Err(self.enospc(crate::storage::Op::Write, offset));
        }
        self.inner.write_at(offset, data)
    }
    fn sync(&self) -> crate::storage::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> crate::storage::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> crate::storage::Result<()> {
        if len > self.cap {
            return Err(self.enospc(crate::storage::Op::SetLen, len));
        }
        self.inner.set_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> crate::storage::Result<()> {
        self.inner.discard(offset, len)
    }
}

/// Cap of the in-memory store of the write targets.
pub const WRITE_STORE_CAP: u64 = 64 << 20;

/// Target `image_rw`: the input is an image file (plus a trailer of
/// operations in its last 64 bytes). Open it read-write and write, zero,
/// discard and flush on it: hostile metadata must give errors, never a
/// panic, a hang or unbounded growth (the store is capped at 64 MiB).
///
/// When the image is *consistent* ([`refcount_problems`] finds nothing:
/// every cluster is counted exactly as often as it is referenced, snapshots
/// included) and its whole disk (≤ 1 MiB) reads back, the target is also
/// differential: the disk is loaded into a model, every successful operation
/// is applied to it, reads must match it, and after the close the image must
/// still be consistent and read back the model. This covers copy-on-write
/// of clusters shared with snapshots, compressed clusters and QEMU layouts,
/// which [`fuzz_image_write`]'s fresh images never have.
pub fn fuzz_image_rw(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IMAGE_INPUT)];
    let tail = &data[data.len().saturating_sub(64)..];
    let consistent = refcount_problems(data).is_ok();
    let store = Arc::new(CappedStorage::new(data.to_vec(), WRITE_STORE_CAP));
    let mut r = ByteReader::new(tail);
    let opts = OpenOptions {
        read_only: false,
        l2_cache_tables: 1 + r.u8() as usize % 4,
        refblock_cache_tables: 1 + r.u8() as usize % 4,
        ..Default::default()
    };
    let Ok(img) = Qcow2::open(store.clone(), &opts) else {
        return;
    };
    let size = img.size();
    let cs = img.cluster_size();
    let mut model = None;
    if consistent && size <= 1 << 20 && img.header().data_file().is_none() {
        let mut m = vec![0u8; size as usize];
        if img.read(0, &mut m).is_ok() {
            model = Some(m);
        }
    }
    let mut budget = READ_BUDGET;
    for i in 0..8 {
        if r.is_empty() || size == 0 {
            break;
        }
        let op = r.u8() % 6;
        let off = r.below(size);
        let len = (1 + r.u16() as u64 % (3 * cs))
            .min(size - off)
            .min(MAX_READ);
        let (o, e) = (off as usize, (off + len) as usize);
        let res = match op {
            0 | 1 => {
                let buf = vec![r.u8(); len as usize];
                let res = img.write(off, &buf);
                if let Some(m) = &mut model {
                    m[o..e].copy_from_slice(&buf);
                }
                res
            }
            2 => {
                if let Some(m) = &mut model {
                    m[o..e].fill(0);
                }
                img.write_zeroes(off, len)
            }
            3 => {
                let (first, last) = (off.div_ceil(cs) * cs, (off + len) / cs * cs);
                if let (Some(m), true) = (&mut model, first < last) {
                    m[first as usize..last as usize].fill(0);
                }
                img.discard(off, len)
            }
            4 => img.flush(),
            _ => {
                match &model {
                    Some(m) => compare(&img, m, off, len, &format!("image_rw op {i}")),
                    None => read_budgeted(&img, off, len, &mut budget),
                }
                Ok(())
            }
        };
        if res.is_err() {
            // The model is void after a failed operation (it may have
            // partly happened); carry on without it.
            model = None;
            break;
        }
    }
    if img.flush().is_err() {
        model = None;
    }
    if let Some(m) = &model {
        compare(&img, m, 0, size, "image_rw before close");
    }
    drop(img);
    let bytes = store.to_vec();
    if let Some(m) = &model {
        if let Err(e) = refcount_problems(&bytes) {
            panic!("image_rw: a consistent image became inconsistent: {e}");
        }
        let ro: Arc<dyn Storage> = Arc::new(MemStorage::read_only(bytes.clone()));
        let opts = OpenOptions {
            read_only: true,
            ..Default::default()
        };
        let img = Qcow2::open(ro, &opts)
            .unwrap_or_else(|e| panic!("image_rw: re-open after writes failed: {e}"));
        compare(&img, m, 0, size, "image_rw after close");
    }
    // Whatever was written must still be openable or refused cleanly.
    fuzz_image_read(&bytes[..bytes.len().min(MAX_IMAGE_INPUT)]);
}

/// One operation of [`fuzz_image_write`].
#[derive(Debug, Clone, Copy)]
enum Op {
    Write { off: u64, len: u64, seed: u8 },
    Zero { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    Deallocate { off: u64, len: u64 },
    Flush,
    Read { off: u64, len: u64 },
    Reopen { l2_cache: usize, rb_cache: usize },
}

/// Parameters of the image [`fuzz_image_write`] creates.
#[derive(Debug, Clone)]
struct WriteSetup {
    create: CreateOptions,
    l2_cache: usize,
    rb_cache: usize,
}

fn decode_setup(r: &mut ByteReader) -> WriteSetup {
    const CLUSTERS: [u64; 5] = [512, 1024, 4096, 16384, 65536];
    let mut cs = CLUSTERS[r.u8() as usize % CLUSTERS.len()];
    let refcount_bits = 1u32 << (r.u8() % 7);
    // Up to 1 MiB, in 512-byte steps, at least one sector.
    let size = (1 + r.u16() as u64 % 2048) * 512;
    let flags = r.u8();
    if flags & 1 != 0 && cs < 1024 {
        // Header, feature table and zoned extension need more than 512 bytes.
        cs = 1024;
    }
    let zoned = (flags & 1 != 0).then(|| {
        let zone_size = (cs.max(512) << (r.u8() % 4)).max(4096);
        let nr = size.div_ceil(zone_size).max(1);
        let cap_sectors = zone_size / 512;
        ZonedCreateOptions {
            zone_size: Some(zone_size),
            zone_capacity: Some((1 + r.below(cap_sectors)) * 512),
            conventional_zones: Some(r.below(nr) as u32),
            ..Default::default()
        }
    });
    WriteSetup {
        create: CreateOptions {
            size,
            cluster_size: cs,
            refcount_bits,
            lazy_refcounts: flags & 2 != 0,
            preallocation: if flags & 4 != 0 {
                Preallocation::Metadata
            } else {
                Preallocation::Off
            },
            compression_type: (flags >> 3) & 1,
            zoned,
            ..Default::default()
        },
        l2_cache: 1 + (flags >> 4) as usize % 4,
        rb_cache: 1 + (flags >> 6) as usize % 4,
    }
}

fn decode_op(r: &mut ByteReader, size: u64, cs: u64) -> Op {
    let kind = r.u8();
    let range = |r: &mut ByteReader| {
        // Mostly cluster-aligned ranges of a few clusters, sometimes odd ones.
        let odd = r.u8();
        let (off, len) = if odd & 3 == 0 {
            let off = r.below(size);
            (off, 1 + r.u16() as u64 % (4 * cs))
        } else {
            let clusters = size.div_ceil(cs);
            let off = r.below(clusters) * cs;
            (off, (1 + r.u8() as u64 % 4) * cs)
        };
        (off.min(size), len.min(size - off.min(size)).min(MAX_READ))
    };
    match kind % 16 {
        0..=5 => {
            let (off, len) = range(r);
            Op::Write {
                off,
                len,
                seed: r.u8(),
            }
        }
        6 | 7 => {
            let (off, len) = range(r);
            Op::Zero { off, len }
        }
        8 | 9 => {
            let (off, len) = range(r);
            Op::Discard { off, len }
        }
        10 => {
            let (off, len) = range(r);
            Op::Deallocate { off, len }
        }
        11 => Op::Flush,
        12..=14 => {
            let (off, len) = range(r);
            Op::Read { off, len }
        }
        _ => Op::Reopen {
            l2_cache: 1 + r.u8() as usize % 4,
            rb_cache: 1 + r.u8() as usize % 4,
        },
    }
}

fn pattern(seed: u8, off: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (off + i).wrapping_mul(0x9e37_79b9) >> 7;
            seed ^ (x as u8) | 1
        })
        .collect()
}

fn open_rw(store: &Arc<MemStorage>, l2: usize, rb: usize) -> Qcow2 {
    let opts = OpenOptions {
        l2_cache_tables: l2,
        refblock_cache_tables: rb,
        ..Default::default()
    };
    let s: Arc<dyn Storage> = store.clone();
    Qcow2::open(s, &opts).unwrap_or_else(|e| panic!("re-open read-write failed: {e}"))
}

fn compare(img: &Qcow2, model: &[u8], off: u64, len: u64, what: &str) {
    let mut buf = vec![0u8; len as usize];
    if let Err(e) = img.read(off, &mut buf) {
        panic!("{what}: read at {off:#x}+{len:#x} failed: {e}");
    }
    let want = &model[off as usize..(off + len) as usize];
    if buf != want {
        let i = buf.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{what}: read at {off:#x}+{len:#x} differs from the model at guest offset {:#x}: got {:#x}, want {:#x}",
            off + i as u64,
            buf[i],
            want[i]
        );
    }
}

/// Target `image_write` (differential): create a small image (cluster size,
/// refcount width, size, zoned layout, preallocation, cache sizes all from
/// the input), apply a sequence of writes, write-zeroes, discards,
/// deallocations, flushes, reads and re-opens, and compare every read with
/// an in-memory model of the guest bytes. At the end the image is closed,
/// its header parsed again, re-opened read-only and read-write and compared
/// whole, its refcounts recomputed from the L1/L2 tables (exact: a clean
/// close leaks nothing), and a zoned image's write-pointer array must be
/// untouched. Any mismatch or error panics.
pub fn fuzz_image_write(data: &[u8]) {
    let mut r = ByteReader::new(data);
    let setup = decode_setup(&mut r);
    let store = Arc::new(MemStorage::new());
    if create(store.as_ref(), &setup.create).is_err() {
        // Only option combinations create refuses (e.g. zone geometry).
        return;
    }
    let size = setup.create.size;
    let cs = setup.create.cluster_size;
    let wp_before = {
        let img = open_rw(&store, setup.l2_cache, setup.rb_cache);
        img.zoned().map(|z| initial_entries(&z.ext))
    };
    let mut model = vec![0u8; size as usize];
    let mut img = Some(open_rw(&store, setup.l2_cache, setup.rb_cache));
    let mut n = 0;
    while !r.is_empty() && n < 64 {
        n += 1;
        let op = decode_op(&mut r, size, cs);
        let cur = img.as_ref().expect("image open");
        let what = format!("op {n} {op:?}");
        let res = match op {
            Op::Write { off, len, seed } => {
                let p = pattern(seed, off, len);
                model[off as usize..(off + len) as usize].copy_from_slice(&p);
                cur.write(off, &p)
            }
            Op::Zero { off, len } | Op::Deallocate { off, len } => {
                model[off as usize..(off + len) as usize].fill(0);
                if matches!(op, Op::Zero { .. }) {
                    cur.write_zeroes(off, len)
                } else {
                    cur.deallocate(off, len)
                }
            }
            Op::Discard { off, len } => {
                // Whole clusters read as zero afterwards; partial ones keep
                // their data.
                let first = off.div_ceil(cs) * cs;
                let last = (off + len) / cs * cs;
                if first < last {
                    model[first as usize..last as usize].fill(0);
                }
                cur.discard(off, len)
            }
            Op::Flush => cur.flush(),
            Op::Read { off, len } => {
                compare(cur, &model, off, len, &what);
                Ok(())
            }
            Op::Reopen { l2_cache, rb_cache } => {
                drop(img.take());
                img = Some(open_rw(&store, l2_cache, rb_cache));
                Ok(())
            }
        };
        if let Err(e) = res {
            panic!("{what} failed on a valid image: {e}");
        }
    }
    let cur = img.take().expect("image open");
    if let Err(e) = cur.flush() {
        panic!("final flush failed: {e}");
    }
    compare(&cur, &model, 0, size, "before close");
    drop(cur);
    // The closed image: header, read-only open, whole-disk compare.
    let bytes = store.to_vec();
    let c0 = &bytes[..bytes.len().min(cs as usize)];
    if let Err(e) = Header::parse(c0, ParseMode::default()) {
        panic!("header of the written image does not parse: {e}");
    }
    {
        let ro: Arc<dyn Storage> = Arc::new(MemStorage::read_only(bytes.clone()));
        let img = Qcow2::open(
            ro,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("re-open read-only failed: {e}"));
        compare(&img, &model, 0, size, "after close (read-only)");
        if let Some(want) = &wp_before {
            let z = img.zoned().expect("zoned image lost its zoned extension");
            if let Some(p) = &z.problem {
                panic!("zoned metadata damaged by plain writes: {p}");
            }
            match img.read_wp_entries() {
                Ok(got) if &got == want => {}
                other => panic!("write-pointer array changed by plain writes: {other:?}"),
            }
        }
    }
    if let Err(e) = refcount_problems(&bytes) {
        panic!("refcounts of the closed image are wrong: {e}");
    }
    let img = open_rw(&store, 2, 2);
    compare(&img, &model, 0, size, "after close (read-write)");
}

/// Recompute the refcount of every cluster of an image from its metadata
/// (header, refcount table and blocks, active and snapshot L1 tables, the
/// snapshot table, L2 tables, data and compressed clusters, write-pointer
/// array) and compare with the stored refcounts; returns the first
/// difference (a leak counts). Images with a data file, bitmaps or
/// encryption are reported as not modelled. Works on any bytes: hostile
/// images give an error, never a panic.
pub fn refcount_problems(bytes: &[u8]) -> Result<(), String> {
    /// Table entries looked at, at most (bounds the time on hostile input).
    const BUDGET: u64 = 8 << 20;
    let cs = Header::peek_cluster_size(bytes).map_err(|e| e.to_string())?;
    let c0 = &bytes[..bytes.len().min(cs as usize)];
    let h = Header::parse(c0, ParseMode::default()).map_err(|e| e.to_string())?;
    if h.data_file().is_some() || h.bitmaps().is_some() || h.crypt_method != 0 {
        return Err("data file, bitmaps and encryption are not modelled".into());
    }
    let cb = h.cluster_bits;
    let file_clusters = (bytes.len() as u64).div_ceil(cs);
    let mut budget = BUDGET;
    let mut spend = |n: u64| -> Result<(), String> {
        budget = budget
            .checked_sub(n)
            .ok_or_else(|| "too much metadata to model".to_string())?;
        Ok(())
    };
    let be64 = |off: u64| -> Result<u64, String> {
        let s = usize::try_from(off)
            .ok()
            .and_then(|o| bytes.get(o..o.checked_add(8)?))
            .ok_or_else(|| format!("table entry at {off:#x} past the end of the file"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    };
    let mut want: BTreeMap<u64, u64> = BTreeMap::new();
    // Count one reference to every cluster of [off, off + len); everything
    // referenced must lie inside the file.
    let mut add = |off: u64, len: u64| -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        let last = off
            .checked_add(len - 1)
            .map(|e| e / cs)
            .filter(|&l| l < file_clusters)
            .ok_or_else(|| format!("range {off:#x}+{len:#x} lies past the end of the file"))?;
        for c in off / cs..=last {
            *want.entry(c).or_insert(0) += 1;
        }
        Ok(())
    };
    add(0, cs)?;
    add(h.l1_table_offset, h.l1_size as u64 * 8)?;
    add(
        h.refcount_table_offset,
        h.refcount_table_clusters as u64 * cs,
    )?;
    let rt_entries = h.refcount_table_clusters as u64 * cs / 8;
    let mut refblocks = Vec::new();
    for i in 0..rt_entries {
        let e = be64(h.refcount_table_offset + i * 8)? & !0x1ff;
        if e != 0 {
            add(e, cs)?;
            refblocks.push((i, e));
        }
    }
    if let Some(z) = h.zoned() {
        add(z.zonedmeta_offset, z.zonedmeta_size)?;
    }
    // The active L1 table and every snapshot's, each L2 table counted once
    // per L1 entry pointing at it, each data cluster once per L2 entry.
    let mut l1s = vec![(h.l1_table_offset, h.l1_size)];
    if h.nb_snapshots > 0 {
        let s = MemStorage::read_only(bytes.to_vec());
        let (snaps, len) =
            read_table(&s, h.snapshots_offset, h.nb_snapshots).map_err(|e| e.to_string())?;
        add(h.snapshots_offset, len)?;
        for sn in snaps {
            add(sn.l1_table_offset, sn.l1_size as u64 * 8)?;
            l1s.push((sn.l1_table_offset, sn.l1_size));
        }
    }
    for (l1_off, l1_size) in l1s {
        spend(l1_size as u64)?;
        for i in 0..l1_size as u64 {
            let l2 = l1_l2_offset(be64(l1_off + i * 8)?).0;
            if l2 == 0 {
                continue;
            }
            if l2 % cs != 0 {
                return Err(format!("L2 table at {l2:#x} is not cluster aligned"));
            }
            add(l2, cs)?;
            spend(h.l2_entries())?;
            for j in 0..h.l2_entries() {
                let e = be64(l2 + j * h.l2_entry_size())?;
                match decode_l2(e, cb, h.extended_l2(), false) {
                    ClusterType::Normal(o) | ClusterType::ZeroAlloc(o) => add(o.0, cs)?,
                    ClusterType::Compressed { offset, size } => add(offset, size.max(1))?,
                    _ => {}
                }
            }
        }
    }
    let rbe = refcount::entries_per_block(cb, h.refcount_order);
    let mut have: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, off) in refblocks {
        spend(rbe)?;
        let block = usize::try_from(off)
            .ok()
            .and_then(|o| bytes.get(o..o.checked_add(cs as usize)?))
            .ok_or_else(|| format!("refblock at {off:#x} past the end of the file"))?;
        for k in 0..rbe {
            let v = refcount::get(block, h.refcount_order, k as usize);
            if v != 0 {
                have.insert(i * rbe + k, v);
            }
        }
    }
    for (&c, &w) in &want {
        let got = have.get(&c).copied().unwrap_or(0);
        if got != w {
            return Err(format!(
                "cluster {c} (offset {:#x}): refcount {got}, referenced {w} times",
                c * cs
            ));
        }
    }
    for (&c, &got) in &have {
        if !want.contains_key(&c) {
            return Err(format!(
                "cluster {c} (offset {:#x}): refcount {got} but unreferenced (leak)",
                c * cs
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_inputs_do_not_panic() {
        fuzz_header(&[]);
        fuzz_zoned_ext(&[]);
        fuzz_image_read(&[]);
        fuzz_image_rw(&[]);
        fuzz_image_write(&[]);
    }

    #[test]
    fn write_target_runs_ops() {
        // 512-byte clusters, 1-bit refcounts, a few writes and a reopen.
        let mut input = vec![0u8, 0, 0, 64, 0];
        for i in 0..40u8 {
            input.extend_from_slice(&[i, 1, i, i.wrapping_mul(7), 3, 0x55]);
        }
        fuzz_image_write(&input);
    }
}

// Targets of the engine, NBD, check and zcow-io components (one file each
// under src/fuzzing/).
pub mod check;
pub mod engine;
pub mod iocmd_parse;
pub mod nbd;
pub mod zone_model;
