//! QEMU drop-in behaviour (what qemu-iotests rely on): the personality
//! under QEMU's names, qemu-io's open options (`--cache`, `--aio`, `-n`,
//! `-t`, `-i`, `-k`, `-m`, `-d`, `--image-opts`, `json:`), the `reopen`,
//! `open -o`, `abort` and `sigraise` commands, raw files shorter than a
//! sector, and `create` rounding and `-f raw`. Each is run through the
//! real QEMU tool too where one is installed, and the outputs compared.

mod common;

use common::{bin, have, s, tmp};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use zcow::iocmd::normalize_timing;

/// Symlinks `qemu-img`, `qemu-io` to zcow's binaries in `dir`.
fn personality(dir: &Path) -> PathBuf {
    let d = dir.join("zbin");
    std::fs::create_dir_all(&d).unwrap();
    for t in ["img", "io", "nbd"] {
        std::os::unix::fs::symlink(bin(&format!("zcow-{t}")), d.join(format!("qemu-{t}"))).unwrap();
    }
    d
}

fn run(prog: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ch = c.spawn().expect("spawn");
    {
        let mut i = ch.stdin.take().unwrap();
        let _ = i.write_all(stdin.unwrap_or("").as_bytes());
    }
    ch.wait_with_output().expect("wait")
}

fn text(o: &Output) -> (String, String) {
    (
        normalize_timing(&String::from_utf8_lossy(&o.stdout)),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn qcow2(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    common::ok(
        s(&bin("zcow-img")),
        &["create", "-q", "-f", "qcow2", s(&p), "1M"],
    );
    s(&p).to_string()
}

#[test]
fn prompt_and_prefix_follow_the_name() {
    let t = tmp();
    let z = personality(t.path());
    let img = qcow2(t.path(), "a.qcow2");
    let q = run(
        &z.join("qemu-io"),
        &[&img],
        Some("write -P 1 0 512\nbogus\n"),
    );
    let (out, err) = text(&q);
    assert!(
        out.starts_with("qemu-io> wrote 512/512 bytes at offset 0\n"),
        "{out}"
    );
    assert!(out.ends_with("qemu-io> qemu-io> "), "{out}");
    assert_eq!(err, "command \"bogus\" not found\n");
    let own = run(&bin("zcow-io"), &[&img], Some("length\n"));
    assert!(text(&own).0.starts_with("zcow-io> 1 MiB\n"));
    // Prefixes of error lines.
    let e = run(
        &z.join("qemu-io"),
        &["-c", "read 0 1", "/nonexistent"],
        None,
    );
    assert!(text(&e)
        .1
        .starts_with("qemu-io: can't open device /nonexistent: "));
    let e = run(&z.join("qemu-img"), &["check", "-f", "raw", &img], None);
    assert_eq!(
        text(&e).1,
        "qemu-img: This image format does not support checks\n"
    );
    let e = run(&bin("zcow-img"), &["check", "-f", "raw", &img], None);
    assert_eq!(
        text(&e).1,
        "zcow-img: This image format does not support checks\n"
    );
    if have("qemu-img") {
        let r = run(Path::new("qemu-img"), &["check", "-f", "raw", &img], None);
        assert_eq!(
            text(&r).1,
            "qemu-img: This image format does not support checks\n"
        );
    }
}

#[test]
fn failed_request_prints_only_qemus_line_under_its_name() {
    let t = tmp();
    let z = personality(t.path());
    let img = qcow2(t.path(), "a.qcow2");
    let args = ["-c", "write 1M 512", &img];
    let o = run(&z.join("qemu-io"), &args, None);
    assert_eq!(
        text(&o),
        ("write failed: Input/output error\n".into(), String::new())
    );
    if have("qemu-io") {
        let r = run(Path::new("qemu-io"), &args, None);
        assert_eq!(text(&o), text(&r));
    }
    // zcow's own name adds the detail on stderr.
    let o = run(&bin("zcow-io"), &args, None);
    assert!(!text(&o).1.is_empty());
}

#[test]
fn cache_aio_and_friends_are_accepted_and_checked() {
    let t = tmp();
    let img = qcow2(t.path(), "a.qcow2");
    let ok: &[&[&str]] = &[
        &["--cache", "writeback", "--aio", "threads"],
        &["-t", "none", "-i", "io_uring"],
        &["-n", "-k", "-m"],
        &["-d", "unmap", "--object", "secret,id=s0,data=x"],
    ];
    for opts in ok {
        let mut a = opts.to_vec();
        a.extend([
            "-f",
            "qcow2",
            "-c",
            "write -P 7 0 4k",
            "-c",
            "read -P 7 0 4k",
            &img,
        ]);
        let o = run(&bin("zcow-io"), &a, None);
        assert!(o.status.success(), "{opts:?}: {:?}", text(&o));
        assert!(text(&o).0.contains("read 4096/4096 bytes at offset 0"));
    }
    for (opt, msg) in [
        ("--cache=bogus", "Invalid cache option: bogus"),
        ("--aio=bogus", "Invalid aio option: bogus"),
    ] {
        let z = personality(&t.path().join(opt.len().to_string()));
        let o = run(&z.join("qemu-io"), &[opt, "-c", "length", &img], None);
        assert_eq!(text(&o).1, format!("qemu-io: {msg}\n"));
        assert_eq!(o.status.code(), Some(1));
        if have("qemu-io") {
            let r = run(Path::new("qemu-io"), &[opt, "-c", "length", &img], None);
            assert_eq!(text(&r).1, text(&o).1);
            assert_eq!(r.status.code(), o.status.code());
        }
    }
}

#[test]
fn image_opts_and_json_filenames() {
    let t = tmp();
    let img = qcow2(t.path(), "a,b.qcow2");
    common::ok(s(&bin("zcow-io")), &["-c", "write -P 9 0 512", &img]);
    let escaped = img.replace(',', ",,");
    let opts = format!("driver=qcow2,file.filename={escaped},cache.direct=off");
    let json = format!(r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{img}"}}}}"#);
    let cases: Vec<Vec<&str>> = vec![
        vec!["--image-opts", "-c", "read -P 9 0 512", &opts],
        vec!["-c", "read -P 0x51 0 1", &json],
    ];
    for a in &cases {
        let o = run(&bin("zcow-io"), a, None);
        assert!(o.status.success(), "{a:?}: {:?}", text(&o));
        assert!(!text(&o).0.contains("Pattern verification failed"), "{a:?}");
        if have("qemu-io") {
            let r = run(Path::new("qemu-io"), a, None);
            assert_eq!(text(&o).0, text(&r).0, "{a:?}");
        }
    }
}

#[test]
fn reopen_open_o_abort_sigraise() {
    let t = tmp();
    let z = personality(t.path());
    let img = qcow2(t.path(), "a.qcow2");
    let script = [
        "-r",
        "-c",
        "reopen -w",
        "-c",
        "write -P 3 0 64k",
        "-c",
        "reopen -r",
        "-c",
        "write 0 64k",
        "-c",
        "reopen -o lazy-refcounts=off",
        "-c",
        "read -P 3 0 64k",
        "-c",
        "close",
        "-c",
        "open -o driver=raw",
        "-c",
        &format!("open -o driver=raw {img}"),
        "-c",
        "read -P 0x51 0 1",
    ];
    let mut a = script.to_vec();
    a.push(&img);
    let o = run(&z.join("qemu-io"), &a, None);
    let (out, err) = text(&o);
    assert_eq!(
        out,
        "wrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops; TIME (RATE)\n\
         read 65536/65536 bytes at offset 0\n64 KiB, 1 ops; TIME (RATE)\n\
         read 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME (RATE)\n"
    );
    assert!(err.contains("qemu-io: Block node is read-only\n"), "{err}");
    if have("qemu-io") {
        let r = run(Path::new("qemu-io"), &a, None);
        assert_eq!(text(&r).0, out);
    }
    let o = run(
        &bin("zcow-io"),
        &["-c", "sigraise 15", "-c", "length", &img],
        None,
    );
    assert_eq!(o.status.signal(), Some(libc::SIGTERM));
    assert_eq!(text(&o).0, "");
    let o = run(
        &bin("zcow-io"),
        &["-c", "write 0 512", "-c", "abort", &img],
        None,
    );
    assert_eq!(o.status.signal(), Some(libc::SIGABRT));
}

#[test]
fn raw_sizes_and_create() {
    let t = tmp();
    let short = t.path().join("short.raw");
    std::fs::write(&short, b"abc").unwrap();
    let o = run(
        &bin("zcow-io"),
        &["-f", "raw", "-c", "length", "-c", "read -v 0 4", s(&short)],
        None,
    );
    assert!(
        text(&o).0.starts_with("512 bytes\n00000000:  61 62 63 00"),
        "{:?}",
        text(&o)
    );

    let raw = t.path().join("c.raw");
    let o = run(
        &bin("zcow-img"),
        &["create", "-f", "raw", s(&raw), "1234"],
        None,
    );
    assert_eq!(
        text(&o).0,
        format!("Formatting '{}', fmt=raw size=1234\n", s(&raw))
    );
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1536);
    let q = t.path().join("c.qcow2");
    common::ok(
        s(&bin("zcow-img")),
        &["create", "-q", "-f", "qcow2", s(&q), "1234"],
    );
    let o = run(&bin("zcow-io"), &["-c", "length", s(&q)], None);
    assert_eq!(text(&o).0, "1.500 KiB\n");
    if have("qemu-img") {
        let r = t.path().join("r.raw");
        let o = run(
            Path::new("qemu-img"),
            &["create", "-f", "raw", s(&r), "1234"],
            None,
        );
        assert_eq!(
            text(&o).0,
            format!("Formatting '{}', fmt=raw size=1234\n", s(&r))
        );
        assert_eq!(std::fs::metadata(&r).unwrap().len(), 1536);
        let o = run(Path::new("qemu-io"), &["-c", "length", s(&q)], None);
        assert_eq!(text(&o).0, "1.500 KiB\n");
    }
}

#[test]
fn create_with_missing_backing_file_words_it_as_qemu_img() {
    let t = tmp();
    let z = personality(t.path());
    let img = t.path().join("x.qcow2");
    let back = t.path().join("none");
    let args = [
        "create",
        "-f",
        "qcow2",
        "-b",
        s(&back),
        "-F",
        "qcow2",
        s(&img),
    ];
    let o = run(&z.join("qemu-img"), &args, None);
    let want = format!(
        "qemu-img: {}: Could not open '{}': No such file or directory\nCould not open backing image.\n",
        s(&img),
        s(&back)
    );
    assert_eq!(text(&o).1, want);
    assert_eq!(o.status.code(), Some(1));
    if have("qemu-img") {
        let r = run(Path::new("qemu-img"), &args, None);
        assert_eq!(text(&r).1, want);
    }
}

#[test]
fn snapshot_mode_keeps_writes_in_memory() {
    let t = tmp();
    let img = qcow2(t.path(), "s.qcow2");
    let a = [
        "-s",
        "-c",
        "write -P 5 0 100k",
        "-c",
        "read -P 5 0 100k",
        "-c",
        "map",
        &img,
    ];
    let o = run(&bin("zcow-io"), &a, None);
    assert!(o.status.success(), "{:?}", text(&o));
    let after = run(&bin("zcow-io"), &["-c", "read -P 0 0 100k", &img], None);
    assert!(!text(&after).0.contains("Pattern verification failed"));
    if have("qemu-io") {
        let r = run(Path::new("qemu-io"), &a, None);
        assert_eq!(text(&o).0, text(&r).0);
    }
}

#[test]
fn raw_offset_and_size_window() {
    let t = tmp();
    let f = t.path().join("w.raw");
    std::fs::write(&f, vec![0u8; 4096]).unwrap();
    let json = format!(
        r#"json:{{"driver":"raw","offset":"512","size":"512","file":{{"driver":"file","filename":"{}"}}}}"#,
        s(&f)
    );
    let a = [
        "-c",
        "write -P 10 0 512",
        "-c",
        "write 512 1",
        "-c",
        "reopen -o driver=raw,offset=1536,size=1024",
        "-c",
        "write -P 11 1023 1",
        &json,
    ];
    let o = run(&bin("zcow-io"), &a, None);
    let (out, _) = text(&o);
    assert_eq!(
        out,
        "wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME (RATE)\n\
         write failed: Input/output error\n\
         wrote 1/1 bytes at offset 1023\n1 bytes, 1 ops; TIME (RATE)\n"
    );
    let d = std::fs::read(&f).unwrap();
    assert!(d[..512].iter().all(|&b| b == 0));
    assert!(d[512..1024].iter().all(|&b| b == 10));
    assert_eq!(d[1024], 0);
    assert_eq!((d[2558], d[2559], d[2560]), (0, 11, 0));
    if have("qemu-io") {
        std::fs::write(&f, vec![0u8; 4096]).unwrap();
        let r = run(Path::new("qemu-io"), &a, None);
        assert_eq!(text(&r).0, out);
        assert_eq!(std::fs::read(&f).unwrap(), d);
    }
}

#[test]
fn too_large_image_is_refused_in_qemu_img_words() {
    let t = tmp();
    let z = personality(t.path());
    let img = t.path().join("big.qcow2");
    let args = ["create", "-f", "qcow2", s(&img), "1E"];
    let want_out = format!(
        "Formatting '{}', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1152921504606846976 lazy_refcounts=off refcount_bits=16\n",
        s(&img)
    );
    let want_err = format!(
        "qemu-img: {}: The image size is too large for file format 'qcow2' (try using a larger cluster size)\n",
        s(&img)
    );
    let o = run(&z.join("qemu-img"), &args, None);
    assert_eq!(text(&o), (want_out.clone(), want_err.clone()));
    assert_eq!(o.status.code(), Some(1));
    if have("qemu-img") {
        let r = run(Path::new("qemu-img"), &args, None);
        assert_eq!(text(&r), (want_out, want_err));
    }
}
