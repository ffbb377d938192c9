//! Helpers for the NBD tests: peer-tool checks, a zcow-nbd process guard,
//! an in-process server.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcow::device::BlockDevice;
use zcow::nbd::{Listener, Server, ServerConfig, ServerStats};

/// Whether `tool` can be run; when missing: panic under CI=true, else skip.
pub fn need(tool: &str) -> bool {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("required peer tool {tool} is missing");
        }
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// Python with the libnbd module.
pub fn need_python_nbd() -> bool {
    if !need("/usr/bin/python3") {
        return false;
    }
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 nbd module is missing");
        }
        eprintln!("SKIP: python3 nbd module missing");
    }
    ok
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zcow-nbd")
}

/// Run a command with a time limit; returns its output.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "{cmd:?} timed out; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// Run and require success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A zcow-nbd process, killed by PID when dropped.
pub struct ServerProc {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ServerProc {
    /// Start `zcow-nbd -t --trace -p PORT ARGS... IMAGE` and wait until it
    /// listens (its PID file appears).
    pub fn start(image: &Path, args: &[&str]) -> ServerProc {
        Self::start_opts(image, args, true)
    }

    /// Like [`ServerProc::start`]; `persistent` adds `-t`.
    pub fn start_opts(image: &Path, args: &[&str], persistent: bool) -> ServerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let pid = dir.path().join("pid");
        let log = dir.path().join("stderr.log");
        let child = Command::new(bin())
            .args(if persistent { &["-t"][..] } else { &[][..] })
            .args(["--trace", "-p", &port.to_string()])
            .arg("--pid-file")
            .arg(&pid)
            .args(args)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn zcow-nbd");
        let mut s = ServerProc {
            child,
            port,
            log,
            dir,
        };
        let start = Instant::now();
        while !pid.exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("zcow-nbd exited early ({st}): {}", s.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "zcow-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-process server on a free 127.0.0.1 port; stops when dropped.
pub struct InProc {
    pub port: u16,
    pub stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProc {
    pub fn start(device: Arc<dyn BlockDevice>, cfg: ServerConfig) -> InProc {
        let listener = Listener::bind_tcp("127.0.0.1", 0).expect("listen");
        let port = listener.port().expect("port");
        let server = Server::new(device, cfg);
        let stats = server.stats();
        let stop = server.shutdown_flag();
        let thread = std::thread::spawn(move || {
            let _ = server.serve(&listener);
        });
        InProc {
            port,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.port)
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
