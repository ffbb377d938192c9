//! Compressed writes (`zcow-img convert -c`, `zcow-io write -c`) against
//! the real QEMU tools: what zcow writes compressed reads back identically
//! in qemu-img/qemu-io, `qemu-img check` finds it clean, `qemu-img map`
//! shows the compressed entries, and the file is about as small as
//! `qemu-img convert -c` makes it.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

fn zimg(args: &[&str]) -> Output {
    run(s(&bin("zcow-img")), args)
}

fn zio(args: &[&str]) -> Output {
    run(s(&bin("zcow-io")), args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A raw file with text-like (compressible) runs, random (incompressible)
/// runs and holes, whose size is not a multiple of any cluster size.
fn sample_raw(path: &Path) -> Vec<u8> {
    let mut r = Rng::seeded(7);
    let words = [
        "zone ",
        "cluster ",
        "qcow2 ",
        "write ",
        "pointer ",
        "refcount ",
        "table ",
    ];
    let mut v = Vec::new();
    let size = (3 << 20) + 1000;
    while v.len() < size {
        let run = 1 + r.below(200_000) as usize;
        match r.below(4) {
            0 | 1 => {
                let end = (v.len() + run).min(size);
                while v.len() < end {
                    v.extend_from_slice(words[r.below(words.len() as u64) as usize].as_bytes());
                }
            }
            2 => v.extend((0..run).map(|_| r.below(256) as u8)),
            _ => v.resize(v.len() + run, 0),
        }
    }
    v.truncate(size);
    std::fs::write(path, &v).unwrap();
    v
}

fn check_clean(img: &Path) {
    let o = run("qemu-img", &["check", s(img)]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("No errors were found on the image."), "{t}");
    assert!(!t.contains("leaked"), "{t}");
}

fn map_json(img: &Path) -> Vec<serde_json::Value> {
    let m = ok("qemu-img", &["map", "--output=json", s(img)]);
    serde_json::from_str(&m).unwrap_or_else(|e| panic!("{e}: {m}"))
}

#[test]
fn convert_c_reads_back_in_qemu_and_is_as_small() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    let raw = d.path().join("src.raw");
    let data = sample_raw(&raw);
    for (ct, cluster) in [
        ("zlib", "64k"),
        ("zstd", "64k"),
        ("zlib", "4k"),
        ("zstd", "512"),
        ("zlib", "2M"),
    ] {
        let opts = format!("compression_type={ct},cluster_size={cluster}");
        let ours = d.path().join(format!("z-{ct}-{cluster}.qcow2"));
        let theirs = d.path().join(format!("q-{ct}-{cluster}.qcow2"));
        let o = zimg(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &opts,
            s(&raw),
            s(&ours),
        ]);
        assert!(o.status.success(), "{ct} {cluster}: {}", text(&o));
        ok(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &opts,
                s(&raw),
                s(&theirs),
            ],
        );
        check_clean(&ours);
        // QEMU reads every byte back.
        assert_eq!(
            ok("qemu-img", &["compare", s(&raw), s(&ours)]),
            "Images are identical.\n",
            "{ct} {cluster}"
        );
        let back = d.path().join("back.raw");
        ok("qemu-img", &["convert", "-O", "raw", s(&ours), s(&back)]);
        let got = std::fs::read(&back).unwrap();
        assert_eq!(&got[..data.len()], &data[..], "{ct} {cluster}");
        assert!(got[data.len()..].iter().all(|&b| b == 0));
        // zcow reads it back too.
        assert_eq!(
            String::from_utf8_lossy(&zimg(&["compare", s(&raw), s(&ours)]).stdout),
            "Images are identical.\n"
        );
        // The map shows compressed data, and the same allocation as QEMU's.
        let ours_map = map_json(&ours);
        assert!(
            ours_map.iter().any(|e| e["compressed"] == true),
            "{ct} {cluster}: {ours_map:?}"
        );
        let shape = |m: &[serde_json::Value]| -> Vec<(u64, bool, bool)> {
            // Runs of (length, data, compressed): offsets differ by design.
            let mut v: Vec<(u64, bool, bool)> = Vec::new();
            for e in m {
                let (l, da, c) = (
                    e["length"].as_u64().unwrap(),
                    e["data"] == true,
                    e["compressed"] == true,
                );
                match v.last_mut() {
                    Some(last) if last.1 == da && last.2 == c => last.0 += l,
                    _ => v.push((l, da, c)),
                }
            }
            v
        };
        if ct == "zlib" {
            assert_eq!(
                shape(&ours_map),
                shape(&map_json(&theirs)),
                "{ct} {cluster}: zcow and qemu-img compress the same clusters"
            );
        } else {
            // Another zstd encoder: a borderline cluster may fit under the
            // cluster size in one and not the other. Data lands in the
            // same places all the same.
            let data_only = |m: &[serde_json::Value]| -> Vec<(u64, bool)> {
                let mut v: Vec<(u64, bool)> = Vec::new();
                for (l, da, _) in shape(m) {
                    match v.last_mut() {
                        Some(last) if last.1 == da => last.0 += l,
                        _ => v.push((l, da)),
                    }
                }
                v
            };
            assert_eq!(data_only(&ours_map), data_only(&map_json(&theirs)));
        }
        // Comparable size: zlib is the same deflate as QEMU's; ruzstd's
        // fastest level is a little weaker than libzstd's default.
        let zs = std::fs::metadata(&ours).unwrap().len();
        let qs = std::fs::metadata(&theirs).unwrap().len();
        let slack = if ct == "zlib" { 1.05 } else { 1.25 };
        assert!(
            (zs as f64) <= qs as f64 * slack,
            "{ct} {cluster}: zcow {zs} bytes vs qemu-img {qs}"
        );
        // Much smaller than the data (2 MiB clusters: metadata alone is
        // four clusters).
        if cluster != "2M" {
            assert!(zs < data.len() as u64 * 3 / 4, "{ct} {cluster}: {zs}");
        }
        eprintln!("{ct} {cluster}: zcow {zs} bytes, qemu-img {qs} bytes");
    }
}

#[test]
fn convert_c_options_like_qemu_img() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    let raw = d.path().join("src.raw");
    sample_raw(&raw);
    // Refusals with qemu-img's words, before anything is created.
    for (args, msg) in [
        (
            vec!["-O", "raw"],
            "Compression not supported for this file format",
        ),
        (vec![], "Compression not supported for this file format"),
        (
            vec!["-O", "qcow2", "-o", "preallocation=metadata"],
            "Compression and preallocation not supported at the same time",
        ),
    ] {
        let t = d.path().join("t.img");
        let mut a = vec!["convert", "-c"];
        a.extend_from_slice(&args);
        a.extend_from_slice(&[s(&raw), s(&t)]);
        let o = zimg(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("zcow-img: {msg}\n")
        );
        assert!(!t.exists(), "{a:?} created the target");
        let o = run("qemu-img", &a);
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("qemu-img: {msg}\n")
        );
        assert!(!t.exists(), "qemu-img {a:?} created the target");
    }
    // -n onto an existing raw image: refused too.
    let r = d.path().join("r.raw");
    ok("qemu-img", &["create", "-f", "raw", s(&r), "4M"]);
    let o = zimg(&["convert", "-c", "-n", s(&raw), s(&r)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("Compression not supported for this file format"));
    // -S 0 compresses the zero clusters too (qemu-img does the same): the
    // whole image is compressed data.
    let full = d.path().join("full.qcow2");
    let o = zimg(&["convert", "-c", "-S", "0", "-O", "qcow2", s(&raw), s(&full)]);
    assert!(o.status.success(), "{}", text(&o));
    check_clean(&full);
    let m = map_json(&full);
    assert!(m.iter().all(|e| e["data"] == true), "{m:?}");
    assert!(m.iter().any(|e| e["compressed"] == true), "{m:?}");
    // zcow-img map shows it as qemu-img does (the human form stops at the
    // first compressed run, exit 1).
    for json in [true, false] {
        let mut a = vec!["map"];
        if json {
            a.push("--output=json");
        }
        a.push(s(&full));
        let (z, q) = (zimg(&a), run("qemu-img", &a));
        assert_eq!(
            String::from_utf8_lossy(&z.stdout),
            String::from_utf8_lossy(&q.stdout)
        );
        assert_eq!(z.status.code(), q.status.code(), "{a:?}");
    }
    // -n onto an existing qcow2 image that has data: zcow replaces the
    // clusters (qemu-img fails with EIO on allocated clusters).
    let raw3 = d.path().join("src3.raw");
    let want = std::fs::read(&raw).unwrap()[..3 << 20].to_vec();
    std::fs::write(&raw3, &want).unwrap();
    let n = d.path().join("n.qcow2");
    ok("qemu-img", &["create", "-f", "qcow2", s(&n), "4M"]);
    ok("qemu-io", &["-c", "write -q -P 0x77 0 4M", s(&n)]);
    let o = zimg(&["convert", "-c", "-n", "-O", "qcow2", s(&raw3), s(&n)]);
    assert!(o.status.success(), "{}", text(&o));
    check_clean(&n);
    assert!(map_json(&n).iter().any(|e| e["compressed"] == true));
    let back = d.path().join("back.raw");
    ok("qemu-img", &["convert", "-O", "raw", s(&n), s(&back)]);
    let got = std::fs::read(&back).unwrap();
    assert_eq!(&got[..want.len()], &want[..]);
    assert!(got[want.len()..].iter().all(|&b| b == 0x77));
    // A source ending inside a cluster of a larger existing target would
    // need the rest of that cluster overwritten: refused (qemu-img: EINVAL).
    let o = zimg(&["convert", "-c", "-n", "-O", "qcow2", s(&raw), s(&n)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("error while writing at byte 3145728"),
        "{}",
        text(&o)
    );
    check_clean(&n);
    ok("qemu-io", &["-c", "read -q -P 0x77 3M 1M", s(&n)]);
}

#[test]
fn zcow_reads_qemu_compressed_images() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    let raw = d.path().join("src.raw");
    let data = sample_raw(&raw);
    for ct in ["zlib", "zstd"] {
        let q = d.path().join(format!("q-{ct}.qcow2"));
        ok(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ct}"),
                s(&raw),
                s(&q),
            ],
        );
        let back = d.path().join("back.raw");
        let o = zimg(&["convert", "-O", "raw", s(&q), s(&back)]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(&std::fs::read(&back).unwrap()[..data.len()], &data[..]);
        // zcow writes compressed into qemu's image (packing after QEMU's
        // streams) and QEMU still reads everything.
        // (The image is 3 MiB + 1 KiB: the last cluster is short.)
        let o = zio(&["-c", "write -q -c -P 0x3c 3M 1k", s(&q)]);
        assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
        check_clean(&q);
        ok("qemu-io", &["-c", "read -q -P 0x3c 3M 1k", s(&q)]);
        let back = d.path().join("back2.raw");
        ok("qemu-img", &["convert", "-O", "raw", s(&q), s(&back)]);
        assert_eq!(&std::fs::read(&back).unwrap()[..3 << 20], &data[..3 << 20]);
    }
}

/// The same qemu-io script through qemu-io and zcow-io on fresh images:
/// the same output, and images with the same contents and allocation.
#[test]
fn write_c_like_qemu_io() {
    if !have("qemu-io") || !have("qemu-img") {
        return;
    }
    let d = tmp();
    let rnd = d.path().join("rnd.bin");
    let mut r = Rng::seeded(3);
    std::fs::write(
        &rnd,
        (0..65536).map(|_| r.below(256) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = [
        "write -q -c -P 1 0 128k",
        // Not cluster aligned, not whole clusters: EINVAL.
        "write -q -c 1k 64k",
        "write -q -c 192k 4k",
        // Past the end: EIO, as qemu-io reports it.
        "write -q -c 960k 128k",
        // An incompressible cluster is stored uncompressed.
        "write -q -c -s RND 256k 64k",
        "write -c -P 0 512k 64k",
        // The last cluster of an image whose size is not a cluster multiple.
        "write -q -c -P 9 1024k 10k",
        "read -q -P 1 0 128k",
        "read -q -P 9 1024k 10k",
        "read -q -P 0 512k 64k",
    ];
    let mut outs = Vec::new();
    for tool in ["qemu-io", "zcow-io"] {
        let img = d.path().join(format!("{tool}.qcow2"));
        ok("qemu-img", &["create", "-f", "qcow2", s(&img), "1034k"]);
        let mut a: Vec<&str> = Vec::new();
        let script: Vec<String> = script.iter().map(|c| c.replace("RND", s(&rnd))).collect();
        for c in &script {
            a.push("-c");
            a.push(c);
        }
        a.push(s(&img));
        let o = if tool == "qemu-io" {
            run("qemu-io", &a)
        } else {
            zio(&a)
        };
        let stdout = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains("ops;"))
            .collect::<Vec<_>>()
            .join("\n");
        outs.push((stdout, o.status.code()));
        check_clean(&img);
    }
    assert_eq!(outs[0], outs[1]);
    assert!(
        outs[1].0.contains("write failed: Invalid argument"),
        "{:?}",
        outs[1]
    );
    assert!(
        outs[1].0.contains("write failed: Input/output error"),
        "{:?}",
        outs[1]
    );
    let m = |t: &str| map_json(&d.path().join(format!("{t}.qcow2")));
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        v.into_iter()
            .map(|mut e| {
                e.as_object_mut().unwrap().remove("offset");
                e
            })
            .collect()
    };
    let ours = strip(m("zcow-io"));
    assert_eq!(ours, strip(m("qemu-io")));
    assert_eq!(ours[0]["compressed"], true);
    // Refused where compressed clusters cannot go, with qemu-io's errno.
    let r = d.path().join("r.raw");
    ok("qemu-img", &["create", "-f", "raw", s(&r), "1M"]);
    let z = d.path().join("z.qcow2");
    let o = zimg(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "zone.mode=host-managed,zone.size=1M,zone.conventional_zones=1",
        s(&z),
        "4M",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for (img, fmt) in [(&r, "raw"), (&z, "qcow2")] {
        let o = zio(&["-f", fmt, "-c", "write -c 0 64k", s(img)]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "write failed: Operation not supported\n",
            "{fmt}"
        );
    }
    let o = run("qemu-io", &["-f", "raw", "-c", "write -c 0 64k", s(&r)]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "write failed: Operation not supported\n"
    );
}

/// Packing: many small streams share host clusters. Overwriting, zeroing
/// and discarding some of them keeps the refcounts exact (no leaks, no
/// errors) at every refcount width, and shared clusters freed completely
/// are reused.
#[test]
fn shared_host_clusters_keep_exact_refcounts() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let d = tmp();
    for (cluster, bits) in [("64k", "16"), ("4k", "1"), ("4k", "2"), ("512", "16")] {
        let img = d.path().join(format!("p-{cluster}-{bits}.qcow2"));
        ok(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster},refcount_bits={bits}"),
                s(&img),
                "2M",
            ],
        );
        let cs: u64 = match cluster {
            "64k" => 65536,
            "4k" => 4096,
            _ => 512,
        };
        let n = (2 << 20) / cs;
        let mut script = vec![format!("write -q -c -P 0x11 0 2M")];
        // Replace every third cluster with a normal write, compress every
        // fifth again, zero and discard some.
        for k in (0..n).step_by(3) {
            script.push(format!("write -q -P 0x22 {} {cs}", k * cs));
        }
        for k in (0..n).step_by(5) {
            script.push(format!("write -q -c -P 0x33 {} {cs}", k * cs));
        }
        script.push(format!("write -q -z {} {}", 7 * cs, 4 * cs));
        script.push(format!("discard -q {} {}", 20 * cs, 6 * cs));
        let mut a: Vec<&str> = Vec::new();
        for c in &script {
            a.push("-c");
            a.push(c);
        }
        a.push(s(&img));
        let o = zio(&a);
        assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
        check_clean(&img);
        // Contents as the script says, read by QEMU.
        let back = d.path().join("back.raw");
        ok("qemu-img", &["convert", "-O", "raw", s(&img), s(&back)]);
        let got = std::fs::read(&back).unwrap();
        for k in 0..n {
            let want = if (7..11).contains(&k) || (20..26).contains(&k) {
                0
            } else if k % 5 == 0 {
                0x33
            } else if k % 3 == 0 {
                0x22
            } else {
                0x11
            };
            let c = &got[(k * cs) as usize..((k + 1) * cs) as usize];
            assert!(
                c.iter().all(|&b| b == want),
                "{cluster}/{bits}: cluster {k} should be {want:#x}"
            );
        }
        // Streams share host clusters, unless a 1-bit refcount forbids it
        // (then each has a host cluster of its own).
        let compressed: Vec<u64> = map_json(&img)
            .iter()
            .filter(|e| e["compressed"] == true)
            .flat_map(|e| {
                let (st, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
                (st..st + l).step_by(cs as usize)
            })
            .collect();
        let q = zcow::format::Qcow2::open_path(
            &img,
            &zcow::format::OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let hosts: std::collections::BTreeSet<u64> = q
            .allocated_clusters(0, 2 << 20)
            .unwrap()
            .into_iter()
            .filter(|(g, _)| compressed.contains(g))
            .map(|(_, h)| h / cs)
            .collect();
        assert!(compressed.len() > 10, "{cluster}/{bits}");
        // A 2-bit refcount counts at most 3 streams per host cluster.
        let per_host = match bits {
            "1" => 1.0,
            "2" => 1.5,
            _ => 4.0,
        };
        if bits == "1" {
            assert_eq!(hosts.len(), compressed.len(), "{cluster}/{bits}");
        } else {
            assert!(
                (hosts.len() as f64) * per_host < compressed.len() as f64,
                "{cluster}/{bits}: {} compressed clusters in {} host clusters",
                compressed.len(),
                hosts.len()
            );
        }
    }
}

/// A host cluster that compressed streams were packed into is freed when
/// its last stream goes, and then reused for normal data: later streams
/// must not be packed into it any more (they would overwrite that data).
#[test]
fn freed_packing_cluster_gets_no_more_streams() {
    use std::sync::Arc;
    use zcow::format::create::{create, CreateOptions};
    use zcow::format::{OpenOptions, Qcow2};
    use zcow::storage::MemStorage;
    let cs = 4096u64;
    let st = Arc::new(MemStorage::new());
    create(
        st.as_ref(),
        &CreateOptions {
            size: 1 << 20,
            cluster_size: cs,
            refcount_bits: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let img = Qcow2::open(st.clone(), &OpenOptions::default()).unwrap();
    let c = |p: u8| vec![p; cs as usize];
    // A stream packed into a fresh host cluster H, which stays the packing target.
    img.write_compressed(0, &c(1)).unwrap();
    img.flush().unwrap();
    // Its only stream is overwritten: H is freed at the flush...
    img.write(0, &c(2)).unwrap();
    img.flush().unwrap();
    // ...and is the lowest free cluster, so normal data takes it.
    img.write(cs, &c(3)).unwrap();
    img.write_compressed(2 * cs, &c(4)).unwrap();
    img.flush().unwrap();
    for (k, p) in [(0u64, 2u8), (1, 3), (2, 4)] {
        let mut b = vec![0u8; cs as usize];
        img.read(k * cs, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == p), "cluster {k} should hold {p}");
    }
    drop(img);
    if have("qemu-img") {
        let d = tmp();
        let p = d.path().join("f.qcow2");
        std::fs::write(&p, st.to_vec()).unwrap();
        check_clean(&p);
    }
}
