//! The format library against the real qemu-img / qemu-io.

mod common;
use common::*;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;
use zcow::format::create::{create, CreateOptions, Preallocation};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{BackingPolicy, OpenOptions, Qcow2};
use zcow::storage::FileStorage;

fn make(path: &Path, o: &CreateOptions) {
    let st = FileStorage::create(path).unwrap();
    create(&st, o).unwrap();
}

fn clear_zoned_bit(src: &Path, dst: &Path) {
    let mut b = std::fs::read(src).unwrap();
    b[79] &= !0x20;
    std::fs::write(dst, b).unwrap();
}

fn qemu_check_json(p: &Path) -> serde_json::Value {
    let o = run("qemu-img", &["check", "--output=json", s(p)]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "qemu-img check output: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn created_plain_images_pass_qemu_check() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    let mut n = 0;
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for rb in [1u32, 2, 4, 8, 16, 32, 64] {
            for prealloc in [Preallocation::Off, Preallocation::Metadata] {
                let p = d.path().join(format!("p{cs}-{rb}-{prealloc:?}.qcow2"));
                let size = if cs == 512 { 8 << 20 } else { 64 << 20 };
                make(
                    &p,
                    &CreateOptions {
                        size,
                        cluster_size: cs,
                        refcount_bits: rb,
                        preallocation: prealloc,
                        ..Default::default()
                    },
                );
                let o = run("qemu-img", &["check", s(&p)]);
                assert_eq!(
                    o.status.code(),
                    Some(0),
                    "cs={cs} rb={rb} {prealloc:?}: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                n += 1;
            }
        }
    }
    for prealloc in [Preallocation::Off, Preallocation::Metadata] {
        let p = d.path().join(format!("v2-{prealloc:?}.qcow2"));
        make(
            &p,
            &CreateOptions {
                size: 64 << 20,
                version: 2,
                preallocation: prealloc,
                ..Default::default()
            },
        );
        assert_eq!(run("qemu-img", &["check", s(&p)]).status.code(), Some(0));
        n += 1;
    }
    assert_eq!(n, 58);
}

#[test]
fn created_zoned_images_pass_qemu_check_except_the_wp_array() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    for (cs, rb, zs) in [
        (65536u64, 16u32, 64u64 << 20),
        (4096, 1, 1 << 20),
        (512, 64, 4096),
        (2 << 20, 8, 4 << 20),
    ] {
        for prealloc in [Preallocation::Off, Preallocation::Metadata] {
            let p = d.path().join(format!("z{cs}.qcow2"));
            let size = 256 << 20;
            make(
                &p,
                &CreateOptions {
                    size,
                    cluster_size: cs,
                    refcount_bits: rb,
                    preallocation: prealloc,
                    zoned: Some(ZonedCreateOptions {
                        zone_size: Some(zs),
                        conventional_zones: Some(1),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            // Stock qemu-img refuses the image and says why.
            let o = run("qemu-img", &["info", s(&p)]);
            assert_eq!(o.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&o.stderr)
                .contains("Unsupported qcow2 feature(s): zoned format"));
            let c = d.path().join("copy.qcow2");
            clear_zoned_bit(&p, &c);
            let j = qemu_check_json(&c);
            // No corruption of any kind. The write-pointer array is the only
            // thing stock QEMU cannot account for (see docs/architecture.md).
            assert!(j.get("corruptions").is_none(), "{j}");
            assert_eq!(j["check-errors"], 0, "{j}");
            let img = Qcow2::open_path(
                &p,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
            let z = img.zoned().unwrap();
            let wp_clusters = z.ext.zonedmeta_size.div_ceil(cs);
            assert_eq!(
                j.get("leaks").and_then(|v| v.as_u64()).unwrap_or(0),
                wp_clusters,
                "{j}"
            );
        }
    }
}

#[test]
fn info_json_agrees_with_qemu() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    let base = d.path().join("base.qcow2");
    ok("qemu-img", &["create", "-f", "qcow2", s(&base), "64M"]);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("plain.qcow2", vec!["-o", "cluster_size=4k,refcount_bits=1"]),
        ("v2.qcow2", vec!["-o", "compat=0.10"]),
        (
            "zstd.qcow2",
            vec!["-o", "compression_type=zstd,lazy_refcounts=on"],
        ),
        ("ext.qcow2", vec!["-o", "extended_l2=on"]),
        ("back.qcow2", vec!["-b", "base.qcow2", "-F", "qcow2"]),
        ("bitmaps.qcow2", vec![]),
        (
            "datafile.qcow2",
            vec!["-o", "data_file=datafile.raw,data_file_raw=on"],
        ),
    ];
    for (name, args) in cases {
        let p = d.path().join(name);
        let mut a = vec!["create", "-f", "qcow2"];
        a.extend(args.iter());
        a.push(s(&p));
        a.push("64M");
        let o = std::process::Command::new("qemu-img")
            .args(&a)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if name == "zstd.qcow2" {
            ok("qemu-img", &["snapshot", "-c", "snap1", s(&p)]);
        }
        if name == "bitmaps.qcow2" {
            ok("qemu-img", &["bitmap", "--add", s(&p), "b0"]);
            ok(
                "qemu-img",
                &[
                    "bitmap",
                    "--add",
                    "-g",
                    "128k",
                    "--disable",
                    s(&p),
                    "second",
                ],
            );
        }
        let q = ok("qemu-img", &["info", "--output=json", s(&p)]);
        let z = ok(s(&bin("zcow-img")), &["info", "--output=json", s(&p)]);
        assert_eq!(z, q, "{name}: JSON differs");
        let qh = ok("qemu-img", &["info", s(&p)]);
        let zh = ok(s(&bin("zcow-img")), &["info", s(&p)]);
        assert_eq!(zh, qh, "{name}: human output differs");
        for out in ["--output=human", "--output=json"] {
            let q = ok("qemu-img", &["info", "--backing-chain", out, s(&p)]);
            let z = ok(
                s(&bin("zcow-img")),
                &["info", "--backing-chain", out, s(&p)],
            );
            assert_eq!(z, q, "{name}: --backing-chain {out} differs");
        }
    }
    // LUKS-encrypted: the header's cipher, slots and offsets are listed.
    let enc = d.path().join("enc.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=abc",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            s(&enc),
            "16M",
        ],
    );
    for out in ["--output=human", "--output=json"] {
        assert_eq!(
            ok(s(&bin("zcow-img")), &["info", out, s(&enc)]),
            ok("qemu-img", &["info", out, s(&enc)]),
            "encrypted {out}"
        );
    }
    // Raw images (e.g. raw backing files) are described too.
    let raw = d.path().join("r.raw");
    ok("qemu-img", &["create", "-q", "-f", "raw", s(&raw), "3M"]);
    for out in ["--output=human", "--output=json"] {
        assert_eq!(
            ok(s(&bin("zcow-img")), &["info", out, s(&raw)]),
            ok("qemu-img", &["info", out, s(&raw)])
        );
    }
}

#[test]
fn zcow_created_images_info_matches_qemu() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    let p = d.path().join("z.qcow2");
    let out = ok(
        s(&bin("zcow-img")),
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "zone.mode=host-managed,zone.size=64M,zone.conventional_zones=2,zone.max_open_zones=8",
            s(&p),
            "4G",
        ],
    );
    assert!(out.starts_with(&format!(
        "Formatting '{}', fmt=qcow2 cluster_size=65536",
        s(&p)
    )));
    let z: serde_json::Value =
        serde_json::from_str(&ok(s(&bin("zcow-img")), &["info", "--output=json", s(&p)])).unwrap();
    let c = d.path().join("c.qcow2");
    clear_zoned_bit(&p, &c);
    let q: serde_json::Value =
        serde_json::from_str(&ok("qemu-img", &["info", "--output=json", s(&c)])).unwrap();
    for k in [
        "virtual-size",
        "cluster-size",
        "format",
        "format-specific",
        "dirty-flag",
    ] {
        assert_eq!(z[k], q[k], "field {k}");
    }
    let zz = &z["zoned"];
    assert_eq!(zz["nr-zones"], 64);
    assert_eq!(zz["conventional-zones"], 2);
    assert_eq!(zz["max-open-zones"], 8);
    assert_eq!(zz["zone-size"], 64 << 20);
    assert_eq!(zz["zones-by-condition"]["empty"], 62);
    assert_eq!(zz["zones-by-condition"]["not-wp"], 2);
    // Plain image made by zcow: JSON identical to qemu-img's.
    let p2 = d.path().join("plain.qcow2");
    ok(
        s(&bin("zcow-img")),
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k,refcount_bits=4",
            s(&p2),
            "1G",
        ],
    );
    assert_eq!(
        ok(s(&bin("zcow-img")), &["info", "--output=json", s(&p2)]),
        ok("qemu-img", &["info", "--output=json", s(&p2)])
    );
}

#[test]
fn create_rejects_bad_combinations() {
    let d = tmp();
    let p = d.path().join("x.qcow2");
    let cases = [
        ("zone.mode=host-managed,zone.size=3M", "power of two"),
        (
            "zone.mode=host-managed,zone.size=64M,zone.capacity=128M",
            "exceeds zone.size",
        ),
        (
            "zone.mode=host-managed,zone.size=64M,zone.conventional_zones=16",
            "conventional_zones",
        ),
        (
            "zone.mode=host-managed,zone.size=64M,zone.max_append_bytes=64M",
            "max_append_bytes",
        ),
        (
            "zone.mode=host-managed,zone.size=64M,compat=0.10",
            "compat=1.1",
        ),
        (
            "zone.mode=host-managed,zone.size=64M,backing_file=a.qcow2,backing_fmt=qcow2",
            "backing file",
        ),
        ("cluster_size=3000", "Cluster size"),
        ("refcount_bits=3", "Refcount width"),
    ];
    for (o, msg) in cases {
        let out = run(
            s(&bin("zcow-img")),
            &["create", "-f", "qcow2", "-o", o, s(&p), "1G"],
        );
        assert_eq!(out.status.code(), Some(1), "{o}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{o}: {err}");
        assert_eq!(err.lines().count(), 1, "one clear error: {err}");
    }
}

fn raw_of(p: &Path, d: &Path) -> Vec<u8> {
    let r = d.join("out.raw");
    ok("qemu-img", &["convert", "-O", "raw", s(p), s(&r)]);
    std::fs::read(&r).unwrap()
}

fn zcow_read_all(p: &Path) -> Vec<u8> {
    let img = Qcow2::open_path(
        p,
        &OpenOptions {
            read_only: true,
            backing: BackingPolicy::Follow,
            ..Default::default()
        },
    )
    .unwrap();
    let mut v = vec![0u8; img.size() as usize];
    // Odd-sized chunks cross cluster and subcluster boundaries.
    let mut at = 0;
    while at < v.len() {
        let n = (v.len() - at).min(1_000_003);
        img.read(at as u64, &mut v[at..at + n]).unwrap();
        at += n;
    }
    v
}

#[test]
fn qemu_written_images_read_back_byte_exact() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let d = tmp();
    let dp = d.path();
    let writes = |p: &Path| {
        ok(
            "qemu-io",
            &[
                "-c",
                "write -P 0xaa 0 128k",
                "-c",
                "write -P 0xbb 1M 64k",
                "-c",
                "write -P 0xcc 3000 5000",
                "-c",
                "write -z 2M 1M",
                "-c",
                "write -P 0xdd 4M 4k",
                "-c",
                "discard 4M 64k",
                "-c",
                "write -P 0x11 7M 1M",
                s(p),
            ],
        );
    };
    let mut cases: Vec<std::path::PathBuf> = Vec::new();
    for opts in [
        "cluster_size=512",
        "cluster_size=4k,refcount_bits=1",
        "compat=0.10",
        "extended_l2=on,cluster_size=64k",
        "extended_l2=on,cluster_size=32k",
        "lazy_refcounts=on",
        "cluster_size=2M",
    ] {
        let p = dp.join(format!("{}.qcow2", opts.replace([',', '='], "_")));
        ok(
            "qemu-img",
            &["create", "-f", "qcow2", "-o", opts, s(&p), "8M"],
        );
        writes(&p);
        cases.push(p);
    }
    // Compressed (zlib and zstd).
    let src = cases[0].clone();
    for ct in ["zlib", "zstd"] {
        let p = dp.join(format!("c-{ct}.qcow2"));
        ok(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ct},cluster_size=4k"),
                s(&src),
                s(&p),
            ],
        );
        cases.push(p);
    }
    // Backing chain: raw base, qcow2 middle, qcow2 top.
    let base = dp.join("base.raw");
    ok("qemu-img", &["create", "-f", "raw", s(&base), "8M"]);
    ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x55 0 8M", s(&base)],
    );
    let mid = dp.join("mid.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&mid),
        ],
    );
    ok("qemu-io", &["-c", "write -P 0x66 1M 100k", s(&mid)]);
    let top = dp.join("top.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=4k",
            s(&top),
        ],
    );
    ok(
        "qemu-io",
        &[
            "-c",
            "write -P 0x77 1050k 10k",
            "-c",
            "write -z 5M 8k",
            s(&top),
        ],
    );
    cases.push(top);
    // Snapshots: active state differs from the snapshot.
    let sn = dp.join("snap.qcow2");
    ok("qemu-img", &["create", "-f", "qcow2", s(&sn), "8M"]);
    writes(&sn);
    ok("qemu-img", &["snapshot", "-c", "s1", s(&sn)]);
    ok("qemu-io", &["-c", "write -P 0x99 0 200k", s(&sn)]);
    cases.push(sn);
    for p in &cases {
        let want = raw_of(p, dp);
        let got = zcow_read_all(p);
        assert!(want == got, "{} differs from qemu-img convert", p.display());
    }
}

#[test]
fn writes_through_zcow_read_back_in_qemu_and_check_clean() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    // Write a backing-file image, a snapshot image and a compressed one through zcow.
    let base = d.path().join("base.qcow2");
    ok("qemu-img", &["create", "-f", "qcow2", s(&base), "4M"]);
    ok("qemu-io", &["-c", "write -P 0x31 0 4M", s(&base)]);
    let top = d.path().join("top.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=4k",
            s(&top),
        ],
    );
    let comp = d.path().join("comp.qcow2");
    ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            s(&base),
            s(&comp),
        ],
    );
    let snap = d.path().join("snap.qcow2");
    ok("qemu-img", &["create", "-f", "qcow2", s(&snap), "4M"]);
    ok("qemu-io", &["-c", "write -P 0x41 0 1M", s(&snap)]);
    ok("qemu-img", &["snapshot", "-c", "s1", s(&snap)]);
    for p in [&top, &comp, &snap] {
        let mut model = raw_of(p, d.path());
        {
            let img = Qcow2::open_path(
                p,
                &OpenOptions {
                    backing: BackingPolicy::Follow,
                    ..Default::default()
                },
            )
            .unwrap();
            for (off, len, pat) in [
                (1000u64, 3000usize, 0xa1u8),
                (65536, 65536, 0xa2),
                (100_000, 300_000, 0xa3),
            ] {
                let buf = vec![pat; len];
                img.write(off, &buf).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&buf);
            }
            img.write_zeroes(2 << 20, 70_000).unwrap();
            model[2 << 20..(2 << 20) + 70_000].fill(0);
            img.flush().unwrap();
        }
        assert!(raw_of(p, d.path()) == model, "{}", p.display());
        let o = run("qemu-img", &["check", s(p)]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}: {}{}",
            p.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The snapshot still holds its old contents.
    let r = d.path().join("s.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            s(&snap),
            s(&r),
        ],
    );
    let sv = std::fs::read(&r).unwrap();
    assert!(sv[..1 << 20].iter().all(|&b| b == 0x41));
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, usize, u8),
    Zero(u64, u64),
    Discard(u64, u64),
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let size = 4u64 << 20;
    prop_oneof![
        4 => (0..size, 1usize..200_000, any::<u8>()).prop_map(move |(o, l, p)| Op::Write(o, l.min((size - o) as usize), p)),
        1 => (0..size, 1u64..300_000).prop_map(move |(o, l)| Op::Zero(o, l.min(size - o))),
        1 => (0..size, 1u64..300_000).prop_map(move |(o, l)| Op::Discard(o, l.min(size - o))),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_write_zero_discard_matches_model(ops in prop::collection::vec(op(), 1..25), cs_bits in prop::sample::select(vec![9u32, 12, 16])) {
        if !have("qemu-img") { return Ok(()); }
        let d = tmp();
        let p = d.path().join("r.qcow2");
        make(&p, &CreateOptions { size: 4 << 20, cluster_size: 1 << cs_bits, refcount_bits: 8, ..Default::default() });
        let mut model = vec![0u8; 4 << 20];
        let cs = 1u64 << cs_bits;
        let open = || Qcow2::open(Arc::new(FileStorage::open(&p, false).unwrap()), &OpenOptions { l2_cache_tables: 2, refblock_cache_tables: 2, ..Default::default() }).unwrap();
        let mut img = open();
        for o in &ops {
            match *o {
                Op::Write(off, len, pat) => {
                    let b = vec![pat; len];
                    img.write(off, &b).unwrap();
                    model[off as usize..off as usize + len].copy_from_slice(&b);
                }
                Op::Zero(off, len) => {
                    img.write_zeroes(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                Op::Discard(off, len) => {
                    img.discard(off, len).unwrap();
                    // Only whole clusters are dropped.
                    let a = off.div_ceil(cs) * cs;
                    let b = (off + len) / cs * cs;
                    if a < b { model[a as usize..b as usize].fill(0); }
                }
                Op::Flush => img.flush().unwrap(),
                Op::Reopen => { drop(img); img = open(); }
            }
            let mut got = vec![0u8; model.len()];
            img.read(0, &mut got).unwrap();
            prop_assert!(got == model, "after {:?}", o);
        }
        drop(img);
        prop_assert!(raw_of(&p, d.path()) == model);
        let c = run("qemu-img", &["check", s(&p)]);
        prop_assert_eq!(c.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&c.stdout), String::from_utf8_lossy(&c.stderr));
    }
}

#[test]
fn refcount_table_grows_and_stays_consistent() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    // 512-byte clusters with 64-bit refcounts: one refblock covers 32 KiB
    // and one reftable cluster 2 MiB, so 6 MiB of data grows the table twice.
    let p = d.path().join("g.qcow2");
    make(
        &p,
        &CreateOptions {
            size: 16 << 20,
            cluster_size: 512,
            refcount_bits: 64,
            ..Default::default()
        },
    );
    let mut model = vec![0u8; 16 << 20];
    {
        let img = Qcow2::open_path(&p, &OpenOptions::default()).unwrap();
        for i in 0..48u64 {
            let off = (i * 331_777) % (15 << 20);
            let b = vec![(i + 1) as u8; 131_072];
            img.write(off, &b).unwrap();
            model[off as usize..off as usize + b.len()].copy_from_slice(&b);
        }
        img.discard(1 << 20, 1 << 20).unwrap();
        model[1 << 20..2 << 20].fill(0);
        img.flush().unwrap();
    }
    let h = Qcow2::open_path(
        &p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
    .header();
    assert!(h.refcount_table_clusters > 1, "table did not grow");
    assert!(raw_of(&p, d.path()) == model);
    let o = run("qemu-img", &["check", s(&p)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
