//! The ublk queue's worker hand-over (`zcow::ublk::dispatch`) with real
//! requests on a zoned qcow2 image: several workers write different zones at
//! once, the queue side learns of every completion through the eventfd (no
//! lost wake-up), each tag completes exactly once, and the bytes read back.
//! Built with `--features ublk`.
#![cfg(feature = "ublk")]

mod common;
use common::*;
use std::collections::HashMap;
use std::sync::Arc;
use zcow::device::BlockDevice;
use zcow::format::create::{create, CreateOptions};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::open::{open_device, OpenOptions};
use zcow::storage::FileStorage;
use zcow::ublk::dispatch::{Dispatcher, Job};
use zcow::ublk::{execute, layout, Op, Request};

const ZONE: u64 = 1 << 20;
const IO: u64 = 128 << 10;
const ZONES: u64 = 6;

/// The payload of a write at `sector`: what a worker copies in.
fn payload(sector: u64) -> Vec<u8> {
    pattern((sector / 7) as u8, IO as usize)
}

/// Wait until the eventfd is readable; false after 20 s.
fn wait_readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 20_000) == 1 }
}

#[test]
fn workers_write_zones_concurrently_and_every_tag_completes_once() {
    let dir = tmp();
    let path = dir.path().join("z.qcow2");
    create(
        &FileStorage::create(&path).unwrap(),
        &CreateOptions {
            size: 8 * ZONE,
            cluster_size: 65536,
            zoned: Some(ZonedCreateOptions {
                zone_size: Some(ZONE),
                max_open_zones: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let dev: Arc<dyn BlockDevice> = open_device(&path, &OpenOptions::default()).unwrap();
    let lay = layout(dev.as_ref(), IO as u32).unwrap();
    let mut d = Dispatcher::new().unwrap();
    let per_zone = ZONE / IO;

    std::thread::scope(|s| {
        for _ in 0..3 {
            let end = d.worker_end();
            let (dev, lay) = (dev.clone(), &lay);
            s.spawn(move || {
                let mut buf = vec![0u8; IO as usize];
                while let Some(job) = end.next() {
                    if job.req.op() == Some(Op::Write) {
                        buf.copy_from_slice(&payload(job.req.start_sector));
                    }
                    let c = execute(dev.as_ref(), lay, &job.req, &mut buf);
                    end.done(job.tag, c);
                }
            });
        }
        // Like the kernel's zone write plugging: one write per zone in
        // flight, the next one sent when the last completed.
        let mut tag = 0u16;
        let mut inflight: HashMap<u16, (u64, u64)> = HashMap::new(); // tag -> (zone, n)
        let send = |tag: &mut u16, zone: u64, n: u64, inflight: &mut HashMap<u16, (u64, u64)>| {
            let sector = (zone * ZONE + n * IO) / 512;
            let req = Request::new(Op::Write, sector, (IO / 512) as u32, false);
            d.send(Job { tag: *tag, req }).unwrap();
            inflight.insert(*tag, (zone, n));
            *tag += 1;
        };
        for z in 0..ZONES {
            send(&mut tag, z, 0, &mut inflight);
        }
        let mut done = Vec::new();
        let mut completed = 0;
        while !inflight.is_empty() {
            assert!(
                wait_readable(d.event_fd()),
                "no wake-up with {} requests in flight",
                inflight.len()
            );
            d.take_done(&mut done);
            for (t, c) in done.drain(..) {
                let (z, n) = inflight.remove(&t).expect("a tag completed twice");
                assert_eq!(c.result, IO as i32, "write {n} of zone {z}: {c:?}");
                completed += 1;
                if n + 1 < per_zone {
                    send(&mut tag, z, n + 1, &mut inflight);
                }
            }
        }
        assert_eq!(completed, ZONES * per_zone);
        // A flush through a worker completes with 0.
        d.send(Job {
            tag,
            req: Request::new(Op::Flush, 0, 0, false),
        })
        .unwrap();
        assert!(wait_readable(d.event_fd()), "flush never completed");
        d.take_done(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].0, done[0].1.result), (tag, 0));
        d.close();
    });
    // Closed: a job comes back instead of vanishing.
    let back = d.send(Job {
        tag: 9,
        req: Request::new(Op::Flush, 0, 0, false),
    });
    assert_eq!(back.map_err(|j| j.tag), Err(9));

    // Every zone holds its writes in order, and they survive a reopen.
    drop(dev);
    let dev = open_device(&path, &OpenOptions::default()).unwrap();
    for z in 0..ZONES {
        let r = dev.zone_report(z * ZONE, 1).unwrap();
        assert_eq!(r[0].wp, (z + 1) * ZONE, "zone {z} write pointer");
        for n in 0..per_zone {
            let off = z * ZONE + n * IO;
            let mut got = vec![0u8; IO as usize];
            dev.read(off, &mut got).unwrap();
            assert!(got == payload(off / 512), "zone {z} piece {n} differs");
        }
    }
}
