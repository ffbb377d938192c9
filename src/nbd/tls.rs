//! Sockets and TLS (rustls) for the NBD server and client.
//!
//! A TLS session is shared by a reading half and a writing half so that the
//! transmission phase can keep one thread blocked in `read` while workers
//! send replies: the rustls state sits behind a mutex that is never held
//! across a blocking socket read.

use super::proto::{NbdError, Result};
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A connected stream socket.
#[derive(Debug)]
pub enum Sock {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain.
    Unix(UnixStream),
}

impl Sock {
    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
        })
    }
    /// Shut down both directions (wakes up blocked readers).
    pub fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    /// Disable Nagle on TCP (requests and replies are small and latency-bound).
    pub fn set_nodelay(&self) {
        if let Sock::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write_vectored(bufs),
            Sock::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The two halves of a connection plus the socket underneath.
pub struct ConnIo {
    /// Reading half (buffered).
    pub reader: Box<dyn Read + Send>,
    /// Writing half (buffered; flush after each message).
    pub writer: io::BufWriter<Box<dyn Write + Send>>,
    /// The socket, for shutdown and TLS upgrade.
    pub sock: Sock,
    /// Whether TLS is active.
    pub tls: bool,
}

impl std::fmt::Debug for ConnIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnIo")
            .field("sock", &self.sock)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ConnIo {
    /// Plain halves over a socket.
    pub fn plain(sock: Sock) -> io::Result<Self> {
        sock.set_nodelay();
        let r = sock.try_clone()?;
        let w = sock.try_clone()?;
        Ok(Self {
            reader: Box::new(BufReader::with_capacity(128 << 10, r)),
            writer: io::BufWriter::with_capacity(256 << 10, Box::new(w)),
            sock,
            tls: false,
        })
    }

    /// Wrap the socket in a TLS session (the handshake runs lazily on the
    /// first read or write).
    pub fn with_tls(sock: Sock, conn: rustls::Connection) -> io::Result<Self> {
        let shared = Arc::new(Mutex::new((conn, sock.try_clone()?)));
        let reader = TlsReader {
            shared: shared.clone(),
            sock: sock.try_clone()?,
            pending: Vec::new(),
            pos: 0,
        };
        let writer = TlsWriter { shared };
        Ok(Self {
            reader: Box::new(reader),
            writer: io::BufWriter::with_capacity(64 << 10, Box::new(writer)),
            sock,
            tls: true,
        })
    }
}

type SharedTls = Arc<Mutex<(rustls::Connection, Sock)>>;

fn poisoned() -> io::Error {
    io::Error::other("TLS state poisoned")
}

fn flush_tls(conn: &mut rustls::Connection, sock: &mut Sock) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(())
}

struct TlsReader {
    shared: SharedTls,
    sock: Sock,
    pending: Vec<u8>,
    pos: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut g = self.shared.lock().map_err(|_| poisoned())?;
                let (conn, sock) = &mut *g;
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.pos < self.pending.len() {
                    // Feed raw bytes a little at a time so the plaintext
                    // buffer never overflows.
                    let mut slice = &self.pending[self.pos..];
                    let before = slice.len();
                    conn.read_tls(&mut slice)?;
                    self.pos += before - slice.len();
                    let res = conn.process_new_packets();
                    // Send handshake messages or alerts either way.
                    let _ = flush_tls(conn, sock);
                    res.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            self.pending.resize(16 << 10, 0);
            self.pos = 0;
            let n = self.sock.read(&mut self.pending)?;
            self.pending.truncate(n);
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

struct TlsWriter {
    shared: SharedTls,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        let (conn, sock) = &mut *g;
        let n = conn.writer().write(buf)?;
        flush_tls(conn, sock)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut g = self.shared.lock().map_err(|_| poisoned())?;
        let (conn, sock) = &mut *g;
        conn.writer().flush()?;
        flush_tls(conn, sock)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let f = std::fs::File::open(path)
        .map_err(|e| NbdError::Tls(format!("cannot open {}: {e}", path.display())))?;
    let certs: std::result::Result<Vec<_>, _> =
        rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.map_err(|e| NbdError::Tls(format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NbdError::Tls(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    let f = std::fs::File::open(path)
        .map_err(|e| NbdError::Tls(format!("cannot open {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| NbdError::Tls(format!("bad PEM in {}: {e}", path.display())))?
        .ok_or_else(|| NbdError::Tls(format!("no private key in {}", path.display())))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| NbdError::Tls(format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Build a TLS server configuration from a directory holding QEMU's file
/// names: `server-cert.pem`, `server-key.pem` and (for client
/// verification) `ca-cert.pem`.
pub fn server_config(dir: &Path, require_client_cert: bool) -> Result<Arc<rustls::ServerConfig>> {
    let chain = load_certs(&dir.join("server-cert.pem"))?;
    let key = load_key(&dir.join("server-key.pem"))?;
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NbdError::Tls(e.to_string()))?;
    let b = if require_client_cert {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&dir.join("ca-cert.pem"))?),
            provider(),
        )
        .build()
        .map_err(|e| NbdError::Tls(e.to_string()))?;
        b.with_client_cert_verifier(v)
    } else {
        b.with_no_client_auth()
    };
    let cfg = b
        .with_single_cert(chain, key)
        .map_err(|e| NbdError::Tls(format!("server certificate/key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Build a TLS client configuration from a directory with `ca-cert.pem`
/// and optionally `client-cert.pem` + `client-key.pem` (libnbd's names).
pub fn client_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NbdError::Tls(e.to_string()))?
        .with_root_certificates(roots(&dir.join("ca-cert.pem"))?);
    let cert = dir.join("client-cert.pem");
    let cfg = if cert.exists() {
        b.with_client_auth_cert(load_certs(&cert)?, load_key(&dir.join("client-key.pem"))?)
            .map_err(|e| NbdError::Tls(format!("client certificate/key: {e}")))?
    } else {
        b.with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}
