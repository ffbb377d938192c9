//! NBD wire protocol: constants (from the NBD `proto.md`, never from
//! `nbd.h`), message layouts, encoders and decoders, and the typed error of
//! the NBD layer. All integers are big-endian on the wire.

use std::io::{self, Read, Write};

// ---- magics ----
/// First 8 bytes of the server greeting ("NBDMAGIC").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle greeting magic and the magic of every option request ("IHAVEOPT").
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Compact (28-byte) request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended (32-byte) request magic.
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk magic.
pub const EXT_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---- handshake flags ----
/// Server handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Server handshake flag: no 124 zero bytes after EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 2;

// ---- options ----
/// Option: select export by name, no reply header.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Option: query an export.
pub const OPT_INFO: u32 = 6;
/// Option: select an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: extended (64-bit) headers.
pub const OPT_EXTENDED_HEADERS: u32 = 11;
/// Option (experimental): enable the zoned extension for this session.
pub const OPT_X_ZONED: u32 = 0x5A4E_0001;

// ---- option reply types ----
/// Option reply: success.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of a LIST.
pub const REP_SERVER: u32 = 2;
/// Option reply: an info block.
pub const REP_INFO: u32 = 3;
/// Option reply: a metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Error bit of option reply types.
pub const REP_FLAG_ERROR: u32 = 0x8000_0000;
/// Option error: unsupported.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// Option error: forbidden by policy.
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
/// Option error: invalid.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// Option error: platform.
pub const REP_ERR_PLATFORM: u32 = 0x8000_0004;
/// Option error: TLS required.
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// Option error: unknown export.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// Option error: shutting down.
pub const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
/// Option error: block size required.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = 0x8000_0008;
/// Option error: too big.
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;
/// Option error: extended headers required.
pub const REP_ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

// ---- info types ----
/// Info: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info: export name.
pub const INFO_NAME: u16 = 1;
/// Info: description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;
/// Info (experimental): zone geometry.
pub const INFO_X_ZONED: u16 = 0x5A4E;
/// Length of the `INFO_X_ZONED` body including the type.
pub const INFO_X_ZONED_LEN: usize = 42;

// ---- transmission flags ----
/// Transmission flag: flags are valid.
pub const TF_HAS_FLAGS: u16 = 0x0001;
/// Transmission flag: read-only export.
pub const TF_READ_ONLY: u16 = 0x0002;
/// Transmission flag: FLUSH supported.
pub const TF_SEND_FLUSH: u16 = 0x0004;
/// Transmission flag: FUA supported.
pub const TF_SEND_FUA: u16 = 0x0008;
/// Transmission flag: rotational.
pub const TF_ROTATIONAL: u16 = 0x0010;
/// Transmission flag: TRIM supported.
pub const TF_SEND_TRIM: u16 = 0x0020;
/// Transmission flag: WRITE_ZEROES supported.
pub const TF_SEND_WRITE_ZEROES: u16 = 0x0040;
/// Transmission flag: DF supported.
pub const TF_SEND_DF: u16 = 0x0080;
/// Transmission flag: multiple connections are consistent.
pub const TF_CAN_MULTI_CONN: u16 = 0x0100;
/// Transmission flag: CACHE supported.
pub const TF_SEND_CACHE: u16 = 0x0400;
/// Transmission flag: FAST_ZERO supported.
pub const TF_SEND_FAST_ZERO: u16 = 0x0800;
/// Transmission flag: BLOCK_STATUS with payload (EH).
pub const TF_BLOCK_STATUS_PAYLOAD: u16 = 0x1000;

// ---- commands ----
/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write.
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const CMD_TRIM: u16 = 4;
/// Command: cache.
pub const CMD_CACHE: u16 = 5;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Command (experimental): explicit zone open.
pub const CMD_X_ZONE_OPEN: u16 = 0x5A4F;
/// Command (experimental): zone close.
pub const CMD_X_ZONE_CLOSE: u16 = 0x5A43;
/// Command (experimental): zone finish.
pub const CMD_X_ZONE_FINISH: u16 = 0x5A46;
/// Command (experimental): zone reset (offset 0 + export size = reset all).
pub const CMD_X_ZONE_RESET: u16 = 0x5A52;
/// Command (experimental): zone append.
pub const CMD_X_ZONE_APPEND: u16 = 0x5A41;

// ---- command flags ----
/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 0x01;
/// Command flag: do not punch holes (WRITE_ZEROES).
pub const CMD_FLAG_NO_HOLE: u16 = 0x02;
/// Command flag: don't fragment (READ).
pub const CMD_FLAG_DF: u16 = 0x04;
/// Command flag: one extent only (BLOCK_STATUS).
pub const CMD_FLAG_REQ_ONE: u16 = 0x08;
/// Command flag: fail fast rather than zero slowly (WRITE_ZEROES).
pub const CMD_FLAG_FAST_ZERO: u16 = 0x10;
/// Command flag: the request carries a payload of `length` bytes (EH).
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 0x20;

// ---- reply chunks ----
/// Chunk flag: last chunk of this cookie.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Chunk: nothing.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Chunk: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk: a hole (reads as zero).
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk: block status (32-bit).
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk: block status (64-bit, EH).
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Chunk (experimental): where a zone append landed.
pub const REPLY_TYPE_X_ZONE_APPEND: u16 = 0x5A41;
/// Chunk: error.
pub const REPLY_TYPE_ERROR: u16 = 0x8001;
/// Chunk: error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = 0x8002;

// ---- errors ----
/// NBD error: operation not permitted.
pub const NBD_EPERM: u32 = 1;
/// NBD error: I/O error.
pub const NBD_EIO: u32 = 5;
/// NBD error: out of memory.
pub const NBD_ENOMEM: u32 = 12;
/// NBD error: invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// NBD error: no space.
pub const NBD_ENOSPC: u32 = 28;
/// NBD error: value too large.
pub const NBD_EOVERFLOW: u32 = 75;
/// NBD error: not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// NBD error: server shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

// ---- metadata contexts ----
/// Context name `base:allocation`.
pub const CTX_BASE_ALLOCATION: &str = "base:allocation";
/// Context name `x-zoned:state`.
pub const CTX_X_ZONED_STATE: &str = "x-zoned:state";
/// Context name `x-zoned:wp` (64-bit, extended headers only).
pub const CTX_X_ZONED_WP: &str = "x-zoned:wp";
/// base:allocation: unallocated.
pub const STATE_HOLE: u32 = 1;
/// base:allocation: reads as zero.
pub const STATE_ZERO: u32 = 2;
/// x-zoned:state: mask of the zone condition.
pub const ZSTATE_COND_MASK: u32 = 0xF;
/// x-zoned:state: shift of the zone type.
pub const ZSTATE_TYPE_SHIFT: u32 = 4;
/// x-zoned:state: the extent lies below the write pointer.
pub const ZSTATE_WRITTEN: u32 = 1 << 8;
/// x-zoned:state: the extent lies between capacity and zone end.
pub const ZSTATE_BEYOND_CAP: u32 = 1 << 9;
/// x-zoned:state: parity of the zone index.
pub const ZSTATE_ZONE_ODD: u32 = 1 << 10;
/// `NBD_INFO_X_ZONED` flag: zone append supported.
pub const XZ_FLAG_APPEND: u8 = 1;
/// `NBD_INFO_X_ZONED` flag: capacity below the zone size.
pub const XZ_FLAG_CAP_LT_SIZE: u8 = 2;
/// `NBD_INFO_X_ZONED` flag: reset-all supported.
pub const XZ_FLAG_RESET_ALL: u8 = 4;

// ---- limits ----
/// Largest payload (and READ length) the server accepts: 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option data the server reads into memory.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Largest name (export, context) accepted.
pub const MAX_NAME_LEN: u32 = 4096;
/// Longest message put into an error chunk (QEMU drops >1000-byte chunks).
pub const MAX_ERROR_MSG: usize = 900;

/// Errors of the NBD layer.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused an option.
    #[error("server refused option {} with {}: {message}", option_name(*.option), reply_name(*.reply))]
    OptionRefused {
        /// The option.
        option: u32,
        /// The error reply type.
        reply: u32,
        /// The server's message.
        message: String,
    },
    /// The server failed a command.
    #[error("server error {errno}: {message}")]
    Remote {
        /// NBD error value.
        errno: u32,
        /// The server's message.
        message: String,
    },
    /// TLS setup or session failure.
    #[error("TLS: {0}")]
    Tls(String),
    /// A malformed URI.
    #[error("invalid NBD URI: {0}")]
    Uri(String),
    /// Bad configuration or arguments.
    #[error("{0}")]
    Config(String),
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
}

/// Result alias of the NBD layer.
pub type Result<T> = std::result::Result<T, NbdError>;

/// Name of an option, for logs and messages.
pub fn option_name(opt: u32) -> String {
    match opt {
        OPT_EXPORT_NAME => "EXPORT_NAME".into(),
        OPT_ABORT => "ABORT".into(),
        OPT_LIST => "LIST".into(),
        OPT_STARTTLS => "STARTTLS".into(),
        OPT_INFO => "INFO".into(),
        OPT_GO => "GO".into(),
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY".into(),
        OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT".into(),
        OPT_SET_META_CONTEXT => "SET_META_CONTEXT".into(),
        OPT_EXTENDED_HEADERS => "EXTENDED_HEADERS".into(),
        OPT_X_ZONED => "X_ZONED".into(),
        n => format!("{n}"),
    }
}

/// Name of an option reply type.
pub fn reply_name(rep: u32) -> String {
    match rep {
        REP_ACK => "ACK".into(),
        REP_SERVER => "SERVER".into(),
        REP_INFO => "INFO".into(),
        REP_META_CONTEXT => "META_CONTEXT".into(),
        REP_ERR_UNSUP => "ERR_UNSUP".into(),
        REP_ERR_POLICY => "ERR_POLICY".into(),
        REP_ERR_INVALID => "ERR_INVALID".into(),
        REP_ERR_PLATFORM => "ERR_PLATFORM".into(),
        REP_ERR_TLS_REQD => "ERR_TLS_REQD".into(),
        REP_ERR_UNKNOWN => "ERR_UNKNOWN".into(),
        REP_ERR_SHUTDOWN => "ERR_SHUTDOWN".into(),
        REP_ERR_BLOCK_SIZE_REQD => "ERR_BLOCK_SIZE_REQD".into(),
        REP_ERR_TOO_BIG => "ERR_TOO_BIG".into(),
        REP_ERR_EXT_HEADER_REQD => "ERR_EXT_HEADER_REQD".into(),
        n => format!("{n:#x}"),
    }
}

/// Name of a command, for logs.
pub fn command_name(cmd: u16) -> String {
    match cmd {
        CMD_READ => "READ".into(),
        CMD_WRITE => "WRITE".into(),
        CMD_DISC => "DISC".into(),
        CMD_FLUSH => "FLUSH".into(),
        CMD_TRIM => "TRIM".into(),
        CMD_CACHE => "CACHE".into(),
        CMD_WRITE_ZEROES => "WRITE_ZEROES".into(),
        CMD_BLOCK_STATUS => "BLOCK_STATUS".into(),
        CMD_X_ZONE_OPEN => "X_ZONE_OPEN".into(),
        CMD_X_ZONE_CLOSE => "X_ZONE_CLOSE".into(),
        CMD_X_ZONE_FINISH => "X_ZONE_FINISH".into(),
        CMD_X_ZONE_RESET => "X_ZONE_RESET".into(),
        CMD_X_ZONE_APPEND => "X_ZONE_APPEND".into(),
        n => format!("{n:#x}"),
    }
}

/// Map any errno onto the values the NBD protocol allows (EDQUOT and EFBIG
/// become ENOSPC, EROFS becomes EPERM, everything unknown becomes EIO) so
/// raw OS numbers never leak onto the wire.
pub fn wire_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => NBD_EPERM,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => NBD_ENOSPC,
        libc::EOVERFLOW => NBD_EOVERFLOW,
        libc::ENOTSUP => NBD_ENOTSUP,
        libc::ESHUTDOWN => NBD_ESHUTDOWN,
        _ => NBD_EIO,
    }
}

/// Cut a message to at most [`MAX_ERROR_MSG`] bytes on a char boundary.
pub fn clip_message(msg: &str) -> &str {
    if msg.len() <= MAX_ERROR_MSG {
        return msg;
    }
    let mut end = MAX_ERROR_MSG;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

// ---- primitive I/O ----

/// Read a big-endian u16.
pub fn read_u16(r: &mut dyn Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

/// Read a big-endian u32.
pub fn read_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Read a big-endian u64.
pub fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Read exactly `n` bytes into a new vector (callers bound `n`).
pub fn read_vec(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Read and throw away `n` bytes with a small fixed buffer.
pub fn drain(r: &mut dyn Read, mut n: u64) -> io::Result<()> {
    let mut buf = [0u8; 16384];
    while n > 0 {
        let want = n.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..want])?;
        n -= want as u64;
    }
    Ok(())
}

/// A cursor over option or chunk data that fails instead of panicking.
#[derive(Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Start at the beginning of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    /// Take `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.remaining() < n {
            return None;
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Some(s)
    }
    /// Take the rest.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
    /// Take a u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// Take a u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Take a u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    }
    /// Take a u8.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

// ---- messages ----

/// A request header (compact or extended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub typ: u16,
    /// Cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length (effect length; payload length for WRITE).
    pub length: u64,
}

impl Request {
    /// Encode with the compact (28-byte) or extended (32-byte) header.
    pub fn encode(&self, extended: bool, out: &mut Vec<u8>) -> Result<()> {
        if extended {
            out.extend_from_slice(&EXT_REQUEST_MAGIC.to_be_bytes());
        } else {
            out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.typ.to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        if extended {
            out.extend_from_slice(&self.length.to_be_bytes());
        } else {
            let l = u32::try_from(self.length).map_err(|_| {
                NbdError::Config(format!("length {} needs extended headers", self.length))
            })?;
            out.extend_from_slice(&l.to_be_bytes());
        }
        Ok(())
    }

    /// Read one request header; `extended` selects the negotiated form,
    /// and the other magic is a protocol error.
    pub fn read_from(r: &mut dyn Read, extended: bool) -> Result<Self> {
        let magic = read_u32(r)?;
        let want = if extended {
            EXT_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        if magic != want {
            return Err(NbdError::Protocol(format!(
                "bad request magic {magic:#010x}"
            )));
        }
        let flags = read_u16(r)?;
        let typ = read_u16(r)?;
        let cookie = read_u64(r)?;
        let offset = read_u64(r)?;
        let length = if extended {
            read_u64(r)?
        } else {
            read_u32(r)? as u64
        };
        Ok(Self {
            flags,
            typ,
            cookie,
            offset,
            length,
        })
    }
}

/// How replies are framed on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// Simple replies only.
    Simple,
    /// Structured replies negotiated.
    Structured,
    /// Extended headers negotiated.
    Extended,
}

/// Append a simple reply header.
pub fn encode_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Append a structured (or, with `extended`, extended) chunk header;
/// `offset` is the request offset echoed by extended headers.
pub fn encode_chunk_header(
    out: &mut Vec<u8>,
    extended: bool,
    flags: u16,
    typ: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) {
    if extended {
        out.extend_from_slice(&EXT_REPLY_MAGIC.to_be_bytes());
    } else {
        out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    if extended {
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        // Callers never build structured chunks over 4 GiB.
        out.extend_from_slice(&(len.min(u32::MAX as u64) as u32).to_be_bytes());
    }
}

/// Block-status answer: per context id, (length, status) extents.
pub type ContextExtents = Vec<(u32, Vec<(u64, u64)>)>;

/// A reply header as read by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (READ data follows iff error is 0).
    Simple {
        /// Error value.
        error: u32,
        /// Cookie.
        cookie: u64,
    },
    /// A structured or extended chunk; `len` payload bytes follow.
    Chunk {
        /// Chunk flags.
        flags: u16,
        /// Chunk type.
        typ: u16,
        /// Cookie.
        cookie: u64,
        /// Echoed offset (extended only, else 0).
        offset: u64,
        /// Payload length.
        len: u64,
    },
}

impl ReplyHeader {
    /// Read a reply header of any kind.
    pub fn read_from(r: &mut dyn Read) -> Result<Self> {
        let magic = read_u32(r)?;
        match magic {
            SIMPLE_REPLY_MAGIC => {
                let error = read_u32(r)?;
                let cookie = read_u64(r)?;
                Ok(ReplyHeader::Simple { error, cookie })
            }
            STRUCTURED_REPLY_MAGIC => {
                let flags = read_u16(r)?;
                let typ = read_u16(r)?;
                let cookie = read_u64(r)?;
                let len = read_u32(r)? as u64;
                Ok(ReplyHeader::Chunk {
                    flags,
                    typ,
                    cookie,
                    offset: 0,
                    len,
                })
            }
            EXT_REPLY_MAGIC => {
                let flags = read_u16(r)?;
                let typ = read_u16(r)?;
                let cookie = read_u64(r)?;
                let offset = read_u64(r)?;
                let len = read_u64(r)?;
                Ok(ReplyHeader::Chunk {
                    flags,
                    typ,
                    cookie,
                    offset,
                    len,
                })
            }
            m => Err(NbdError::Protocol(format!("bad reply magic {m:#010x}"))),
        }
    }
}

/// Write an option request.
pub fn write_option(w: &mut dyn Write, opt: u32, data: &[u8]) -> Result<()> {
    let len =
        u32::try_from(data.len()).map_err(|_| NbdError::Config("option data too long".into()))?;
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)?;
    w.flush()?;
    Ok(())
}

/// Encode an option reply.
pub fn encode_option_reply(out: &mut Vec<u8>, opt: u32, typ: u32, data: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// An option reply as read by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option replied to.
    pub option: u32,
    /// Reply type.
    pub typ: u32,
    /// Reply data.
    pub data: Vec<u8>,
}

/// Read an option reply; data longer than `max` is a protocol error.
pub fn read_option_reply(r: &mut dyn Read, max: u32) -> Result<OptionReply> {
    let magic = read_u64(r)?;
    if magic != OPT_REPLY_MAGIC {
        return Err(NbdError::Protocol(format!(
            "bad option reply magic {magic:#x}"
        )));
    }
    let option = read_u32(r)?;
    let typ = read_u32(r)?;
    let len = read_u32(r)?;
    if len > max {
        return Err(NbdError::Protocol(format!(
            "option reply of {len} bytes is too long"
        )));
    }
    let data = read_vec(r, len as usize)?;
    Ok(OptionReply { option, typ, data })
}

/// Body of `NBD_INFO_X_ZONED` (without the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZonedInfo {
    /// 1 host-managed, 2 host-aware.
    pub model: u8,
    /// `XZ_FLAG_*`.
    pub flags: u8,
    /// Zone size in bytes.
    pub zone_size: u64,
    /// Zone capacity in bytes.
    pub zone_capacity: u64,
    /// Number of zones.
    pub nr_zones: u32,
    /// 0 = unlimited.
    pub max_open_zones: u32,
    /// 0 = unlimited.
    pub max_active_zones: u32,
    /// Largest append in bytes; 0 = none.
    pub max_append: u32,
    /// Write granularity in bytes.
    pub write_granularity: u32,
}

impl ZonedInfo {
    /// Encode including the info type (42 bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&INFO_X_ZONED.to_be_bytes());
        out.push(self.model);
        out.push(self.flags);
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&self.zone_size.to_be_bytes());
        out.extend_from_slice(&self.zone_capacity.to_be_bytes());
        out.extend_from_slice(&self.nr_zones.to_be_bytes());
        out.extend_from_slice(&self.max_open_zones.to_be_bytes());
        out.extend_from_slice(&self.max_active_zones.to_be_bytes());
        out.extend_from_slice(&self.max_append.to_be_bytes());
        out.extend_from_slice(&self.write_granularity.to_be_bytes());
    }

    /// Decode the body after the info type.
    pub fn decode(body: &[u8]) -> Option<Self> {
        if body.len() != INFO_X_ZONED_LEN - 2 {
            return None;
        }
        let mut c = Cursor::new(body);
        let model = c.u8()?;
        let flags = c.u8()?;
        let _reserved = c.u16()?;
        Some(Self {
            model,
            flags,
            zone_size: c.u64()?,
            zone_capacity: c.u64()?,
            nr_zones: c.u32()?,
            max_open_zones: c.u32()?,
            max_active_zones: c.u32()?,
            max_append: c.u32()?,
            write_granularity: c.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_both_forms() {
        let r = Request {
            flags: 3,
            typ: CMD_WRITE,
            cookie: 77,
            offset: 1 << 40,
            length: 4096,
        };
        for ext in [false, true] {
            let mut b = Vec::new();
            r.encode(ext, &mut b).unwrap();
            assert_eq!(b.len(), if ext { 32 } else { 28 });
            let back = Request::read_from(&mut &b[..], ext).unwrap();
            assert_eq!(back, r);
            assert!(Request::read_from(&mut &b[..], !ext).is_err());
        }
    }

    #[test]
    fn zoned_info_roundtrip() {
        let z = ZonedInfo {
            model: 1,
            flags: 5,
            zone_size: 1 << 20,
            zone_capacity: 1 << 19,
            nr_zones: 9,
            max_open_zones: 3,
            max_active_zones: 4,
            max_append: 65536,
            write_granularity: 512,
        };
        let mut b = Vec::new();
        z.encode(&mut b);
        assert_eq!(b.len(), INFO_X_ZONED_LEN);
        assert_eq!(ZonedInfo::decode(&b[2..]), Some(z));
        assert_eq!(ZonedInfo::decode(&b[3..]), None);
    }

    #[test]
    fn errno_mapping_never_leaks() {
        assert_eq!(wire_errno(libc::ENOSYS), NBD_EIO);
        assert_eq!(wire_errno(libc::EDQUOT), NBD_ENOSPC);
        assert_eq!(wire_errno(libc::EROFS), NBD_EPERM);
        assert_eq!(wire_errno(libc::ENOTSUP), NBD_ENOTSUP);
        let long = "é".repeat(1000);
        assert!(clip_message(&long).len() <= MAX_ERROR_MSG);
    }
}
