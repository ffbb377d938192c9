//! One copy per request instead of two: the image file mapped into the
//! server, so the driver copies a request's bytes straight between the
//! request and the file's pages (`pwrite` on the char device from the
//! mapping for reads, `pread` into it for writes) rather than through a
//! buffer.
//!
//! The server never touches the mapping itself; only the kernel does,
//! inside those calls. A page it cannot fault in (past the end of the
//! file) fails the call with `EFAULT` instead of raising SIGBUS, and the
//! request then goes the buffered way. Writes go through the mapping only
//! within the file's length as last seen (`fstat`): a byte stored past the
//! end in the last page would be lost. zcow never shortens an open image,
//! so a length once seen stays valid.

use super::layout::Layout;
use super::map::{data_range, Completion, Op, Request};
use super::usercopy::{pread_full, pread_raw, pwrite_full, pwrite_raw};
use crate::device::BlockDevice;
use crate::format::{HostRun, PageUse, Payload};
use memmap2::{MmapOptions, MmapRaw};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Mappings grow in steps of this size, so a growing file is mapped again
/// rarely (address space is cheap; pages are only touched on use).
const MAP_STEP: u64 = 1 << 30;

/// The kernel frees a mapping's page tables only when it is unmapped (8
/// bytes per 4 KiB page touched, one table page per 2 MiB region). So a
/// window is replaced by a fresh one once requests have touched this much
/// of the file through it: at most 64 MiB of page tables, however large
/// the image and however long the server runs.
const TOUCH_LIMIT: u64 = 32 << 30;
/// The file range one page-table page covers.
const REGION: u64 = 2 << 20;

/// The image file, mapped on first use and again when it outgrows the
/// mapping. Shared by a device's queue and worker threads.
pub struct FileMap {
    window: RwLock<Option<Arc<Window>>>,
    /// mmap failed once: it is not tried again (every request would).
    unmappable: AtomicBool,
    /// Transfers done through the mapping (reads, write pieces).
    mapped: AtomicU64,
    /// Mappings made.
    windows: AtomicU64,
    /// [`TOUCH_LIMIT`], or a smaller one for tests.
    touch_limit: u64,
}

impl Default for FileMap {
    fn default() -> FileMap {
        FileMap::with_touch_limit(TOUCH_LIMIT)
    }
}

struct Window {
    map: MmapRaw,
    fd: RawFd,
    writable: bool,
    /// The file's length as last seen.
    file_len: AtomicU64,
    /// One bit per [`REGION`] of the mapping that requests touched.
    touched: Vec<AtomicU64>,
    /// How many bits of `touched` are set.
    regions: AtomicU64,
    /// Touched past [`TOUCH_LIMIT`]: the next request maps afresh.
    worn: AtomicBool,
}

fn file_len(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat writes one struct stat; fd is a descriptor the caller
    // holds open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size as u64)
}

impl FileMap {
    /// An empty map (nothing mapped until the first request).
    pub fn new() -> FileMap {
        FileMap::default()
    }

    /// A map whose windows are replaced once requests touched
    /// `touch_limit` bytes of the file through them (rounded up to 2 MiB
    /// regions; the default is 32 GiB).
    pub fn with_touch_limit(touch_limit: u64) -> FileMap {
        FileMap {
            window: RwLock::new(None),
            unmappable: AtomicBool::new(false),
            mapped: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            touch_limit,
        }
    }

    /// How many mappings of the file were made so far (one, plus one each
    /// time the file outgrew the mapping or a window was worn out).
    pub fn mappings_made(&self) -> u64 {
        self.windows.load(Ordering::Relaxed)
    }

    /// How many transfers went through the mapping so far (a read, or a
    /// piece of a write); the others went through a buffer.
    pub fn mapped_transfers(&self) -> u64 {
        self.mapped.load(Ordering::Relaxed)
    }

    /// The address of `[host, host+len)` of the file `fd` in a mapping
    /// (writable when `write`), or None when it cannot be mapped so (a
    /// write past the file's end, a read-only file for a write, a failed
    /// mmap): then the caller copies through a buffer. The window returned
    /// keeps the mapping alive while the caller uses the address.
    fn locate(
        &self,
        fd: BorrowedFd<'_>,
        host: u64,
        len: usize,
        write: bool,
    ) -> Option<(Arc<Window>, *mut u8)> {
        if len == 0 {
            return None;
        }
        let raw = fd.as_raw_fd();
        let end = host.checked_add(len as u64)?;
        let fits = |w: &Window| {
            w.fd == raw
                && end <= w.map.len() as u64
                && (!write || w.writable)
                && !w.worn.load(Ordering::Relaxed)
        };
        let current = self.window.read().ok()?.clone();
        let w = match current {
            Some(w) if fits(&w) => w,
            _ => {
                let mut slot = self.window.write().ok()?;
                match slot.as_ref() {
                    Some(w) if fits(w) => w.clone(),
                    _ => {
                        if self.unmappable.load(Ordering::Relaxed) {
                            return None;
                        }
                        let Some(w) = Window::map(raw, end) else {
                            self.unmappable.store(true, Ordering::Relaxed);
                            return None;
                        };
                        self.windows.fetch_add(1, Ordering::Relaxed);
                        let w = Arc::new(w);
                        *slot = Some(w.clone());
                        w
                    }
                }
            }
        };
        if write && end > w.file_len.load(Ordering::Relaxed) {
            let now = file_len(raw).ok()?;
            w.file_len.fetch_max(now, Ordering::Relaxed);
            if end > now {
                return None;
            }
        }
        let at = usize::try_from(host).ok()?;
        w.touch(host, end, self.touch_limit);
        // In bounds: end <= the mapping's length.
        let ptr = w.map.as_mut_ptr().wrapping_add(at);
        Some((w, ptr))
    }
}

impl Window {
    /// Map `fd` shared, at least `need` bytes and its current length,
    /// rounded up to [`MAP_STEP`]; writable when the descriptor allows.
    fn map(fd: RawFd, need: u64) -> Option<Window> {
        let now = file_len(fd).ok()?;
        let len = need.max(now).checked_add(MAP_STEP - 1)? / MAP_STEP * MAP_STEP;
        let len = usize::try_from(len).ok()?;
        // A mapping past the end of the file is allowed; only a touch of a
        // page wholly past it faults, and only the kernel touches it.
        let opts = {
            let mut o = MmapOptions::new();
            o.len(len);
            o
        };
        let (map, writable) = match opts.map_raw(fd) {
            Ok(m) => (m, true),
            Err(_) => (opts.map_raw_read_only(fd).ok()?, false),
        };
        let regions = (len as u64).div_ceil(REGION);
        Some(Window {
            map,
            fd,
            writable,
            file_len: AtomicU64::new(now),
            touched: (0..regions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            regions: AtomicU64::new(0),
            worn: AtomicBool::new(false),
        })
    }

    /// Count the regions of `[host, end)` (non-empty, inside the mapping)
    /// touched for the first time; past `limit` the window is worn.
    fn touch(&self, host: u64, end: u64, limit: u64) {
        for r in host / REGION..=(end - 1) / REGION {
            let bit = 1u64 << (r % 64);
            let Some(word) = self.touched.get((r / 64) as usize) else {
                continue;
            };
            if word.fetch_or(bit, Ordering::Relaxed) & bit == 0
                && (self.regions.fetch_add(1, Ordering::Relaxed) + 1) * REGION > limit
            {
                self.worn.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A write request's payload, still in the driver: [`Payload`] for the
/// engine, copied by the driver into the file's mapping where the data
/// lands in this file, else fetched into the queue thread's buffer.
pub struct CdevPayload<'a> {
    /// The ublk char device.
    pub cdev: RawFd,
    /// The request's user-copy position.
    pub pos: u64,
    /// Payload bytes.
    pub len: usize,
    /// The image file's mapping.
    pub map: &'a FileMap,
    /// Where bytes go when they pass through memory.
    pub buf: RefCell<&'a mut [u8]>,
}

impl Payload for CdevPayload<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn with_bytes(&self, at: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        let dst = buf
            .get_mut(..len)
            .filter(|_| at.checked_add(len).is_some_and(|e| e <= self.len))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if pread_full(self.cdev, dst, self.pos + at as u64)? != len {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        f(dst);
        Ok(())
    }

    fn write_to_file(
        &self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        host: u64,
    ) -> io::Result<bool> {
        if at.checked_add(len).is_none_or(|e| e > self.len) {
            return Ok(false);
        }
        let Some((_w, ptr)) = self.map.locate(fd, host, len, true) else {
            return Ok(false);
        };
        // SAFETY: `ptr..ptr+len` lies in a live shared writable mapping
        // (`_w` holds it) that this process never reads or writes itself.
        match unsafe { pread_raw(self.cdev, ptr, len, self.pos + at as u64) } {
            Ok(n) if n == len => {
                self.map.mapped.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            // EFAULT or short: a page past the end (another writer
            // shortened the file?); the buffered way redoes the range.
            Ok(_) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Zeroes for the holes of a read.
static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// A read served from the file's mapping: the runs of the range handed to
/// the driver one by one. None: not possible this way (the device cannot
/// map the range, a page could not be faulted in); the caller reads
/// through its buffer, which also yields the error of a bad request.
pub fn read_mapped(
    dev: &dyn BlockDevice,
    lay: &Layout,
    req: &Request,
    cdev: RawFd,
    pos: u64,
    map: &FileMap,
) -> Option<Completion> {
    if req.op() != Some(Op::Read) {
        return None;
    }
    let (off, len) = data_range(lay, req)?;
    let mut outcome: Option<io::Result<()>> = None;
    let mapped = dev.read_direct(off, len, PageUse::Borrow, &mut |runs| {
        outcome = Some(send_runs(runs, cdev, pos, map));
    });
    match (mapped, outcome) {
        (Ok(true), Some(Ok(()))) => {
            map.mapped.fetch_add(1, Ordering::Relaxed);
            Some(Completion::done(len as usize))
        }
        (Ok(true), Some(Err(e))) if e.raw_os_error() != Some(libc::EFAULT) => {
            Some(Completion::error(e.raw_os_error().unwrap_or(libc::EIO)))
        }
        _ => None,
    }
}

/// Hand `runs` to the driver from `pos` on. `EFAULT`: a run could not be
/// mapped or faulted in.
fn send_runs(runs: &[HostRun<'_>], cdev: RawFd, pos: u64, map: &FileMap) -> io::Result<()> {
    let efault = || io::Error::from_raw_os_error(libc::EFAULT);
    let mut at = pos;
    for run in runs {
        match *run {
            HostRun::File { len: 0, .. } => {}
            HostRun::File { fd, offset, len } => {
                let n = usize::try_from(len).map_err(|_| efault())?;
                let (_w, ptr) = map.locate(fd, offset, n, false).ok_or_else(efault)?;
                // SAFETY: `ptr..ptr+n` lies in a live shared mapping (`_w`
                // holds it), only read by the kernel.
                if unsafe { pwrite_raw(cdev, ptr, n, at)? } != n {
                    return Err(efault());
                }
                at += len;
            }
            HostRun::Zero(mut len) => {
                while len > 0 {
                    let n = len.min(ZEROES.len() as u64) as usize;
                    if pwrite_full(cdev, &ZEROES[..n], at)? != n {
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    at += n as u64;
                    len -= n as u64;
                }
            }
        }
    }
    Ok(())
}
