//! Bounded memory and time whatever an image or a peer says: a crafted
//! image declaring half a billion zones, a zone count over the engine's
//! memory limit, SIGTERM mid-request, and an NBD server (a raw socket
//! speaking just enough of the protocol) sending hostile replies.

mod common_nbd;

use common_nbd::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcow::engine::{Engine, StoreResult, ZoneStore};
use zcow::nbd::proto::*;
use zcow::zone::ZoneGeometry;

fn img_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zcow-img")
}

fn io_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zcow-io")
}

/// Run `cmd` under a 1 GiB address-space limit: a 4 GiB allocation would
/// abort (signal), which the callers assert never happens.
fn limited(cmd: &[&str]) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -v 1048576; exec \"$@\"")
        .arg("sh")
        .args(cmd);
    run(&mut c, Duration::from_secs(60))
}

/// A zoned image whose extension declares 536,870,911 zones of 512 bytes
/// over a sparse 4 GiB array (about 1 MiB of disk): every entry past the
/// first few is zero, so zone 1 is the first invalid one.
fn huge_zone_count_image(dir: &Path) -> PathBuf {
    let p = dir.join("huge.qcow2");
    let nr: u32 = 536_870_911;
    let size = u64::from(nr) * 512;
    ok(Command::new(img_bin())
        .args([
            "create",
            "-f",
            "qcow2",
            "-o",
            "zone.mode=host-managed,zone.size=64M",
        ])
        .arg(&p)
        .arg(size.to_string()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut c = vec![0u8; 65536];
    f.read_exact(&mut c).unwrap();
    let be32 = |o: usize| u32::from_be_bytes(c[o..o + 4].try_into().unwrap());
    let mut off = be32(100) as usize;
    while be32(off) != 0x007a_6264 {
        off += 8 + (be32(off + 4) as usize).div_ceil(8) * 8;
    }
    let b = off + 8;
    let meta_off = u64::from_be_bytes(c[b + 48..b + 56].try_into().unwrap());
    c[b + 4..b + 12].copy_from_slice(&512u64.to_be_bytes());
    c[b + 12..b + 20].copy_from_slice(&512u64.to_be_bytes());
    c[b + 24..b + 28].copy_from_slice(&nr.to_be_bytes());
    c[b + 36..b + 40].copy_from_slice(&0u32.to_be_bytes());
    c[b + 40..b + 48].copy_from_slice(&(8 * u64::from(nr)).to_be_bytes());
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&c).unwrap();
    f.set_len(meta_off + 8 * u64::from(nr)).unwrap();
    p
}

#[test]
fn half_a_billion_declared_zones_give_clear_errors_not_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let p = huge_zone_count_image(dir.path());
    let ps = p.to_str().unwrap();

    // info reads none of the array it cannot use, in constant memory.
    let t = Instant::now();
    let out = limited(&[img_bin(), "info", ps]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text.contains("    zone count: 536870911\n"), "{text}");
    assert!(
        text.contains("    zones by condition: not counted (the array is unusable)\n"),
        "{text}"
    );
    assert!(
        text.contains("    problem: write-pointer entry of zone 1: write pointer 0x4000000 outside the zone [0x200, 0x400]\n"),
        "{text}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));

    // zcow-io and zone report refuse it with the zone named.
    for cmd in [
        vec![io_bin(), "-c", "zrp 0 1", ps],
        vec![img_bin(), "zone", "report", ps],
    ] {
        let out = limited(&cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {out:?}");
        assert!(
            err.contains("write-pointer entry of zone 1: write pointer 0x4000000 outside the zone"),
            "{cmd:?}: {err}"
        );
    }
}

/// A store with a geometry and nothing else: the engine must refuse the
/// geometry before it asks for a single entry.
#[derive(Debug)]
struct GeometryOnly(ZoneGeometry);

impl ZoneStore for GeometryOnly {
    fn geometry(&self) -> ZoneGeometry {
        self.0
    }
    fn load_wp_entries(&self, _: u32, _: &mut [u64]) -> StoreResult<()> {
        panic!("entries loaded for a geometry over the memory limit")
    }
    fn store_wp_entries(&self, _: u32, _: &[u64]) -> StoreResult<()> {
        Ok(())
    }
    fn read(&self, _: u64, _: &mut [u8]) -> StoreResult<()> {
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8]) -> StoreResult<()> {
        Ok(())
    }
    fn deallocate(&self, _: u64, _: u64) -> StoreResult<()> {
        Ok(())
    }
    fn sync(&self) -> StoreResult<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

#[test]
fn engine_refuses_zone_counts_over_its_memory_limit() {
    let nr: u32 = 200_000_000;
    let g = ZoneGeometry {
        device_size: u64::from(nr) * 512,
        zone_size: 512,
        zone_capacity: 512,
        nr_zones: nr,
        conventional_zones: 0,
        max_open_zones: 0,
        max_active_zones: 0,
        max_append_bytes: 0,
    };
    let e = Engine::open(Arc::new(GeometryOnly(g))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "200000000 zones need 1907 MiB of zone state, more than the limit of 1024 MiB"
    );
    // A geometry that would overflow is refused before any arithmetic.
    let bad = ZoneGeometry {
        zone_size: 1 << 63,
        nr_zones: 2,
        ..g
    };
    let e = Engine::open(Arc::new(GeometryOnly(bad))).unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid zone geometry: nr_zones 2 does not match"),
        "{e}"
    );
}

#[test]
fn sigterm_mid_request_stops_within_a_second_and_keeps_acknowledged_writes() {
    if !need("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.qcow2");
    // A sparse 1 PiB image: block status of the whole of it used to walk
    // 2^34 clusters under the metadata lock.
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("1P"));
    let srv = ServerProc::start(&img, &[]);
    let dev = zcow::nbd::connect_uri(&srv.uri()).unwrap();
    dev.write(1 << 40, &[0xa5; 65536], false).unwrap();
    // Acknowledged, not flushed. Now whole-device block status requests
    // (extended headers: one request spans the 1 PiB) until the server goes.
    let size = dev.size();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asking = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if dev.block_status(0, size).is_err() {
                    break;
                }
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let mut srv = srv;
    let st = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        // One second is the target; the margin is for a loaded CI machine.
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "server ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answered = asking.join().unwrap();
    eprintln!("{answered} whole-device block status requests answered");
    assert!(st.success(), "{st}: {}", srv.log_text());
    eprintln!("server stopped {took:?} after SIGTERM");
    // The acknowledged write was flushed: its L2 table reached the disk.
    let o = ok(Command::new(io_bin())
        .args(["-r", "-c", "read -P 0xa5 1T 64k"])
        .arg(&img));
    assert!(
        o.contains("read 65536/65536 bytes at offset 1099511627776"),
        "{o}"
    );
}

// ---------------------------------------------------------------------------
// A hostile NBD server on a raw socket.

fn u16b(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}
fn u32b(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}
fn u64b(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn rd(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

fn opt_reply(s: &mut TcpStream, opt: u32, typ: u32, data: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&u64b(OPT_REPLY_MAGIC));
    m.extend_from_slice(&u32b(opt));
    m.extend_from_slice(&u32b(typ));
    m.extend_from_slice(&u32b(data.len() as u32));
    m.extend_from_slice(data);
    let _ = s.write_all(&m);
}

/// Extended reply chunk header.
fn chunk(flags: u16, typ: u16, cookie: u64, len: u64) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&u32b(EXT_REPLY_MAGIC));
    m.extend_from_slice(&u16b(flags));
    m.extend_from_slice(&u16b(typ));
    m.extend_from_slice(&u64b(cookie));
    m.extend_from_slice(&u64b(0));
    m.extend_from_slice(&u64b(len));
    m
}

/// Serve one client: handshake with extended headers and base:allocation
/// (context id 1) on an export of `size` bytes, then answer every block
/// status request with `reply(cookie, offset, length)`; other requests
/// get an empty success.
fn hostile_server(
    size: u64,
    reply: impl Fn(u64, u64, u64) -> Vec<u8> + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    hostile_zoned_server(size, None, reply)
}

/// [`hostile_server`], optionally zoned: `zoned` is the 42-byte
/// `NBD_INFO_X_ZONED` reply (with `x-zoned:state` as context 2).
fn hostile_zoned_server(
    size: u64,
    zoned: Option<Vec<u8>>,
    reply: impl Fn(u64, u64, u64) -> Vec<u8> + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut hello = Vec::new();
        hello.extend_from_slice(&u64b(NBDMAGIC));
        hello.extend_from_slice(&u64b(IHAVEOPT));
        hello.extend_from_slice(&u16b(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        let _ = s.write_all(&hello);
        if rd(&mut s, 4).is_none() {
            return;
        }
        loop {
            let Some(h) = rd(&mut s, 16) else { return };
            let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
            if rd(&mut s, len as usize).is_none() {
                return;
            }
            match opt {
                OPT_EXTENDED_HEADERS => opt_reply(&mut s, opt, REP_ACK, &[]),
                OPT_X_ZONED if zoned.is_some() => opt_reply(&mut s, opt, REP_ACK, &[]),
                OPT_SET_META_CONTEXT => {
                    let mut d = u32b(1).to_vec();
                    d.extend_from_slice(CTX_BASE_ALLOCATION.as_bytes());
                    opt_reply(&mut s, opt, REP_META_CONTEXT, &d);
                    if zoned.is_some() {
                        let mut d = u32b(2).to_vec();
                        d.extend_from_slice(CTX_X_ZONED_STATE.as_bytes());
                        opt_reply(&mut s, opt, REP_META_CONTEXT, &d);
                    }
                    opt_reply(&mut s, opt, REP_ACK, &[]);
                }
                OPT_GO => {
                    let mut d = u16b(INFO_EXPORT).to_vec();
                    d.extend_from_slice(&u64b(size));
                    d.extend_from_slice(&u16b(TF_HAS_FLAGS | TF_SEND_FLUSH));
                    opt_reply(&mut s, opt, REP_INFO, &d);
                    if let Some(z) = &zoned {
                        opt_reply(&mut s, opt, REP_INFO, z);
                    }
                    opt_reply(&mut s, opt, REP_ACK, &[]);
                    break;
                }
                _ => opt_reply(&mut s, opt, REP_ERR_UNSUP, &[]),
            }
        }
        loop {
            let Some(h) = rd(&mut s, 32) else { return };
            let typ = u16::from_be_bytes(h[6..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
            let offset = u64::from_be_bytes(h[16..24].try_into().unwrap());
            let length = u64::from_be_bytes(h[24..32].try_into().unwrap());
            let out = match typ {
                CMD_BLOCK_STATUS => reply(cookie, offset, length),
                CMD_DISC => return,
                _ => chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0),
            };
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    (port, t)
}

/// A BLOCK_STATUS_EXT chunk with `exts` (length, status) for context 1.
fn ext_status(flags: u16, cookie: u64, exts: &[(u64, u64)]) -> Vec<u8> {
    let mut body = u32b(1).to_vec();
    body.extend_from_slice(&u32b(exts.len() as u32));
    for &(l, st) in exts {
        body.extend_from_slice(&u64b(l));
        body.extend_from_slice(&u64b(st));
    }
    let mut m = chunk(
        flags,
        REPLY_TYPE_BLOCK_STATUS_EXT,
        cookie,
        body.len() as u64,
    );
    m.extend_from_slice(&body);
    m
}

const EXPORT: u64 = 1 << 30;

fn connect(port: u16) -> Arc<dyn zcow::device::BlockDevice> {
    zcow::nbd::connect_uri(&format!("nbd://127.0.0.1:{port}")).unwrap()
}

#[test]
fn hostile_server_extent_lengths_that_overflow_are_clamped() {
    let (port, t) = hostile_server(EXPORT, |cookie, _, _| {
        ext_status(
            REPLY_FLAG_DONE,
            cookie,
            &[(u64::MAX - 10, 0), (u64::MAX, STATE_HOLE as u64), (1, 0)],
        )
    });
    let dev = connect(port);
    let ext = dev.block_status(4096, 65536).unwrap();
    let total: u64 = ext.iter().map(|e| e.len).sum();
    assert_eq!(total, 65536, "{ext:?}");
    assert_eq!(ext.len(), 1, "{ext:?}");
    drop(dev);
    t.join().unwrap();
}

#[test]
fn hostile_server_zero_length_extents_are_an_error_not_a_spin() {
    let (port, t) = hostile_server(EXPORT, |cookie, _, _| {
        ext_status(REPLY_FLAG_DONE, cookie, &[(0, 0); 64])
    });
    let dev = connect(port);
    let start = Instant::now();
    let e = dev.block_status(0, 65536).unwrap_err();
    assert!(
        e.to_string()
            .contains("server returned no block status for 0x10000 bytes at 0x0"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(dev);
    t.join().unwrap();
}

#[test]
fn hostile_server_oversized_replies_are_refused() {
    // An extent count far beyond the chunk's body.
    let (port, t) = hostile_server(EXPORT, |cookie, _, _| {
        let mut body = u32b(1).to_vec();
        body.extend_from_slice(&u32b(u32::MAX));
        body.extend_from_slice(&[0u8; 16]);
        let mut m = chunk(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS_EXT,
            cookie,
            body.len() as u64,
        );
        m.extend_from_slice(&body);
        m
    });
    let dev = connect(port);
    let e = dev.block_status(0, 65536).unwrap_err();
    assert!(e.to_string().contains("malformed chunk type 0x6"), "{e}");
    drop(dev);
    t.join().unwrap();

    // A chunk claiming 1 TiB of body.
    let (port, t) = hostile_server(EXPORT, |cookie, _, _| {
        chunk(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS_EXT,
            cookie,
            1 << 40,
        )
    });
    let dev = connect(port);
    let e = dev.block_status(0, 65536).unwrap_err();
    assert!(
        e.to_string().contains("chunk of 1099511627776 bytes"),
        "{e}"
    );
    drop(dev);
    t.join().unwrap();

    // Endless chunks of extents, never DONE: refused at the per-request
    // extent limit (16 MiB of extents), not accumulated forever.
    let (port, t) = hostile_server(EXPORT, |cookie, _, _| {
        let one = ext_status(0, cookie, &vec![(512, 0); 65536]);
        let mut m = Vec::with_capacity(one.len() * 17);
        for _ in 0..17 {
            m.extend_from_slice(&one);
        }
        m
    });
    let dev = connect(port);
    let e = dev.block_status(0, 65536).unwrap_err();
    assert!(
        e.to_string()
            .contains("server sent more than 1048576 block status extents for one request"),
        "{e}"
    );
    drop(dev);
    t.join().unwrap();
}

#[test]
fn hostile_server_zone_geometry_is_validated_before_use() {
    // The fuzz finding: zone size 2^63 overflowed ZoneGeometry::zone_start
    // in the client's bisection for the conventional zone count.
    let mut z = Vec::new();
    z.extend_from_slice(&u16b(INFO_X_ZONED));
    z.extend_from_slice(&[1, 0, 0, 0]);
    z.extend_from_slice(&u64b(1 << 63));
    z.extend_from_slice(&u64b(512));
    z.extend_from_slice(&u32b(1 << 20));
    z.extend_from_slice(&[0u8; 12]);
    z.extend_from_slice(&u32b(512));
    assert_eq!(z.len(), INFO_X_ZONED_LEN);
    let (port, t) = hostile_zoned_server(EXPORT, Some(z), |cookie, _, _| {
        chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
    });
    let e = zcow::nbd::connect_uri(&format!("nbd://127.0.0.1:{port}")).unwrap_err();
    assert!(
        e.to_string().contains(
            "server sent an invalid zone geometry: nr_zones 1048576 does not match ceil(device size 0x40000000 / zone size 0x8000000000000000) = 1"
        ),
        "{e}"
    );
    t.join().unwrap();
}

#[test]
fn check_keeps_a_bounded_number_of_zone_findings() {
    // 1,100,000 zones of 1 KiB, every write-pointer entry invalid (all
    // bits set): check lists 1,048,576 of them and counts the rest.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("many.qcow2");
    let nr: u64 = 1_100_000;
    ok(Command::new(img_bin())
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=1024,zone.mode=host-managed,zone.size=1024",
        ])
        .arg(&p)
        .arg((nr * 1024).to_string()));
    let info = ok(Command::new(img_bin())
        .args(["info", "--output", "json"])
        .arg(&p));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let at = v["format-specific"]["data"]["zoned"]["metadata-offset"]
        .as_u64()
        .or_else(|| v["zoned"]["metadata-offset"].as_u64())
        .expect("metadata-offset in info");
    {
        use std::io::Seek;
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(std::io::SeekFrom::Start(at)).unwrap();
        f.write_all(&vec![0xff; (8 * nr) as usize]).unwrap();
    }
    let err_path = dir.path().join("stderr");
    let st = Command::new(img_bin())
        .args(["check", "--output", "json"])
        .arg(&p)
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["zoned"]["corruptions"], 1_100_000, "{out}");
    let err = std::fs::read_to_string(&err_path).unwrap();
    let listed = err
        .lines()
        .filter(|l| l.starts_with("ERROR zoned: zone "))
        .count();
    assert_eq!(listed, 1 << 20);
    assert!(
        err.contains(
            "ERROR zoned: 51424 more zones with invalid write-pointer entries are not listed (at most 1048576 zone findings are kept); run check again after repair\n"
        ),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
}
