//! Raw-socket hardening: malformed, truncated, oversized and abusive
//! input gets the protocol's answer or a clean disconnect, never a panic,
//! never an effect on other connections, never lost acknowledged data.

mod common_nbd;

use common_nbd::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcow::device::BlockDevice;
use zcow::nbd::proto::*;
use zcow::nbd::ServerConfig;
use zcow::raw::RawDevice;

const SIZE: u64 = 8 << 20;

fn server(cfg: ServerConfig) -> (InProc, Arc<RawDevice>) {
    let dev = Arc::new(RawDevice::memory(SIZE).unwrap());
    dev.write(0, &pattern(1, SIZE as usize), false).unwrap();
    (InProc::start(dev.clone(), cfg), dev)
}

fn cfg() -> ServerConfig {
    ServerConfig {
        max_connections: 0,
        handshake_limit: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

struct Raw {
    s: TcpStream,
    ext: bool,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, ext: false }
    }
    fn greet(port: u16) -> Raw {
        let mut r = Raw::connect(port);
        let mut g = [0u8; 18];
        r.s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        r.s.write_all(&3u32.to_be_bytes()).unwrap();
        r
    }
    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }
    fn opt(&mut self, opt: u32, data: &[u8]) {
        write_option(&mut self.s, opt, data).unwrap();
    }
    fn reply(&mut self) -> OptionReply {
        read_option_reply(&mut self.s, 1 << 20).unwrap()
    }
    fn opt_final(&mut self, opt: u32, data: &[u8]) -> u32 {
        self.opt(opt, data);
        loop {
            let r = self.reply();
            assert_eq!(r.option, opt);
            if r.typ == REP_ACK || r.typ & REP_FLAG_ERROR != 0 {
                return r.typ;
            }
        }
    }
    /// Negotiate structured replies (or EH) and the base context, then GO.
    fn go(port: u16, ext: bool) -> Raw {
        let mut r = Raw::greet(port);
        let o = if ext {
            OPT_EXTENDED_HEADERS
        } else {
            OPT_STRUCTURED_REPLY
        };
        assert_eq!(r.opt_final(o, &[]), REP_ACK);
        let mut d = vec![0, 0, 0, 0, 0, 0, 0, 1];
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        assert_eq!(r.opt_final(OPT_SET_META_CONTEXT, &d), REP_ACK);
        assert_eq!(r.opt_final(OPT_GO, &[0, 0, 0, 0, 0, 0]), REP_ACK);
        r.ext = ext;
        r
    }
    fn req(&mut self, flags: u16, typ: u16, cookie: u64, offset: u64, length: u64, payload: &[u8]) {
        let mut b = Vec::new();
        Request {
            flags,
            typ,
            cookie,
            offset,
            length,
        }
        .encode(self.ext, &mut b)
        .unwrap();
        b.extend_from_slice(payload);
        self.send(&b);
    }
    /// Read one complete reply: (cookie, error, data bytes, chunk types).
    fn answer(&mut self) -> (u64, u32, Vec<u8>, Vec<u16>) {
        let mut data = Vec::new();
        let mut types = Vec::new();
        loop {
            match ReplyHeader::read_from(&mut self.s).unwrap() {
                ReplyHeader::Simple { error, cookie } => return (cookie, error, data, types),
                ReplyHeader::Chunk {
                    flags,
                    typ,
                    cookie,
                    len,
                    ..
                } => {
                    assert!(len < 64 << 20);
                    let body = read_vec(&mut self.s, len as usize).unwrap();
                    types.push(typ);
                    let mut err = 0;
                    if typ == REPLY_TYPE_OFFSET_DATA {
                        data.extend_from_slice(&body[8..]);
                    } else if typ == REPLY_TYPE_OFFSET_HOLE {
                        let n = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                        data.extend(std::iter::repeat_n(0u8, n as usize));
                    } else if typ & 0x8000 != 0 {
                        err = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let ml = u16::from_be_bytes([body[4], body[5]]) as usize;
                        assert!(ml < 1000 && body.len() >= 6 + ml);
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return (cookie, err, data, types);
                    }
                    if err != 0 {
                        // Keep reading to DONE but remember the error.
                        let (c, _, d, t) = self.answer();
                        let _ = (d, t);
                        return (c, err, data, types);
                    }
                }
            }
        }
    }
    /// The server closes the connection within `limit`.
    fn expect_closed(&mut self, limit: Duration) {
        self.s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 4096];
        let t = Instant::now();
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("connection still open after {:?}: {e}", t.elapsed()),
            }
        }
    }
}

/// A fresh client still gets full service.
fn healthy(port: u16) {
    let mut r = Raw::go(port, false);
    r.req(0, CMD_READ, 9, 8192, 512, &[]);
    let (c, e, d, _) = r.answer();
    assert_eq!((c, e), (9, 0));
    assert_eq!(d, pattern(1, SIZE as usize)[8192..8704].to_vec());
}

#[test]
fn hardening_handshake_garbage() {
    let (srv, _) = server(cfg());
    // Unknown client flags.
    let mut r = Raw::connect(srv.port);
    let mut g = [0u8; 18];
    r.s.read_exact(&mut g).unwrap();
    r.send(&0xffu32.to_be_bytes());
    r.expect_closed(Duration::from_secs(3));
    // Bad option magic.
    let mut r = Raw::greet(srv.port);
    r.send(b"IHAVEOPX\0\0\0\x03\0\0\0\0");
    r.expect_closed(Duration::from_secs(3));
    // Truncated option, then the client goes away.
    let mut r = Raw::greet(srv.port);
    r.send(&IHAVEOPT.to_be_bytes());
    r.send(&OPT_GO.to_be_bytes());
    r.send(&100u32.to_be_bytes());
    r.send(&[0u8; 10]);
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    r.expect_closed(Duration::from_secs(3));
    // Random garbage after the greeting, many times.
    for seed in 0..40 {
        let mut r = Raw::greet(srv.port);
        let junk = pattern(seed, 64 + seed as usize * 13);
        let _ = r.s.write_all(&junk);
        let _ = r.s.shutdown(std::net::Shutdown::Write);
        r.expect_closed(Duration::from_secs(3));
    }
    healthy(srv.port);
}

#[test]
fn hardening_options_answered_and_negotiation_continues() {
    let (srv, _) = server(cfg());
    let mut r = Raw::greet(srv.port);
    // Unknown option: ERR_UNSUP, keep going.
    assert_eq!(r.opt_final(0x5A4E_0999, b"whatever"), REP_ERR_UNSUP);
    // Oversized option (1 MiB): ERR_TOO_BIG after skipping it.
    assert_eq!(r.opt_final(OPT_GO, &vec![0u8; 1 << 20]), REP_ERR_TOO_BIG);
    // Malformed GO / INFO / meta requests: ERR_INVALID.
    assert_eq!(r.opt_final(OPT_GO, &[0, 0, 0, 9, 1]), REP_ERR_INVALID);
    assert_eq!(
        r.opt_final(OPT_INFO, &[0, 0, 0, 0, 0, 2, 0]),
        REP_ERR_INVALID
    );
    assert_eq!(r.opt_final(OPT_LIST, b"x"), REP_ERR_INVALID);
    assert_eq!(
        r.opt_final(OPT_LIST_META_CONTEXT, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        REP_ERR_INVALID
    );
    // SET_META_CONTEXT before structured replies: ERR_INVALID.
    assert_eq!(
        r.opt_final(OPT_SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0]),
        REP_ERR_INVALID
    );
    // X_ZONED before structured replies: ERR_INVALID.
    assert_eq!(r.opt_final(OPT_X_ZONED, &[]), REP_ERR_INVALID);
    // STARTTLS without TLS configured: ERR_UNSUP.
    assert_eq!(r.opt_final(OPT_STARTTLS, &[]), REP_ERR_UNSUP);
    // Unknown export.
    assert_eq!(
        r.opt_final(OPT_INFO, &[0, 0, 0, 1, b'z', 0, 0]),
        REP_ERR_UNKNOWN
    );
    // Repeating structured replies.
    assert_eq!(r.opt_final(OPT_STRUCTURED_REPLY, &[]), REP_ACK);
    assert_eq!(r.opt_final(OPT_STRUCTURED_REPLY, &[]), REP_ERR_INVALID);
    // INFO equals GO.
    r.opt(OPT_INFO, &[0, 0, 0, 0, 0, 1, 0, 3]);
    let mut infos = Vec::new();
    loop {
        let x = r.reply();
        if x.typ == REP_ACK {
            break;
        }
        infos.push(x.data);
    }
    r.opt(OPT_GO, &[0, 0, 0, 0, 0, 1, 0, 3]);
    let mut infos2 = Vec::new();
    loop {
        let x = r.reply();
        if x.typ == REP_ACK {
            break;
        }
        infos2.push(x.data);
    }
    assert_eq!(infos, infos2);
    assert_eq!(&infos[0][..10], &[0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0]);
    // Huge option length: disconnect.
    let mut r = Raw::greet(srv.port);
    r.send(&IHAVEOPT.to_be_bytes());
    r.send(&OPT_GO.to_be_bytes());
    r.send(&u32::MAX.to_be_bytes());
    r.expect_closed(Duration::from_secs(3));
    // ABORT gets an ACK and a close.
    let mut r = Raw::greet(srv.port);
    assert_eq!(r.opt_final(OPT_ABORT, &[]), REP_ACK);
    r.expect_closed(Duration::from_secs(3));
    healthy(srv.port);
}

#[test]
fn hardening_export_name_paths() {
    let (srv, _) = server(cfg());
    // Non-fixed newstyle client with EXPORT_NAME: 134-byte answer.
    let mut r = Raw::connect(srv.port);
    let mut g = [0u8; 18];
    r.s.read_exact(&mut g).unwrap();
    r.send(&0u32.to_be_bytes());
    r.opt(OPT_EXPORT_NAME, b"");
    let mut b = [0u8; 134];
    r.s.read_exact(&mut b).unwrap();
    assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), SIZE);
    assert!(b[10..].iter().all(|&x| x == 0));
    // Simple replies: READ data follows the header.
    r.req(0, CMD_READ, 5, 0, 16, &[]);
    let (c, e, _, _) = r.answer();
    assert_eq!((c, e), (5, 0));
    let mut d = [0u8; 16];
    r.s.read_exact(&mut d).unwrap();
    assert_eq!(&d[..], &pattern(1, 16)[..]);
    // Unknown export name: the server just closes.
    let mut r = Raw::greet(srv.port);
    r.opt(OPT_EXPORT_NAME, b"nope");
    r.expect_closed(Duration::from_secs(3));
}

#[test]
fn hardening_transmission_errors_keep_the_connection() {
    let (srv, dev) = server(cfg());
    for ext in [false, true] {
        let mut r = Raw::go(srv.port, ext);
        let mut cookie = 100;
        let mut expect = |r: &mut Raw, flags, typ, off, len, payload: &[u8], want: u32| {
            cookie += 1;
            r.req(flags, typ, cookie, off, len, payload);
            let (c, e, _, _) = r.answer();
            assert_eq!(c, cookie);
            assert_eq!(
                e, want,
                "typ {typ:#x} flags {flags:#x} off {off:#x} len {len:#x} ext {ext}"
            );
        };
        expect(&mut r, 0, 0x5A01, 0, 0, &[], NBD_EINVAL); // unknown command
        expect(&mut r, 0, CMD_X_ZONE_OPEN, 0, 4096, &[], NBD_EINVAL); // zoned not negotiated
        expect(&mut r, 0, CMD_READ, SIZE - 100, 200, &[], NBD_EINVAL); // past end
        expect(&mut r, 0, CMD_READ, u64::MAX - 10, 100, &[], NBD_EINVAL); // overflow
        expect(
            &mut r,
            0,
            CMD_WRITE,
            SIZE - 100,
            200,
            &[7u8; 200],
            NBD_EINVAL,
        );
        expect(&mut r, 0, CMD_TRIM, SIZE, 1, &[], NBD_EINVAL);
        expect(&mut r, 0, CMD_WRITE_ZEROES, SIZE - 1, 2, &[], NBD_EINVAL);
        expect(&mut r, 0, CMD_CACHE, SIZE - 1, 2, &[], NBD_EINVAL);
        expect(&mut r, 0, CMD_BLOCK_STATUS, SIZE, 1, &[], NBD_EINVAL);
        expect(&mut r, 0, CMD_BLOCK_STATUS, 0, 0, &[], NBD_EINVAL);
        expect(
            &mut r,
            CMD_FLAG_DF,
            CMD_WRITE,
            0,
            4,
            &[1, 2, 3, 4],
            NBD_EINVAL,
        ); // DF on WRITE
        expect(&mut r, 0x40, CMD_READ, 0, 4, &[], NBD_EINVAL); // unknown flag
        expect(&mut r, CMD_FLAG_REQ_ONE, CMD_READ, 0, 4, &[], NBD_EINVAL);
        expect(&mut r, 0, CMD_READ, 0, 64 << 20, &[], NBD_EINVAL); // read over the limit
        expect(
            &mut r,
            CMD_FLAG_DF,
            CMD_READ,
            0,
            64 << 20,
            &[],
            NBD_EOVERFLOW,
        );
        // Payload over 32 MiB: skipped, answered, connection kept.
        let big = vec![0x55u8; (32 << 20) + 4096];
        let pl = if ext { CMD_FLAG_PAYLOAD_LEN } else { 0 };
        expect(&mut r, pl, CMD_WRITE, 0, big.len() as u64, &big, NBD_EINVAL);
        // Misaligned but valid requests work (min block size is 1).
        expect(&mut r, 0, CMD_READ, 1, 3, &[], 0);
        expect(&mut r, CMD_FLAG_FUA, CMD_WRITE, 4097, 3, &[9, 9, 9], 0);
        expect(&mut r, 0, CMD_READ, 0, 0, &[], 0); // zero-length read
        expect(&mut r, CMD_FLAG_FUA, CMD_FLUSH, 0, 0, &[], 0); // FUA accepted anywhere
        let mut b = [0u8; 3];
        dev.read(4097, &mut b).unwrap();
        assert_eq!(b, [9, 9, 9]);
        assert!(dev.read(0, &mut [0u8; 16]).is_ok());
        // The big write never touched the device.
        let mut first = [0u8; 16];
        dev.read(0, &mut first).unwrap();
        assert_eq!(&first[..], &pattern(1, 16)[..]);
        // A bad request magic ends the connection.
        r.send(&[0xde, 0xad, 0xbe, 0xef]);
        r.send(&[0u8; 28]);
        r.expect_closed(Duration::from_secs(3));
    }
    // Block status without a context.
    let mut r = Raw::greet(srv.port);
    assert_eq!(r.opt_final(OPT_STRUCTURED_REPLY, &[]), REP_ACK);
    assert_eq!(r.opt_final(OPT_GO, &[0, 0, 0, 0, 0, 0]), REP_ACK);
    r.req(0, CMD_BLOCK_STATUS, 1, 0, 4096, &[]);
    assert_eq!(r.answer().1, NBD_EINVAL);
    healthy(srv.port);
}

#[test]
fn hardening_client_vanishes_mid_payload() {
    let (srv, dev) = server(cfg());
    let before = {
        let mut b = vec![0u8; 1 << 20];
        dev.read(0, &mut b).unwrap();
        b
    };
    let mut r = Raw::go(srv.port, false);
    // Acknowledged write first.
    r.req(CMD_FLAG_FUA, CMD_WRITE, 1, 2 << 20, 4, &[1, 2, 3, 4]);
    assert_eq!(r.answer().1, 0);
    r.req(0, CMD_WRITE, 2, 0, 1 << 20, &vec![0xEEu8; 100 << 10]);
    drop(r);
    std::thread::sleep(Duration::from_millis(200));
    let mut after = vec![0u8; 1 << 20];
    dev.read(0, &mut after).unwrap();
    assert!(after == before, "a partial payload reached the device");
    let mut b = [0u8; 4];
    dev.read(2 << 20, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    healthy(srv.port);
}

#[test]
fn hardening_handshake_time_limit() {
    let (srv, _) = server(ServerConfig {
        handshake_limit: Duration::from_millis(800),
        ..cfg()
    });
    // Silent client.
    let t = Instant::now();
    let mut r = Raw::greet(srv.port);
    r.expect_closed(Duration::from_secs(3));
    assert!(t.elapsed() < Duration::from_secs(3));
    // Slow drip: one byte every 200 ms never finishes in time.
    let mut r = Raw::greet(srv.port);
    let t = Instant::now();
    let opt = {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&OPT_LIST.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b
    };
    for byte in opt.iter().cycle().take(40) {
        if r.s.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    r.expect_closed(Duration::from_secs(3));
    // A completed handshake is not cut off afterwards.
    let mut r = Raw::go(srv.port, true);
    std::thread::sleep(Duration::from_millis(1200));
    r.req(0, CMD_READ, 1, 0, 8, &[]);
    assert_eq!(r.answer().1, 0);
}

#[test]
fn hardening_too_many_connections() {
    let (srv, _) = server(ServerConfig {
        max_connections: 2,
        handshake_limit: Duration::from_millis(1500),
        ..cfg()
    });
    let a = Raw::go(srv.port, false);
    let mut b = Raw::go(srv.port, true);
    // The third waits: no greeting while two clients are connected...
    let mut c = Raw::connect(srv.port);
    c.s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut g = [0u8; 18];
    let mut got = 0;
    while got < 18 {
        match c.s.read(&mut g[got..]) {
            Ok(n) if n > 0 => got += n,
            _ => break,
        }
    }
    assert_eq!(got, 0, "greeted while the server was full");
    // ...and is served as soon as one leaves.
    drop(a);
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..8], b"NBDMAGIC");
    // The busy clients were not disturbed.
    b.req(0, CMD_READ, 3, 0, 8, &[]);
    assert_eq!(b.answer().1, 0);
    // A client that waits longer than the handshake limit is closed.
    let mut d = Raw::connect(srv.port);
    let t = Instant::now();
    d.expect_closed(Duration::from_secs(5));
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "closed too early"
    );
    drop(c);
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    healthy(srv.port);
}

/// A hostile server: a valid handshake, then `reply` for the first request.
fn hostile_server(reply: Vec<u8>, cookie_from_req: bool) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut g = Vec::new();
        g.extend_from_slice(&NBDMAGIC.to_be_bytes());
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&3u16.to_be_bytes());
        let _ = s.write_all(&g);
        let _ = read_u32(&mut s);
        loop {
            let (Ok(_), Ok(opt), Ok(len)) = (read_u64(&mut s), read_u32(&mut s), read_u32(&mut s))
            else {
                return;
            };
            let _ = read_vec(&mut s, len as usize);
            let mut b = Vec::new();
            if opt == OPT_GO {
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&(1u64 << 20).to_be_bytes());
                info.extend_from_slice(&1u16.to_be_bytes());
                encode_option_reply(&mut b, opt, REP_INFO, &info);
            }
            let typ = if opt == OPT_EXTENDED_HEADERS || opt == OPT_X_ZONED {
                REP_ERR_UNSUP
            } else {
                REP_ACK
            };
            encode_option_reply(&mut b, opt, typ, &[]);
            let _ = s.write_all(&b);
            if opt == OPT_GO {
                break;
            }
        }
        let Ok(req) = Request::read_from(&mut s, false) else {
            return;
        };
        let mut r = reply.clone();
        if cookie_from_req {
            // Patch the cookie in (structured chunk header: bytes 8..16).
            r[8..16].copy_from_slice(&req.cookie.to_be_bytes());
        }
        let _ = s.write_all(&r);
        std::thread::sleep(Duration::from_millis(300));
    });
    port
}

#[test]
fn hardening_client_survives_hostile_servers() {
    let mut cases: Vec<(Vec<u8>, bool)> = Vec::new();
    // Reply for an unknown cookie.
    let mut b = Vec::new();
    encode_simple_reply(&mut b, 0, 0xdead);
    cases.push((b, false));
    // Data chunk outside the request.
    let mut b = Vec::new();
    encode_chunk_header(
        &mut b,
        false,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        0,
        0,
        8 + 16,
    );
    b.extend_from_slice(&(1u64 << 40).to_be_bytes());
    b.extend_from_slice(&[0u8; 16]);
    cases.push((b, true));
    // Hole chunk with an offset that would overflow.
    let mut b = Vec::new();
    encode_chunk_header(
        &mut b,
        false,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_HOLE,
        0,
        0,
        12,
    );
    b.extend_from_slice(&(u64::MAX - 2).to_be_bytes());
    b.extend_from_slice(&16u32.to_be_bytes());
    cases.push((b, true));
    // Gigantic non-data chunk.
    let mut b = Vec::new();
    encode_chunk_header(
        &mut b,
        false,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        0,
        0,
        u32::MAX as u64,
    );
    cases.push((b, true));
    // Unknown non-error chunk type.
    let mut b = Vec::new();
    encode_chunk_header(&mut b, false, REPLY_FLAG_DONE, 0x1234, 0, 0, 0);
    cases.push((b, true));
    // Bad magic.
    cases.push((vec![0xffu8; 32], false));
    for (i, (reply, patch)) in cases.into_iter().enumerate() {
        let port = hostile_server(reply, patch);
        let dev = zcow::nbd::connect_uri(&format!("nbd://127.0.0.1:{port}")).expect("handshake");
        let mut buf = [0u8; 16];
        let t = Instant::now();
        assert!(dev.read(0, &mut buf).is_err(), "case {i} accepted");
        assert!(t.elapsed() < Duration::from_secs(5));
        // Further requests fail cleanly too.
        assert!(dev.flush().is_err(), "case {i}");
    }
}
