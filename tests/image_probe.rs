//! Images zcow cannot read are recognised by their magic and refused by
//! name, never opened (and overwritten) as raw; a guessed raw image gets
//! QEMU's warning and its block 0 protected; a directory is refused as
//! qemu-img refuses it.

mod common;

use common::{bin, have, s, tmp};
use std::process::{Command, Output};

fn zrun(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).output().expect("run")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn other_formats_are_refused_by_name_and_left_intact() {
    if !have("qemu-img") {
        return;
    }
    let d = tmp();
    for fmt in [
        "vdi",
        "vmdk",
        "vhdx",
        "qed",
        "vpc",
        "parallels",
        "qcow",
        "luks",
    ] {
        let p = d.path().join(format!("x.{fmt}"));
        let mut c = Command::new("qemu-img");
        c.args(["create", "-q", "-f", fmt]);
        if fmt == "luks" {
            c.args([
                "--object",
                "secret,id=s0,data=pw",
                "-o",
                "key-secret=s0,iter-time=10",
            ]);
        }
        let o = c.arg(&p).arg("1M").output().unwrap();
        assert!(o.status.success(), "{fmt}: {}", err(&o));
        let before = std::fs::read(&p).unwrap();
        let msg = format!(
            "Image is in {fmt} format, which zcow does not support (zcow reads qcow2 and raw; \
             use -f raw to access the file's bytes)"
        );
        let o = zrun("zcow-io", &["-c", "write 0 512", s(&p)]);
        assert_eq!(o.status.code(), Some(1), "{fmt}");
        assert_eq!(
            err(&o),
            format!(
                "zcow-io: can't open device {0}: Could not open '{0}': {msg}\n",
                s(&p)
            )
        );
        assert_eq!(std::fs::read(&p).unwrap(), before, "{fmt} image changed");
        let o = zrun("zcow-img", &["info", s(&p)]);
        assert_eq!(o.status.code(), Some(1), "{fmt}");
        assert_eq!(
            err(&o),
            format!("zcow-img: Could not open '{}': {msg}\n", s(&p))
        );
    }
}

#[test]
fn guessed_raw_warns_and_protects_block_0() {
    let d = tmp();
    let p = d.path().join("r.img");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let magic = d.path().join("magic");
    std::fs::write(&magic, b"QFI\xfb\0\0\0\x03").unwrap();
    let warning = format!(
        "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
         Specify the 'raw' format explicitly to remove the restrictions.\n",
        s(&p)
    );
    let w0 = format!("write -s {} 0 8", s(&magic));
    let w1 = format!("write -s {} 512 8", s(&magic));
    let o = zrun(
        "zcow-io",
        &["-c", "write -P 0x51 0 512", "-c", &w0, "-c", &w1, s(&p)],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(err(&o).starts_with(&warning), "{}", err(&o));
    assert!(out.contains("wrote 512/512 bytes at offset 0"), "{out}");
    assert!(
        out.contains("write failed: Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("wrote 8/8 bytes at offset 512"), "{out}");
    let data = std::fs::read(&p).unwrap();
    assert_eq!(&data[..8], &[0x51; 8], "block 0 was overwritten");
    assert_eq!(&data[512..516], b"QFI\xfb");
    // Read-only: no warning. Explicit -f raw: no warning, no restriction.
    let o = zrun("zcow-io", &["-r", "-c", "read 0 512", s(&p)]);
    assert_eq!((o.status.code(), err(&o).as_str()), (Some(0), ""));
    let o = zrun("zcow-io", &["-f", "raw", "-c", &w0, s(&p)]);
    assert_eq!((o.status.code(), err(&o).as_str()), (Some(0), ""));
    assert_eq!(&std::fs::read(&p).unwrap()[..4], b"QFI\xfb");
}

#[test]
fn info_of_a_directory_is_refused_as_qemu_img_does() {
    let d = tmp();
    let dir = d.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let o = zrun("zcow-img", &["info", s(&dir)]);
    let msg = format!(
        "Could not open '{0}': 'file' driver requires '{0}' to be a regular file\n",
        s(&dir)
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), format!("zcow-img: {msg}"));
    if have("qemu-img") {
        let q = Command::new("qemu-img")
            .arg("info")
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(q.status.code(), Some(1));
        assert_eq!(err(&q), format!("qemu-img: {msg}"));
    }
}
