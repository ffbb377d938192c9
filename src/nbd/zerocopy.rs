//! Zero-copy read replies: chunk headers go out with `MSG_MORE`, data with
//! `sendfile(2)` from the image file straight into the socket, so the
//! server never copies the bytes (a buffered reply costs a `pread` into a
//! buffer and a copy into the socket).
//!
//! Only for plain TCP and Unix sockets (TLS needs the bytes in memory).
//! The device keeps the clusters from being freed while the runs are sent
//! ([`crate::device::BlockDevice::read_direct`]), and that must not last
//! long (freeing waits meanwhile): the socket gets a short send timeout and
//! once [`HOLD`] has passed, or the socket is full, the rest of the reply is
//! read into memory and sent after the device lets go. Pages still queued
//! in the socket after `sendfile` returns are the file's page-cache pages;
//! a freed cluster is punched out of the file, which takes its pages out
//! of the file, so a reused cluster gets new pages and the reply keeps the
//! bytes it was sent with.

use super::proto::*;
use crate::format::HostRun;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a reply keeps the device's clusters pinned while the socket
/// takes its bytes; past it the rest is copied.
pub(crate) const HOLD: Duration = Duration::from_millis(10);

/// Zero runs at least this long become hole chunks (structured replies).
const MIN_HOLE: u64 = 4096;

/// How a read reply is framed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    /// Simple reply (one header, then every byte).
    pub simple: bool,
    /// Extended headers.
    pub extended: bool,
    /// Structured replies but holes not allowed (DF, or one chunk).
    pub one_chunk: bool,
    /// Request cookie and offset.
    pub cookie: u64,
    /// Request offset.
    pub offset: u64,
}

/// Whether every page of the reply's file runs is in the page cache
/// (`cachestat(2)`, Linux 6.5+). Uncached data is better read by the
/// worker threads in parallel (a buffered reply): the zero-copy reply is
/// sent later, one at a time under the connection's writer lock, so a
/// `sendfile` that has to wait for the disk would read it one reply at a
/// time. Where `cachestat` is missing, the runs get `POSIX_FADV_WILLNEED`
/// (reading starts now, in parallel) and count as resident.
pub(crate) fn resident(runs: &[HostRun<'_>]) -> bool {
    static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);
    for r in runs {
        let HostRun::File { fd, offset, len } = *r else {
            continue;
        };
        if !NO_CACHESTAT.load(Ordering::Relaxed) {
            let range = CachestatRange { off: offset, len };
            let mut cs = Cachestat::default();
            // SAFETY: cachestat reads `range` and writes `cs`, both live
            // and of the kernel's layout.
            let rc = unsafe {
                libc::syscall(
                    SYS_CACHESTAT,
                    fd.as_raw_fd(),
                    &range as *const CachestatRange,
                    &mut cs as *mut Cachestat,
                    0u32,
                )
            };
            if rc == 0 {
                let first = offset / PAGE;
                let last = (offset + len).div_ceil(PAGE);
                if cs.nr_cache < last - first {
                    return false;
                }
                continue;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return false;
            }
            NO_CACHESTAT.store(true, Ordering::Relaxed);
        }
        // SAFETY: an advisory call on an open descriptor; no memory is
        // passed. Failure only loses the read-ahead.
        unsafe {
            libc::posix_fadvise(
                fd.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }
    true
}

/// `cachestat(2)`'s number (the same on every architecture).
const SYS_CACHESTAT: libc::c_long = 451;
/// Page size for the resident count (4 KiB pages; a larger page size only
/// makes the check stricter).
const PAGE: u64 = 4096;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// One reply in flight on the socket `fd`.
pub(crate) struct Tx {
    fd: RawFd,
    start: Instant,
    /// After the hold time or a full socket: the rest of the reply, sent
    /// by [`Tx::finish`].
    spill: Option<Vec<u8>>,
    err: Option<io::Error>,
}

impl Tx {
    /// Start a reply on socket `sock` (the caller holds the writer lock
    /// and flushed its buffer).
    pub(crate) fn new(fd: RawFd) -> Tx {
        let mut tx = Tx {
            fd,
            start: Instant::now(),
            spill: None,
            err: None,
        };
        if let Err(e) = set_send_timeout(fd, Some(HOLD)) {
            tx.err = Some(e);
        }
        tx
    }

    /// Send the whole reply for `runs`, framed as `f` says.
    pub(crate) fn reply(&mut self, runs: &[HostRun<'_>], f: Framing) {
        let total: u64 = runs.iter().map(run_len).sum();
        let mut h = Vec::with_capacity(64);
        if f.simple || f.one_chunk {
            if f.simple {
                encode_simple_reply(&mut h, 0, f.cookie);
            } else {
                encode_chunk_header(
                    &mut h,
                    f.extended,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    f.cookie,
                    f.offset,
                    8 + total,
                );
                h.extend_from_slice(&f.offset.to_be_bytes());
            }
            self.bytes(&h, total > 0);
            for (i, r) in runs.iter().enumerate() {
                self.run(r, i + 1 < runs.len());
            }
            return;
        }
        // Structured: data chunks of consecutive file runs (and short zero
        // runs), hole chunks for long zero runs.
        let is_hole = |r: &HostRun<'_>| matches!(r, HostRun::Zero(l) if *l >= MIN_HOLE);
        let mut pos = f.offset;
        let mut i = 0;
        while i < runs.len() {
            let mut j = i + 1;
            if !is_hole(&runs[i]) {
                while j < runs.len() && !is_hole(&runs[j]) {
                    j += 1;
                }
            }
            let last = j == runs.len();
            let flags = if last { REPLY_FLAG_DONE } else { 0 };
            let len: u64 = runs[i..j].iter().map(run_len).sum();
            h.clear();
            if is_hole(&runs[i]) {
                encode_chunk_header(
                    &mut h,
                    f.extended,
                    flags,
                    REPLY_TYPE_OFFSET_HOLE,
                    f.cookie,
                    f.offset,
                    12,
                );
                h.extend_from_slice(&pos.to_be_bytes());
                h.extend_from_slice(&(len as u32).to_be_bytes());
                self.bytes(&h, !last);
            } else {
                encode_chunk_header(
                    &mut h,
                    f.extended,
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    f.cookie,
                    f.offset,
                    8 + len,
                );
                h.extend_from_slice(&pos.to_be_bytes());
                self.bytes(&h, true);
                for (k, r) in runs[i..j].iter().enumerate() {
                    self.run(r, !(last && i + k + 1 == j));
                }
            }
            pos += len;
            i = j;
        }
    }

    fn run(&mut self, r: &HostRun<'_>, more: bool) {
        match *r {
            HostRun::File { fd, offset, len } => self.file(fd, offset, len, more),
            HostRun::Zero(n) => self.zeros(n, more),
        }
    }

    /// Whether to stop sending and copy the rest instead.
    fn spilling(&mut self) -> bool {
        if self.spill.is_none() && self.start.elapsed() >= HOLD {
            self.spill = Some(Vec::new());
        }
        self.spill.is_some() || self.err.is_some()
    }

    fn bytes(&mut self, mut b: &[u8], more: bool) {
        while !b.is_empty() {
            if self.spilling() {
                if let Some(s) = &mut self.spill {
                    s.extend_from_slice(b);
                }
                return;
            }
            let fl = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
            // SAFETY: the pointer and length come from a live slice.
            let n = unsafe { libc::send(self.fd, b.as_ptr().cast(), b.len(), fl) };
            match self.step(n) {
                Some(n) => b = &b[n..],
                None => continue,
            }
        }
    }

    fn zeros(&mut self, mut n: u64, more: bool) {
        static Z: [u8; 16384] = [0; 16384];
        while n > 0 {
            let k = n.min(Z.len() as u64);
            n -= k;
            self.bytes(&Z[..k as usize], more || n > 0);
        }
    }

    fn file(&mut self, fd: BorrowedFd<'_>, mut off: u64, mut len: u64, more: bool) {
        while len > 0 {
            if self.spilling() {
                if let Some(s) = &mut self.spill {
                    if let Err(e) = pread_append(fd, off, len, s) {
                        self.err = Some(e);
                    }
                }
                return;
            }
            let mut o = off as libc::off_t;
            let want = len.min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the call; `o` is a
            // local the kernel advances.
            let n = unsafe { libc::sendfile(self.fd, fd.as_raw_fd(), &mut o, want) };
            if n == 0 {
                // Past the end of the file: a sparse tail reads as zeroes.
                self.zeros(len, more);
                return;
            }
            if let Some(n) = self.step(n) {
                off += n as u64;
                len -= n as u64;
            }
        }
    }

    /// Account a send/sendfile result: bytes sent, or None to retry (a
    /// full socket switches to copying).
    fn step(&mut self, n: isize) -> Option<usize> {
        if n >= 0 {
            return Some(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                self.spill.get_or_insert_with(Vec::new);
            }
            _ => self.err = Some(e),
        }
        None
    }

    /// Whether part of the reply was copied instead of sent from the file.
    pub(crate) fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Finish after the device let go of the runs: send what was copied.
    pub(crate) fn finish(self) -> io::Result<()> {
        let restored = set_send_timeout(self.fd, None);
        if let Some(e) = self.err {
            return Err(e);
        }
        restored?;
        let Some(rest) = self.spill else {
            return Ok(());
        };
        let mut b = &rest[..];
        while !b.is_empty() {
            // SAFETY: the pointer and length come from a live slice.
            let n = unsafe { libc::send(self.fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            b = &b[n as usize..];
        }
        Ok(())
    }
}

fn run_len(r: &HostRun<'_>) -> u64 {
    match *r {
        HostRun::File { len, .. } => len,
        HostRun::Zero(n) => n,
    }
}

/// Append `len` bytes of the file at `off` to `out` (zeroes past its end).
fn pread_append(fd: BorrowedFd<'_>, mut off: u64, len: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let end = start + len as usize;
    out.resize(end, 0);
    let mut at = start;
    while at < end {
        // SAFETY: the destination is inside `out`, which was resized to
        // hold it.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                out[at..].as_mut_ptr().cast(),
                end - at,
                off as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // End of file: the rest stays zero.
            break;
        }
        at += n as usize;
        off += n as u64;
    }
    Ok(())
}

/// Set (or clear) the socket's send timeout.
fn set_send_timeout(fd: RawFd, t: Option<Duration>) -> io::Result<()> {
    let t = t.unwrap_or_default();
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
