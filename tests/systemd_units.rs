//! The systemd unit examples in docs/systemd/ work: the service's
//! ExecStart, with its image path swapped for a test image, is run under
//! socket activation (nbdinfo hands it a listening socket through
//! LISTEN_FDS, as systemd does for the .socket unit) and serves the image.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/systemd")
            .join(name),
    )
    .unwrap()
}

#[test]
fn socket_activated_service_serves_the_image() {
    if !have("nbdinfo") {
        return;
    }
    let socket = unit("zcow-nbd.socket");
    assert!(
        socket.contains("\nListenStream=127.0.0.1:10809\n"),
        "{socket}"
    );
    let service = unit("zcow-nbd.service");
    assert!(service.contains("\nRequires=zcow-nbd.socket\n"));
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], "/usr/local/bin/zcow-nbd");
    assert_eq!(*words.last().unwrap(), "/var/lib/zcow/disk.qcow2");

    let d = tmp();
    let img = d.path().join("disk.qcow2");
    let o = run(
        s(&bin("zcow-img")),
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "zone.mode=host-managed,zone.size=1M",
            s(&img),
            "16M",
        ],
    );
    assert!(o.status.success());
    let mut cmd = Command::new("nbdinfo");
    cmd.args(["--size", "--", "["]).arg(bin("zcow-nbd"));
    cmd.args(&words[1..words.len() - 1]).arg(&img).arg("]");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "16777216");
}
