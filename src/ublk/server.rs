//! The ublk control and queue loops over `libublk`: add the device, serve
//! each queue on its own thread, remove the device when asked to stop.
//!
//! Each queue thread takes the driver's requests. Small reads and writes it
//! runs itself to the end (the device call, with the payload moved between
//! the driver and the image file's mapping or the thread's buffer, see
//! [`filemap`](super::filemap); then complete); flushes,
//! zone management and large transfers go to the queue's worker threads
//! ([`dispatch`](super::dispatch)), so several are in flight at once and a
//! slow sync does not stall the queue. Every request the driver hands out
//! is completed, with a negative errno if need be.

use super::dispatch::{Dispatcher, Job};
use super::filemap::{read_mapped, CdevPayload, FileMap};
use super::layout::{layout, Layout, LayoutError};
use super::map::{execute, execute_write, Completion, Op, Request};
use super::usercopy::pwrite_full;
use crate::device::BlockDevice;
use io_uring::{opcode, types};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags, UblkIORes};
use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The ublk control device; present once `ublk_drv` is loaded.
pub const CONTROL_DEVICE: &str = "/dev/ublk-control";

/// How to serve.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Device number (`/dev/ublkbN`), or -1 to let the driver pick.
    pub id: i32,
    /// Hardware queues (one thread each).
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Largest request in bytes.
    pub max_io_bytes: u32,
    /// Worker threads per queue running requests beside the queue thread
    /// (0: the queue thread runs every request itself, one at a time).
    pub workers: u16,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            id: -1,
            queues: 1,
            depth: 64,
            max_io_bytes: 512 << 10,
            workers: 4,
        }
    }
}

/// Errors of the ublk front end.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The image cannot be shown as a ublk device.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// No ublk driver.
    #[error("{CONTROL_DEVICE} does not exist: load the ublk driver first (modprobe ublk_drv)")]
    NoDriver,
    /// Invalid option.
    #[error("{0}")]
    Option(String),
    /// libublk or the driver failed.
    #[error("{what}: {source}")]
    Ublk {
        /// The step that failed.
        what: &'static str,
        /// The libublk error.
        #[source]
        source: UblkError,
    },
}

fn ublk_err(what: &'static str) -> impl FnOnce(UblkError) -> ServeError {
    move |source| ServeError::Ublk { what, source }
}

/// Serve `dev` as a ublk block device until `stop` is set (or the device
/// is deleted from outside). `on_live` gets the block device path once
/// the device is started. The device is removed before this returns; the
/// caller flushes and closes `dev`.
pub fn serve<F>(
    dev: Arc<dyn BlockDevice>,
    opts: &ServeOptions,
    stop: &'static AtomicBool,
    on_live: F,
) -> Result<Layout, ServeError>
where
    F: FnOnce(&str) + Send + Sync + 'static,
{
    if opts.queues == 0 || opts.depth == 0 {
        return Err(ServeError::Option(
            "queue count and depth must be at least 1".into(),
        ));
    }
    let lay = layout(dev.as_ref(), opts.max_io_bytes)?;
    if !Path::new(CONTROL_DEVICE).exists() {
        return Err(ServeError::NoDriver);
    }
    if opts.id >= 0 {
        remove_stale(opts.id)?;
    }
    let ctrl = Arc::new(
        UblkCtrlBuilder::default()
            .name("zcow")
            .id(opts.id)
            .nr_queues(opts.queues)
            .depth(opts.depth)
            .io_buf_bytes(lay.max_io_bytes)
            .ctrl_flags(lay.ctrl_flags())
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(ublk_err("cannot add the ublk device"))?,
    );

    // Stop watcher: removing the device makes the queue loops return.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let id = ctrl.dev_info().dev_id;
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if stop.load(Ordering::SeqCst) {
                    // libublk's control ring is per thread: this thread
                    // needs its own handle (not for-add, so dropping it
                    // deletes nothing).
                    match UblkCtrl::new_simple(id as i32) {
                        Ok(c) => {
                            if let Err(e) = c.kill_dev() {
                                eprintln!("zcow-ublk: cannot stop device {id}: {e}");
                            }
                        }
                        Err(e) => eprintln!("zcow-ublk: cannot stop device {id}: {e}"),
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let params = lay.params();
    let size = lay.size;
    let qdev = dev.clone();
    let workers = opts.workers;
    let fmap = Arc::new(FileMap::new());
    let result = ctrl.run_target(
        move |udev: &mut UblkDev| {
            udev.set_default_params(size);
            udev.tgt.params = params;
            Ok(())
        },
        move |qid: u16, udev: &UblkDev| queue_loop(qid, udev, qdev.as_ref(), &lay, workers, &fmap),
        move |c: &UblkCtrl| on_live(&c.get_bdev_path()),
    );
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    // The queues are gone: deleting now cannot deadlock on them. It may
    // already be gone (deleted from outside): ENOENT is normal.
    let _ = ctrl.del_dev();
    result.map_err(ublk_err("serving the ublk device"))?;
    Ok(lay)
}

/// A server killed without clean-up (SIGKILL, crash) leaves its device
/// behind, stopped (`/dev/ublkcN`, no `/dev/ublkbN`). Asking for that
/// number again removes it when its server is gone; a live device is an
/// error.
fn remove_stale(id: i32) -> Result<(), ServeError> {
    if !Path::new(&format!("/dev/ublkc{id}")).exists() {
        return Ok(());
    }
    let c = UblkCtrl::new_simple(id).map_err(ublk_err("cannot query the existing ublk device"))?;
    let info = c.dev_info();
    let pid = info.ublksrv_pid;
    let server_alive = pid > 0 && Path::new(&format!("/proc/{pid}")).exists();
    if u32::from(info.state) != sys::UBLK_S_DEV_DEAD || server_alive {
        return Err(ServeError::Option(format!(
            "ublk device {id} is in use (server pid {pid}); pick another --id"
        )));
    }
    c.del_dev()
        .map_err(ublk_err("cannot remove the stale ublk device"))?;
    eprintln!("zcow-ublk: removed stale ublk device {id} (its server is gone)");
    Ok(())
}

/// Requests at most this large run on the queue thread itself: for them a
/// hand-over to a worker costs more than it saves.
const INLINE_BYTES: u64 = 32 << 10;

/// `user_data` of the eventfd poll on the queue's ring (a target I/O to
/// libublk, tag 0).
fn poll_user_data() -> u64 {
    UblkIOCtx::build_user_data(0, u32::from(opcode::PollAdd::CODE), 1, true)
}

fn queue_loop(
    qid: u16,
    udev: &UblkDev,
    dev: &dyn BlockDevice,
    lay: &Layout,
    workers: u16,
    fmap: &FileMap,
) {
    let cdev = udev.tgt.fds[0];
    let queue = match UblkQueue::new(qid, udev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(None)))
    {
        Ok(q) => q,
        Err(e) => {
            eprintln!("zcow-ublk: queue {qid}: cannot start: {e}");
            return;
        }
    };
    let mut dispatch = if workers == 0 {
        None
    } else {
        match Dispatcher::new() {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("zcow-ublk: queue {qid}: no eventfd ({e}); one request at a time");
                None
            }
        }
    };
    let zoned = lay.zoned.is_some();
    let complete = |q: &UblkQueue, tag: u16, c: Completion| {
        let desc = match c.append_sector {
            Some(s) if zoned && c.result >= 0 => BufDesc::ZonedAppendLba(s),
            _ => BufDesc::Slice(&[]),
        };
        if let Err(e) = q.complete_io_cmd_unified(tag, desc, Ok(UblkIORes::Result(c.result))) {
            eprintln!("zcow-ublk: queue {qid} tag {tag}: cannot complete: {e}");
        }
    };
    let arm = |q: &UblkQueue, fd: RawFd| {
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(poll_user_data());
        q.ublk_submit_sqe_sync(sqe)
    };
    std::thread::scope(|s| {
        if let Some(d) = &dispatch {
            for w in 0..workers {
                let end = d.worker_end();
                let spawned = std::thread::Builder::new()
                    .name(format!("zcow-ublk-q{qid}w{w}"))
                    .spawn_scoped(s, move || {
                        // One buffer per worker, reused for every request.
                        let mut buf = vec![0u8; lay.max_io_bytes as usize];
                        while let Some(job) = end.next() {
                            let pos = UblkIOCtx::ublk_user_copy_pos(qid, job.tag, 0);
                            let c = run_guarded(cdev, pos, dev, lay, &job.req, &mut buf, fmap);
                            end.done(job.tag, c);
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("zcow-ublk: queue {qid}: cannot start worker {w}: {e}");
                }
            }
        }
        // Without the poll the queue thread would never see the workers'
        // completions: then it runs every request itself.
        let mut use_workers = match &dispatch {
            Some(d) => match arm(&queue, d.event_fd()) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("zcow-ublk: queue {qid}: cannot poll the workers' eventfd ({e}); one request at a time");
                    false
                }
            },
            None => false,
        };
        let mut buf = vec![0u8; lay.max_io_bytes as usize];
        let mut finished = Vec::new();
        let mut in_workers = 0usize;
        queue.wait_and_handle_io(|q: &UblkQueue, tag: u16, ctx: &UblkIOCtx| {
            if ctx.is_tgt_io() {
                // The workers' eventfd: complete what they finished, then
                // poll again (a completion pushed since fires it at once).
                if let Some(d) = &dispatch {
                    if ctx.user_data() == poll_user_data() {
                        d.take_done(&mut finished);
                        in_workers = in_workers.saturating_sub(finished.len());
                        for (tag, c) in finished.drain(..) {
                            complete(q, tag, c);
                        }
                        if let Err(e) = arm(q, d.event_fd()) {
                            eprintln!(
                                "zcow-ublk: queue {qid}: cannot poll the workers' eventfd ({e}); one request at a time"
                            );
                            // Collect what the workers still hold by
                            // waiting on the eventfd directly, then stop
                            // handing requests over.
                            while in_workers > 0 {
                                wait_readable(d.event_fd());
                                d.take_done(&mut finished);
                                in_workers = in_workers.saturating_sub(finished.len());
                                for (tag, c) in finished.drain(..) {
                                    complete(q, tag, c);
                                }
                            }
                            use_workers = false;
                        }
                    }
                }
                return;
            }
            let iod = q.get_iod(tag);
            let req = Request {
                op_flags: iod.op_flags,
                start_sector: iod.start_sector,
                nr_sectors: iod.nr_sectors,
            };
            // Nothing else in flight (no job at the workers, no request
            // behind this one in the batch): a flush or a large transfer
            // runs here, saving the two thread wake-ups of a hand-over
            // (fsync at QD1; a sequential writer, whose writes Linux sends
            // one per zone at a time).
            let alone = in_workers == 0 && ctx.is_last_cqe();
            let req = match &dispatch {
                Some(d) if use_workers && !runs_inline(&req, alone) => match d.send(Job { tag, req }) {
                    Ok(()) => {
                        in_workers += 1;
                        return;
                    }
                    Err(job) => job.req,
                },
                _ => req,
            };
            let pos = UblkIOCtx::ublk_user_copy_pos(qid, tag, 0);
            let c = run_guarded(cdev, pos, dev, lay, &req, &mut buf, fmap);
            complete(q, tag, c);
        });
        // The queue is down (the kernel got every completion first: it
        // drains a disk before aborting its queues). Let the workers go.
        if let Some(d) = &mut dispatch {
            d.close();
        }
    });
}

/// Block until `fd` is readable (EINTR retried).
fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    while unsafe { libc::poll(&mut p, 1, -1) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// Whether the queue thread runs `req` itself: small reads and writes, and
/// a large transfer or a flush when nothing else is in flight (`alone`):
/// then there is nothing to overlap it with. Other large transfers and
/// flushes, and zone management, go to a worker, so the queue keeps taking
/// requests meanwhile.
fn runs_inline(req: &Request, alone: bool) -> bool {
    match req.op() {
        Some(Op::Read | Op::Write | Op::ZoneAppend) => req.bytes() <= INLINE_BYTES || alone,
        Some(Op::Flush) => alone,
        _ => false,
    }
}

/// [`handle`], with a panic turned into an `EIO` completion: every request
/// the driver hands out must complete.
fn run_guarded(
    cdev: RawFd,
    pos: u64,
    dev: &dyn BlockDevice,
    lay: &Layout,
    req: &Request,
    buf: &mut [u8],
    fmap: &FileMap,
) -> Completion {
    catch_unwind(AssertUnwindSafe(|| {
        handle(cdev, pos, dev, lay, req, buf, fmap)
    }))
    .unwrap_or_else(|_| Completion::error(libc::EIO))
}

/// One request: payload in, device call, data out. Reads and writes of
/// data in the image file move in one copy through its mapping where they
/// can ([`super::filemap`]), else through `buf`.
fn handle(
    cdev: RawFd,
    pos: u64,
    dev: &dyn BlockDevice,
    lay: &Layout,
    req: &Request,
    buf: &mut [u8],
    fmap: &FileMap,
) -> Completion {
    if let Some(c) = read_mapped(dev, lay, req, cdev, pos, fmap) {
        return c;
    }
    let n_in = req.payload_in();
    if n_in > buf.len() {
        return Completion::error(libc::EINVAL);
    }
    if n_in > 0 {
        let src = CdevPayload {
            cdev,
            pos,
            len: n_in,
            map: fmap,
            buf: RefCell::new(buf),
        };
        return execute_write(dev, lay, req, &src);
    }
    let mut c = execute(dev, lay, req, buf);
    if c.result >= 0 && c.copy_out > 0 {
        match pwrite_full(cdev, &buf[..c.copy_out], pos) {
            // A report answers with as many bytes as the kernel's buffer
            // took (see Completion::copy_out).
            Ok(n) if req.op() == Some(Op::ReportZones) && n > 0 => {
                c.result = i32::try_from(n).unwrap_or(i32::MAX)
            }
            Ok(n) if n == c.copy_out => {}
            Ok(_) => c = Completion::error(libc::EIO),
            Err(e) => c = Completion::error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
    c
}
