//! `zcow-io -c info` prints what qemu-io prints for plain images (format
//! name, cluster size, VM state offset, format-specific data) and adds the
//! zone geometry for zoned ones.

mod common;
use common::*;
use std::process::Command;

#[test]
fn info_matches_qemu_io_on_plain_images() {
    if !have("qemu-io") {
        return;
    }
    let d = tmp();
    let cases: [(&str, &[&str], &str); 5] = [
        ("a.qcow2", &["-f", "qcow2"], "16M"),
        (
            "b.qcow2",
            &["-f", "qcow2", "-o", "cluster_size=4k,compression_type=zstd"],
            "3G",
        ),
        (
            "c.qcow2",
            &["-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=64"],
            "1M",
        ),
        ("d.qcow2", &["-f", "qcow2", "-o", "compat=0.10"], "100M"),
        ("e.raw", &["-f", "raw"], "1M"),
    ];
    for (name, opts, size) in cases {
        let p = d.path().join(name);
        let o = Command::new("qemu-img")
            .arg("create")
            .args(opts)
            .arg(&p)
            .arg(size)
            .output()
            .unwrap();
        assert!(o.status.success());
        let fmt = if name.ends_with("raw") {
            "raw"
        } else {
            "qcow2"
        };
        let q = Command::new("qemu-io")
            .args(["-f", fmt, "-r", "-c", "info"])
            .arg(&p)
            .output()
            .unwrap();
        let z = run(s(&bin("zcow-io")), &["-f", fmt, "-r", "-c", "info", s(&p)]);
        assert_eq!(
            String::from_utf8_lossy(&z.stdout),
            String::from_utf8_lossy(&q.stdout),
            "{name}"
        );
        assert_eq!(z.status.code(), q.status.code());
    }
}

#[test]
fn info_on_a_zoned_image_names_qcow2_and_the_geometry() {
    let d = tmp();
    let p = d.path().join("z.qcow2");
    let o = run(
        s(&bin("zcow-img")),
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "zone.mode=host-managed,zone.size=1M,zone.conventional_zones=1,zone.max_open_zones=2",
            s(&p),
            "8M",
        ],
    );
    assert!(o.status.success());
    let z = run(s(&bin("zcow-io")), &["-c", "info", s(&p)]);
    assert_eq!(
        String::from_utf8_lossy(&z.stdout),
        "format name: qcow2\n\
         cluster size: 64 KiB\n\
         vm state offset: 512 MiB\n\
         Format specific information:\n\
         \x20   compat: 1.1\n\
         \x20   compression type: zlib\n\
         \x20   lazy refcounts: false\n\
         \x20   refcount bits: 16\n\
         \x20   corrupt: false\n\
         \x20   extended l2: false\n\
         zone model: host-managed\n\
         zone size: 1 MiB\n\
         zone capacity: 1 MiB\n\
         nr zones: 8\n\
         conventional zones: 1\n\
         max open zones: 2\n\
         max active zones: 0\n\
         max append: 64 KiB\n"
    );
}
