//! Worker threads behind one ublk queue, so a queue has several requests
//! in flight: the queue thread (the only one that may talk to its io_uring
//! and complete commands) hands requests over, workers run them, finished
//! requests come back through a list and an eventfd the queue's ring polls.
//!
//! Ordering needs nothing here: Linux's zone write plugging lets at most one
//! write per zone reach the device at a time, and the kernel sends a FLUSH
//! only for writes it saw complete, which the engine made visible first.

use super::map::{Completion, Request};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

/// A request handed to a worker.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// The driver's tag for it.
    pub tag: u16,
    /// What to do.
    pub req: Request,
}

/// The queue thread's side: send jobs, collect completions.
#[derive(Debug)]
pub struct Dispatcher {
    jobs: Option<Sender<Job>>,
    shared: Arc<Shared>,
    /// Shared by the workers: each takes the next job.
    rx: Arc<Mutex<Receiver<Job>>>,
}

#[derive(Debug)]
struct Shared {
    done: Mutex<Vec<(u16, Completion)>>,
    /// Counts finished jobs since the queue thread last looked; readable
    /// (pollable) while nonzero.
    event: OwnedFd,
}

/// A worker's side: take jobs, report completions.
#[derive(Debug, Clone)]
pub struct WorkerEnd {
    rx: Arc<Mutex<Receiver<Job>>>,
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// A dispatcher with its eventfd.
    pub fn new() -> io::Result<Dispatcher> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        let (tx, rx) = mpsc::channel();
        Ok(Dispatcher {
            jobs: Some(tx),
            shared: Arc::new(Shared {
                done: Mutex::new(Vec::new()),
                event,
            }),
            rx: Arc::new(Mutex::new(rx)),
        })
    }

    /// The eventfd to poll: readable when completions are waiting.
    pub fn event_fd(&self) -> i32 {
        self.shared.event.as_raw_fd()
    }

    /// The end a worker thread takes.
    pub fn worker_end(&self) -> WorkerEnd {
        WorkerEnd {
            rx: self.rx.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Hand `job` to the workers; gives it back if they are gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Completions finished since the last call (resets the eventfd first,
    /// so a completion pushed after the reset makes it readable again).
    pub fn take_done(&self, out: &mut Vec<(u16, Completion)>) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into `n`; nonblocking, EAGAIN when zero.
        unsafe {
            libc::read(
                self.shared.event.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        let mut done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        out.append(&mut done);
    }

    /// No more jobs: workers return once the queue is empty.
    pub fn close(&mut self) {
        self.jobs = None;
    }
}

impl WorkerEnd {
    /// The next job, None once the dispatcher is closed and drained.
    pub fn next(&self) -> Option<Job> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv()
            .ok()
    }

    /// Report a finished job and wake the queue thread.
    pub fn done(&self, tag: u16, c: Completion) {
        self.shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((tag, c));
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one`. It cannot block for long: the
        // counter would have to reach 2^64-1.
        unsafe {
            libc::write(
                self.shared.event.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}
