//! Seed recorder for the `nbd_server` and `nbd_client` fuzz targets (ignored;
//! run by `fuzz/make-corpus-nbd.sh`): zcow's client talks to zcow's server
//! (the exact servers `zcow::fuzzing::nbd::server_for` builds) through a
//! recording proxy over socket pairs. The client→server bytes, prefixed with
//! the server selector byte, become `nbd_server` seeds; the server→client
//! bytes, prefixed with the client selector byte, become `nbd_client` seeds
//! (recorded while the client makes exactly the requests of
//! `zcow::fuzzing::nbd::drive_client`, so replies match cookies).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use zcow::device::BlockDevice;
use zcow::fuzzing::nbd::{client_options, drive_client, server_for};
use zcow::nbd::client::ClientOptions;
use zcow::nbd::tls::Sock;
use zcow::nbd::{NbdClient, NbdDevice};
use zcow::zone::ZoneOp;

fn pump(mut from: UnixStream, mut to: UnixStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// One recorded session: (client→server, server→client).
fn record(server_sel: u8, opts: &ClientOptions, f: impl FnOnce(NbdClient)) -> (Vec<u8>, Vec<u8>) {
    let server = server_for(server_sel).unwrap();
    let (c_ours, c_proxy) = UnixStream::pair().unwrap();
    let (s_proxy, s_ours) = UnixStream::pair().unwrap();
    let c2s = Arc::new(Mutex::new(Vec::new()));
    let s2c = Arc::new(Mutex::new(Vec::new()));
    let p1 = {
        let (a, b, l) = (
            c_proxy.try_clone().unwrap(),
            s_proxy.try_clone().unwrap(),
            c2s.clone(),
        );
        std::thread::spawn(move || pump(a, b, l))
    };
    let p2 = {
        let l = s2c.clone();
        std::thread::spawn(move || pump(s_proxy, c_proxy, l))
    };
    let srv = std::thread::spawn(move || server.serve_stream(Sock::Unix(s_ours)));
    if let Ok(c) = NbdClient::connect_stream(Sock::Unix(c_ours), opts) {
        f(c);
    }
    srv.join().unwrap();
    p1.join().unwrap();
    p2.join().unwrap();
    let a = c2s.lock().unwrap().clone();
    let b = s2c.lock().unwrap().clone();
    (a, b)
}

fn with(sel: u8, mut v: Vec<u8>) -> Vec<u8> {
    v.insert(0, sel);
    v
}

#[test]
#[ignore = "writes seed files; run by fuzz/make-corpus-nbd.sh"]
fn write_nbd_seeds() {
    let out = PathBuf::from(std::env::var("ZCOW_SEED_DIR").expect("ZCOW_SEED_DIR"));
    let (sd, cd) = (out.join("nbd_server"), out.join("nbd_client"));
    std::fs::create_dir_all(&sd).unwrap();
    std::fs::create_dir_all(&cd).unwrap();
    // nbd_client seeds: the target's own request sequence, every client
    // option combination, against a raw and a zoned export.
    for server_sel in [0u8, 1, 0x09] {
        for client_sel in [0u8, 1, 3, 4, 8, 16, 17, 19, 20, 32, 64] {
            let opts = client_options(client_sel);
            let (c2s, s2c) = record(server_sel, &opts, |c| drive_client(c, client_sel));
            let name = format!("s{server_sel:02x}-c{client_sel:02x}");
            std::fs::write(cd.join(&name), with(client_sel, s2c)).unwrap();
            std::fs::write(sd.join(format!("drive-{name}")), with(server_sel, c2s)).unwrap();
        }
    }
    // nbd_server seeds: richer sessions (zone reports, appends into
    // sequential zones, management of ranges, several block-status queries).
    for server_sel in [0u8, 1, 3, 5, 0x19, 0x21] {
        for client_sel in [0u8, 1, 3, 4] {
            let opts = client_options(client_sel);
            let (c2s, _) = record(server_sel, &opts, |c| {
                let Ok(dev) = NbdDevice::new(c, "seed".into()) else {
                    return;
                };
                let z = 16 << 10; // first sequential zone of the zoned export
                let mut buf = vec![0u8; 8192];
                let _ = dev.read(0, &mut buf);
                let _ = dev.write(4096, &[0x5a; 4096], true);
                let _ = dev.zone_report(0, 8);
                let _ = dev.write(z, &[0x11; 1024], false);
                let _ = dev.zone_append(z, &[0x22; 512], false);
                let _ = dev.zone_mgmt(ZoneOp::Open, z + (8 << 10), 8 << 10);
                let _ = dev.zone_mgmt(ZoneOp::Finish, z + (8 << 10), 8 << 10);
                let _ = dev.zone_mgmt(ZoneOp::Close, z, 8 << 10);
                let _ = dev.block_status(0, 64 << 10);
                let _ = dev.zone_report(z, 2);
                let _ = dev.zone_mgmt(ZoneOp::Reset, 0, dev.size());
                let _ = dev.discard(8192, 8192);
                let _ = dev.write_zeroes(0, 1024, Default::default());
                let _ = dev.flush();
            });
            std::fs::write(
                sd.join(format!("session-s{server_sel:02x}-c{client_sel:02x}")),
                with(server_sel, c2s),
            )
            .unwrap();
        }
    }
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// The recorded `nbd_server` seeds are effective: fed the way the target
/// feeds them, each one reaches the transmission phase and its requests are
/// handled (a seed that died in the handshake would only fuzz the handshake).
#[test]
fn nbd_server_seeds_reach_transmission() {
    for (name, data) in corpus("nbd_server") {
        let server = server_for(data[0]).unwrap();
        let stats = server.stats();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let input = data[1..].to_vec();
        let mut w = theirs.try_clone().unwrap();
        let wt = std::thread::spawn(move || {
            let _ = w.write_all(&input);
            let _ = w.shutdown(Shutdown::Write);
        });
        let rt = std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink);
        });
        server.serve_stream(Sock::Unix(ours));
        wt.join().unwrap();
        rt.join().unwrap();
        let reqs = stats.requests.load(std::sync::atomic::Ordering::SeqCst);
        // `nbdinfo --list` and `qemu-img info` may end in the handshake or
        // after a single request; every other session makes several.
        let min = if name.starts_with("peer-") { 0 } else { 3 };
        assert!(reqs >= min, "{name}: {reqs} requests handled");
    }
}

/// The recorded `nbd_client` seeds of zcow sessions are effective: the
/// client completes the handshake from them.
#[test]
fn nbd_client_seeds_negotiate() {
    for (name, data) in corpus("nbd_client") {
        if name.starts_with("peer-") {
            continue;
        }
        let sel = data[0];
        let (ours, theirs) = UnixStream::pair().unwrap();
        let input = data[1..].to_vec();
        let mut w = theirs.try_clone().unwrap();
        let wt = std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
        let mut rd = theirs;
        let rt = std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink);
        });
        let c = NbdClient::connect_stream(Sock::Unix(ours), &client_options(sel))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Requests after negotiation are not checked: the whole reply
        // stream is written up front, so replies can arrive before their
        // requests are sent, which the client rightly rejects ("reply for
        // unknown cookie") — timing-dependent, as in the fuzz target.
        assert!(c.info().size > 0, "{name}: export size 0");
        drop(c);
        wt.join().unwrap();
        rt.join().unwrap();
    }
}
