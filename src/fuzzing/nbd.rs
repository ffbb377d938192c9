//! Targets `nbd_server` and `nbd_client`: one side of an NBD connection is
//! the fuzz input, the other is zcow's server or client, joined by a Unix
//! socket pair.
//!
//! * `nbd_server`: byte 0 chooses the export (a 256 KiB in-memory raw device
//!   or a 64 KiB zoned engine on a `MemZoneStore`) and the server options
//!   (read-only, zoned writes policy, discard, writethrough, 1–2 workers);
//!   the rest is everything the client sends for the whole connection
//!   (handshake and transmission). A thread writes it and then shuts the
//!   socket's write side, another reads and discards the replies; the
//!   server must return (EOF or protocol error) without panicking.
//! * `nbd_client`: byte 0 chooses the client options (extended headers,
//!   structured replies, zoned extension, meta contexts, which requests);
//!   the rest is everything the server sends. The client negotiates, then
//!   (as an [`NbdDevice`]) reads, writes, asks block status, reports zones,
//!   resets and appends, flushes and trims; every call must return.
//!
//! Both use a read timeout on the zcow side so that a bug that makes it
//! wait for bytes the peer will never send shows up as a timeout, not a
//! hang of the whole fuzzer.

use super::ByteReader;
use crate::device::{BlockDevice, ZeroFlags};
use crate::engine::{Engine, MemZoneStore};
use crate::nbd::client::ClientOptions;
use crate::nbd::proto::{CTX_BASE_ALLOCATION, CTX_X_ZONED_STATE};
use crate::nbd::tls::Sock;
use crate::nbd::{NbdClient, NbdDevice, Server, ServerConfig, ZonedWrites};
use crate::raw::RawDevice;
use crate::zone::{ZoneGeometry, ZoneOp};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// Largest input the NBD targets look at.
pub const MAX_NBD_INPUT: usize = 1 << 20;

/// How long either side waits for a byte before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Writing to a closed socket must give EPIPE, not kill the process: the
/// libFuzzer `main` (unlike Rust's) does not ignore SIGPIPE.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN has no
        // preconditions and installs no handler code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// Geometry of the zoned export of `nbd_server`.
pub fn server_zone_geometry() -> ZoneGeometry {
    ZoneGeometry {
        device_size: 64 << 10,
        zone_size: 8 << 10,
        zone_capacity: 6 << 10,
        nr_zones: 8,
        conventional_zones: 2,
        max_open_zones: 3,
        max_active_zones: 4,
        max_append_bytes: 4096,
    }
}

/// Peer of the component under test: writes `input`, shuts down its write
/// side, and reads (discarding) until EOF. Returns the thread handles.
fn peer(sock: UnixStream, input: Vec<u8>) -> [std::thread::JoinHandle<()>; 2] {
    let mut w = sock.try_clone().expect("socket clone");
    let mut rd = sock;
    let _ = rd.set_read_timeout(Some(IO_TIMEOUT));
    let _ = w.set_write_timeout(Some(IO_TIMEOUT));
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&input);
        let _ = w.shutdown(Shutdown::Write);
    });
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = rd.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    [writer, reader]
}

/// The server `nbd_server` serves for selector byte `sel`: bit 0 zoned
/// export, 1 read-only, 2 unaware clients read-only, 3 discard, 4
/// writethrough, 5 two workers.
pub fn server_for(sel: u8) -> Option<Server> {
    let device: Arc<dyn BlockDevice> = if sel & 1 == 0 {
        Arc::new(RawDevice::memory(256 << 10).ok()?)
    } else {
        let store = MemZoneStore::new(server_zone_geometry()).ok()?;
        Arc::new(Engine::open(Arc::new(store)).ok()?)
    };
    let cfg = ServerConfig {
        read_only: sel & 2 != 0,
        zoned_writes: if sel & 4 != 0 {
            ZonedWrites::ReadOnly
        } else {
            ZonedWrites::Strict
        },
        discard: sel & 8 != 0,
        writethrough: sel & 16 != 0,
        workers: 1 + (sel as usize >> 5) % 2,
        handshake_limit: Duration::ZERO,
        persistent: false,
        max_connections: 1,
        ..ServerConfig::default()
    };
    Some(Server::new(device, cfg))
}

/// Target `nbd_server` (see the module documentation).
pub fn fuzz_nbd_server(data: &[u8]) {
    ignore_sigpipe();
    let data = &data[..data.len().min(MAX_NBD_INPUT)];
    let mut r = ByteReader::new(data);
    let sel = r.u8();
    let input = r.rest().to_vec();
    let Some(server) = server_for(sel) else {
        return;
    };
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let _ = ours.set_read_timeout(Some(IO_TIMEOUT));
    let _ = ours.set_write_timeout(Some(IO_TIMEOUT));
    let threads = peer(theirs, input);
    server.serve_stream(Sock::Unix(ours));
    for t in threads {
        let _ = t.join();
    }
}

/// Client options of `nbd_client` for selector byte `sel`.
pub fn client_options(sel: u8) -> ClientOptions {
    ClientOptions {
        extended_headers: sel & 1 == 0,
        structured_replies: sel & 2 == 0,
        zoned: sel & 4 == 0,
        contexts: if sel & 8 == 0 {
            vec![CTX_BASE_ALLOCATION.into(), CTX_X_ZONED_STATE.into()]
        } else {
            vec![CTX_BASE_ALLOCATION.into()]
        },
        ..ClientOptions::default()
    }
}

/// The requests `nbd_client` makes once connected (selector byte `sel`);
/// public so the seed recorder can make the same requests against a real
/// server and record the replies.
pub fn drive_client(client: NbdClient, sel: u8) {
    let info = client.info().clone();
    let _ = client.context_id(CTX_BASE_ALLOCATION);
    let size = info.size;
    let len = size.min(4096);
    if sel & 16 == 0 {
        // Raw client calls.
        let mut buf = vec![0u8; len as usize];
        let _ = client.read(0, &mut buf);
        let _ = client.write(0, &buf, sel & 64 != 0);
        let _ = client.block_status(0, len, sel & 32 != 0);
        let _ = client.zone_mgmt(ZoneOp::Reset, 0, len, false);
        let _ = client.zone_append(0, &buf[..buf.len().min(512)], false);
        let _ = client.write_zeroes(0, len, 0);
        let _ = client.trim(0, len, false);
        let _ = client.cache(0, len);
        let _ = client.flush();
        let _ = client.disconnect();
    } else if let Ok(dev) = NbdDevice::new(client, "fuzz".into()) {
        // The block-device view: zone reports and block status parsed
        // into zcow's own types.
        let mut buf = vec![0u8; len as usize];
        let _ = dev.read(0, &mut buf);
        let _ = dev.block_status(0, len);
        let _ = dev.zone_report(0, 16);
        let _ = dev.zone_mgmt(ZoneOp::Finish, 0, len);
        let _ = dev.zone_append(0, &buf[..buf.len().min(512)], false);
        let _ = dev.write(0, &buf, false);
        let _ = dev.write_zeroes(0, len, ZeroFlags::default());
        let _ = dev.discard(0, len);
        let _ = dev.flush();
        let _ = dev.describe();
    }
}

/// Target `nbd_client` (see the module documentation).
pub fn fuzz_nbd_client(data: &[u8]) {
    ignore_sigpipe();
    let data = &data[..data.len().min(MAX_NBD_INPUT)];
    let mut r = ByteReader::new(data);
    let sel = r.u8();
    let input = r.rest().to_vec();
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let _ = ours.set_read_timeout(Some(IO_TIMEOUT));
    let _ = ours.set_write_timeout(Some(IO_TIMEOUT));
    let threads = peer(theirs, input);
    let opts = client_options(sel);
    if let Ok(client) = NbdClient::connect_stream(Sock::Unix(ours), &opts) {
        drive_client(client, sel);
    }
    for t in threads {
        let _ = t.join();
    }
}
