//! NBD client: fixed newstyle handshake (STARTTLS, extended headers or
//! structured replies, the zoned extension, meta contexts, GO with
//! BLOCK_SIZE and X_ZONED info), pipelined requests from many threads over
//! one connection (a reader thread matches replies to cookies), and
//! [`NbdDevice`], which makes a remote export a [`BlockDevice`].

use super::proto::*;
use super::tls::{client_config, ConnIo, Sock};
use crate::device::{BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use crate::zone::{ZoneCond, ZoneDescriptor, ZoneGeometry, ZoneOp, ZoneType};
use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// Unix socket path.
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Server address.
    pub address: Address,
    /// Export name.
    pub export: String,
    /// `nbds` scheme: TLS required.
    pub tls: bool,
    /// `tls-certificates=DIR` query parameter.
    pub tls_certificates: Option<PathBuf>,
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| NbdError::Uri(format!("bad percent escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| NbdError::Uri(format!("{s:?} is not UTF-8")))
}

/// Parse `nbd://host[:port][/export]`, `nbds://…`,
/// `nbd+unix:///export?socket=PATH` and `nbds+unix://…`. Query parameters
/// `socket` and `tls-certificates` are understood.
pub fn parse_uri(uri: &str) -> Result<Target> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| NbdError::Uri(format!("{uri:?} has no scheme")))?;
    let (tls, unix) = match scheme {
        "nbd" => (false, false),
        "nbds" => (true, false),
        "nbd+unix" => (false, true),
        "nbds+unix" => (true, true),
        _ => return Err(NbdError::Uri(format!("unknown scheme {scheme:?}"))),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let export = percent_decode(path)?;
    let mut socket = None;
    let mut certs = None;
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "socket" => socket = Some(PathBuf::from(percent_decode(v)?)),
            "tls-certificates" => certs = Some(PathBuf::from(percent_decode(v)?)),
            _ => {}
        }
    }
    let address = if unix {
        if !authority.is_empty() {
            return Err(NbdError::Uri("nbd+unix URIs take no host".into()));
        }
        Address::Unix(socket.ok_or_else(|| NbdError::Uri("missing ?socket=PATH".into()))?)
    } else {
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| NbdError::Uri("unclosed [ in host".into()))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (authority.to_string(), ""),
            }
        };
        let port = if port.is_empty() {
            10809
        } else {
            port.parse()
                .map_err(|_| NbdError::Uri(format!("bad port {port:?}")))?
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        Address::Tcp { host, port }
    };
    Ok(Target {
        address,
        export,
        tls,
        tls_certificates: certs,
    })
}

/// What the client asks for during the handshake.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Export name.
    pub export: String,
    /// Try extended headers first.
    pub extended_headers: bool,
    /// Try structured replies (if extended headers are off or refused).
    pub structured_replies: bool,
    /// Try the zoned extension.
    pub zoned: bool,
    /// Meta contexts to select (unknown ones are silently dropped).
    pub contexts: Vec<String>,
    /// TLS configuration; when set, STARTTLS is sent first.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Server name checked against the certificate.
    pub tls_server_name: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            export: String::new(),
            extended_headers: true,
            structured_replies: true,
            zoned: true,
            contexts: vec![CTX_BASE_ALLOCATION.into(), CTX_X_ZONED_STATE.into()],
            tls: None,
            tls_server_name: "localhost".into(),
        }
    }
}

/// What the server told us about the export.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum block size.
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest payload.
    pub max_payload: u32,
    /// Reply framing in use.
    pub mode: ReplyMode,
    /// The zoned extension is on (server ACKed `NBD_OPT_X_ZONED`).
    pub zoned_extension: bool,
    /// Zone geometry (`NBD_INFO_X_ZONED`), for zoned exports.
    pub zoned: Option<ZonedInfo>,
    /// Selected meta contexts: (id, name).
    pub contexts: Vec<(u32, String)>,
}

/// Everything a completed request returned.
#[derive(Debug, Default)]
struct Acc {
    data: Vec<u8>,
    error: Option<(u32, String)>,
    extents: ContextExtents,
    append: Option<u64>,
}

/// Most extents one request may accumulate over all its chunks (16 bytes
/// each: 16 MiB); a server sending more is broken or hostile.
const MAX_EXTENTS_PER_REQUEST: usize = 1 << 20;

/// Most reply chunks one request may receive (a 32 MiB read in 512-byte
/// data chunks is 65,536); past that the server is not making progress.
const MAX_CHUNKS_PER_REQUEST: u32 = 1 << 20;

struct Slot {
    offset: u64,
    is_read: bool,
    /// Chunks received so far.
    chunks: u32,
    acc: Acc,
    tx: mpsc::SyncSender<std::result::Result<Acc, String>>,
}

#[derive(Default)]
struct Pending {
    map: HashMap<u64, Slot>,
    dead: Option<String>,
}

struct Inner {
    writer: Mutex<BufWriter<Box<dyn Write + Send>>>,
    pending: Mutex<Pending>,
    sock: Sock,
    next_cookie: AtomicU64,
}

/// A connected NBD client. Methods may be called from many threads at
/// once; requests are pipelined over the one connection.
pub struct NbdClient {
    inner: Arc<Inner>,
    info: ExportInfo,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("info", &self.info)
            .finish()
    }
}

fn connect_sock(addr: &Address) -> Result<Sock> {
    Ok(match addr {
        Address::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port))?;
            let _ = s.set_nodelay(true);
            Sock::Tcp(s)
        }
        Address::Unix(p) => Sock::Unix(UnixStream::connect(p)?),
    })
}

/// Send one option and collect replies until ACK (Ok) or an error reply.
fn haggle(io: &mut ConnIo, opt: u32, data: &[u8]) -> Result<Vec<OptionReply>> {
    write_option(&mut io.writer, opt, data)?;
    let mut got = Vec::new();
    loop {
        let r = read_option_reply(&mut io.reader, 1 << 20)?;
        if r.option != opt {
            return Err(NbdError::Protocol(format!(
                "reply to option {} while waiting for {}",
                option_name(r.option),
                option_name(opt)
            )));
        }
        if r.typ == REP_ACK {
            return Ok(got);
        }
        if r.typ & REP_FLAG_ERROR != 0 {
            return Err(NbdError::OptionRefused {
                option: opt,
                reply: r.typ,
                message: String::from_utf8_lossy(&r.data).into_owned(),
            });
        }
        got.push(r);
        if got.len() > 100_000 {
            return Err(NbdError::Protocol("too many option replies".into()));
        }
    }
}

fn name_data(export: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d
}

impl NbdClient {
    /// Connect to `addr` and negotiate per `opts`.
    pub fn connect(addr: &Address, opts: &ClientOptions) -> Result<Self> {
        Self::connect_stream(connect_sock(addr)?, opts)
    }

    /// Negotiate per `opts` over an already-connected socket (e.g. one end
    /// of a socket pair, as the `nbd_client` fuzz target uses).
    pub fn connect_stream(sock: Sock, opts: &ClientOptions) -> Result<Self> {
        let mut io = ConnIo::plain(sock)?;
        let magic = read_u64(&mut io.reader)?;
        if magic != NBDMAGIC {
            return Err(NbdError::Protocol("not an NBD server".into()));
        }
        let magic = read_u64(&mut io.reader)?;
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(
                "oldstyle servers are not supported".into(),
            ));
        }
        let sflags = read_u16(&mut io.reader)?;
        if sflags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Protocol(
                "server does not support fixed newstyle".into(),
            ));
        }
        let mut cflags = CLIENT_FIXED_NEWSTYLE;
        if sflags & FLAG_NO_ZEROES != 0 {
            cflags |= CLIENT_NO_ZEROES;
        }
        io.writer.write_all(&cflags.to_be_bytes())?;
        io.writer.flush()?;

        if let Some(cfg) = &opts.tls {
            haggle(&mut io, OPT_STARTTLS, &[])?;
            let name = rustls::pki_types::ServerName::try_from(opts.tls_server_name.clone())
                .map_err(|e| NbdError::Tls(format!("server name: {e}")))?;
            let cc = rustls::ClientConnection::new(cfg.clone(), name)
                .map_err(|e| NbdError::Tls(e.to_string()))?;
            let s = io.sock.try_clone()?;
            io = ConnIo::with_tls(s, rustls::Connection::Client(cc))?;
        }

        let mut mode = ReplyMode::Simple;
        if opts.extended_headers && haggle(&mut io, OPT_EXTENDED_HEADERS, &[]).is_ok() {
            mode = ReplyMode::Extended;
        }
        if mode == ReplyMode::Simple
            && opts.structured_replies
            && haggle(&mut io, OPT_STRUCTURED_REPLY, &[]).is_ok()
        {
            mode = ReplyMode::Structured;
        }
        let mut zoned_ext = false;
        if opts.zoned && mode != ReplyMode::Simple {
            match haggle(&mut io, OPT_X_ZONED, &[]) {
                Ok(_) => zoned_ext = true,
                Err(NbdError::OptionRefused { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut contexts = Vec::new();
        if mode != ReplyMode::Simple && !opts.contexts.is_empty() {
            let mut d = name_data(&opts.export);
            d.extend_from_slice(&(opts.contexts.len() as u32).to_be_bytes());
            for c in &opts.contexts {
                d.extend_from_slice(&(c.len() as u32).to_be_bytes());
                d.extend_from_slice(c.as_bytes());
            }
            for r in haggle(&mut io, OPT_SET_META_CONTEXT, &d)? {
                if r.typ == REP_META_CONTEXT && r.data.len() >= 4 {
                    let id = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
                    contexts.push((id, String::from_utf8_lossy(&r.data[4..]).into_owned()));
                }
            }
        }
        let mut d = name_data(&opts.export);
        let mut infos = vec![INFO_BLOCK_SIZE];
        if zoned_ext {
            infos.push(INFO_X_ZONED);
        }
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in &infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        let mut info = ExportInfo {
            size: 0,
            flags: 0,
            min_block: 1,
            preferred_block: 4096,
            max_payload: MAX_PAYLOAD,
            mode,
            zoned_extension: zoned_ext,
            zoned: None,
            contexts,
        };
        let mut have_export = false;
        for r in haggle(&mut io, OPT_GO, &d)? {
            if r.typ != REP_INFO {
                continue;
            }
            let mut c = Cursor::new(&r.data);
            match c.u16() {
                Some(INFO_EXPORT) => {
                    if let (Some(s), Some(f)) = (c.u64(), c.u16()) {
                        info.size = s;
                        info.flags = f;
                        have_export = true;
                    }
                }
                Some(INFO_BLOCK_SIZE) => {
                    if let (Some(a), Some(b), Some(m)) = (c.u32(), c.u32(), c.u32()) {
                        info.min_block = a.max(1);
                        info.preferred_block = b;
                        info.max_payload = m.clamp(512, MAX_PAYLOAD);
                    }
                }
                Some(INFO_X_ZONED) => info.zoned = ZonedInfo::decode(c.rest()),
                _ => {}
            }
        }
        if !have_export {
            return Err(NbdError::Protocol(
                "GO succeeded without INFO_EXPORT".into(),
            ));
        }

        let ConnIo {
            reader,
            writer,
            sock,
            ..
        } = io;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            pending: Mutex::new(Pending::default()),
            sock,
            next_cookie: AtomicU64::new(1),
        });
        let r_inner = inner.clone();
        let reader = std::thread::Builder::new()
            .name("nbd-client-reader".into())
            .spawn(move || reader_loop(&r_inner, reader))?;
        Ok(Self {
            inner,
            info,
            reader: Some(reader),
        })
    }

    /// What the server told us about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Id of a selected meta context.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.info.contexts.iter().find(|c| c.1 == name).map(|c| c.0)
    }

    fn extended(&self) -> bool {
        self.info.mode == ReplyMode::Extended
    }

    fn call(
        &self,
        typ: u16,
        mut flags: u16,
        offset: u64,
        length: u64,
        payload: Option<&[u8]>,
    ) -> Result<Acc> {
        let cookie = self.inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        let is_read = typ == CMD_READ;
        {
            let mut p = self.inner.pending.lock().map_err(|_| NbdError::Closed)?;
            if let Some(why) = &p.dead {
                return Err(NbdError::Protocol(why.clone()));
            }
            let data = if is_read {
                vec![0u8; length as usize]
            } else {
                Vec::new()
            };
            p.map.insert(
                cookie,
                Slot {
                    offset,
                    is_read,
                    chunks: 0,
                    acc: Acc {
                        data,
                        ..Acc::default()
                    },
                    tx,
                },
            );
        }
        if payload.is_some() && self.extended() {
            flags |= CMD_FLAG_PAYLOAD_LEN;
        }
        let mut h = Vec::with_capacity(32);
        Request {
            flags,
            typ,
            cookie,
            offset,
            length,
        }
        .encode(self.extended(), &mut h)?;
        let sent = (|| -> std::io::Result<()> {
            let mut w = self
                .inner
                .writer
                .lock()
                .map_err(|_| std::io::Error::other("writer poisoned"))?;
            w.write_all(&h)?;
            if let Some(p) = payload {
                w.write_all(p)?;
            }
            w.flush()
        })();
        if let Err(e) = sent {
            if let Ok(mut p) = self.inner.pending.lock() {
                p.map.remove(&cookie);
            }
            return Err(e.into());
        }
        let acc = rx
            .recv()
            .map_err(|_| NbdError::Closed)?
            .map_err(NbdError::Protocol)?;
        if let Some((errno, message)) = acc.error {
            return Err(NbdError::Remote { errno, message });
        }
        Ok(acc)
    }

    fn max_chunk(&self) -> u64 {
        self.info.max_payload.max(512) as u64
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let max = self.max_chunk() as usize;
        let mut done = 0usize;
        while done < buf.len() || buf.is_empty() {
            let n = (buf.len() - done).min(max);
            let acc = self.call(CMD_READ, 0, offset + done as u64, n as u64, None)?;
            buf[done..done + n].copy_from_slice(&acc.data[..n]);
            done += n;
            if buf.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Write `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let fl = if fua { CMD_FLAG_FUA } else { 0 };
        for (i, chunk) in data.chunks(self.max_chunk() as usize).enumerate() {
            let off = offset + (i as u64) * self.max_chunk();
            self.call(CMD_WRITE, fl, off, chunk.len() as u64, Some(chunk))?;
        }
        Ok(())
    }

    /// Flush.
    pub fn flush(&self) -> Result<()> {
        self.call(CMD_FLUSH, 0, 0, 0, None).map(|_| ())
    }

    fn ranged(&self, typ: u16, flags: u16, offset: u64, len: u64) -> Result<()> {
        // Compact headers carry 32-bit lengths.
        let step = if self.extended() { u64::MAX } else { 1 << 30 };
        let mut pos = 0;
        loop {
            let n = (len - pos).min(step);
            self.call(typ, flags, offset + pos, n, None)?;
            pos += n;
            if pos >= len {
                return Ok(());
            }
        }
    }

    /// Trim (discard).
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.ranged(CMD_TRIM, if fua { CMD_FLAG_FUA } else { 0 }, offset, len)
    }

    /// Write zeroes with raw command flags (`CMD_FLAG_NO_HOLE`, `CMD_FLAG_FAST_ZERO`, `CMD_FLAG_FUA`).
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: u16) -> Result<()> {
        self.ranged(CMD_WRITE_ZEROES, flags, offset, len)
    }

    /// Cache hint.
    pub fn cache(&self, offset: u64, len: u64) -> Result<()> {
        self.ranged(CMD_CACHE, 0, offset, len)
    }

    /// Block status: per context id, (length, status) extents.
    pub fn block_status(&self, offset: u64, len: u64, req_one: bool) -> Result<ContextExtents> {
        let len = if self.extended() {
            len
        } else {
            len.min(u32::MAX as u64 & !0xfff)
        };
        let fl = if req_one { CMD_FLAG_REQ_ONE } else { 0 };
        Ok(self.call(CMD_BLOCK_STATUS, fl, offset, len, None)?.extents)
    }

    /// Zone management command (open, close, finish, reset) over
    /// `[offset, offset+len)`; reset of `[0, size)` is reset-all.
    pub fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64, fua: bool) -> Result<()> {
        let typ = match op {
            ZoneOp::Open => CMD_X_ZONE_OPEN,
            ZoneOp::Close => CMD_X_ZONE_CLOSE,
            ZoneOp::Finish => CMD_X_ZONE_FINISH,
            ZoneOp::Reset => CMD_X_ZONE_RESET,
        };
        let fl = if fua { CMD_FLAG_FUA } else { 0 };
        self.call(typ, fl, offset, len, None).map(|_| ())
    }

    /// Zone append into the zone starting at `zone_start`; returns where the
    /// data landed.
    pub fn zone_append(&self, zone_start: u64, data: &[u8], fua: bool) -> Result<u64> {
        let fl = if fua { CMD_FLAG_FUA } else { 0 };
        let acc = self.call(
            CMD_X_ZONE_APPEND,
            fl,
            zone_start,
            data.len() as u64,
            Some(data),
        )?;
        acc.append
            .ok_or_else(|| NbdError::Protocol("append reply without offset".into()))
    }

    /// Send a raw request (tests and tools): returns the error value and
    /// message the server answered with, or `None` on success.
    pub fn raw_command(
        &self,
        typ: u16,
        flags: u16,
        offset: u64,
        len: u64,
        payload: Option<&[u8]>,
    ) -> Result<Option<(u32, String)>> {
        match self.call(typ, flags, offset, len, payload) {
            Ok(_) => Ok(None),
            Err(NbdError::Remote { errno, message }) => Ok(Some((errno, message))),
            Err(e) => Err(e),
        }
    }

    /// Send DISC and close.
    pub fn disconnect(mut self) -> Result<()> {
        self.close();
        Ok(())
    }

    fn close(&mut self) {
        let mut h = Vec::new();
        let req = Request {
            flags: 0,
            typ: CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        if req.encode(self.extended(), &mut h).is_ok() {
            if let Ok(mut w) = self.inner.writer.lock() {
                let _ = w.write_all(&h);
                let _ = w.flush();
            }
        }
        self.inner.sock.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.close();
        }
    }
}

fn fail_all(inner: &Inner, why: String) {
    if let Ok(mut p) = inner.pending.lock() {
        for (_, s) in p.map.drain() {
            let _ = s.tx.send(Err(why.clone()));
        }
        p.dead = Some(why);
    }
}

fn reader_loop(inner: &Inner, mut r: Box<dyn Read + Send>) {
    let why = loop {
        match read_one_reply(inner, &mut *r) {
            Ok(()) => {}
            Err(NbdError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "server closed the connection".to_string()
            }
            Err(e) => break e.to_string(),
        }
    };
    fail_all(inner, why);
}

fn read_one_reply(inner: &Inner, r: &mut dyn Read) -> Result<()> {
    let hdr = ReplyHeader::read_from(r)?;
    let take = |cookie: u64| -> Result<Slot> {
        let mut p = inner.pending.lock().map_err(|_| NbdError::Closed)?;
        p.map
            .remove(&cookie)
            .ok_or_else(|| NbdError::Protocol(format!("reply for unknown cookie {cookie}")))
    };
    match hdr {
        ReplyHeader::Simple { error, cookie } => {
            let mut slot = take(cookie)?;
            if error != 0 {
                slot.acc.error = Some((error, String::new()));
            } else if slot.is_read {
                r.read_exact(&mut slot.acc.data)?;
            }
            let _ = slot.tx.send(Ok(slot.acc));
        }
        ReplyHeader::Chunk {
            flags,
            typ,
            cookie,
            len,
            ..
        } => {
            let mut slot = take(cookie)?;
            let res = read_chunk(&mut slot, typ, len, r);
            if flags & REPLY_FLAG_DONE != 0 {
                if let Err(e) = res {
                    // The caller learns why, not just that the link closed.
                    let _ = slot.tx.send(Err(e.to_string()));
                    return Err(e);
                }
                let _ = slot.tx.send(Ok(slot.acc));
            } else {
                let mut p = inner.pending.lock().map_err(|_| NbdError::Closed)?;
                p.map.insert(cookie, slot);
                drop(p);
                res?;
            }
        }
    }
    Ok(())
}

fn read_chunk(slot: &mut Slot, typ: u16, len: u64, r: &mut dyn Read) -> Result<()> {
    slot.chunks += 1;
    if slot.chunks > MAX_CHUNKS_PER_REQUEST {
        return Err(NbdError::Protocol(format!(
            "server sent more than {MAX_CHUNKS_PER_REQUEST} reply chunks for one request"
        )));
    }
    if typ == REPLY_TYPE_OFFSET_DATA {
        if !slot.is_read || len < 8 {
            return Err(NbdError::Protocol("unexpected data chunk".into()));
        }
        let off = read_u64(r)?;
        let n = len - 8;
        let rel = off.checked_sub(slot.offset);
        let fits = rel
            .and_then(|x| x.checked_add(n))
            .is_some_and(|e| e <= slot.acc.data.len() as u64);
        if !fits {
            return Err(NbdError::Protocol("data chunk outside the request".into()));
        }
        let rel = rel.unwrap_or(0) as usize;
        r.read_exact(&mut slot.acc.data[rel..rel + n as usize])?;
        return Ok(());
    }
    if len > (4 << 20) {
        return Err(NbdError::Protocol(format!("chunk of {len} bytes")));
    }
    let body = read_vec(r, len as usize)?;
    let mut c = Cursor::new(&body);
    let bad = || NbdError::Protocol(format!("malformed chunk type {typ:#x}"));
    match typ {
        REPLY_TYPE_NONE => {}
        REPLY_TYPE_OFFSET_HOLE => {
            let off = c.u64().ok_or_else(bad)?;
            let n = c.u32().ok_or_else(bad)? as u64;
            let rel = off.checked_sub(slot.offset).ok_or_else(bad)?;
            let fits = rel
                .checked_add(n)
                .is_some_and(|e| e <= slot.acc.data.len() as u64);
            if !slot.is_read || !fits {
                return Err(bad());
            }
            slot.acc.data[rel as usize..(rel + n) as usize].fill(0);
        }
        REPLY_TYPE_BLOCK_STATUS => {
            let id = c.u32().ok_or_else(bad)?;
            let mut v = Vec::new();
            extent_budget(slot, c.remaining() / 8)?;
            while c.remaining() >= 8 {
                let l = c.u32().ok_or_else(bad)? as u64;
                let s = c.u32().ok_or_else(bad)? as u64;
                v.push((l, s));
            }
            slot.acc.extents.push((id, v));
        }
        REPLY_TYPE_BLOCK_STATUS_EXT => {
            let id = c.u32().ok_or_else(bad)?;
            let n = c.u32().ok_or_else(bad)?;
            // The count is the peer's word: never more than the body holds.
            if n as usize > c.remaining() / 16 {
                return Err(bad());
            }
            extent_budget(slot, n as usize)?;
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let l = c.u64().ok_or_else(bad)?;
                let s = c.u64().ok_or_else(bad)?;
                v.push((l, s));
            }
            slot.acc.extents.push((id, v));
        }
        REPLY_TYPE_X_ZONE_APPEND => {
            slot.acc.append = Some(c.u64().ok_or_else(bad)?);
        }
        t if t & 0x8000 != 0 => {
            let errno = c.u32().unwrap_or(NBD_EINVAL);
            let ml = c.u16().unwrap_or(0) as usize;
            let msg = c
                .take(ml)
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            let errno = if t == REPLY_TYPE_ERROR || t == REPLY_TYPE_ERROR_OFFSET {
                errno
            } else {
                NBD_EINVAL
            };
            slot.acc.error = Some((errno, msg));
        }
        t => {
            return Err(NbdError::Protocol(format!(
                "unknown reply chunk type {t:#x}"
            )))
        }
    }
    Ok(())
}

/// Account `n` more extents to the request; error past the limit.
fn extent_budget(slot: &Slot, n: usize) -> Result<()> {
    let have: usize = slot.acc.extents.iter().map(|c| c.1.len()).sum();
    if have.saturating_add(n) > MAX_EXTENTS_PER_REQUEST {
        return Err(NbdError::Protocol(format!(
            "server sent more than {MAX_EXTENTS_PER_REQUEST} block status extents for one request"
        )));
    }
    Ok(())
}

fn nbd_to_dev(e: NbdError) -> DeviceError {
    match e {
        NbdError::Remote { errno, message } => DeviceError::Remote {
            errno: errno as i32,
            message,
        },
        NbdError::Uri(m) | NbdError::Config(m) => DeviceError::Invalid(m),
        e => DeviceError::Connection(e.to_string()),
    }
}

/// A remote export as a [`BlockDevice`]. Zoned exports (server with the
/// zoned extension) report their geometry and zones and take zone
/// commands.
#[derive(Debug)]
pub struct NbdDevice {
    client: NbdClient,
    label: String,
    geometry: Option<ZoneGeometry>,
}

impl NbdDevice {
    /// Wrap a connected client.
    pub fn new(client: NbdClient, label: String) -> Result<Self> {
        let mut dev = Self {
            client,
            label,
            geometry: None,
        };
        if let (Some(z), Some(_)) = (
            dev.client.info.zoned,
            dev.client.context_id(CTX_X_ZONED_STATE),
        ) {
            let mut g = ZoneGeometry {
                device_size: dev.client.info.size,
                zone_size: z.zone_size,
                zone_capacity: z.zone_capacity,
                nr_zones: z.nr_zones,
                conventional_zones: 0,
                max_open_zones: z.max_open_zones,
                max_active_zones: z.max_active_zones,
                max_append_bytes: z.max_append,
            };
            // The peer's geometry is checked before any arithmetic uses it.
            g.validate().map_err(|e| {
                NbdError::Protocol(format!("server sent an invalid zone geometry: {e}"))
            })?;
            // Conventional zones come first: find how many by bisection.
            let (mut lo, mut hi) = (0u32, z.nr_zones);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let st = dev.zone_status_at(g.zone_start(mid))?;
                if (st >> ZSTATE_TYPE_SHIFT) & 3 == ZoneType::Conventional.value() as u64 {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            g.conventional_zones = lo;
            dev.geometry = Some(g);
        }
        Ok(dev)
    }

    /// The client underneath.
    pub fn client(&self) -> &NbdClient {
        &self.client
    }

    fn zone_status_at(&self, offset: u64) -> Result<u64> {
        let id = self
            .client
            .context_id(CTX_X_ZONED_STATE)
            .ok_or_else(|| NbdError::Protocol("x-zoned:state not negotiated".into()))?;
        let r = self.client.block_status(offset, 1, true)?;
        r.into_iter()
            .find(|c| c.0 == id)
            .and_then(|c| c.1.first().copied())
            .map(|e| e.1)
            .ok_or_else(|| NbdError::Protocol("no zone status extent".into()))
    }
}

impl BlockDevice for NbdDevice {
    fn size(&self) -> u64 {
        self.client.info.size
    }
    fn is_read_only(&self) -> bool {
        self.client.info.flags & TF_READ_ONLY != 0
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        self.client.read(offset, buf).map_err(nbd_to_dev)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        self.client.write(offset, data, fua).map_err(nbd_to_dev)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        let mut f = 0;
        if !flags.may_unmap {
            f |= CMD_FLAG_NO_HOLE;
        }
        if flags.fast_only {
            if self.client.info.flags & TF_SEND_FAST_ZERO == 0 {
                return Err(DeviceError::FastZeroUnsupported);
            }
            f |= CMD_FLAG_FAST_ZERO;
        }
        if flags.fua {
            f |= CMD_FLAG_FUA;
        }
        self.client.write_zeroes(offset, len, f).map_err(nbd_to_dev)
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        self.client.trim(offset, len, false).map_err(nbd_to_dev)
    }
    fn flush(&self) -> DevResult<()> {
        self.client.flush().map_err(nbd_to_dev)
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        crate::device::check_range(offset, len, self.size())?;
        let Some(id) = self.client.context_id(CTX_BASE_ALLOCATION) else {
            return Ok(vec![Extent {
                len,
                hole: false,
                zero: false,
            }]);
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let r = self
            .client
            .block_status(offset, len, false)
            .map_err(nbd_to_dev)?;
        let mut out = Vec::new();
        let mut total = 0u64;
        for (cid, exts) in r {
            if cid != id {
                continue;
            }
            for (l, s) in exts {
                if total >= len {
                    break;
                }
                if l == 0 {
                    continue;
                }
                let l = l.min(len - total);
                total += l;
                out.push(Extent {
                    len: l,
                    hole: s & STATE_HOLE as u64 != 0,
                    zero: s & STATE_ZERO as u64 != 0,
                });
            }
        }
        if out.is_empty() {
            // Callers step by the extents: none of any length is no progress.
            return Err(DeviceError::Connection(format!(
                "server returned no block status for {len:#x} bytes at {offset:#x}"
            )));
        }
        Ok(out)
    }
    fn zone_geometry(&self) -> Option<ZoneGeometry> {
        self.geometry
    }
    fn zone_report(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        let Some(g) = self.geometry else {
            return Err(DeviceError::Unsupported(
                "zone report on a non-zoned device".into(),
            ));
        };
        let Some(first) = g.zone_index(offset) else {
            return Err(DeviceError::OutOfRange {
                offset,
                len: 0,
                size: g.device_size,
            });
        };
        let id = self
            .client
            .context_id(CTX_X_ZONED_STATE)
            .ok_or_else(|| DeviceError::Unsupported("x-zoned:state not negotiated".into()))?;
        let last = first.saturating_add(max).min(g.nr_zones);
        let end = if last >= g.nr_zones {
            g.device_size
        } else {
            g.zone_start(last)
        };
        let mut zones: Vec<ZoneDescriptor> = Vec::new();
        let mut pos = g.zone_start(first);
        // Each reply must move on; a server trickling bytes gets a bounded
        // number of requests (a zone may take two extents: data and hole).
        let mut rounds_left = 2 * u64::from(last - first) + 16;
        while pos < end {
            if rounds_left == 0 {
                return Err(DeviceError::Connection(format!(
                    "server made too little progress reporting zones {first}..{last} (stuck at {pos:#x})"
                )));
            }
            rounds_left -= 1;
            let r = self
                .client
                .block_status(pos, end - pos, false)
                .map_err(nbd_to_dev)?;
            let before = pos;
            for (cid, exts) in r {
                if cid != id {
                    continue;
                }
                for (l, s) in exts {
                    if pos >= end || l == 0 {
                        break;
                    }
                    let Some(i) = g.zone_index(pos) else { break };
                    let cond = ZoneCond::from_value((s as u32 & ZSTATE_COND_MASK) as u8)
                        .unwrap_or(ZoneCond::Offline);
                    let zt = if (s >> ZSTATE_TYPE_SHIFT) & 3 == 1 {
                        ZoneType::Conventional
                    } else {
                        ZoneType::SeqWriteReq
                    };
                    let start = g.zone_start(i);
                    if zones.last().is_none_or(|z| z.index != i) {
                        zones.push(ZoneDescriptor {
                            index: i,
                            start,
                            len: g.zone_len(i),
                            cap: g.zone_cap(i),
                            wp: start,
                            zone_type: zt,
                            cond,
                        });
                    }
                    let seg_end = pos.saturating_add(l).min(g.zone_end(i));
                    if s as u32 & ZSTATE_WRITTEN != 0 {
                        if let Some(z) = zones.last_mut() {
                            z.wp = z.wp.max(seg_end);
                        }
                    }
                    pos = seg_end;
                }
            }
            if pos == before {
                return Err(DeviceError::Connection(
                    "server returned no zone state".into(),
                ));
            }
        }
        Ok(zones)
    }
    fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> DevResult<()> {
        if self.geometry.is_none() {
            return Err(DeviceError::Unsupported(format!(
                "zone {} on a non-zoned device",
                op.verb()
            )));
        }
        self.client
            .zone_mgmt(op, offset, len, false)
            .map_err(nbd_to_dev)
    }
    fn zone_append(&self, zone_start: u64, data: &[u8], fua: bool) -> DevResult<u64> {
        if self.geometry.is_none() {
            return Err(DeviceError::Unsupported(
                "zone append on a non-zoned device".into(),
            ));
        }
        self.client
            .zone_append(zone_start, data, fua)
            .map_err(nbd_to_dev)
    }
    fn describe(&self) -> String {
        format!("nbd {}", self.label)
    }
}

/// Connect to an NBD URI (`nbd://`, `nbds://`, `nbd+unix://`,
/// `nbds+unix://`) and return the export as a block device. TLS takes its
/// certificates from the `tls-certificates=DIR` query parameter.
pub fn connect_uri(uri: &str) -> DevResult<Arc<dyn BlockDevice>> {
    let t = parse_uri(uri).map_err(nbd_to_dev)?;
    let mut opts = ClientOptions {
        export: t.export.clone(),
        ..ClientOptions::default()
    };
    if t.tls {
        let dir = t
            .tls_certificates
            .clone()
            .ok_or_else(|| DeviceError::Invalid("nbds:// needs ?tls-certificates=DIR".into()))?;
        opts.tls = Some(client_config(&dir).map_err(nbd_to_dev)?);
        if let Address::Tcp { host, .. } = &t.address {
            opts.tls_server_name = host.clone();
        }
    }
    let c = NbdClient::connect(&t.address, &opts).map_err(nbd_to_dev)?;
    Ok(Arc::new(
        NbdDevice::new(c, uri.to_string()).map_err(nbd_to_dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let t = parse_uri("nbd://127.0.0.1:10900/exp%20a").unwrap();
        assert_eq!(
            t.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(t.export, "exp a");
        assert!(!t.tls);
        let t = parse_uri("nbd://host").unwrap();
        assert_eq!(
            t.address,
            Address::Tcp {
                host: "host".into(),
                port: 10809
            }
        );
        assert_eq!(t.export, "");
        let t = parse_uri("nbd+unix:///e?socket=/tmp/s.sock").unwrap();
        assert_eq!(t.address, Address::Unix("/tmp/s.sock".into()));
        assert_eq!(t.export, "e");
        let t = parse_uri("nbds://[::1]:99/?tls-certificates=/d").unwrap();
        assert!(t.tls);
        assert_eq!(t.tls_certificates, Some(PathBuf::from("/d")));
        assert!(parse_uri("nbd+unix:///e").is_err());
        assert!(parse_uri("http://x").is_err());
        assert!(parse_uri("nbd://h:notaport/").is_err());
        assert!(parse_uri("nbd://h/%zz").is_err());
    }
}
