//! The format layer shared by threads: writers on their own regions,
//! discards, zeroing and flushes racing each other. Every region reads back
//! as its writer's model, and the image checks clean afterwards.

mod common;
use common::*;
use std::sync::Arc;
use zcow::format::create::{create, CreateOptions};
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::FileStorage;

const REGION: u64 = 1 << 20;

#[test]
fn threads_on_one_image_keep_their_data() {
    let d = tmp();
    let p = d.path().join("c.qcow2");
    let st = FileStorage::create(&p).unwrap();
    create(
        &st,
        &CreateOptions {
            size: 8 * REGION,
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    drop(st);
    let img = Arc::new(
        Qcow2::open_path(
            &p,
            &OpenOptions {
                l2_cache_tables: 4,
                refblock_cache_tables: 2,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (img, stop) = (img.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                img.flush().unwrap();
                std::thread::yield_now();
            }
        })
    };
    let writers: Vec<_> = (0..6u64)
        .map(|w| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut r = Rng::seeded(w + 1);
                let base = w * REGION;
                let mut model = vec![0u8; REGION as usize];
                for step in 0..400u64 {
                    let off = r.below(REGION - 1);
                    let len = (1 + r.below(20_000)).min(REGION - off);
                    match r.below(8) {
                        0 => {
                            img.discard(base + off, len).unwrap();
                            let (a, b) = (off.div_ceil(4096) * 4096, (off + len) / 4096 * 4096);
                            if a < b {
                                model[a as usize..b as usize].fill(0);
                            }
                        }
                        1 => {
                            img.write_zeroes(base + off, len).unwrap();
                            model[off as usize..(off + len) as usize].fill(0);
                        }
                        _ => {
                            let pat = (step as u8) | 1;
                            img.write(base + off, &vec![pat; len as usize]).unwrap();
                            model[off as usize..(off + len) as usize].fill(pat);
                        }
                    }
                    if step % 50 == 0 {
                        let mut got = vec![0u8; REGION as usize];
                        img.read(base, &mut got).unwrap();
                        assert!(got == model, "writer {w} step {step}");
                    }
                }
                model
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flusher.join().unwrap();
    for (w, m) in models.iter().enumerate() {
        let mut got = vec![0u8; REGION as usize];
        img.read(w as u64 * REGION, &mut got).unwrap();
        assert!(&got == m, "writer {w} at the end");
    }
    drop(img);
    let c = run(s(&bin("zcow-img")), &["check", s(&p)]);
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&c.stderr)
    );
    if have("qemu-img") {
        let q = run("qemu-img", &["check", s(&p)]);
        assert_eq!(
            q.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&q.stdout)
        );
    }
}
