//! qemu-io's `truncate` (qcow2 grow with L1 growth, shrink; raw) and
//! `write -b`/`read -b` (the qcow2 VM-state area): what zcow-io writes,
//! QEMU reads and `qemu-img check` accepts, and the reverse.

mod common;

use common::{bin, have, ok, run, s, tmp};
use std::path::Path;

fn zio(args: &[&str]) -> std::process::Output {
    run(s(&bin("zcow-io")), args)
}

fn create(dir: &Path, name: &str, opts: &[&str], size: &str) -> String {
    let p = dir.join(name);
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    a.extend_from_slice(opts);
    a.extend_from_slice(&[s(&p), size]);
    ok(s(&bin("zcow-img")), &a);
    s(&p).to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every `-P` read in `cmds` succeeds under the given qemu-io-like program.
fn reads_ok(prog: &str, img: &str, cmds: &[&str]) {
    let mut a = Vec::new();
    for c in cmds {
        a.extend_from_slice(&["-c", *c]);
    }
    a.push(img);
    let o = run(prog, &a);
    let out = stdout(&o);
    assert!(o.status.success(), "{prog}: {out}{}", stderr(&o));
    assert!(!out.contains("failed"), "{prog}: {out}");
}

#[test]
fn qcow2_grows_past_its_l1_table_and_shrinks() {
    let t = tmp();
    // 4 KiB clusters: one L2 table maps 2 MiB, so 3 GiB needs 1536 L1
    // entries where the 1 MiB image has one.
    let img = create(t.path(), "a.qcow2", &["-o", "cluster_size=4096"], "1M");
    let o = zio(&[
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "truncate 64M",
        "-c",
        "write -P 0x22 60M 64k",
        "-c",
        "truncate 3G",
        "-c",
        "write -P 0x33 2000M 64k",
        "-c",
        "length",
        &img,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).ends_with("3 GiB\n"), "{}", stdout(&o));
    let reads = [
        "read -P 0x11 0 64k",
        "read -P 0 64k 59M",
        "read -P 0x22 60M 64k",
        "read -P 0x33 2000M 64k",
        "read -P 0 2001M 1047M",
    ];
    reads_ok(s(&bin("zcow-io")), &img, &reads);
    let check = run(s(&bin("zcow-img")), &["check", &img]);
    assert!(stdout(&check).contains("No errors were found"));
    if have("qemu-io") {
        reads_ok("qemu-io", &img, &reads);
        let c = run("qemu-img", &["check", &img]);
        assert!(c.status.success(), "{}", stdout(&c));
        let info = ok("qemu-img", &["info", &img]);
        assert!(info.contains("virtual size: 3 GiB (3221225472 bytes)"));
    }
    // Shrink: the data past the new end is gone; growing again shows zeroes.
    let o = zio(&["-c", "truncate 61M", "-c", "truncate 128M", &img]);
    assert!(o.status.success(), "{}", stderr(&o));
    reads_ok(
        s(&bin("zcow-io")),
        &img,
        &[
            "read -P 0x11 0 64k",
            "read -P 0x22 60M 64k",
            "read -P 0 61M 67M",
        ],
    );
    if have("qemu-img") {
        let c = run("qemu-img", &["check", &img]);
        assert!(c.status.success(), "{}", stdout(&c));
    }
}

#[test]
fn growing_hides_a_longer_backing_file() {
    let t = tmp();
    let base = create(t.path(), "base.qcow2", &[], "4M");
    ok(s(&bin("zcow-io")), &["-c", "write -P 0x77 0 4M", &base]);
    let top = create(t.path(), "top.qcow2", &["-b", &base, "-F", "qcow2"], "1M");
    let o = zio(&[
        "-c",
        "truncate 4M",
        "-c",
        "read -P 0x77 0 1M",
        "-c",
        "read -P 0 1M 3M",
        &top,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("failed"), "{}", stdout(&o));
}

#[test]
fn truncate_errors_are_qemus() {
    let t = tmp();
    let img = create(t.path(), "a.qcow2", &[], "1M");
    let cases: [(&[&str], &str); 4] = [
        (
            &["-c", "truncate 1000"],
            "The new size must be a multiple of 512\n",
        ),
        (
            &["-c", "truncate -m bogus 2M"],
            "Invalid preallocation mode 'bogus'\n",
        ),
        (&["-r", "-c", "truncate 2M"], "Block node is read-only\n"),
        (&["-c", "truncate"], ""),
    ];
    for (args, msg) in cases {
        let mut a = args.to_vec();
        a.push(&img);
        let z = zio(&a);
        assert!(
            stderr(&z).ends_with(msg) || stdout(&z).contains("bad argument count"),
            "{args:?}: {}",
            stderr(&z)
        );
        if have("qemu-io") && !msg.is_empty() {
            let q = run("qemu-io", &a);
            assert_eq!(
                stderr(&q).replace("qemu-io:", "zcow-io:"),
                stderr(&z),
                "{args:?}"
            );
        }
    }
    // Nothing changed.
    let l = zio(&["-c", "length", &img]);
    assert_eq!(stdout(&l), "1 MiB\n");
}

#[test]
fn raw_truncate_sets_the_file_length() {
    let t = tmp();
    let p = t.path().join("a.raw");
    std::fs::write(&p, vec![0x5au8; 4096]).unwrap();
    let img = s(&p);
    let o = zio(&["-f", "raw", "-c", "truncate 1M", "-c", "length", img]);
    assert_eq!(stdout(&o), "1 MiB\n", "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
    reads_ok(
        s(&bin("zcow-io")),
        img,
        &["read -P 0x5a 0 4k", "read -P 0 4k 1020k"],
    );
    let o = zio(&["-f", "raw", "-c", "truncate 2048", img]);
    assert!(o.status.success());
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 2048);
    // A window with an explicit size is fixed, as in QEMU.
    let o = zio(&[
        "--image-opts",
        "-c",
        "truncate 4096",
        &format!("driver=raw,file.filename={img},offset=512,size=1024"),
    ]);
    assert!(
        stderr(&o).contains("Cannot resize fixed-size raw disks"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn vmstate_round_trips_with_qemu() {
    let t = tmp();
    let img = create(t.path(), "v.qcow2", &[], "6G");
    // The VM-state area starts past the disk (6 GiB here); 4 GiB into it
    // needs L1 entries far beyond the disk's twelve.
    let o = zio(&[
        "-c",
        "write -b -P 0x44 10485760 4096",
        "-c",
        "write -b -P 0x55 4294967296 4096",
        "-c",
        "read -b -P 0x44 10485760 4096",
        "-c",
        "read -b -P 0 0 4096",
        &img,
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.contains("failed"), "{out}");
    assert!(
        out.contains("wrote 4096/4096 bytes at offset 4294967296"),
        "{out}"
    );
    assert_eq!(stdout(&zio(&["-c", "length", &img])), "6 GiB\n");
    // The disk itself is untouched.
    reads_ok(
        s(&bin("zcow-io")),
        &img,
        &["read -P 0 0 1G", "read -P 0 5G 1G"],
    );
    if have("qemu-io") {
        reads_ok(
            "qemu-io",
            &img,
            &[
                "read -b -P 0x55 4294967296 4096",
                "read -b -P 0x44 10485760 4096",
            ],
        );
        let c = run("qemu-img", &["check", &img]);
        assert!(c.status.success(), "{}", stdout(&c));
        ok("qemu-io", &["-c", "write -b -P 0x66 4294967296 4096", &img]);
        reads_ok(
            s(&bin("zcow-io")),
            &img,
            &["read -b -P 0x66 4294967296 4096"],
        );
    }
    // A raw image has no VM-state area.
    let raw = t.path().join("r.raw");
    std::fs::write(&raw, [0u8; 4096]).unwrap();
    let o = zio(&["-f", "raw", "-c", "write -b 0 512", s(&raw)]);
    assert!(
        stdout(&o).contains("write failed: Operation not supported"),
        "{}",
        stdout(&o)
    );
}
