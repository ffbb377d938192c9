//! The NBD server: listeners (TCP, Unix, socket activation), connection
//! limits, the handshake time limit, and one thread per connection that
//! runs the handshake and then the transmission phase.

use super::handshake::{self, Ctx, Outcome, Session, CTX_ID_BASE, CTX_ID_ZONED, CTX_ID_ZONED_WP};
use super::proto::*;
use super::tls::{ConnIo, Sock};
use super::transmission;
use crate::device::BlockDevice;
use crate::zone::ZoneGeometry;
use std::collections::{HashMap, VecDeque};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// What unaware clients (no `NBD_OPT_X_ZONED`) may do on a zoned export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZonedWrites {
    /// Writes pass to the device, which accepts them in sequential zones
    /// only at the write pointer.
    #[default]
    Strict,
    /// The export is read-only for unaware clients.
    ReadOnly,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The one export's name (default empty, like qemu-nbd).
    pub export_name: String,
    /// Optional export description.
    pub description: Option<String>,
    /// Export read-only.
    pub read_only: bool,
    /// Most simultaneous clients; 0 = unlimited. Further clients wait
    /// (accepted, not greeted) until a slot frees, and are closed after
    /// `handshake_limit`. Above 1 the export advertises `CAN_MULTI_CONN`
    /// (all connections share one device, so a flush on one covers writes
    /// completed on any).
    pub max_connections: usize,
    /// Time allowed for the handshake; zero = no limit.
    pub handshake_limit: Duration,
    /// TLS server configuration; when set, TLS is required.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Policy for clients that did not negotiate the zoned extension.
    pub zoned_writes: ZonedWrites,
    /// Honour TRIM (`--discard=unmap`); otherwise TRIM succeeds and does
    /// nothing.
    pub discard: bool,
    /// Treat every write as FUA (`--cache=writethrough` / `none`).
    pub writethrough: bool,
    /// Keep serving after the last client leaves.
    pub persistent: bool,
    /// Worker threads per connection.
    pub workers: usize,
    /// Log options and commands to stderr.
    pub trace: bool,
    /// Send large read replies with `sendfile` straight from the image
    /// file where the device can map the range (never under TLS).
    pub zero_copy: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            export_name: String::new(),
            description: None,
            read_only: false,
            max_connections: 1,
            handshake_limit: Duration::from_secs(10),
            tls: None,
            zoned_writes: ZonedWrites::Strict,
            discard: true,
            writethrough: false,
            persistent: true,
            workers: 8,
            trace: false,
            zero_copy: true,
        }
    }
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections currently open.
    pub active: AtomicUsize,
    /// Sessions that entered transmission with extended headers.
    pub extended_headers: AtomicU64,
    /// Sessions that entered transmission with structured replies.
    pub structured_replies: AtomicU64,
    /// Sessions that negotiated the zoned extension.
    pub zoned_sessions: AtomicU64,
    /// Requests handled.
    pub requests: AtomicU64,
    /// Read replies sent with `sendfile` from the image file.
    pub zero_copy_replies: AtomicU64,
    /// Of those, replies finished from a copy (the socket was full or the
    /// hold time ran out).
    pub zero_copy_spills: AtomicU64,
}

/// State shared by all connections of a server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub device: Arc<dyn BlockDevice>,
    pub cfg: ServerConfig,
    pub stats: Arc<ServerStats>,
    pub geometry: Option<ZoneGeometry>,
    /// Open connections, so a shutdown can cut them off.
    pub conns: Mutex<HashMap<u64, Sock>>,
    /// Rate-limited log of rejected requests (without `--trace`).
    pub reject_log: super::ratelog::RateLog,
    /// Zone-unaware writes answered ahead of the write pointer, not yet
    /// applied.
    pub pending: super::writeback::Pending,
}

impl Shared {
    pub(crate) fn trace(&self, conn: u64, args: std::fmt::Arguments<'_>) {
        if self.cfg.trace {
            eprintln!("zcow-nbd: conn {conn}: {args}");
        }
    }

    /// `NBD_INFO_BLOCK_SIZE` (minimum, preferred, maximum). On a zoned
    /// export they keep zone-unaware clients inside zones: the minimum is
    /// the 512-byte write granularity of sequential zones and the maximum is
    /// at most one zone, so a client that splits its I/O by the maximum
    /// (QEMU does) never sends a write covering more than two zones.
    pub(crate) fn block_sizes(&self) -> (u32, u32, u32) {
        match &self.geometry {
            Some(g) => {
                let max = u64::from(MAX_PAYLOAD).min(g.zone_size) as u32;
                (512, 4096u32.min(max).max(512), max.max(512))
            }
            None => (1, 4096, MAX_PAYLOAD),
        }
    }

    pub(crate) fn tls_required(&self) -> bool {
        self.cfg.tls.is_some()
    }

    /// Contexts on offer; `x-zoned:wp` has 64-bit values, so only with EH.
    pub(crate) fn offered_contexts(&self, extended: bool) -> Vec<(u32, Ctx, &'static str)> {
        let mut v = vec![(CTX_ID_BASE, Ctx::Base, CTX_BASE_ALLOCATION)];
        if self.geometry.is_some() {
            v.push((CTX_ID_ZONED, Ctx::ZonedState, CTX_X_ZONED_STATE));
            if extended {
                v.push((CTX_ID_ZONED_WP, Ctx::ZonedWp, CTX_X_ZONED_WP));
            }
        }
        v
    }

    pub(crate) fn session(&self, contexts: &[(u32, Ctx)], mode: ReplyMode, zoned: bool) -> Session {
        let mut f = TF_HAS_FLAGS
            | TF_SEND_FLUSH
            | TF_SEND_FUA
            | TF_SEND_TRIM
            | TF_SEND_WRITE_ZEROES
            | TF_SEND_CACHE
            | TF_SEND_FAST_ZERO;
        if mode != ReplyMode::Simple {
            f |= TF_SEND_DF;
        }
        let ro = self.cfg.read_only
            || self.device.is_read_only()
            || (self.geometry.is_some()
                && !zoned
                && self.cfg.zoned_writes == ZonedWrites::ReadOnly);
        if ro {
            f |= TF_READ_ONLY;
        }
        if self.cfg.max_connections != 1 {
            f |= TF_CAN_MULTI_CONN;
        }
        Session {
            mode,
            contexts: contexts.to_vec(),
            zoned: zoned && self.geometry.is_some(),
            flags: f,
        }
    }

    pub(crate) fn zoned_info(&self) -> Option<ZonedInfo> {
        let g = self.geometry?;
        let mut flags = XZ_FLAG_RESET_ALL;
        let max_append = g.max_append_bytes.min(MAX_PAYLOAD);
        if max_append > 0 {
            flags |= XZ_FLAG_APPEND;
        }
        if g.zone_capacity < g.zone_size {
            flags |= XZ_FLAG_CAP_LT_SIZE;
        }
        Some(ZonedInfo {
            model: 1,
            flags,
            zone_size: g.zone_size,
            zone_capacity: g.zone_capacity,
            nr_zones: g.nr_zones,
            max_open_zones: g.max_open_zones,
            max_active_zones: g.max_active_zones,
            max_append,
            write_granularity: 512,
        })
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix domain.
    Unix(UnixListener),
}

impl Listener {
    /// Listen on TCP `host:port` (port 0 picks a free port).
    pub fn bind_tcp(host: &str, port: u16) -> Result<Self> {
        let addrs: Vec<_> = (host, port)
            .to_socket_addrs()
            .map_err(|e| NbdError::Config(format!("cannot resolve {host}: {e}")))?
            .collect();
        let l = TcpListener::bind(&addrs[..])?;
        Ok(Listener::Tcp(l))
    }

    /// Listen on a Unix socket at `path` (an old socket file is replaced).
    pub fn bind_unix(path: &Path) -> Result<Self> {
        if path.exists() {
            let _ = std::fs::remove_file(path);
        }
        Ok(Listener::Unix(UnixListener::bind(path)?))
    }

    /// The listening socket passed by systemd-style socket activation
    /// (`LISTEN_PID` = our pid, `LISTEN_FDS` ≥ 1, fd 3), if any.
    pub fn from_socket_activation() -> Result<Option<Self>> {
        let pid_ok = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| p == std::process::id());
        let fds = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if !pid_ok || fds < 1 {
            return Ok(None);
        }
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        let fd: RawFd = 3;
        // SAFETY: plain syscalls on fd 3, which socket activation hands us;
        // the storage is large enough for any address family.
        let family = unsafe {
            let mut ss: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
                return Err(NbdError::Config(
                    "LISTEN_FDS is set but fd 3 is not a socket".into(),
                ));
            }
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            ss.ss_family as libc::c_int
        };
        // SAFETY: fd 3 is an open listening socket we now own.
        Ok(Some(if family == libc::AF_UNIX {
            Listener::Unix(unsafe { UnixListener::from_raw_fd(fd) })
        } else {
            Listener::Tcp(unsafe { TcpListener::from_raw_fd(fd) })
        }))
    }

    /// TCP port, if TCP.
    pub fn port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(_) => None,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> std::io::Result<Sock> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Sock::Tcp(s)
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Sock::Unix(s)
            }
        })
    }
}

/// Most clients kept waiting for a free connection slot.
const MAX_WAITING: usize = 64;

/// An NBD server exporting one block device.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    /// A server for `device` with `cfg`.
    pub fn new(device: Arc<dyn BlockDevice>, cfg: ServerConfig) -> Self {
        let geometry = device.zone_geometry();
        Self {
            shared: Arc::new(Shared {
                device,
                cfg,
                stats: Arc::new(ServerStats::default()),
                geometry,
                conns: Mutex::new(HashMap::new()),
                reject_log: super::ratelog::RateLog::default(),
                pending: Default::default(),
            }),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counters of this server.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Set this flag to make [`Server::serve`] return (checked every 200 ms).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// The exported device.
    pub fn device(&self) -> Arc<dyn BlockDevice> {
        self.shared.device.clone()
    }

    /// Accept and serve clients until the shutdown flag is set or, when not
    /// persistent, the last client has gone. Connections still open when
    /// this returns keep running on their threads.
    pub fn serve(&self, listener: &Listener) -> Result<()> {
        let mut served = false;
        let mut next_id = 0u64;
        // Clients over the connection limit wait here (like qemu-nbd's
        // listen backlog, but bounded): admitted when a slot frees, closed
        // cleanly once they have waited longer than the handshake limit.
        let mut waiting: VecDeque<(Sock, Instant)> = VecDeque::new();
        let max = self.shared.cfg.max_connections;
        let limit = self.shared.cfg.handshake_limit;
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            while let Some((_, t)) = waiting.front() {
                if limit.is_zero() || t.elapsed() <= limit {
                    break;
                }
                if let Some((s, _)) = waiting.pop_front() {
                    self.shared.trace(
                        0,
                        format_args!("closing a client that waited for a free slot"),
                    );
                    s.shutdown();
                }
            }
            while !waiting.is_empty()
                && (max == 0 || self.shared.stats.active.load(Ordering::SeqCst) < max)
            {
                if let Some((s, _)) = waiting.pop_front() {
                    next_id += 1;
                    self.spawn_connection(s, next_id);
                }
            }
            let active = self.shared.stats.active.load(Ordering::SeqCst);
            if served && !self.shared.cfg.persistent && active == 0 && waiting.is_empty() {
                return Ok(());
            }
            let mut pfd = libc::pollfd {
                fd: listener.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = if waiting.is_empty() { 200 } else { 20 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if n <= 0 {
                continue;
            }
            let sock = match listener.accept() {
                Ok(s) => s,
                Err(e) => {
                    self.shared.trace(0, format_args!("accept failed: {e}"));
                    // EMFILE and friends: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            served = true;
            if max != 0 && active >= max {
                if waiting.len() >= MAX_WAITING {
                    sock.shutdown();
                } else {
                    waiting.push_back((sock, Instant::now()));
                }
                continue;
            }
            next_id += 1;
            self.spawn_connection(sock, next_id);
        }
    }

    fn spawn_connection(&self, sock: Sock, id: u64) {
        self.shared.stats.active.fetch_add(1, Ordering::SeqCst);
        self.shared
            .stats
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                let _guard = ActiveGuard(shared.stats.clone());
                serve_connection(&shared, sock, id);
            });
        if spawned.is_err() {
            self.shared.stats.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Shut down every open connection: no new requests are read, requests
    /// already read still run to completion.
    pub fn disconnect_all(&self) {
        if let Ok(c) = self.shared.conns.lock() {
            for s in c.values() {
                s.shutdown();
            }
        }
    }

    /// Wait until no connection is open (every in-flight request finished);
    /// false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while self.shared.stats.active.load(Ordering::SeqCst) > 0 {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Serve one already-connected client on the calling thread.
    pub fn serve_stream(&self, sock: Sock) {
        self.shared.stats.active.fetch_add(1, Ordering::SeqCst);
        let _guard = ActiveGuard(self.shared.stats.clone());
        serve_connection(&self.shared, sock, 0);
    }
}

struct ActiveGuard(Arc<ServerStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(shared: &Arc<Shared>, sock: Sock, id: u64) {
    if let (Ok(mut c), Ok(s)) = (shared.conns.lock(), sock.try_clone()) {
        c.insert(id, s);
    }
    serve_registered(shared, sock, id);
    if let Ok(mut c) = shared.conns.lock() {
        c.remove(&id);
    }
}

fn serve_registered(shared: &Arc<Shared>, sock: Sock, id: u64) {
    let watchdog_sock = sock.try_clone().ok();
    let mut io = match ConnIo::plain(sock) {
        Ok(io) => io,
        Err(e) => {
            shared.trace(id, format_args!("setup failed: {e}"));
            return;
        }
    };
    let (tx, rx) = mpsc::channel::<()>();
    let limit = shared.cfg.handshake_limit;
    if !limit.is_zero() {
        if let Some(ws) = watchdog_sock {
            let sh = shared.clone();
            let _ = std::thread::Builder::new()
                .name(format!("nbd-hs-limit-{id}"))
                .spawn(move || {
                    if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                        sh.trace(id, format_args!("handshake time limit reached"));
                        ws.shutdown();
                    }
                });
        }
    }
    let outcome = handshake::negotiate(shared, &mut io, id);
    drop(tx);
    match outcome {
        Ok(Outcome::Go(session)) => {
            shared.trace(
                id,
                format_args!(
                    "transmission: mode {:?}, zoned {}, flags {:#x}, contexts {:?}",
                    session.mode, session.zoned, session.flags, session.contexts
                ),
            );
            transmission::run(shared, session, io, id);
        }
        Ok(Outcome::Done) => {
            shared.trace(id, format_args!("handshake ended"));
            io.sock.shutdown();
        }
        Err(e) => {
            shared.trace(id, format_args!("handshake failed: {e}"));
            io.sock.shutdown();
        }
    }
}
