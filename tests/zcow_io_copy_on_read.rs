//! zcow-io `-C` (copy-on-read, as qemu-io -C) and `zone_append -P`.

mod common;

use common::{bin, have, ok, run, s, tmp};

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn copy_on_read_fills_the_top_image() {
    let t = tmp();
    let zi = bin("zcow-img");
    let base = t.path().join("b.qcow2");
    let top = t.path().join("t.qcow2");
    ok(s(&zi), &["create", "-q", "-f", "qcow2", s(&base), "4M"]);
    ok(
        s(&bin("zcow-io")),
        &["-c", "write -P 0x42 64k 128k", s(&base)],
    );
    ok(
        s(&zi),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    // A plain read copies nothing.
    ok(s(&bin("zcow-io")), &["-c", "read -P 0x42 64k 4k", s(&top)]);
    let map = ok(s(&bin("zcow-io")), &["-c", "alloc 0 4M", s(&top)]);
    assert_eq!(map, "0/4194304 bytes allocated at offset 0 bytes\n");
    // With -C the whole cluster around the read is copied up; zeroes of the
    // backing file elsewhere are not.
    let o = run(
        s(&bin("zcow-io")),
        &[
            "-C",
            "-c",
            "read -P 0x42 70k 4k",
            "-c",
            "read -P 0 1M 4k",
            s(&top),
        ],
    );
    assert!(!out(&o).contains("failed"), "{}", out(&o));
    let map = ok(s(&bin("zcow-io")), &["-c", "alloc 0 4M", s(&top)]);
    assert_eq!(map, "65536/4194304 bytes allocated at offset 0 bytes\n");
    // QEMU sees the copied cluster in the top image (depth 0), the rest
    // still in the backing file.
    if have("qemu-img") {
        let m = ok(
            "qemu-img",
            &["map", "--output=json", "-f", "qcow2", s(&top)],
        );
        assert!(
            m.contains("\"start\": 65536, \"length\": 65536, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true"),
            "{m}"
        );
        assert!(
            m.contains("\"start\": 131072, \"length\": 65536, \"depth\": 1, \"present\": true, \"zero\": false, \"data\": true"),
            "{m}"
        );
    }
}

#[test]
fn copy_on_read_is_refused_on_zoned_images() {
    let t = tmp();
    let img = t.path().join("z.qcow2");
    ok(
        s(&bin("zcow-img")),
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "zone.mode=host-managed,zone.size=1M",
            s(&img),
            "8M",
        ],
    );
    let o = run(s(&bin("zcow-io")), &["-C", "-c", "read 0 4k", s(&img)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("copy-on-read (-C) on a zoned image"));
    // zone_append -P fills with the given byte.
    let o = run(
        s(&bin("zcow-io")),
        &[
            "-c",
            "zap -P 0x5a -p 2M 8k",
            "-c",
            "read -P 0x5a 2M 8k",
            s(&img),
        ],
    );
    let text = out(&o);
    assert!(
        text.starts_with("After zap done, the append sector is 0x1000\n"),
        "{text}"
    );
    assert!(!text.contains("failed"), "{text}");
}
