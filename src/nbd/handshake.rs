//! Server side of the handshake: greeting, fixed newstyle option haggling,
//! STARTTLS, meta contexts, extended headers and the zoned extension option.

use super::proto::*;
use super::server::Shared;
use super::tls::ConnIo;
use std::io::Write;
use std::sync::atomic::Ordering;

/// Metadata contexts the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    /// `base:allocation`.
    Base,
    /// `x-zoned:state`.
    ZonedState,
    /// `x-zoned:wp` (64-bit values, extended headers only).
    ZonedWp,
}

/// Context id of `base:allocation`.
pub(crate) const CTX_ID_BASE: u32 = 1;
/// Context id of `x-zoned:state`.
pub(crate) const CTX_ID_ZONED: u32 = 2;
/// Context id of `x-zoned:wp`.
pub(crate) const CTX_ID_ZONED_WP: u32 = 3;

/// What was negotiated for the transmission phase.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub mode: ReplyMode,
    pub contexts: Vec<(u32, Ctx)>,
    pub zoned: bool,
    pub flags: u16,
}

/// Result of the handshake.
pub(crate) enum Outcome {
    /// Enter transmission.
    Go(Session),
    /// The client ended negotiation (or was refused).
    Done,
}

#[derive(Debug, Default)]
struct State {
    structured: bool,
    extended: bool,
    zoned: bool,
    contexts: Vec<(u32, Ctx)>,
}

impl State {
    fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }
}

fn send(io: &mut ConnIo, opt: u32, typ: u32, data: &[u8]) -> Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    encode_option_reply(&mut b, opt, typ, data);
    io.writer.write_all(&b)?;
    io.writer.flush()?;
    Ok(())
}

fn send_err(io: &mut ConnIo, opt: u32, typ: u32, msg: &str) -> Result<()> {
    send(io, opt, typ, clip_message(msg).as_bytes())
}

/// Run the handshake on a fresh connection.
pub(crate) fn negotiate(srv: &Shared, io: &mut ConnIo, conn: u64) -> Result<Outcome> {
    let mut g = Vec::with_capacity(18);
    g.extend_from_slice(&NBDMAGIC.to_be_bytes());
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    io.writer.write_all(&g)?;
    io.writer.flush()?;

    let cflags = read_u32(&mut io.reader)?;
    if cflags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {cflags:#x}"
        )));
    }
    let no_zeroes = cflags & CLIENT_NO_ZEROES != 0;
    let mut st = State::default();

    loop {
        let magic = read_u64(&mut io.reader)?;
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
        }
        let opt = read_u32(&mut io.reader)?;
        let len = read_u32(&mut io.reader)?;
        if len > MAX_OPTION_LEN {
            // Bounded memory: skip a moderately large option and refuse it;
            // anything bigger is abuse and ends the connection.
            if opt == OPT_EXPORT_NAME || len > (16 << 20) {
                return Err(NbdError::Protocol(format!(
                    "option {} with {len} bytes of data",
                    option_name(opt)
                )));
            }
            drain(&mut io.reader, len as u64)?;
            srv.trace(
                conn,
                format_args!("option {} too big ({len})", option_name(opt)),
            );
            send_err(io, opt, REP_ERR_TOO_BIG, "option data too large")?;
            continue;
        }
        let data = read_vec(&mut io.reader, len as usize)?;
        srv.trace(
            conn,
            format_args!("option {} ({opt}) len {len}", option_name(opt)),
        );

        if srv.tls_required() && !io.tls {
            match opt {
                OPT_STARTTLS | OPT_ABORT => {}
                OPT_EXPORT_NAME => {
                    return Err(NbdError::Protocol("EXPORT_NAME before STARTTLS".into()))
                }
                _ => {
                    send_err(io, opt, REP_ERR_TLS_REQD, "TLS is required: send STARTTLS")?;
                    continue;
                }
            }
        }

        match opt {
            OPT_EXPORT_NAME => {
                if st.extended {
                    return Err(NbdError::Protocol(
                        "EXPORT_NAME after extended headers".into(),
                    ));
                }
                if data != srv.cfg.export_name.as_bytes() {
                    srv.trace(conn, format_args!("EXPORT_NAME: unknown export"));
                    return Ok(Outcome::Done);
                }
                let session = srv.session(&st.contexts, st.mode(), st.zoned);
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&srv.device.size().to_be_bytes());
                b.extend_from_slice(&session.flags.to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                io.writer.write_all(&b)?;
                io.writer.flush()?;
                srv.note_session(&session);
                return Ok(Outcome::Go(session));
            }
            OPT_ABORT => {
                let _ = send(io, opt, REP_ACK, &[]);
                return Ok(Outcome::Done);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    send_err(io, opt, REP_ERR_INVALID, "LIST takes no data")?;
                    continue;
                }
                let name = srv.cfg.export_name.as_bytes();
                let mut b = Vec::new();
                b.extend_from_slice(&(name.len() as u32).to_be_bytes());
                b.extend_from_slice(name);
                if let Some(d) = &srv.cfg.description {
                    b.extend_from_slice(d.as_bytes());
                }
                send(io, opt, REP_SERVER, &b)?;
                send(io, opt, REP_ACK, &[])?;
            }
            OPT_STARTTLS => {
                if !data.is_empty() {
                    send_err(io, opt, REP_ERR_INVALID, "STARTTLS takes no data")?;
                    continue;
                }
                let Some(cfg) = srv.cfg.tls.clone() else {
                    send_err(io, opt, REP_ERR_UNSUP, "TLS is not configured")?;
                    continue;
                };
                if io.tls {
                    send_err(io, opt, REP_ERR_INVALID, "TLS is already active")?;
                    continue;
                }
                send(io, opt, REP_ACK, &[])?;
                let sc =
                    rustls::ServerConnection::new(cfg).map_err(|e| NbdError::Tls(e.to_string()))?;
                let sock = io.sock.try_clone()?;
                *io = ConnIo::with_tls(sock, rustls::Connection::Server(sc))?;
                // Forget everything negotiated in plaintext.
                st = State::default();
                srv.trace(conn, format_args!("TLS started"));
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_info_request(&data) else {
                    send_err(io, opt, REP_ERR_INVALID, "malformed INFO/GO request")?;
                    continue;
                };
                if name != srv.cfg.export_name.as_bytes() {
                    send_err(io, opt, REP_ERR_UNKNOWN, "export not found")?;
                    continue;
                }
                let session = srv.session(&st.contexts, st.mode(), st.zoned);
                let mut b = Vec::new();
                b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                b.extend_from_slice(&srv.device.size().to_be_bytes());
                b.extend_from_slice(&session.flags.to_be_bytes());
                send(io, opt, REP_INFO, &b)?;
                for info in dedup(&infos) {
                    b.clear();
                    match info {
                        INFO_NAME => {
                            b.extend_from_slice(&INFO_NAME.to_be_bytes());
                            b.extend_from_slice(srv.cfg.export_name.as_bytes());
                        }
                        INFO_DESCRIPTION => {
                            if let Some(d) = &srv.cfg.description {
                                b.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                                b.extend_from_slice(d.as_bytes());
                            }
                        }
                        INFO_BLOCK_SIZE => {
                            let (min, pref, max) = srv.block_sizes();
                            b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                            b.extend_from_slice(&min.to_be_bytes());
                            b.extend_from_slice(&pref.to_be_bytes());
                            b.extend_from_slice(&max.to_be_bytes());
                        }
                        INFO_X_ZONED if st.zoned => {
                            if let Some(z) = srv.zoned_info() {
                                z.encode(&mut b);
                            }
                        }
                        _ => {}
                    }
                    if !b.is_empty() {
                        send(io, opt, REP_INFO, &b)?;
                    }
                }
                send(io, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    srv.note_session(&session);
                    return Ok(Outcome::Go(session));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    send_err(io, opt, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")?;
                } else if st.structured || st.extended {
                    send_err(io, opt, REP_ERR_INVALID, "already negotiated")?;
                } else {
                    st.structured = true;
                    send(io, opt, REP_ACK, &[])?;
                }
            }
            OPT_EXTENDED_HEADERS => {
                if !data.is_empty() {
                    send_err(io, opt, REP_ERR_INVALID, "EXTENDED_HEADERS takes no data")?;
                } else if st.extended {
                    send_err(io, opt, REP_ERR_INVALID, "already negotiated")?;
                } else {
                    st.extended = true;
                    send(io, opt, REP_ACK, &[])?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt == OPT_SET_META_CONTEXT;
                if set && !(st.structured || st.extended) {
                    send_err(
                        io,
                        opt,
                        REP_ERR_INVALID,
                        "structured replies must be negotiated first",
                    )?;
                    continue;
                }
                let Some((name, queries)) = parse_meta_request(&data) else {
                    send_err(io, opt, REP_ERR_INVALID, "malformed meta context request")?;
                    continue;
                };
                if name != srv.cfg.export_name.as_bytes() {
                    send_err(io, opt, REP_ERR_UNKNOWN, "export not found")?;
                    continue;
                }
                let offered = srv.offered_contexts(st.extended);
                let mut chosen: Vec<(u32, Ctx, &str)> = Vec::new();
                let mut add = |c: (u32, Ctx, &'static str)| {
                    if !chosen.iter().any(|x| x.0 == c.0) {
                        chosen.push(c);
                    }
                };
                if queries.is_empty() && !set {
                    offered.iter().for_each(|c| add(*c));
                }
                for q in &queries {
                    for c in &offered {
                        if context_matches(q, c.2, !set) {
                            add(*c);
                        }
                    }
                }
                for (id, _, cname) in &chosen {
                    let mut b = Vec::new();
                    b.extend_from_slice(&(if set { *id } else { 0 }).to_be_bytes());
                    b.extend_from_slice(cname.as_bytes());
                    send(io, opt, REP_META_CONTEXT, &b)?;
                }
                if set {
                    st.contexts = chosen.iter().map(|c| (c.0, c.1)).collect();
                }
                send(io, opt, REP_ACK, &[])?;
            }
            OPT_X_ZONED => {
                if !data.is_empty() {
                    send_err(io, opt, REP_ERR_INVALID, "X_ZONED takes no data")?;
                } else if !(st.structured || st.extended) {
                    send_err(
                        io,
                        opt,
                        REP_ERR_INVALID,
                        "X_ZONED needs structured replies or extended headers first",
                    )?;
                } else {
                    st.zoned = true;
                    send(io, opt, REP_ACK, &[])?;
                }
            }
            _ => {
                send_err(io, opt, REP_ERR_UNSUP, &format!("unsupported option {opt}"))?;
            }
        }
    }
}

fn dedup(v: &[u16]) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    out
}

/// `query` selects `name`: an exact match, or (for LIST) `ns:` as a wildcard.
fn context_matches(query: &[u8], name: &str, list: bool) -> bool {
    if query == name.as_bytes() {
        return true;
    }
    if list && query.last() == Some(&b':') {
        return name.as_bytes().starts_with(query);
    }
    false
}

/// Parse INFO/GO data: u32 name length, name, u16 count, count × u16.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let mut c = Cursor::new(data);
    let nlen = c.u32()?;
    if nlen > MAX_NAME_LEN {
        return None;
    }
    let name = c.take(nlen as usize)?;
    let n = c.u16()?;
    let mut infos = Vec::with_capacity(n as usize);
    for _ in 0..n {
        infos.push(c.u16()?);
    }
    if c.remaining() != 0 {
        return None;
    }
    Some((name, infos))
}

/// Parse LIST/SET_META_CONTEXT data: name, then u32 count of queries.
fn parse_meta_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let mut c = Cursor::new(data);
    let nlen = c.u32()?;
    if nlen > MAX_NAME_LEN {
        return None;
    }
    let name = c.take(nlen as usize)?;
    let nq = c.u32()?;
    let mut qs = Vec::new();
    for _ in 0..nq {
        let l = c.u32()?;
        if l > MAX_NAME_LEN {
            return None;
        }
        qs.push(c.take(l as usize)?);
    }
    if c.remaining() != 0 {
        return None;
    }
    Some((name, qs))
}

/// Record what was negotiated (for tests and `--trace`).
impl Shared {
    pub(crate) fn note_session(&self, s: &Session) {
        match s.mode {
            ReplyMode::Extended => {
                self.stats.extended_headers.fetch_add(1, Ordering::Relaxed);
            }
            ReplyMode::Structured => {
                self.stats
                    .structured_replies
                    .fetch_add(1, Ordering::Relaxed);
            }
            ReplyMode::Simple => {}
        }
        if s.zoned {
            self.stats.zoned_sessions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_parsing_is_strict() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some((&b"abc"[..], vec![3])));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        let mut longer = d.clone();
        longer.push(0);
        assert_eq!(parse_info_request(&longer), None);
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_info_request(&huge), None);
    }

    proptest::proptest! {
        #[test]
        fn option_parsers_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_info_request(&data);
            let _ = parse_meta_request(&data);
            let _ = ZonedInfo::decode(&data);
            let _ = Request::read_from(&mut &data[..], false);
            let _ = Request::read_from(&mut &data[..], true);
            let _ = ReplyHeader::read_from(&mut &data[..]);
            let _ = read_option_reply(&mut &data[..], 256);
        }
    }

    #[test]
    fn meta_query_matching() {
        assert!(context_matches(
            b"base:allocation",
            "base:allocation",
            false
        ));
        assert!(context_matches(b"base:", "base:allocation", true));
        assert!(!context_matches(b"base:", "base:allocation", false));
        assert!(!context_matches(b"qemu:", "base:allocation", true));
    }
}
