//! QEMU's names and messages where qemu-iotests look for them: a missing
//! backing file, `reopen -o` qcow2 options, an L2 table offered cluster 0,
//! and qemu-img's `--image-opts`, `--object` and `file:` names. Compared
//! with the real qemu-io/qemu-img output where they are installed.

mod common;

use common::{bin, have, ok, run, s, tmp};
use std::path::Path;

fn create(dir: &Path, name: &str, opts: &[&str]) -> String {
    let p = dir.join(name);
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    a.extend_from_slice(opts);
    a.extend_from_slice(&[s(&p), "64M"]);
    ok(s(&bin("zcow-img")), &a);
    s(&p).to_string()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn missing_backing_file_is_named_as_qemu_does() {
    let t = tmp();
    let base = create(t.path(), "b.qcow2", &[]);
    let mid = create(t.path(), "m.qcow2", &["-b", &base, "-F", "qcow2"]);
    let top = create(t.path(), "t.qcow2", &["-b", &mid, "-F", "qcow2"]);
    std::fs::remove_file(&base).unwrap();
    let z = run(s(&bin("zcow-io")), &["-c", "quit", &top]);
    let want = format!(
        "zcow-io: can't open device {top}: Could not open backing file: Could not open backing file: Could not open '{base}': No such file or directory\n"
    );
    assert_eq!(err(&z), want);
    assert_eq!(z.status.code(), Some(1));
    if have("qemu-io") {
        let q = run("qemu-io", &["-c", "quit", &top]);
        assert_eq!(err(&q).replace("qemu-io:", "zcow-io:"), want);
    }
}

#[test]
fn reopen_checks_qcow2_options_and_keeps_the_image_open() {
    let t = tmp();
    let img = create(t.path(), "a.qcow2", &[]);
    let bad = [
        "lazy-refcounts=42",
        "cache-size=1M,l2-cache-size=64k,refcount-cache-size=64k",
        "cache-size=1M,l2-cache-size=2M",
        "cache-size=1M,refcount-cache-size=2M",
        "l2-cache-entry-size=33k",
        "refcount-cache-size=256T",
        "overlap-check=constant,overlap-check.template=all",
        "overlap-check.template=blubb",
        "cache-clean-interval=-1",
    ];
    let mut args = Vec::new();
    for b in bad {
        args.push("-c".to_string());
        args.push(format!("reopen -o {b}"));
    }
    // Valid options are accepted; the image stays usable after a refusal.
    for c in [
        "reopen -o lazy-refcounts=on,overlap-check=all,cache-size=1M",
        "write -P 7 0 4k",
        "read -P 7 0 4k",
    ] {
        args.push("-c".into());
        args.push(c.into());
    }
    args.push(img.clone());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let z = run(s(&bin("zcow-io")), &a);
    let zerr = err(&z);
    assert_eq!(zerr.lines().count(), bad.len(), "{zerr}");
    assert!(zerr.contains(
        "zcow-io: Unsupported value 'blubb' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all\n"
    ));
    assert!(!out(&z).contains("failed"), "{}", out(&z));
    assert!(out(&z).contains("read 4096/4096 bytes at offset 0"));
    if have("qemu-io") {
        let q = run("qemu-io", &a);
        assert_eq!(err(&q).replace("qemu-io:", "zcow-io:"), zerr);
    }
}

#[test]
fn l2_table_at_cluster_zero_is_refused_with_qemus_words() {
    let t = tmp();
    let img = create(t.path(), "a.qcow2", &[]);
    // Zero the refcounts of the first clusters (header, tables): the
    // refcount block of a fresh 64 MiB image with 64 KiB clusters.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8], 0x20000).unwrap();
    drop(f);
    let z = run(s(&bin("zcow-io")), &["-c", "write 64k 64k", &img]);
    assert_eq!(out(&z), "write failed: Input/output error\n");
    assert!(err(&z).starts_with(
        "qcow2: Marking image as corrupt: Preventing invalid allocation of L2 table at offset 0; further corruption events will be suppressed\n"
    ), "{}", err(&z));
}

#[test]
fn img_image_opts_object_and_file_prefix() {
    let t = tmp();
    let base = create(t.path(), "b.qcow2", &[]);
    let top = create(t.path(), "t.qcow2", &["-b", &base, "-F", "qcow2"]);
    let opts = format!("driver=qcow2,file.driver=file,file.filename={top}");
    let zi = bin("zcow-img");
    let z = ok(s(&zi), &["info", "--backing-chain", "--image-opts", &opts]);
    assert!(
        z.starts_with(&format!("image: {top}\nfile format: qcow2\n")),
        "{z}"
    );
    assert!(z.contains(&format!("image: {base}\n")), "{z}");
    let c = ok(s(&zi), &["check", "--image-opts", &opts]);
    assert!(c.starts_with("No errors were found on the image."));
    let j = format!(r#"json:{{"driver":"qcow2","file":{{"driver":"file","filename":"{top}"}}}}"#);
    assert!(ok(s(&zi), &["info", &j]).starts_with(&format!("image: {top}\n")));
    let bad_key = run(
        s(&zi),
        &["info", "--image-opts", &format!("{opts},bogus=1")],
    );
    assert_eq!(
        err(&bad_key),
        format!("zcow-img: Could not open '{opts},bogus=1': Block format 'qcow2' does not support the option 'bogus'\n")
    );
    let both = run(s(&zi), &["info", "--image-opts", "-f", "qcow2", &opts]);
    assert_eq!(
        err(&both),
        "zcow-img: --image-opts and --format are mutually exclusive\n"
    );
    let obj = run(s(&zi), &["info", "--object", "secret,id=s0,data=x", &top]);
    assert!(obj.status.success());
    let bad_obj = run(s(&zi), &["info", "--object", "foo,id=s0", &top]);
    assert_eq!(
        err(&bad_obj),
        "zcow-img: Parameter 'qom-type' does not accept value 'foo'\n"
    );
    // file: names a file whose name holds a colon.
    let colon = t.path().join("a:b.qcow2");
    let fname = format!("file:{}", s(&colon));
    let cr = ok(s(&zi), &["create", "-f", "qcow2", &fname, "1M"]);
    assert!(
        cr.starts_with(&format!("Formatting '{fname}', fmt=qcow2")),
        "{cr}"
    );
    assert!(colon.exists());
    let zio = run(s(&bin("zcow-io")), &["-c", "length", &fname]);
    assert_eq!(out(&zio), "1 MiB\n");
    if have("qemu-img") {
        let q = ok(
            "qemu-img",
            &["info", "--backing-chain", "--image-opts", &opts],
        );
        assert_eq!(q, z);
        let q = run(
            "qemu-img",
            &["info", "--image-opts", &format!("{opts},bogus=1")],
        );
        assert_eq!(err(&q).replace("qemu-img:", "zcow-img:"), err(&bad_key));
        let q = run("qemu-img", &["info", "--object", "foo,id=s0", &top]);
        assert_eq!(err(&q).replace("qemu-img:", "zcow-img:"), err(&bad_obj));
    }
}
