//! Transmission phase: worker threads take turns reading one request (and
//! its payload) under a reader lock, execute it against the device and
//! write the reply under a writer lock, so many requests are in flight and
//! replies go out in completion order.
//!
//! Bounds: at most [`MAX_INFLIGHT`] requests and [`MAX_INFLIGHT_BYTES`] of
//! payload/read buffers per connection; the reader stops reading while the
//! budget is exhausted, which pushes back on the client.
//!
//! Ordering: on a zoned device, WRITE / WRITE_ZEROES / TRIM / APPEND that
//! touch a common zone run in arrival order (a ticket covering the zones of
//! the request), which is what a pipelining sequential writer needs.
//! Zone-unaware clients' writes go through [`super::unaware`]; one ahead of
//! the write pointer is parked (off the workers) until the requests before
//! it fill the gap, or failed after [`PARK_LIMIT`]; without FUA it is
//! answered at once and FLUSH reports its failure ([`super::writeback`]).

use super::bufpool;
use super::handshake::{Ctx, Session};
use super::proto::*;
use super::server::{Shared, ZonedWrites};
use super::tls::{ConnIo, Sock};
use super::unaware::{self, PARK_LIMIT};
use super::zerocopy;
use crate::device::{DeviceError, ZeroFlags};
use crate::format::PageUse;
use crate::zone::{ZoneCond, ZoneGeometry, ZoneOp, ZoneType};
use std::collections::BTreeMap;
use std::io::{BufWriter, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Requests in flight per connection.
pub const MAX_INFLIGHT: usize = 128;
/// Payload and read-buffer bytes in flight per connection.
pub const MAX_INFLIGHT_BYTES: u64 = 64 << 20;
/// Most extents in one block-status chunk.
const MAX_EXTENTS: usize = 65536;
/// Read replies at least this long skip the writer's buffer.
const DIRECT_SEND: usize = 32 << 10;
/// How long a FLUSH waits for writes answered ahead of the write pointer:
/// a little longer than they may wait for their gap, so it sees them
/// applied or failed.
const FLUSH_WAIT: Duration = Duration::from_millis(PARK_LIMIT.as_millis() as u64 + 1000);
/// Large reads done buffered after one the device could not map, before
/// zero-copy is tried again.
const DIRECT_BACKOFF: u32 = 64;
/// Zero runs shorter than this are sent as data, not as hole chunks.
const MIN_HOLE_CHUNK: u64 = 4096;

type Writer = Mutex<BufWriter<Box<dyn Write + Send>>>;

struct Job {
    req: Request,
    /// Payload buffer from [`bufpool`]; the payload is its first
    /// `payload_len` bytes.
    payload: Vec<u8>,
    payload_len: usize,
    cost: u64,
    ticket: Option<u64>,
    early: Option<(u32, String)>,
    /// Answered already (a zone-unaware write ahead of the write pointer):
    /// its id in [`Shared::pending`](super::server::Shared), resolved when
    /// it is applied or fails.
    acked: Option<u64>,
}

impl Job {
    fn data(&self) -> &[u8] {
        &self.payload[..self.payload_len]
    }
}

/// A zone-unaware write waiting for the write pointer of `zone` to reach
/// `at`.
struct Parked {
    zone: u32,
    at: u64,
    since: Instant,
    job: Job,
}

#[derive(Default)]
struct Budget {
    /// Requests and bytes in flight, and how many readers wait for room.
    m: Mutex<(usize, u64, usize)>,
    cv: Condvar,
}

impl Budget {
    fn acquire(&self, cost: u64) {
        let Ok(mut g) = self.m.lock() else { return };
        while g.0 >= MAX_INFLIGHT || (g.1 > 0 && g.1 + cost > MAX_INFLIGHT_BYTES) {
            g.2 += 1;
            g = match self.cv.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
            g.2 -= 1;
        }
        g.0 += 1;
        g.1 += cost;
    }
    fn release(&self, cost: u64) {
        // Wake only when someone waits: a notify is a futex call per
        // request otherwise.
        let waiting = match self.m.lock() {
            Ok(mut g) => {
                g.0 = g.0.saturating_sub(1);
                g.1 = g.1.saturating_sub(cost);
                g.2 > 0
            }
            Err(_) => true,
        };
        if waiting {
            self.cv.notify_all();
        }
    }
}

/// Per-zone FIFO: each modifying request takes a ticket for its zone range
/// in arrival order and runs once no earlier ticket shares a zone with it.
/// Zone appends do not wait for each other (the device picks where each
/// lands and keeps any number in flight per zone), only for the writes
/// that arrived before them, and writes wait for earlier appends.
/// At most [`MAX_INFLIGHT`] tickets are outstanding, so the scans are short.
#[derive(Default)]
struct ZoneSeq {
    m: Mutex<Tickets>,
    cv: Condvar,
}

#[derive(Default)]
struct Tickets {
    next: u64,
    /// Outstanding tickets with their zones (first, last) and whether the
    /// request is a zone append.
    open: BTreeMap<u64, (u32, u32, bool)>,
}

impl ZoneSeq {
    fn issue(&self, first: u32, last: u32, append: bool) -> u64 {
        let Ok(mut g) = self.m.lock() else { return 0 };
        let t = g.next;
        g.next += 1;
        g.open.insert(t, (first, last, append));
        t
    }
    /// Wait until no earlier ticket overlaps ticket `t` (every earlier one
    /// if `all`).
    fn wait(&self, t: u64, all: bool) {
        let Ok(mut g) = self.m.lock() else { return };
        loop {
            let Some(&(a, b, app)) = g.open.get(&t) else {
                return;
            };
            let blocked = g
                .open
                .range(..t)
                .any(|(_, &(x, y, xapp))| all || (x <= b && a <= y && !(app && xapp)));
            if !blocked {
                return;
            }
            g = match self.cv.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }
    fn done(&self, t: u64) {
        if let Ok(mut g) = self.m.lock() {
            g.open.remove(&t);
        }
        self.cv.notify_all();
    }
}

struct Conn<'a> {
    srv: &'a Shared,
    sess: Session,
    id: u64,
    writer: Writer,
    /// Workers sending or waiting to send a reply.
    senders: AtomicUsize,
    failed: AtomicBool,
    budget: Budget,
    seq: ZoneSeq,
    /// Zone-unaware writes waiting for their zone's write pointer.
    parked: Mutex<Vec<Parked>>,
    /// Early-answered writes that had failed when this connection last
    /// reported them (at its start or its last FLUSH).
    seen_failures: std::sync::atomic::AtomicU64,
    sock: Sock,
    /// Large reads are sent with `sendfile` (not under TLS).
    zero_copy: bool,
    /// Reads left to do buffered after the device could not map one.
    direct_misses: AtomicU32,
}

/// Run the transmission phase until the client disconnects.
pub(crate) fn run(srv: &Shared, sess: Session, io: ConnIo, id: u64) {
    let ConnIo {
        reader,
        writer,
        sock,
        tls,
    } = io;
    let conn = Conn {
        srv,
        sess,
        id,
        writer: Mutex::new(writer),
        senders: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        budget: Budget::default(),
        seq: ZoneSeq::default(),
        parked: Mutex::new(Vec::new()),
        seen_failures: std::sync::atomic::AtomicU64::new(srv.pending.failures()),
        sock,
        zero_copy: !tls && srv.cfg.zero_copy,
        direct_misses: AtomicU32::new(0),
    };
    // Leader/follower: each worker takes the reader lock, reads one request,
    // releases the lock and handles the request itself, so no hand-off
    // between threads happens per request.
    let reader: Mutex<(Box<dyn Read + Send>, bool)> = Mutex::new((reader, false));
    let workers = srv.cfg.workers.max(1);
    let reading = AtomicBool::new(true);
    std::thread::scope(|outer| {
        // Parked writes whose gap never filled fail after PARK_LIMIT.
        let poller = outer.spawn(|| {
            while reading.load(Ordering::Relaxed) {
                // Unparked when the connection ends: closing must not wait
                // out the period (clients wait for the close after DISC).
                std::thread::park_timeout(Duration::from_millis(100));
                conn.expire_parked(false);
                // Safety net for a wake-up the completions did not give.
                while let Some(j) = conn.runnable_parked() {
                    conn.srv.trace(
                        conn.id,
                        format_args!("cookie {}: resumed by poll", j.req.cookie),
                    );
                    let r = conn.execute(&j.req, j.data(), None);
                    conn.after(j, r);
                }
            }
        });
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let job = {
                        let Ok(mut g) = reader.lock() else { return };
                        if g.1 || conn.failed.load(Ordering::Relaxed) {
                            return;
                        }
                        match conn.next_job(&mut *g.0) {
                            Some(j) => j,
                            None => {
                                g.1 = true;
                                return;
                            }
                        }
                    };
                    conn.work(job);
                });
            }
        });
        reading.store(false, Ordering::Relaxed);
        poller.thread().unpark();
    });
    // The client is gone or said goodbye: nothing will fill the gaps.
    conn.expire_parked(true);
    srv.reject_log.flush_dropped();
    if let Ok(mut w) = conn.writer.lock() {
        let _ = w.flush();
    }
    conn.sock.shutdown();
}

fn dev_err(e: DeviceError) -> (u32, String) {
    (wire_errno(e.errno()), e.to_string())
}

fn einval(msg: impl Into<String>) -> (u32, String) {
    (NBD_EINVAL, msg.into())
}

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|e| e <= size)
}

enum Seg {
    /// Guest offset, and the range of the read buffer holding its bytes.
    Data(u64, std::ops::Range<usize>),
    Hole(u64, u64),
}

enum Reply {
    Ok,
    /// Chunks, and the buffer (from [`bufpool`]) their data lives in, so
    /// the reply is sent straight from where the device read it.
    Read(Vec<Seg>, Vec<u8>),
    /// A read sent straight from the image file when the reply goes out
    /// ([`Conn::send_direct`]).
    ReadDirect,
    Status(ContextExtents),
    Append(u64),
    /// Not done: a zone-unaware write waiting for zone `.0`'s write pointer
    /// to reach `.1`; never sent.
    Park(u32, u64),
}

impl Conn<'_> {
    fn extended(&self) -> bool {
        self.sess.mode == ReplyMode::Extended
    }

    /// Read the next request (and its payload) off the wire; `None` ends
    /// the connection (DISC, EOF, protocol error). Called with the reader
    /// lock held, so tickets are issued in arrival order.
    fn next_job(&self, reader: &mut dyn Read) -> Option<Job> {
        let ext = self.extended();
        {
            if self.failed.load(Ordering::Relaxed) {
                return None;
            }
            let req = match Request::read_from(reader, ext) {
                Ok(r) => r,
                Err(e) => {
                    if !matches!(&e, NbdError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
                    {
                        self.srv.trace(self.id, format_args!("read request: {e}"));
                    }
                    return None;
                }
            };
            self.srv.stats.requests.fetch_add(1, Ordering::Relaxed);
            if self.srv.cfg.trace {
                self.srv.trace(
                    self.id,
                    format_args!(
                        "{} flags {:#x} cookie {} offset {:#x} len {:#x}",
                        command_name(req.typ),
                        req.flags,
                        req.cookie,
                        req.offset,
                        req.length
                    ),
                );
            }
            let carries_data =
                req.typ == CMD_WRITE || (self.sess.zoned && req.typ == CMD_X_ZONE_APPEND);
            // With EH a WRITE's length is its payload length whether or not
            // PAYLOAD_LEN is set (QEMU leaves it clear); other commands carry
            // a payload only with PAYLOAD_LEN.
            let payload_len = if carries_data || (ext && req.flags & CMD_FLAG_PAYLOAD_LEN != 0) {
                req.length
            } else {
                0
            };
            let mut early = None;
            let mut payload = Vec::new();
            let mut plen = 0usize;
            let mut cost = 0u64;
            if payload_len > 0 {
                if payload_len > MAX_PAYLOAD as u64 || !carries_data {
                    // Keep the stream in sync by skipping the payload, then
                    // fail just this request; past 4 GiB it is abuse.
                    if payload_len > u32::MAX as u64 {
                        self.srv.trace(
                            self.id,
                            format_args!("payload of {payload_len} bytes: disconnecting"),
                        );
                        return None;
                    }
                    if drain(reader, payload_len).is_err() {
                        return None;
                    }
                    early = Some(einval(if carries_data {
                        format!(
                            "payload of {payload_len} bytes exceeds the maximum of {MAX_PAYLOAD}"
                        )
                    } else {
                        "unexpected payload for this command".to_string()
                    }));
                    self.budget.acquire(0);
                } else {
                    cost = payload_len;
                    self.budget.acquire(cost);
                    plen = payload_len as usize;
                    payload = bufpool::take(plen);
                    if reader.read_exact(&mut payload[..plen]).is_err() {
                        // Client vanished mid-payload: nothing was written.
                        self.budget.release(cost);
                        return None;
                    }
                }
            } else {
                if req.typ == CMD_DISC {
                    return None;
                }
                if req.typ == CMD_READ && req.length <= MAX_PAYLOAD as u64 {
                    cost = req.length;
                }
                if req.typ == CMD_BLOCK_STATUS {
                    // The reply's worst case: every context's extents in full.
                    cost = (self.sess.contexts.len() * MAX_EXTENTS * 16) as u64;
                }
                self.budget.acquire(cost);
            }
            let mut ticket = None;
            if early.is_none() {
                if let Some(g) = &self.srv.geometry {
                    if matches!(
                        req.typ,
                        CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM | CMD_X_ZONE_APPEND
                    ) {
                        if let Some(first) = g.zone_index(req.offset) {
                            let end = req.offset.saturating_add(req.length.max(1)) - 1;
                            let last = g.zone_index(end).unwrap_or(g.nr_zones - 1);
                            let append = req.typ == CMD_X_ZONE_APPEND;
                            // Conventional zones (a prefix of the device)
                            // take writes anywhere in any order: no ticket,
                            // so random writes there run in parallel.
                            if !g.is_conventional(last.max(first)) {
                                ticket = Some(self.seq.issue(first, last.max(first), append));
                            }
                        }
                    }
                }
            }
            Some(Job {
                req,
                payload,
                payload_len: plen,
                cost,
                ticket,
                early,
                acked: None,
            })
        }
    }

    fn work(&self, job: Job) {
        if let Some(t) = job.ticket {
            self.seq.wait(t, false);
        }
        let result = match &job.early {
            Some(e) => Err(e.clone()),
            None => self.execute(&job.req, job.data(), job.ticket),
        };
        if let Some(t) = job.ticket {
            self.seq.done(t);
        }
        self.after(job, result);
    }

    /// Reply to a finished request, or park it; then run parked writes its
    /// completion may have unblocked.
    fn after(&self, mut job: Job, mut result: std::result::Result<Reply, (u32, String)>) {
        loop {
            if let Ok(Reply::Park(zone, at)) = result {
                if job.acked.is_none() && self.may_answer_early(&job.req) {
                    let id = self.srv.pending.add(job.req.offset, job.req.length);
                    job.acked = Some(id);
                    let req = job.req;
                    match self.park(zone, at, job) {
                        None => {
                            self.srv.trace(
                                self.id,
                                format_args!(
                                    "cookie {}: answered before it is applied",
                                    req.cookie
                                ),
                            );
                            self.reply_early(&req);
                            return;
                        }
                        Some(j) => {
                            // Runnable already: no need to answer early.
                            self.srv.pending.resolve(id, true);
                            job = j;
                            job.acked = None;
                            result = self.execute(&job.req, job.data(), None);
                            continue;
                        }
                    }
                }
                match self.park(zone, at, job) {
                    None => return,
                    Some(j) => {
                        // The write pointer got there meanwhile: run it now.
                        job = j;
                        result = self.execute(&job.req, job.data(), None);
                        continue;
                    }
                }
            }
            let wrote = result.is_ok() && matches!(job.req.typ, CMD_WRITE | CMD_WRITE_ZEROES);
            let range = (job.req.offset, job.req.length);
            self.finish(job, result);
            match wrote.then(|| self.unparked(range.0, range.1)).flatten() {
                Some(j) => {
                    job = j;
                    result = self.execute(&job.req, job.data(), None);
                }
                None => return,
            }
        }
    }

    fn finish(&self, job: Job, result: std::result::Result<Reply, (u32, String)>) {
        bufpool::give(job.payload);
        if let Err((e, msg)) = &result {
            let msg = if job.acked.is_some() {
                format!("{msg} (answered before it was applied: the next FLUSH fails)")
            } else {
                msg.clone()
            };
            self.log_reject(&job.req, *e, &msg);
        }
        if let Some(id) = job.acked {
            // The client has its answer; what is left is the bookkeeping
            // a FLUSH or read waits on.
            self.srv.pending.resolve(id, result.is_ok());
            self.budget.release(job.cost);
            return;
        }
        if !self.failed.load(Ordering::Relaxed) && self.send(&job.req, result).is_err() {
            // Wake the reader too: the connection is unusable.
            self.failed.store(true, Ordering::Relaxed);
            self.sock.shutdown();
        }
        self.budget.release(job.cost);
    }

    /// Every rejected request is logged: with `--trace` in full, otherwise
    /// rate-limited.
    fn log_reject(&self, r: &Request, errno: u32, msg: &str) {
        let what = format!(
            "{} at {:#x} length {:#x} failed: {}: {msg}",
            command_name(r.typ),
            r.offset,
            r.length,
            errno_label(errno)
        );
        if self.srv.cfg.trace {
            self.srv.trace(
                self.id,
                format_args!("cookie {} flags {:#x}: {what}", r.cookie, r.flags),
            );
        } else {
            self.srv
                .reject_log
                .log(format_args!("conn {}: {what}", self.id));
        }
    }

    /// Whether a zone-unaware write ahead of the write pointer may be
    /// answered before it is applied: not when the client asked for it to
    /// be durable before the answer (FUA, or a write-through export).
    fn may_answer_early(&self, r: &Request) -> bool {
        r.flags & CMD_FLAG_FUA == 0 && !self.srv.cfg.writethrough
    }

    /// Answer a parked write as done (it is applied later, in order).
    fn reply_early(&self, r: &Request) {
        if !self.failed.load(Ordering::Relaxed) && self.send(r, Ok(Reply::Ok)).is_err() {
            self.failed.store(true, Ordering::Relaxed);
            self.sock.shutdown();
        }
    }

    /// The issued write pointer of zone `zone`.
    fn wp(&self, zone: u32) -> Option<u64> {
        let g = self.srv.geometry.as_ref()?;
        let d = self
            .srv
            .device
            .zone_report(g.zone_start(zone), 1)
            .ok()?
            .into_iter()
            .next()?;
        Some(d.wp)
    }

    /// Park `job` until zone `zone`'s write pointer reaches `at`; gives the
    /// job back if it already has (checked under the lock the completions
    /// take, so no wake-up is lost).
    fn park(&self, zone: u32, at: u64, job: Job) -> Option<Job> {
        let Ok(mut p) = self.parked.lock() else {
            self.finish(
                job,
                Err((NBD_EIO, "internal error: parked list unusable".into())),
            );
            return None;
        };
        if self.wp(zone).is_none_or(|wp| wp >= at) {
            return Some(job);
        }
        self.srv.trace(
            self.id,
            format_args!(
                "cookie {}: {} at {at:#x} is ahead of zone {zone}'s write pointer: waiting for the writes before it",
                job.req.cookie,
                command_name(job.req.typ)
            ),
        );
        p.push(Parked {
            zone,
            at,
            since: Instant::now(),
            job,
        });
        None
    }

    /// A parked write that can run now that a write to `[offset,
    /// offset+len)` completed.
    fn unparked(&self, offset: u64, len: u64) -> Option<Job> {
        let g = self.srv.geometry.as_ref()?;
        let mut p = self.parked.lock().ok()?;
        if p.is_empty() {
            return None;
        }
        for (z, _, _) in unaware::split(g, offset, len.max(1)) {
            let Some(wp) = self.wp(z) else { continue };
            if let Some(k) = p.iter().position(|x| x.zone == z && x.at == wp) {
                let j = p.swap_remove(k).job;
                self.srv.trace(
                    self.id,
                    format_args!(
                        "cookie {}: zone {z}'s write pointer reached {wp:#x}: resuming",
                        j.req.cookie
                    ),
                );
                return Some(j);
            }
        }
        None
    }

    /// A parked write whose zone's write pointer has reached it.
    fn runnable_parked(&self) -> Option<Job> {
        let mut p = self.parked.lock().ok()?;
        let k = p.iter().position(|x| self.wp(x.zone) == Some(x.at))?;
        Some(p.swap_remove(k).job)
    }

    /// Fail parked writes that waited longer than [`PARK_LIMIT`] (all of
    /// them with `all`).
    fn expire_parked(&self, all: bool) {
        let expired: Vec<Parked> = {
            let Ok(mut p) = self.parked.lock() else {
                return;
            };
            let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *p)
                .into_iter()
                .partition(|x| all || x.since.elapsed() >= PARK_LIMIT);
            *p = keep;
            old
        };
        for x in expired {
            let zone = match self.srv.geometry.as_ref().and_then(|g| {
                let d = self.srv.device.zone_report(g.zone_start(x.zone), 1).ok()?;
                d.into_iter().next()
            }) {
                Some(d) => format!(
                    "zone {} (start {:#x}, {}, wp {:#x})",
                    d.index, d.start, d.cond, d.wp
                ),
                None => format!("zone {}", x.zone),
            };
            let verb = if x.job.req.typ == CMD_WRITE {
                "write"
            } else {
                "write-zeroes"
            };
            let msg = format!(
                "{zone}: {verb} of {:#x} bytes at {:#x} is not at the write pointer (waited {} s for the writes before it)",
                x.job.req.length,
                x.at,
                x.since.elapsed().as_secs()
            );
            self.finish(x.job, Err(einval(msg)));
        }
    }

    /// Whether writes of this session go through the unaware policy.
    fn unaware(&self) -> Option<&ZoneGeometry> {
        if self.sess.zoned || self.srv.cfg.zoned_writes != ZonedWrites::Strict {
            return None;
        }
        self.srv.geometry.as_ref()
    }

    fn execute(
        &self,
        r: &Request,
        payload: &[u8],
        ticket: Option<u64>,
    ) -> std::result::Result<Reply, (u32, String)> {
        let dev = &self.srv.device;
        let size = dev.size();
        let fua = r.flags & CMD_FLAG_FUA != 0;
        let mut allowed = CMD_FLAG_FUA;
        if self.extended() {
            allowed |= CMD_FLAG_PAYLOAD_LEN;
        }
        allowed |= match r.typ {
            CMD_READ if self.sess.mode != ReplyMode::Simple => CMD_FLAG_DF,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
        if r.flags & !allowed != 0 {
            return Err(einval(format!(
                "invalid flags {:#x} for {}",
                r.flags,
                command_name(r.typ)
            )));
        }
        let ro = self.sess.flags & TF_READ_ONLY != 0;
        let writable = || {
            if ro {
                Err((NBD_EPERM, "the export is read-only".to_string()))
            } else {
                Ok(())
            }
        };
        let range = || {
            if in_range(r.offset, r.length, size) {
                Ok(())
            } else {
                Err(einval(format!(
                    "request at {:#x} length {:#x} is past the end of the export ({size:#x} bytes)",
                    r.offset, r.length
                )))
            }
        };
        let zoned_cmd = matches!(
            r.typ,
            CMD_X_ZONE_OPEN
                | CMD_X_ZONE_CLOSE
                | CMD_X_ZONE_FINISH
                | CMD_X_ZONE_RESET
                | CMD_X_ZONE_APPEND
        );
        if zoned_cmd && !self.sess.zoned {
            return Err(einval(format!("invalid request type ({}) received", r.typ)));
        }
        match r.typ {
            CMD_READ => {
                if r.length > MAX_PAYLOAD as u64 {
                    let e = if r.flags & CMD_FLAG_DF != 0 {
                        NBD_EOVERFLOW
                    } else {
                        NBD_EINVAL
                    };
                    return Err((e, format!("read of {} bytes exceeds the maximum", r.length)));
                }
                range()?;
                // A write answered but not yet applied must read back.
                self.srv.pending.wait_clear(r.offset, r.length, PARK_LIMIT);
                if self.try_direct(r) {
                    // The reply is sent later, one at a time under the
                    // writer lock: only data already in the page cache goes
                    // that way; uncached data, and a range the device
                    // cannot map, is read into a buffer right here, in
                    // parallel with other requests.
                    let mut cached = false;
                    let mapped =
                        dev.read_direct(r.offset, r.length, PageUse::Borrow, &mut |runs| {
                            cached = zerocopy::resident(runs);
                        });
                    match mapped {
                        Ok(true) if cached => return Ok(Reply::ReadDirect),
                        Ok(true) => {}
                        _ => self.direct_misses.store(DIRECT_BACKOFF, Ordering::Relaxed),
                    }
                }
                self.read(r).map(|(segs, buf)| Reply::Read(segs, buf))
            }
            CMD_WRITE => {
                writable()?;
                range()?;
                let fua = fua || self.srv.cfg.writethrough;
                if let Some(g) = self.unaware() {
                    return self.run_unaware(g, r, unaware::Data::Write(payload), fua, ticket);
                }
                dev.write(r.offset, payload, fua).map_err(dev_err)?;
                Ok(Reply::Ok)
            }
            CMD_FLUSH => {
                // Writes answered ahead of the write pointer are covered
                // by this flush: wait until they are applied, or fail
                // (a parked write fails after PARK_LIMIT).
                let applied = self.srv.pending.wait_clear(0, u64::MAX, FLUSH_WAIT);
                dev.flush().map_err(dev_err)?;
                if !applied {
                    return Err((
                        NBD_EIO,
                        "writes answered ahead of a zone's write pointer are still waiting for the data before them".into(),
                    ));
                }
                let now = self.srv.pending.failures();
                let before = self.seen_failures.swap(now, Ordering::Relaxed);
                if now > before {
                    return Err((
                        NBD_EIO,
                        format!(
                            "{} write(s) answered ahead of a zone's write pointer could not be applied: the data before them never came (see the log)",
                            now - before
                        ),
                    ));
                }
                Ok(Reply::Ok)
            }
            CMD_TRIM => {
                writable()?;
                range()?;
                if self.srv.cfg.discard && r.length > 0 {
                    dev.discard(r.offset, r.length).map_err(dev_err)?;
                }
                if fua {
                    dev.flush().map_err(dev_err)?;
                }
                Ok(Reply::Ok)
            }
            CMD_CACHE => {
                range()?;
                Ok(Reply::Ok)
            }
            CMD_WRITE_ZEROES => {
                writable()?;
                range()?;
                if r.length > 0 {
                    let flags = ZeroFlags {
                        may_unmap: r.flags & CMD_FLAG_NO_HOLE == 0,
                        fast_only: r.flags & CMD_FLAG_FAST_ZERO != 0,
                        fua: fua || self.srv.cfg.writethrough,
                    };
                    if let Some(g) = self.unaware() {
                        let data = unaware::Data::Zeroes(flags);
                        return self.run_unaware(g, r, data, flags.fua, ticket);
                    }
                    dev.write_zeroes(r.offset, r.length, flags)
                        .map_err(dev_err)?;
                }
                Ok(Reply::Ok)
            }
            CMD_BLOCK_STATUS => self.block_status(r).map(Reply::Status),
            CMD_X_ZONE_OPEN | CMD_X_ZONE_CLOSE | CMD_X_ZONE_FINISH | CMD_X_ZONE_RESET => {
                writable()?;
                range()?;
                let op = match r.typ {
                    CMD_X_ZONE_OPEN => ZoneOp::Open,
                    CMD_X_ZONE_CLOSE => ZoneOp::Close,
                    CMD_X_ZONE_FINISH => ZoneOp::Finish,
                    _ => ZoneOp::Reset,
                };
                dev.zone_mgmt(op, r.offset, r.length).map_err(dev_err)?;
                if fua {
                    dev.flush().map_err(dev_err)?;
                }
                Ok(Reply::Ok)
            }
            CMD_X_ZONE_APPEND => {
                writable()?;
                range()?;
                let at = dev
                    .zone_append(r.offset, payload, fua || self.srv.cfg.writethrough)
                    .map_err(dev_err)?;
                Ok(Reply::Append(at))
            }
            t => Err(einval(format!("invalid request type ({t}) received"))),
        }
    }

    fn run_unaware(
        &self,
        g: &ZoneGeometry,
        r: &Request,
        data: unaware::Data<'_>,
        fua: bool,
        ticket: Option<u64>,
    ) -> std::result::Result<Reply, (u32, String)> {
        let wait_earlier = || {
            if let Some(t) = ticket {
                self.seq.wait(t, true);
            }
        };
        let note = |a: std::fmt::Arguments<'_>| {
            self.srv
                .trace(self.id, format_args!("cookie {}: {a}", r.cookie))
        };
        let dev = &*self.srv.device;
        let w = unaware::Write {
            offset: r.offset,
            len: r.length,
            data,
            fua,
        };
        match unaware::run(dev, g, &w, &wait_earlier, &note)? {
            unaware::Outcome::Done => Ok(Reply::Ok),
            unaware::Outcome::Park { zone, at } => Ok(Reply::Park(zone, at)),
        }
    }

    fn read(&self, r: &Request) -> std::result::Result<(Vec<Seg>, Vec<u8>), (u32, String)> {
        let dev = &self.srv.device;
        let end = r.offset + r.length;
        // (offset, len, zero) runs; holes only with structured replies.
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let holes_ok = self.sess.mode != ReplyMode::Simple && r.flags & CMD_FLAG_DF == 0;
        if holes_ok && r.length >= MIN_HOLE_CHUNK {
            let mut pos = r.offset;
            if let Ok(exts) = dev.block_status(r.offset, r.length) {
                for e in exts {
                    if pos >= end {
                        break;
                    }
                    let l = e.len.min(end - pos);
                    if l == 0 {
                        continue;
                    }
                    let zero = e.zero && l >= MIN_HOLE_CHUNK;
                    match runs.last_mut() {
                        Some(last) if last.2 == zero => last.1 += l,
                        _ => runs.push((pos, l, zero)),
                    }
                    pos += l;
                }
            }
            if pos < end {
                match runs.last_mut() {
                    Some(last) if !last.2 => last.1 += end - pos,
                    _ => runs.push((pos, end - pos, false)),
                }
            }
        } else if r.length > 0 {
            runs.push((r.offset, r.length, false));
        }
        let data: u64 = runs.iter().filter(|x| !x.2).map(|x| x.1).sum();
        let mut buf = bufpool::take(data as usize);
        let mut segs = Vec::with_capacity(runs.len());
        let mut at = 0usize;
        for (off, len, zero) in runs {
            if zero {
                segs.push(Seg::Hole(off, len));
            } else {
                let end = at + len as usize;
                if let Err(e) = dev.read(off, &mut buf[at..end]) {
                    bufpool::give(buf);
                    return Err(dev_err(e));
                }
                segs.push(Seg::Data(off, at..end));
                at = end;
            }
        }
        Ok((segs, buf))
    }

    fn block_status(&self, r: &Request) -> std::result::Result<ContextExtents, (u32, String)> {
        if self.sess.contexts.is_empty() {
            return Err(einval("no metadata context was negotiated"));
        }
        if r.length == 0 {
            return Err(einval("block status of zero length"));
        }
        let size = self.srv.device.size();
        if !in_range(r.offset, r.length, size) {
            return Err(einval(format!(
                "block status at {:#x} length {:#x} is past the end of the export",
                r.offset, r.length
            )));
        }
        let req_one = r.flags & CMD_FLAG_REQ_ONE != 0;
        // Without EH an extent length must fit 32 bits; 2 GiB keeps alignment.
        let max_ext = if self.extended() { u64::MAX } else { 1 << 31 };
        let mut out = Vec::new();
        for (id, ctx) in &self.sess.contexts {
            let mut exts = match ctx {
                Ctx::Base => self.base_extents(r.offset, r.length)?,
                Ctx::ZonedState => match &self.srv.geometry {
                    Some(g) => self.zoned_extents(g, r.offset, r.length)?,
                    None => vec![(r.length, 0)],
                },
                Ctx::ZonedWp => match &self.srv.geometry {
                    Some(g) => self.wp_extents(g, r.offset, r.length)?,
                    None => vec![(r.length, 0)],
                },
            };
            exts = split_extents(exts, max_ext);
            if req_one {
                exts.truncate(1);
                if let Some(e) = exts.first_mut() {
                    e.0 = e.0.min(r.length);
                }
            }
            exts.truncate(MAX_EXTENTS);
            out.push((*id, exts));
        }
        Ok(out)
    }

    fn base_extents(
        &self,
        offset: u64,
        len: u64,
    ) -> std::result::Result<Vec<(u64, u64)>, (u32, String)> {
        let exts = self.srv.device.block_status(offset, len).map_err(dev_err)?;
        let mut v: Vec<(u64, u64)> = Vec::new();
        let mut total = 0u64;
        for e in exts {
            if e.len == 0 || total >= len {
                continue;
            }
            let l = e.len.min(len - total);
            total += l;
            let st =
                (if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 }) as u64;
            match v.last_mut() {
                Some(last) if last.1 == st => last.0 += l,
                _ => v.push((l, st)),
            }
        }
        if v.is_empty() {
            v.push((len, 0));
        }
        Ok(v)
    }

    /// `x-zoned:wp`: one extent per zone (from the request offset), the
    /// status being the write pointer relative to the zone start
    /// (conventional zones: 0).
    fn wp_extents(
        &self,
        g: &ZoneGeometry,
        offset: u64,
        len: u64,
    ) -> std::result::Result<Vec<(u64, u64)>, (u32, String)> {
        let end = offset + len;
        let mut pos = offset;
        let mut out = Vec::new();
        while pos < end && out.len() < MAX_EXTENTS {
            let zones = self.srv.device.zone_report(pos, 256).map_err(dev_err)?;
            let before = pos;
            for z in zones {
                let zend = z.start.saturating_add(z.len);
                if zend <= pos {
                    continue;
                }
                let rel = if z.zone_type == ZoneType::Conventional {
                    0
                } else {
                    z.wp.saturating_sub(z.start)
                };
                out.push((zend - pos, rel));
                pos = zend;
                if pos >= end || out.len() >= MAX_EXTENTS {
                    break;
                }
            }
            if pos == before || g.zone_index(pos).is_none() {
                break;
            }
        }
        if out.is_empty() {
            return Err((NBD_EIO, "zone report returned nothing".into()));
        }
        Ok(out)
    }

    fn zoned_extents(
        &self,
        g: &ZoneGeometry,
        offset: u64,
        len: u64,
    ) -> std::result::Result<Vec<(u64, u64)>, (u32, String)> {
        let end = offset + len;
        let mut pos = offset;
        let mut out: Vec<(u64, u64)> = Vec::new();
        'outer: while pos < end && out.len() < MAX_EXTENTS {
            if g.zone_index(pos).is_none() {
                break;
            }
            let zones = self.srv.device.zone_report(pos, 256).map_err(dev_err)?;
            if zones.is_empty() {
                break;
            }
            let before = pos;
            for z in zones {
                let zend = z.start.saturating_add(z.len);
                if zend <= pos {
                    continue;
                }
                let odd = if z.index % 2 == 1 { ZSTATE_ZONE_ODD } else { 0 };
                let base = (z.cond.value() as u32 & ZSTATE_COND_MASK)
                    | ((z.zone_type.value() as u32) << ZSTATE_TYPE_SHIFT)
                    | odd;
                let mut pieces: Vec<(u64, u64, u32)> = Vec::with_capacity(3);
                if z.zone_type == ZoneType::Conventional || z.cond == ZoneCond::NotWp {
                    pieces.push((z.start, zend, base));
                } else {
                    let capend = z.start.saturating_add(z.cap).min(zend);
                    let wp = z.wp.clamp(z.start, zend);
                    if wp > z.start {
                        pieces.push((z.start, wp.min(capend), base | ZSTATE_WRITTEN));
                    }
                    if wp < capend {
                        pieces.push((wp, capend, base));
                    }
                    if capend < zend {
                        let w = if wp > capend { ZSTATE_WRITTEN } else { 0 };
                        pieces.push((capend, zend, base | ZSTATE_BEYOND_CAP | w));
                    }
                }
                for (s, e, st) in pieces {
                    let s = s.max(pos);
                    if e <= s {
                        continue;
                    }
                    out.push((e - s, st as u64));
                    pos = e;
                    if pos >= end || out.len() >= MAX_EXTENTS {
                        break 'outer;
                    }
                }
            }
            if pos == before {
                break;
            }
        }
        if out.is_empty() {
            return Err((NBD_EIO, "zone report returned nothing".into()));
        }
        Ok(out)
    }

    /// Send the reply to `r`. Replies are flushed to the socket unless
    /// another worker is already waiting to send one (it flushes both), so
    /// replies finishing together leave in one send.
    fn send(
        &self,
        r: &Request,
        result: std::result::Result<Reply, (u32, String)>,
    ) -> std::io::Result<()> {
        self.senders.fetch_add(1, Ordering::SeqCst);
        let mut w = match self.writer.lock() {
            Ok(w) => w,
            Err(_) => {
                self.senders.fetch_sub(1, Ordering::SeqCst);
                return Err(std::io::Error::other("writer poisoned"));
            }
        };
        let res = self.encode_reply(&mut w, r, result);
        // The last sender in line flushes (also after an error: the
        // connection is then shut down anyway).
        if self.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            res.and_then(|()| w.flush())
        } else {
            res
        }
    }

    /// Whether to send this read's reply with `sendfile`: large reads on
    /// plain sockets, unless the device recently could not map one.
    fn try_direct(&self, r: &Request) -> bool {
        if !self.zero_copy || r.length < DIRECT_SEND as u64 {
            return false;
        }
        let misses = self.direct_misses.load(Ordering::Relaxed);
        if misses > 0 {
            self.direct_misses.store(misses - 1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Send a read's reply from the image file (the writer lock is held):
    /// the device maps the range and keeps it from being freed while
    /// [`zerocopy::Tx`] sends it; a range it cannot map is read as usual.
    fn send_direct(
        &self,
        w: &mut BufWriter<Box<dyn Write + Send>>,
        r: &Request,
    ) -> std::io::Result<()> {
        w.flush()?;
        let simple = self.sess.mode == ReplyMode::Simple;
        let ext = self.extended();
        let f = zerocopy::Framing {
            simple,
            extended: ext,
            one_chunk: r.flags & CMD_FLAG_DF != 0,
            cookie: r.cookie,
            offset: r.offset,
        };
        let fd = match &self.sock {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        };
        let mut tx = None;
        let mapped = self
            .srv
            .device
            .read_direct(r.offset, r.length, PageUse::Lend, &mut |runs| {
                let t = tx.get_or_insert_with(|| zerocopy::Tx::new(fd));
                t.reply(runs, f);
            });
        match (mapped, tx) {
            (Ok(true), Some(t)) => {
                let st = &self.srv.stats;
                st.zero_copy_replies.fetch_add(1, Ordering::Relaxed);
                if t.spilled() {
                    st.zero_copy_spills.fetch_add(1, Ordering::Relaxed);
                }
                t.finish()
            }
            (Ok(true), None) => Err(std::io::Error::other("read_direct did not send")),
            (Ok(false), _) => {
                // Compressed, backing file, ...: buffered, and not retried
                // for a while.
                self.direct_misses.store(DIRECT_BACKOFF, Ordering::Relaxed);
                let res = self.read(r).map(|(segs, buf)| Reply::Read(segs, buf));
                self.encode_reply(w, r, res)
            }
            (Err(e), _) => {
                let e = dev_err(e);
                self.log_reject(r, e.0, &e.1);
                self.encode_reply(w, r, Err(e))
            }
        }
    }

    /// Send a read reply: headers and data go out in one vectored write
    /// straight from the read buffer when the reply is large, through the
    /// writer's buffer when small.
    #[allow(clippy::too_many_arguments)]
    fn send_read(
        &self,
        w: &mut BufWriter<Box<dyn Write + Send>>,
        r: &Request,
        segs: &[Seg],
        buf: &[u8],
        simple: bool,
        ext: bool,
    ) -> std::io::Result<()> {
        // Every chunk header, back to back; `heads` holds each one's end.
        let mut h = Vec::with_capacity(32 * segs.len().max(1));
        let mut heads = Vec::with_capacity(segs.len().max(1));
        if simple {
            encode_simple_reply(&mut h, 0, r.cookie);
            heads.push(h.len());
            if segs.iter().any(|s| matches!(s, Seg::Hole(..))) {
                // Not produced (holes need structured replies); kept correct.
                w.write_all(&h)?;
                for s in segs {
                    match s {
                        Seg::Data(_, d) => w.write_all(&buf[d.clone()])?,
                        Seg::Hole(_, l) => write_zeroes(&mut *w, *l)?,
                    }
                }
                return Ok(());
            }
        } else if segs.is_empty() {
            encode_chunk_header(
                &mut h,
                ext,
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                r.cookie,
                r.offset,
                0,
            );
            heads.push(h.len());
        } else {
            let n = segs.len();
            for (i, s) in segs.iter().enumerate() {
                let fl = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
                match s {
                    Seg::Data(off, d) => {
                        encode_chunk_header(
                            &mut h,
                            ext,
                            fl,
                            REPLY_TYPE_OFFSET_DATA,
                            r.cookie,
                            r.offset,
                            8 + d.len() as u64,
                        );
                        h.extend_from_slice(&off.to_be_bytes());
                    }
                    Seg::Hole(off, l) => {
                        encode_chunk_header(
                            &mut h,
                            ext,
                            fl,
                            REPLY_TYPE_OFFSET_HOLE,
                            r.cookie,
                            r.offset,
                            12,
                        );
                        h.extend_from_slice(&off.to_be_bytes());
                        h.extend_from_slice(&(*l as u32).to_be_bytes());
                    }
                }
                heads.push(h.len());
            }
        }
        // Interleave: header, then its data (simple replies: one header,
        // then every data run).
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * heads.len() + segs.len());
        let mut prev = 0usize;
        if simple {
            slices.push(IoSlice::new(&h[..heads[0]]));
            for s in segs {
                if let Seg::Data(_, d) = s {
                    slices.push(IoSlice::new(&buf[d.clone()]));
                }
            }
        } else {
            for (i, &end) in heads.iter().enumerate() {
                slices.push(IoSlice::new(&h[prev..end]));
                prev = end;
                if let Some(Seg::Data(_, d)) = segs.get(i) {
                    slices.push(IoSlice::new(&buf[d.clone()]));
                }
            }
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total < DIRECT_SEND {
            for s in &slices {
                w.write_all(s)?;
            }
            return Ok(());
        }
        // Large: what is buffered goes first, then one writev of the rest
        // (no copy into the writer's buffer).
        w.flush()?;
        write_all_vectored(w.get_mut(), &mut slices)
    }

    fn encode_reply(
        &self,
        w: &mut BufWriter<Box<dyn Write + Send>>,
        r: &Request,
        result: std::result::Result<Reply, (u32, String)>,
    ) -> std::io::Result<()> {
        let ext = self.extended();
        let simple = self.sess.mode == ReplyMode::Simple;
        let mut h = Vec::with_capacity(64);
        match result {
            Err((errno, msg)) => {
                if simple {
                    encode_simple_reply(&mut h, errno, r.cookie);
                } else {
                    let msg = clip_message(&msg).as_bytes();
                    encode_chunk_header(
                        &mut h,
                        ext,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_ERROR,
                        r.cookie,
                        r.offset,
                        6 + msg.len() as u64,
                    );
                    h.extend_from_slice(&errno.to_be_bytes());
                    h.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                    h.extend_from_slice(msg);
                }
                w.write_all(&h)?;
            }
            Ok(Reply::Ok) => {
                if ext {
                    encode_chunk_header(
                        &mut h,
                        true,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_NONE,
                        r.cookie,
                        r.offset,
                        0,
                    );
                } else {
                    encode_simple_reply(&mut h, 0, r.cookie);
                }
                w.write_all(&h)?;
            }
            Ok(Reply::Park(..)) => {
                // `after` parks these; one here would be a bug, not a reply.
                return Err(std::io::Error::other("a parked request reached send"));
            }
            Ok(Reply::Append(at)) => {
                encode_chunk_header(
                    &mut h,
                    ext,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_X_ZONE_APPEND,
                    r.cookie,
                    r.offset,
                    8,
                );
                h.extend_from_slice(&at.to_be_bytes());
                w.write_all(&h)?;
            }
            Ok(Reply::Read(segs, buf)) => {
                let sent = self.send_read(w, r, &segs, &buf, simple, ext);
                bufpool::give(buf);
                sent?;
            }
            Ok(Reply::ReadDirect) => self.send_direct(w, r)?,
            Ok(Reply::Status(chunks)) => {
                let n = chunks.len();
                for (i, (id, exts)) in chunks.iter().enumerate() {
                    h.clear();
                    let fl = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
                    if ext {
                        encode_chunk_header(
                            &mut h,
                            true,
                            fl,
                            REPLY_TYPE_BLOCK_STATUS_EXT,
                            r.cookie,
                            r.offset,
                            8 + 16 * exts.len() as u64,
                        );
                        h.extend_from_slice(&id.to_be_bytes());
                        h.extend_from_slice(&(exts.len() as u32).to_be_bytes());
                        for (l, s) in exts {
                            h.extend_from_slice(&l.to_be_bytes());
                            h.extend_from_slice(&s.to_be_bytes());
                        }
                    } else {
                        encode_chunk_header(
                            &mut h,
                            false,
                            fl,
                            REPLY_TYPE_BLOCK_STATUS,
                            r.cookie,
                            r.offset,
                            4 + 8 * exts.len() as u64,
                        );
                        h.extend_from_slice(&id.to_be_bytes());
                        for (l, s) in exts {
                            h.extend_from_slice(&(*l as u32).to_be_bytes());
                            h.extend_from_slice(&(*s as u32).to_be_bytes());
                        }
                    }
                    w.write_all(&h)?;
                }
            }
        }
        Ok(())
    }
}

/// Write every byte of `bufs` with as few `writev` calls as the socket
/// takes.
fn write_all_vectored(w: &mut dyn Write, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `EINVAL (Invalid argument)` for an NBD error value.
fn errno_label(e: u32) -> String {
    let (name, errno) = match e {
        NBD_EPERM => ("EPERM", libc::EPERM),
        NBD_EIO => ("EIO", libc::EIO),
        NBD_ENOMEM => ("ENOMEM", libc::ENOMEM),
        NBD_EINVAL => ("EINVAL", libc::EINVAL),
        NBD_ENOSPC => ("ENOSPC", libc::ENOSPC),
        NBD_EOVERFLOW => ("EOVERFLOW", libc::EOVERFLOW),
        NBD_ENOTSUP => ("ENOTSUP", libc::ENOTSUP),
        NBD_ESHUTDOWN => ("ESHUTDOWN", libc::ESHUTDOWN),
        _ => return format!("error {e}"),
    };
    format!("{name} ({})", crate::device::errno_name(errno))
}

fn write_zeroes(w: &mut dyn Write, mut n: u64) -> std::io::Result<()> {
    let z = [0u8; 8192];
    while n > 0 {
        let k = n.min(z.len() as u64) as usize;
        w.write_all(&z[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Split extents longer than `max` (status unchanged).
fn split_extents(v: Vec<(u64, u64)>, max: u64) -> Vec<(u64, u64)> {
    if v.iter().all(|e| e.0 <= max) {
        return v;
    }
    let mut out = Vec::with_capacity(v.len() + 2);
    for (mut l, s) in v {
        while l > max {
            out.push((max, s));
            l -= max;
        }
        if l > 0 {
            out.push((l, s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_total_and_status() {
        let v = split_extents(vec![(5 << 31, 3), (7, 1)], 1 << 31);
        assert_eq!(v.iter().map(|e| e.0).sum::<u64>(), (5 << 31) + 7);
        assert!(v.iter().all(|e| e.0 <= 1 << 31));
        assert_eq!(v.last(), Some(&(7, 1)));
    }

    #[test]
    fn range_check_overflow() {
        assert!(in_range(0, 10, 10));
        assert!(!in_range(1, 10, 10));
        assert!(!in_range(u64::MAX, 2, 10));
    }
}
