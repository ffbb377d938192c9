//! `zcow-img convert`: copy one or more images (concatenated) into a raw,
//! qcow2 or zoned qcow2 image or an NBD export, with qemu-img's options.
//!
//! Onto a zoned target the copy runs zone by zone in order. In a sequential
//! zone a run of zeroes is written (as a write-zeroes that advances the
//! write pointer without allocating) only when data follows it, so the
//! zero tail of a zone stays unwritten: the zone ends EMPTY, CLOSED or FULL
//! as the data implies. `-S 0` fills every zone. A zoned source with the
//! target's geometry hands over its write pointers instead: each zone is
//! copied up to its source write pointer, so pointers and conditions carry
//! over (READ_ONLY and OFFLINE too, on a local target).

use super::{is_uri, is_zero, open_named, ImgError, ImgResult};
use crate::device::{BlockDevice, ZeroFlags};
use crate::format::create::create;
use crate::format::zoned::ZonedCreateOptions;
use crate::img::create::parse_options;
use crate::progress::Progress;
use crate::storage::{FileStorage, Storage};
use crate::zone::{ZoneCond, ZoneGeometry};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes moved per request (qemu-img uses 2 MiB too).
const CHUNK: u64 = 2 << 20;
/// Largest sparse granule `-S` accepts (qemu-img's limit).
const MAX_SPARSE: u64 = 16 << 20;

/// Everything `convert` takes from the command line.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Source images or NBD URIs, concatenated in this order.
    pub sources: Vec<String>,
    /// `-f`: format of every source (probed when None).
    pub src_format: Option<String>,
    /// Target file or NBD URI.
    pub target: String,
    /// `-O`: target format (raw when None and creating; probed with `-n`).
    pub out_format: Option<String>,
    /// `-o`: create options of the target.
    pub create_opts: Vec<String>,
    /// `-n`: the target exists; do not create it.
    pub no_create: bool,
    /// `-S`: zero granule in bytes (0: write every byte).
    pub sparse_size: u64,
    /// `--target-is-zero`: skip writing zeroes (needs `-n`).
    pub target_is_zero: bool,
    /// `-W`: allow writes out of order (parallel copy on non-zoned targets).
    pub out_of_order: bool,
    /// `-m`: parallel requests (1–16).
    pub coroutines: usize,
    /// `-p`: progress bar (on a terminal).
    pub progress: bool,
    /// `-c`: compressed output.
    pub compressed: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            src_format: None,
            target: String::new(),
            out_format: None,
            create_opts: Vec::new(),
            no_create: false,
            sparse_size: 4096,
            target_is_zero: false,
            out_of_order: false,
            coroutines: 8,
            progress: false,
            compressed: false,
        }
    }
}

fn failed(m: impl Into<String>) -> ImgError {
    ImgError::Failed(m.into())
}

/// The sources, concatenated.
struct Sources {
    devs: Vec<(u64, Arc<dyn BlockDevice>)>,
}

impl Sources {
    /// The device holding `off` and the offset inside it.
    fn at(&self, off: u64) -> (&Arc<dyn BlockDevice>, u64, u64) {
        let k = self
            .devs
            .partition_point(|(start, _)| *start <= off)
            .saturating_sub(1);
        let (start, d) = &self.devs[k];
        (d, off - start, start + d.size())
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> ImgResult<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let (d, inner, end) = self.at(pos);
            let n = ((end - pos) as usize).min(buf.len() - done);
            d.read(inner, &mut buf[done..done + n])
                .map_err(|e| failed(format!("error while reading at byte {pos}: {e}")))?;
            done += n;
        }
        Ok(())
    }

    /// Runs of (length, known to read as zeroes) covering `[off, off+len)`.
    fn status(&self, off: u64, len: u64) -> Vec<(u64, bool)> {
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let (d, inner, dev_end) = self.at(pos);
            let n = (dev_end.min(end)) - pos;
            let ext = d.block_status(inner, n).unwrap_or_default();
            let mut got = 0;
            for e in ext {
                let l = e.len.min(n - got);
                if l == 0 {
                    break;
                }
                out.push((l, e.zero));
                got += l;
            }
            if got < n {
                // Unknown (or no answer): read it.
                out.push((n - got, false));
            }
            pos += n;
        }
        out
    }
}

/// The copy itself: source, target and the options that steer writing.
struct Copier<'a> {
    src: &'a Sources,
    dst: Arc<dyn BlockDevice>,
    sparse: u64,
    target_zero: bool,
    progress: Progress,
    /// Bytes to copy (the bar's 100 %).
    size: u64,
    done: AtomicU64,
}

impl Copier<'_> {
    fn tick(&self, n: u64) {
        let d = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.progress.update(d, self.size);
    }

    fn write(&self, off: u64, data: &[u8]) -> ImgResult<()> {
        self.dst
            .write(off, data, false)
            .map_err(|e| failed(format!("error while writing at byte {off}: {e}")))
    }

    /// Make `[off, off+len)` zero: a write-zeroes, or with `-S 0` a write
    /// of zero bytes (qemu-img then allocates the whole output).
    fn zeroes(&self, off: u64, len: u64) -> ImgResult<()> {
        if self.sparse == 0 {
            let z = vec![0u8; len.min(CHUNK) as usize];
            let mut p = off;
            while p < off + len {
                let n = (off + len - p).min(CHUNK);
                self.write(p, &z[..n as usize])?;
                p += n;
            }
            return Ok(());
        }
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(16 * CHUNK);
            self.dst
                .write_zeroes(
                    pos,
                    n,
                    ZeroFlags {
                        may_unmap: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| failed(format!("error while writing zeroes at byte {pos}: {e}")))?;
            pos += n;
        }
        Ok(())
    }

    /// Write pieces of a segment to a target that takes writes anywhere.
    fn write_plain(&self, pieces: &mut dyn Feed, seg: &Seg) -> ImgResult<()> {
        let mut pos = seg.start;
        while pos < seg.end {
            let p = pieces.next()?;
            match &p.data {
                None => {
                    if self.sparse == 0 || !self.target_zero {
                        self.zeroes(p.pos, p.len)?;
                    }
                }
                Some((buf, runs)) => {
                    for &(at, l, zero) in runs {
                        if zero && self.sparse > 0 {
                            if !self.target_zero {
                                self.zeroes(at, l)?;
                            }
                        } else {
                            let o = (at - p.pos) as usize;
                            self.write(at, &buf[o..o + l as usize])?;
                        }
                    }
                }
            }
            self.tick(p.len);
            pos = p.pos + p.len;
            pieces.recycle(p);
        }
        Ok(())
    }

    /// Write the pieces of sequential zone `i` of the target. `keep` is
    /// where the zone's write pointer must end up at least (a zoned
    /// source's pointer, or the capacity with `-S 0`); past it, a zero tail
    /// stays unwritten.
    fn write_seq_zone(
        &self,
        pieces: &mut dyn Feed,
        seg: &Seg,
        g: &ZoneGeometry,
        i: u32,
        keep: u64,
    ) -> ImgResult<()> {
        let zs = g.zone_start(i);
        let cap_end = zs + g.zone_cap(i);
        // Where the run of zeroes not yet written starts (the target's wp).
        let mut pending = zs;
        let mut pos = seg.start;
        while pos < seg.end {
            let p = pieces.next()?;
            if let Some((buf, runs)) = &p.data {
                for &(at, rl, z) in runs {
                    if z {
                        continue;
                    }
                    if at + rl > cap_end {
                        return Err(failed(format!(
                            "zone {i} (start {zs:#x}): data at byte {} lies past the zone capacity ({:#x} bytes); a zoned target cannot hold it",
                            at.max(cap_end),
                            g.zone_cap(i)
                        )));
                    }
                    if at > pending {
                        self.zeroes(pending, at - pending)?;
                    }
                    let o = (at - p.pos) as usize;
                    self.write(at, &buf[o..o + rl as usize])?;
                    pending = at + rl;
                }
            }
            self.tick(p.len);
            pos = p.pos + p.len;
            pieces.recycle(p);
        }
        let keep = keep.min(cap_end);
        if keep > pending {
            self.zeroes(pending, keep - pending)?;
        }
        Ok(())
    }
}

/// (offset, length, all zero) of a run of granules.
type Run = (u64, u64, bool);

/// A run of the source in order: known zeroes (`data` None), or the bytes
/// read with their runs of zero and non-zero granules.
struct Piece {
    pos: u64,
    len: u64,
    data: Option<(Vec<u8>, Vec<Run>)>,
}

/// Where the writer takes pieces from, in order, and gives their buffers
/// back for reuse (fresh 2 MiB buffers cost page faults on every chunk).
trait Feed {
    fn next(&mut self) -> ImgResult<Piece>;
    fn recycle(&mut self, _p: Piece) {}
}

/// Pieces already read (the -W workers).
struct VecFeed(std::vec::IntoIter<Piece>);

impl Feed for VecFeed {
    fn next(&mut self) -> ImgResult<Piece> {
        self.0
            .next()
            .ok_or_else(|| failed("short read of the source"))
    }
}

/// Pieces from the reading thread; buffers go back to it.
struct ChanFeed {
    rx: std::sync::mpsc::Receiver<ImgResult<Piece>>,
    free: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Feed for ChanFeed {
    fn next(&mut self) -> ImgResult<Piece> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(failed("the reading thread stopped early")))
    }
    fn recycle(&mut self, p: Piece) {
        if let Some((buf, _)) = p.data {
            let _ = self.free.send(buf);
        }
    }
}

/// A range of the target copied one way.
#[derive(Debug, Clone, Copy)]
struct Seg {
    start: u64,
    end: u64,
    /// Zero-detection granule (0: none).
    gran: u64,
    /// Sequential zone index and its keep point; None: written anywhere.
    seq: Option<(u32, u64)>,
}

/// The pieces of `[pos, pos+n)` (n ≤ CHUNK).
fn read_pieces(
    src: &Sources,
    pos: u64,
    n: u64,
    gran: u64,
    free: Option<&std::sync::mpsc::Receiver<Vec<u8>>>,
) -> ImgResult<Vec<Piece>> {
    let mut out = Vec::new();
    let mut at = pos;
    for (l, zero) in src.status(pos, n) {
        let data = if zero {
            None
        } else {
            let mut buf = free.and_then(|f| f.try_recv().ok()).unwrap_or_default();
            buf.resize(l as usize, 0);
            src.read(at, &mut buf)?;
            let runs = if gran == 0 {
                vec![(at, l, false)]
            } else {
                granules(at, &buf, gran)
            };
            Some((buf, runs))
        };
        out.push(Piece {
            pos: at,
            len: l,
            data,
        });
        at += l;
    }
    Ok(out)
}

/// Copy the segments in order: one thread reads (and finds zeroes) ahead
/// while this one writes, so reading and writing overlap.
fn copy_segments(c: &Copier<'_>, segs: &[Seg], g: Option<&ZoneGeometry>) -> ImgResult<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<ImgResult<Piece>>(8);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let src = c.src;
    std::thread::scope(|s| {
        s.spawn(move || {
            for seg in segs {
                let mut pos = seg.start;
                while pos < seg.end {
                    let n = (seg.end - pos).min(CHUNK);
                    match read_pieces(src, pos, n, seg.gran, Some(&free_rx)) {
                        Ok(ps) => {
                            for p in ps {
                                if tx.send(Ok(p)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                    pos += n;
                }
            }
        });
        let mut feed = ChanFeed { rx, free: free_tx };
        let r = (|| {
            for seg in segs {
                match (seg.seq, g) {
                    (Some((i, keep)), Some(g)) => c.write_seq_zone(&mut feed, seg, g, i, keep)?,
                    _ => c.write_plain(&mut feed, seg)?,
                }
            }
            Ok(())
        })();
        // Unblock the reader if writing stopped early.
        drop(feed);
        r
    })
}

/// Split `buf` (at absolute offset `pos`) into runs of whole granules of
/// `gran` bytes (aligned to absolute offsets) that are all zero or not:
/// (offset, length, zero).
fn granules(pos: u64, buf: &[u8], gran: u64) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let end = pos + buf.len() as u64;
    let mut at = pos;
    while at < end {
        let next = ((at / gran + 1) * gran).min(end);
        let z = is_zero(&buf[(at - pos) as usize..(next - pos) as usize]);
        match out.last_mut() {
            Some(r) if r.2 == z => r.1 += next - at,
            _ => out.push((at, next - at, z)),
        }
        at = next;
    }
    out
}

/// Source zones whose fault condition the target takes over.
type Faults = Vec<(u32, ZoneCond)>;

/// Where each sequential zone's pointer must end: from a zoned source of the
/// same geometry its write pointer (None where the zone is OFFLINE), else
/// the zone start (data decides), or the capacity with `-S 0`.
fn keep_points(
    src: &Sources,
    g: &ZoneGeometry,
    sparse: u64,
) -> ImgResult<(Vec<Option<u64>>, Faults)> {
    let n = g.nr_zones as usize;
    let mut faults = Vec::new();
    let same = match (src.devs.len(), src.devs.first()) {
        (1, Some((_, d))) => d.zone_geometry().filter(|s| {
            s.zone_size == g.zone_size
                && s.zone_capacity == g.zone_capacity
                && s.conventional_zones == g.conventional_zones
                && s.device_size == g.device_size
        }),
        _ => None,
    };
    let Some(sg) = same else {
        let fill = |i: u32| {
            if sparse == 0 {
                g.zone_start(i) + g.zone_cap(i)
            } else {
                g.zone_start(i)
            }
        };
        return Ok(((0..g.nr_zones).map(|i| Some(fill(i))).collect(), faults));
    };
    let d = &src.devs[0].1;
    let mut keep = Vec::with_capacity(n);
    let mut off = 0;
    while keep.len() < n {
        let zones = d
            .zone_report(off, 65536)
            .map_err(|e| failed(format!("zone report of the source failed: {e}")))?;
        if zones.is_empty() {
            return Err(failed("the source's zone report ended early"));
        }
        for z in zones {
            if keep.len() >= n {
                break;
            }
            let cap_end = z.start + z.cap;
            keep.push(match z.cond {
                ZoneCond::Offline => None,
                ZoneCond::Full => Some(cap_end),
                _ if sparse == 0 && !sg.is_conventional(z.index) => Some(cap_end),
                _ => Some(z.wp.min(cap_end)),
            });
            if matches!(z.cond, ZoneCond::Offline | ZoneCond::ReadOnly) {
                faults.push((z.index, z.cond));
            }
            off = z.start + z.len;
        }
    }
    Ok((keep, faults))
}

/// Fill zone options the user left out from a zoned source's geometry, so
/// `-o zone.mode=host-managed` alone copies the zone layout.
fn inherit_zone_opts(z: &mut ZonedCreateOptions, g: &ZoneGeometry) {
    z.zone_size.get_or_insert(g.zone_size);
    z.zone_capacity.get_or_insert(g.zone_capacity);
    z.conventional_zones.get_or_insert(g.conventional_zones);
    z.max_open_zones.get_or_insert(g.max_open_zones);
    z.max_active_zones.get_or_insert(g.max_active_zones);
    z.max_append_bytes
        .get_or_insert(u64::from(g.max_append_bytes));
}

/// Check the options as qemu-img does, before anything is opened.
pub fn validate(o: &ConvertOptions) -> ImgResult<()> {
    if o.sources.is_empty() {
        return Err(ImgError::Usage("Expecting image file name".into()));
    }
    if o.target.is_empty() {
        return Err(failed("Must specify image file name"));
    }
    if o.sparse_size % 512 != 0 || o.sparse_size > MAX_SPARSE {
        return Err(failed(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates output)."
        )));
    }
    if !(1..=16).contains(&o.coroutines) {
        return Err(failed(
            "Invalid number of coroutines specified. Must be between 1 and 16.",
        ));
    }
    if o.target_is_zero && !o.no_create {
        return Err(failed("--target-is-zero requires use of -n flag"));
    }
    if let Some(f) = &o.out_format {
        if f != "raw" && f != "qcow2" {
            return Err(failed(format!("Unknown file format '{f}'")));
        }
    }
    if o.compressed && !o.no_create && o.out_format.as_deref().unwrap_or("raw") == "raw" {
        return Err(failed(COMPRESSION_UNSUPPORTED));
    }
    Ok(())
}

/// qemu-img's words for `-c` onto a target that cannot compress.
const COMPRESSION_UNSUPPORTED: &str = "Compression not supported for this file format";

/// `-c` refusals that the create options decide, before anything is created.
fn check_compressed_create(o: &ConvertOptions, size: u64) -> ImgResult<()> {
    // Bad options are reported by create itself.
    let Ok(co) = parse_options(&o.create_opts, Some(size)) else {
        return Ok(());
    };
    if co.zoned.is_some() {
        return Err(failed(
            "Compression not supported for zoned images: a zoned qcow2 image cannot contain compressed clusters",
        ));
    }
    if co.preallocation != crate::format::create::Preallocation::Off {
        return Err(failed(
            "Compression and preallocation not supported at the same time",
        ));
    }
    Ok(())
}

/// `-c` onto an opened target: only a non-zoned qcow2 image takes
/// compressed clusters.
fn check_compressed_target(dst: &dyn BlockDevice) -> ImgResult<()> {
    if dst.zone_geometry().is_some() {
        return Err(failed(
            "Compression not supported for zoned images: a zoned qcow2 image cannot contain compressed clusters",
        ));
    }
    match dst.format_info() {
        Some(f) if f.name == "qcow2" && f.cluster_size > 0 => Ok(()),
        _ => Err(failed(COMPRESSION_UNSUPPORTED)),
    }
}

/// Create the target image of `size` bytes; returns its format.
fn create_target(o: &ConvertOptions, size: u64, src: &Sources) -> ImgResult<String> {
    let fmt = o.out_format.clone().unwrap_or_else(|| "raw".into());
    if is_uri(&o.target) {
        return Err(failed(format!(
            "{}: cannot create an image on an NBD export; create it on the server and use -n",
            o.target
        )));
    }
    let path = Path::new(&o.target);
    let create_err = |e: &dyn std::fmt::Display| {
        failed(format!("{}: error while converting {fmt}: {e}", o.target))
    };
    if fmt == "raw" {
        for group in &o.create_opts {
            for kv in group.split(',').filter(|s| !s.is_empty()) {
                let k = kv.split_once('=').map_or(kv, |(k, _)| k);
                if k != "size" {
                    return Err(failed(format!("Invalid parameter '{k}'")));
                }
            }
        }
        let st = FileStorage::create(path).map_err(|e| create_err(&e))?;
        st.set_len(size).map_err(|e| create_err(&e))?;
        st.sync().map_err(|e| create_err(&e))?;
        return Ok(fmt);
    }
    let mut co = parse_options(&o.create_opts, Some(size)).map_err(failed)?;
    if let (Some(z), [(_, d)]) = (co.zoned.as_mut(), src.devs.as_slice()) {
        if let Some(g) = d.zone_geometry() {
            inherit_zone_opts(z, &g);
        }
    }
    crate::format::create::validate(&co).map_err(|e| create_err(&e))?;
    let st = FileStorage::create(path).map_err(|e| create_err(&e))?;
    create(&st, &co).map_err(|e| create_err(&e))?;
    Ok(fmt)
}

/// Run `convert`.
pub fn run(o: &ConvertOptions) -> ImgResult<()> {
    validate(o)?;
    let mut devs = Vec::new();
    let mut size = 0u64;
    for name in &o.sources {
        let d = open_named(name, o.src_format.as_deref(), true)?;
        let s = d.size();
        devs.push((size, d));
        size += s;
    }
    let src = Sources { devs };
    if o.compressed && !o.no_create {
        check_compressed_create(o, size)?;
    }
    let fmt = if o.no_create {
        o.out_format.clone()
    } else {
        Some(create_target(o, size, &src)?)
    };
    let dst = open_named(&o.target, fmt.as_deref(), false)?;
    if dst.size() < size {
        return Err(failed("output file is smaller than input file"));
    }
    let cluster = if o.compressed {
        check_compressed_target(dst.as_ref())?;
        dst.format_info().map_or(0, |f| f.cluster_size)
    } else {
        0
    };
    let c = Copier {
        src: &src,
        dst: dst.clone(),
        sparse: o.sparse_size,
        target_zero: !o.no_create || o.target_is_zero,
        progress: Progress::new(o.progress),
        size,
        done: AtomicU64::new(0),
    };
    let faults = match dst.zone_geometry() {
        _ if cluster > 0 => {
            copy_compressed(&c, size, cluster, !o.no_create || o.target_is_zero)?;
            Vec::new()
        }
        Some(g) => copy_zoned(&c, &g, size, o.sparse_size)?,
        None => {
            copy_unzoned(&c, size, if o.out_of_order { o.coroutines } else { 1 })?;
            Vec::new()
        }
    };
    dst.flush()
        .map_err(|e| failed(format!("error while flushing '{}': {e}", o.target)))?;
    c.progress.finish();
    drop(c);
    drop(dst);
    if !faults.is_empty() {
        if is_uri(&o.target) {
            eprintln!(
                "zcow-img: warning: {} source zones are READ_ONLY or OFFLINE; an NBD target keeps them writable",
                faults.len()
            );
        } else {
            for (i, cond) in faults {
                let f = if cond == ZoneCond::Offline {
                    super::zone::FaultCond::Offline
                } else {
                    super::zone::FaultCond::ReadOnly
                };
                super::zone::set_cond(Path::new(&o.target), i, f)
                    .map_err(|e| failed(format!("{}: zone {i}: {e}", o.target)))?;
            }
        }
    }
    Ok(())
}

fn copy_unzoned(c: &Copier<'_>, size: u64, threads: usize) -> ImgResult<()> {
    let gran = c.sparse;
    if threads <= 1 {
        let seg = Seg {
            start: 0,
            end: size,
            gran,
            seq: None,
        };
        return copy_segments(c, &[seg], None);
    }
    // -W: chunks taken by several threads, written in whatever order they finish.
    let next = AtomicU64::new(0);
    let err: Mutex<Option<ImgError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let off = k.saturating_mul(CHUNK);
                if off >= size || err.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let n = (size - off).min(CHUNK);
                let r = read_pieces(c.src, off, n, gran, None).and_then(|ps| {
                    let mut pieces = VecFeed(ps.into_iter());
                    let seg = Seg {
                        start: off,
                        end: off + n,
                        gran,
                        seq: None,
                    };
                    c.write_plain(&mut pieces, &seg)
                });
                if let Err(e) = r {
                    if let Ok(mut g) = err.lock() {
                        g.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    match err.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(failed("a copy thread panicked")),
    }
}

/// `-c`: copy in whole target clusters, each written compressed (the
/// format layer stores a cluster that does not compress as it is). As in
/// qemu-img, with sparse detection on, a cluster of zeroes is not written
/// (or is zeroed on a target not known to read as zeroes); with `-S 0`
/// every cluster is written compressed. The last cluster of a source whose
/// size is not a cluster multiple is padded with zeroes up to the end of
/// the target, so the target must end there or read as zeroes past it.
fn copy_compressed(c: &Copier<'_>, size: u64, cs: u64, fresh: bool) -> ImgResult<()> {
    let dst_size = c.dst.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    while pos < size {
        // CHUNK is a multiple of every cluster size, so chunks start on
        // cluster boundaries.
        let n = (size - pos).min(CHUNK);
        let status = c.src.status(pos, n);
        if c.sparse > 0 && status.iter().all(|&(_, z)| z) {
            if !c.target_zero {
                c.zeroes(pos, n)?;
            }
            c.tick(n);
            pos += n;
            continue;
        }
        // Read the data runs; known-zero runs are just zero bytes.
        let mut at = 0usize;
        for (l, zero) in status {
            let piece = &mut buf[at..at + l as usize];
            if zero {
                piece.fill(0);
            } else {
                c.src.read(pos + at as u64, piece)?;
            }
            at += l as usize;
        }
        let mut k = 0u64;
        while k < n {
            let off = pos + k;
            let data_len = cs.min(n - k);
            // A short last cluster covers the target up to its end.
            let write_len = if data_len < cs {
                let to = (off + cs).min(dst_size) - off;
                if to > data_len && !fresh {
                    return Err(failed(format!(
                        "error while writing at byte {off}: the source ends inside a cluster of the larger target, which a compressed write would overwrite with zeroes"
                    )));
                }
                to
            } else {
                cs
            };
            let data = &buf[k as usize..(k + data_len) as usize];
            if c.sparse > 0 && is_zero(data) {
                if !c.target_zero {
                    c.zeroes(off, data_len)?;
                }
            } else if write_len == data_len {
                c.dst
                    .write_compressed(off, data)
                    .map_err(|e| failed(format!("error while writing at byte {off}: {e}")))?;
            } else {
                let mut padded = data.to_vec();
                padded.resize(write_len as usize, 0);
                c.dst
                    .write_compressed(off, &padded)
                    .map_err(|e| failed(format!("error while writing at byte {off}: {e}")))?;
            }
            k += data_len;
        }
        c.tick(n);
        pos += n;
    }
    Ok(())
}

fn copy_zoned(c: &Copier<'_>, g: &ZoneGeometry, size: u64, sparse: u64) -> ImgResult<Faults> {
    let (keep, faults) = keep_points(c.src, g, sparse)?;
    let mut segs = Vec::new();
    for i in 0..g.nr_zones {
        let zs = g.zone_start(i);
        if zs >= size {
            break;
        }
        let end = zs + g.zone_len(i).min(size - zs);
        if g.is_conventional(i) {
            segs.push(Seg {
                start: zs,
                end,
                gran: sparse,
                seq: None,
            });
            continue;
        }
        match keep[i as usize] {
            // -S 0 still finds zero granules, to tell data past the capacity.
            Some(k) => segs.push(Seg {
                start: zs,
                end,
                gran: if sparse == 0 { 512 } else { sparse },
                seq: Some((i, k)),
            }),
            // OFFLINE in the source: nothing can be read.
            None => c.tick(end - zs),
        }
    }
    copy_segments(c, &segs, Some(g))?;
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granules_split_on_zero_runs() {
        let mut b = vec![0u8; 4096 * 4];
        b[4096 + 7] = 1;
        b[3 * 4096] = 2;
        assert_eq!(
            granules(0, &b, 4096),
            vec![
                (0, 4096, true),
                (4096, 4096, false),
                (8192, 4096, true),
                (12288, 4096, false)
            ]
        );
        // Unaligned start: the first granule ends at the next boundary.
        assert_eq!(granules(100, &b[..4000], 4096), vec![(100, 4000, true)]);
    }
}
