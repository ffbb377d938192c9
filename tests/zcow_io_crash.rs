//! A `zcow-io` process doing zone writes, appends, finishes and resets is
//! killed with SIGKILL at random points, many rounds. After each kill:
//! `zcow-img check` finds no corruption (leaks allowed), `zcow-img repair`
//! makes the image clean, and every zone left alone since the last
//! completed flush holds exactly what it held then.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ZONE: u64 = 1 << 20;
const NZ: u64 = 16;
const MARK: &str = "read 512/512 bytes at offset 0";

/// Per zone: write pointer and the pattern byte of each 4 KiB block below it.
#[derive(Clone, Default)]
struct ZoneModel {
    wp: u64,
    blocks: Vec<u8>,
}

/// A script and, for each marker (a completed flush), the model then and
/// the zones touched after it.
struct Script {
    lines: Vec<String>,
    at_mark: Vec<Vec<ZoneModel>>,
    touched_after: Vec<Vec<bool>>,
}

fn script(seed: u64) -> Script {
    let mut r = Rng::seeded(seed);
    let mut zones: Vec<ZoneModel> = (0..NZ).map(|_| ZoneModel::default()).collect();
    let mut lines = Vec::new();
    let mut at_mark = Vec::new();
    let mut touched_after: Vec<Vec<bool>> = Vec::new();
    for n in 0..400 {
        let z = 1 + r.below(NZ - 1);
        let zm = &mut zones[z as usize];
        let start = z * ZONE;
        let pat = 1 + (n % 250) as u8;
        let blocks = 1 + r.below(16);
        match r.below(10) {
            0..=4 if zm.wp + blocks * 4096 <= ZONE => {
                lines.push(format!(
                    "write -P {pat} {} {}",
                    start + zm.wp,
                    blocks * 4096
                ));
                zm.wp += blocks * 4096;
                zm.blocks.extend(std::iter::repeat_n(pat, blocks as usize));
            }
            5..=6 if zm.wp + 4096 <= ZONE => {
                // qemu-io's zone_append writes the pattern 0xcd.
                lines.push(format!("zap {start} 4096"));
                zm.wp += 4096;
                zm.blocks.push(0xcd);
            }
            7 => {
                lines.push(format!("zf {start} {ZONE}"));
                zm.wp = ZONE;
                zm.blocks.resize((ZONE / 4096) as usize, 0);
            }
            8 => {
                lines.push(format!("zrs {start} {ZONE}"));
                *zm = ZoneModel::default();
            }
            _ => {
                lines.push("flush".into());
                lines.push("read -P 0 0 512".into());
                at_mark.push(zones.clone());
                touched_after.push(vec![false; NZ as usize]);
                continue;
            }
        }
        if let Some(t) = touched_after.last_mut() {
            t[z as usize] = true;
        }
    }
    Script {
        lines,
        at_mark,
        touched_after,
    }
}

#[test]
fn sigkill_during_zone_work_leaves_a_repairable_image_and_flushed_data() {
    let d = tmp();
    let mut checked = 0;
    let mut cut_short = 0;
    for round in 0..12u64 {
        let p = d.path().join(format!("r{round}.qcow2"));
        ok(s(&bin("zcow-img")), &["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,zone.mode=host-managed,zone.size=1M,zone.conventional_zones=1,zone.max_open_zones=4", s(&p), "16M"]);
        let sc = script(round + 1);
        let mut child = Command::new(bin("zcow-io"))
            .arg(&p)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let marks = Arc::new(Mutex::new(0usize));
        let out = child.stdout.take().unwrap();
        let m2 = marks.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains(MARK) {
                    *m2.lock().unwrap() += 1;
                }
            }
        });
        {
            let mut stdin = child.stdin.take().unwrap();
            let text = sc.lines.join("\n") + "\n";
            let _ = stdin.write_all(text.as_bytes());
            // Keep stdin open: zcow-io must not reach EOF (and exit cleanly).
            std::thread::sleep(Duration::from_millis(5 + round * 7));
            child.kill().unwrap();
            drop(stdin);
        }
        child.wait().unwrap();
        reader.join().unwrap();
        let seen = *marks.lock().unwrap();
        eprintln!(
            "round {round}: killed after {seen} of {} flush markers",
            sc.at_mark.len()
        );
        if seen < sc.at_mark.len() {
            cut_short += 1;
        }

        let c = run(s(&bin("zcow-img")), &["check", "--output=json", s(&p)]);
        let j: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
        assert!(
            matches!(c.status.code(), Some(0) | Some(3)),
            "round {round}: {j}"
        );
        assert!(j.get("corruptions").is_none(), "round {round}: {j}");
        let r = run(s(&bin("zcow-img")), &["repair", s(&p)]);
        assert!(
            r.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(
            run(s(&bin("zcow-img")), &["check", s(&p)]).status.code(),
            Some(0),
            "round {round}"
        );

        if seen == 0 {
            continue;
        }
        let model = &sc.at_mark[seen - 1];
        let touched = &sc.touched_after[seen - 1];
        let dev = zcow::open::open_device(&p, &zcow::open::OpenOptions::default()).unwrap();
        let zones = dev.zone_report(0, NZ as u32).unwrap();
        for z in 1..NZ as usize {
            if touched[z] {
                continue;
            }
            let zm = &model[z];
            assert_eq!(
                zones[z].wp - z as u64 * ZONE,
                zm.wp,
                "round {round} zone {z}: wp"
            );
            let mut buf = vec![0u8; zm.wp as usize];
            dev.read(z as u64 * ZONE, &mut buf).unwrap();
            for (b, &pat) in zm.blocks.iter().enumerate() {
                assert!(
                    buf[b * 4096..(b + 1) * 4096].iter().all(|&x| x == pat),
                    "round {round} zone {z} block {b}"
                );
            }
            checked += 1;
        }
    }
    eprintln!("zones verified after kills: {checked}");
    assert!(checked > 0);
    assert!(
        cut_short >= 3,
        "only {cut_short} rounds were killed mid-script"
    );
}
