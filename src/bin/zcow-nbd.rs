//! zcow-nbd: serve a zcow image (qcow2, zoned qcow2 or raw) over NBD.
//! Flags follow qemu-nbd where they apply.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use zcow::nbd::{tls, Listener, Server, ServerConfig, ZonedWrites};
use zcow::open::{open_device, OpenOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cache {
    /// Writes reach the host page cache; FLUSH/FUA make them durable.
    Writeback,
    /// Every write is durable before it is acknowledged.
    Writethrough,
    /// Like writethrough here (no O_DIRECT).
    None,
    /// Like writethrough here (no O_DIRECT).
    Directsync,
    /// Like writeback.
    Unsafe,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Discard {
    /// TRIM succeeds and does nothing.
    Ignore,
    /// Same as ignore.
    Off,
    /// TRIM deallocates.
    Unmap,
    /// Same as unmap.
    On,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ZonedPolicy {
    /// Sequential zones accept writes only at the write pointer.
    Strict,
    /// Clients without the zoned extension see a read-only export.
    Readonly,
}

/// Serve a zcow image (qcow2, zoned qcow2 or raw) over NBD.
///
/// By default it listens on 127.0.0.1 port 10809 (loopback only; pass
/// `-b 0.0.0.0` to listen on every interface), serves one client at a time
/// and exits when the last client disconnects (use -t to keep running).
/// Started by systemd-style socket activation (LISTEN_FDS/LISTEN_PID, fd 3)
/// it serves on the inherited socket, e.g. `nbdinfo -- [ zcow-nbd IMAGE ]`.
#[derive(Debug, Parser)]
#[command(name = "zcow-nbd", version)]
struct Args {
    /// Image file to export.
    image: PathBuf,
    /// TCP port to listen on.
    #[arg(short = 'p', long, default_value_t = 10809)]
    port: u16,
    /// Address to listen on. Default 127.0.0.1 (loopback only, unlike
    /// qemu-nbd which binds 0.0.0.0).
    #[arg(short = 'b', long, default_value = "127.0.0.1")]
    bind: String,
    /// Listen on this Unix socket instead of TCP.
    #[arg(short = 'k', long)]
    socket: Option<PathBuf>,
    /// Export name (default: empty).
    #[arg(short = 'x', long, default_value = "")]
    export_name: String,
    /// Export description.
    #[arg(short = 'D', long)]
    description: Option<String>,
    /// Export read-only.
    #[arg(short = 'r', long)]
    read_only: bool,
    /// Keep serving after the last client disconnects.
    #[arg(short = 't', long)]
    persistent: bool,
    /// Most simultaneous clients (0 = unlimited); above 1 the export
    /// advertises multi-conn.
    #[arg(short = 'e', long, default_value_t = 1)]
    shared: usize,
    /// Image format (probed when absent).
    #[arg(short = 'f', long, value_parser = ["qcow2", "raw"])]
    format: Option<String>,
    /// Write the server's PID to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Fork into the background once listening.
    #[arg(long)]
    fork: bool,
    /// Cache mode.
    #[arg(long, value_enum, default_value = "writeback")]
    cache: Cache,
    /// What TRIM does.
    #[arg(long, value_enum, default_value = "ignore")]
    discard: Discard,
    /// Seconds a client may take for the handshake (0 = no limit).
    #[arg(long, default_value_t = 10)]
    handshake_limit: u64,
    /// Directory with server-cert.pem, server-key.pem (and ca-cert.pem);
    /// TLS becomes mandatory.
    #[arg(long)]
    tls_creds: Option<PathBuf>,
    /// Require clients to present a certificate signed by ca-cert.pem.
    #[arg(long, requires = "tls_creds")]
    tls_require_client_cert: bool,
    /// Write policy on zoned images for clients without the zoned
    /// extension.
    #[arg(long, value_enum, default_value = "strict")]
    zoned_writes: ZonedPolicy,
    /// Worker threads per connection.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Log options and commands to stderr.
    #[arg(long)]
    trace: bool,
    /// Serve zone control requests (JSON lines: set-cond, open, close,
    /// finish, reset, report; see docs/control.md) on this Unix socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

fn main() {
    if zcow::cli_docs::generate_if_asked(<Args as clap::CommandFactory>::command) {
        return;
    }
    zcow::personality::init();
    if let Err(e) = run() {
        let _ = writeln!(
            std::io::stderr(),
            "{}: {e:#}",
            zcow::personality::name(zcow::personality::Tool::Nbd)
        );
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let prog = zcow::personality::name(zcow::personality::Tool::Nbd);
    let matches = <Args as clap::CommandFactory>::command()
        .name(prog)
        .bin_name(prog)
        .get_matches();
    let args = <Args as clap::FromArgMatches>::from_arg_matches(&matches)?;
    let writethrough = matches!(
        args.cache,
        Cache::Writethrough | Cache::None | Cache::Directsync
    );
    let device = open_device(
        &args.image,
        &OpenOptions {
            format: args.format.clone(),
            read_only: args.read_only,
            allow_backing: false,
        },
    )
    .map_err(|e| {
        // Open errors carry their own words (QEMU's, for lock conflicts);
        // the line around them is qemu-nbd's, and so is the errno text
        // (strerror's, without Rust's "(os error N)").
        let msg = match e {
            zcow::device::DeviceError::Invalid(m) => m,
            other => other.to_string(),
        };
        let msg = match msg.rfind(" (os error ") {
            Some(i) if msg.ends_with(')') => msg[..i].to_string(),
            _ => msg,
        };
        anyhow::anyhow!("Failed to blk_new_open '{}': {msg}", args.image.display())
    })?;

    let tls = match &args.tls_creds {
        Some(dir) => Some(
            tls::server_config(dir, args.tls_require_client_cert)
                .with_context(|| format!("TLS credentials in {}", dir.display()))?,
        ),
        None => None,
    };

    let listener = match Listener::from_socket_activation().context("socket activation")? {
        Some(l) => l,
        None => match &args.socket {
            Some(p) => Listener::bind_unix(p)
                .with_context(|| format!("cannot listen on {}", p.display()))?,
            None => Listener::bind_tcp(&args.bind, args.port)
                .with_context(|| format!("cannot listen on {}:{}", args.bind, args.port))?,
        },
    };

    if args.fork {
        // No threads exist yet, so forking is safe.
        // SAFETY: fork/setsid have no memory-safety preconditions here.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork failed: {}", std::io::Error::last_os_error());
        }
        if pid > 0 {
            std::process::exit(0);
        }
        // SAFETY: see above.
        unsafe { libc::setsid() };
    }
    if let Some(p) = &args.pid_file {
        let mut f = std::fs::File::create(p)
            .with_context(|| format!("cannot write PID file {}", p.display()))?;
        writeln!(f, "{}", std::process::id())?;
    }

    // After the fork: the control threads must live in the serving process.
    let control = match &args.control {
        Some(p) => Some(
            zcow::control::ControlServer::start(p, device.clone())
                .with_context(|| format!("cannot listen on control socket {}", p.display()))?,
        ),
        None => None,
    };

    zcow::signals::install();

    let cfg = ServerConfig {
        export_name: args.export_name.clone(),
        description: args.description.clone(),
        read_only: args.read_only,
        max_connections: args.shared,
        handshake_limit: Duration::from_secs(args.handshake_limit),
        tls,
        zoned_writes: match args.zoned_writes {
            ZonedPolicy::Strict => ZonedWrites::Strict,
            ZonedPolicy::Readonly => ZonedWrites::ReadOnly,
        },
        discard: matches!(args.discard, Discard::Unmap | Discard::On),
        writethrough,
        persistent: args.persistent,
        workers: args.workers.clamp(1, 64),
        trace: args.trace,
        // ZCOW_NBD_ZERO_COPY=0 turns sendfile replies off (for A/B runs).
        zero_copy: std::env::var_os("ZCOW_NBD_ZERO_COPY").is_none_or(|v| v != "0"),
    };
    let server = Arc::new(Server::new(device.clone(), cfg));
    let flag = server.shutdown_flag();
    std::thread::spawn(move || loop {
        if zcow::signals::stop_requested() {
            flag.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    if args.trace {
        if let Some(p) = listener.port() {
            let _ = writeln!(std::io::stderr(), "zcow-nbd: listening on port {p}");
        }
    }
    let served = server.serve(&listener);
    // On a signal: cut clients off, let requests already read finish, then
    // flush, so nothing acknowledged stays in a cache.
    // Every request's work is bounded, so half a second is plenty; one
    // still running then was never acknowledged and need not wait.
    server.disconnect_all();
    if !server.wait_idle(Duration::from_millis(500)) {
        // Not eprintln!: it panics when stderr is closed.
        let _ = writeln!(
            std::io::stderr(),
            "zcow-nbd: requests still running after 0.5 s; flushing what was acknowledged"
        );
    }
    drop(control);
    let flushed = device.flush();
    if let Some(p) = &args.socket {
        let _ = std::fs::remove_file(p);
    }
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    served.context("serving")?;
    flushed.context("final flush")?;
    std::process::exit(0);
}
