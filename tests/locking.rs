//! Image locking against the real QEMU tools, both ways: an image served by
//! zcow-nbd is refused to qemu-io, zcow-io and zcow-img's writers; an image
//! served by qemu-nbd is refused to zcow-io and zcow-img (unless -U).

mod common;
mod common_nbd;

use common::{bin, have, s, tmp};
use common_nbd::ServerProc;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn zrun(name: &str, args: &[&str]) -> Output {
    run(s(&bin(name)), args)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The command failed with exit 1 and exactly `stderr`.
fn refused(o: Output, stderr: &str) {
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert_eq!(err, stderr, "stdout: {out}");
}

fn succeeded(o: Output) -> String {
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    out
}

fn hint(path: &str) -> String {
    format!("Is another process using the image [{path}]?")
}

fn plain(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    succeeded(run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&p), "4M"],
    ));
    s(&p).to_string()
}

fn zoned(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    succeeded(zrun(
        "zcow-img",
        &[
            "create",
            "-q",
            "-o",
            "zone.mode=host-managed,zone.size=1M",
            s(&p),
            "8M",
        ],
    ));
    s(&p).to_string()
}

/// Wait until some process holds a lock on byte 100 of `image` (`child`
/// opened it), as /proc/locks shows.
fn wait_locked(image: &str, child: &mut Child) {
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(image).unwrap());
    let start = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        if locks
            .lines()
            .any(|l| l.contains(&format!(":{ino} ")) && l.contains(" 100 "))
        {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the opener of {image} exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{image} was not locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A qemu-nbd serving an image on a Unix socket, killed by PID on drop.
struct QemuNbd(Child);

impl QemuNbd {
    fn start(image: &str, extra: &[&str], sock: &Path) -> QemuNbd {
        let child = Command::new("qemu-nbd")
            .args(["-t", "-k", s(sock)])
            .args(extra)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        let mut child = child;
        // qemu-nbd may listen before it opened the image: wait for its lock.
        wait_locked(image, &mut child);
        QemuNbd(child)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A zcow-io (or qemu-io) holding an image open (it waits for commands on
/// stdin), so its locks stay; killed by PID on drop.
struct Holder(Child);

impl Holder {
    fn start(args: &[&str], image: &str) -> Holder {
        Self::start_prog(&bin("zcow-io"), args, image)
    }

    fn start_prog(prog: &Path, args: &[&str], image: &str) -> Holder {
        let mut child = Command::new(prog)
            .args(args)
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn zcow-io");
        wait_locked(image, &mut child);
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn zcow_nbd_serving_refuses_qemu_and_zcow_writers() {
    if !have("qemu-io") || !have("qemu-img") {
        return;
    }
    let dir = tmp();
    let img = plain(dir.path(), "p.qcow2");
    let srv = ServerProc::start(Path::new(&img), &[]);
    let h = hint(&img);

    refused(
        run("qemu-io", &["-c", "write 0 512", &img]),
        &format!("qemu-io: can't open device {img}: Failed to get \"write\" lock\n{h}\n"),
    );
    refused(
        zrun("zcow-io", &["-c", "write 0 512", &img]),
        &format!("zcow-io: can't open device {img}: Failed to get \"write\" lock\n{h}\n"),
    );
    refused(
        run("qemu-img", &["info", &img]),
        &format!("qemu-img: Could not open '{img}': Failed to get shared \"write\" lock\n{h}\n"),
    );
    refused(
        zrun("zcow-img", &["info", &img]),
        &format!("zcow-img: Could not open '{img}': Failed to get shared \"write\" lock\n{h}\n"),
    );
    // -U: both read the served image.
    succeeded(run("qemu-img", &["info", "-U", &img]));
    let out = succeeded(zrun("zcow-img", &["info", "-U", &img]));
    assert!(
        out.starts_with(&format!("image: {img}\nfile format: qcow2\n")),
        "{out}"
    );
    succeeded(zrun("zcow-io", &["-r", "-U", "-c", "read 0 512", &img]));
    // Once the server is gone, writers get in again.
    drop(srv);
    succeeded(zrun("zcow-io", &["-c", "write 0 512", &img]));
    succeeded(run("qemu-io", &["-c", "write 0 512", &img]));
}

#[test]
fn qemu_nbd_serving_refuses_zcow() {
    if !have("qemu-nbd") || !have("qemu-img") {
        return;
    }
    let dir = tmp();
    let img = plain(dir.path(), "p.qcow2");
    let sock = dir.path().join("sock");
    let h = hint(&img);
    {
        let _srv = QemuNbd::start(&img, &[], &sock);
        refused(
            zrun("zcow-io", &["-c", "write 0 512", &img]),
            &format!("zcow-io: can't open device {img}: Failed to get \"write\" lock\n{h}\n"),
        );
        refused(
            zrun("zcow-io", &["-r", "-c", "read 0 512", &img]),
            &format!(
                "zcow-io: can't open device {img}: Failed to get shared \"write\" lock\n{h}\n"
            ),
        );
        refused(
            zrun("zcow-img", &["info", &img]),
            &format!(
                "zcow-img: Could not open '{img}': Failed to get shared \"write\" lock\n{h}\n"
            ),
        );
        refused(
            zrun("zcow-img", &["check", &img]),
            &format!(
                "zcow-img: Could not open '{img}': Failed to get shared \"write\" lock\n{h}\n"
            ),
        );
        refused(
            zrun("zcow-img", &["check", "-r", "all", &img]),
            &format!("zcow-img: Could not open '{img}': Failed to get \"write\" lock\n{h}\n"),
        );
        // Raw access to a qcow2 served as qcow2 is refused too (qemu-nbd
        // does not share write on its metadata file).
        refused(
            zrun("zcow-io", &["-f", "raw", "-c", "write 0 512", &img]),
            &format!("zcow-io: can't open device {img}: Failed to get \"write\" lock\n{h}\n"),
        );
        let out = succeeded(zrun("zcow-img", &["info", "-U", &img]));
        assert!(out.contains("file format: qcow2"), "{out}");
        let out = succeeded(zrun("zcow-img", &["check", "-U", &img]));
        assert!(out.contains("No errors were found on the image."), "{out}");
        succeeded(zrun("zcow-io", &["-r", "-U", "-c", "read 0 512", &img]));
        // The interactive open command takes -U too, as qemu-io's.
        let o = &format!("open -r -U {img}");
        let out = succeeded(zrun("zcow-io", &["-c", o, "-c", "read 0 512"]));
        assert!(out.starts_with("read 512/512 bytes at offset 0\n"), "{out}");
        refused(
            zrun("zcow-io", &["-c", &format!("open -U {img}")]),
            &format!(
                "zcow-io: can't open device {img}: force-share=on can only be used with read-only images\n"
            ),
        );
        refused(
            zrun("zcow-io", &["-c", &format!("open -r {img}")]),
            &format!(
                "zcow-io: can't open device {img}: Failed to get shared \"write\" lock\n{h}\n"
            ),
        );
        // QEMU's own rule for -U: read-only only.
        refused(
            zrun("zcow-io", &["-U", "-c", "read 0 512", &img]),
            &format!(
                "zcow-io: can't open device {img}: force-share=on can only be used with read-only images\n"
            ),
        );
        refused(
            zrun("zcow-img", &["check", "-U", "-r", "all", &img]),
            &format!(
                "zcow-img: Could not open '{img}': force-share=on can only be used with read-only images\n"
            ),
        );
    }
    // A read-only qemu-nbd lets zcow readers in and keeps writers out.
    let _srv = QemuNbd::start(&img, &["-r"], &dir.path().join("sock2"));
    succeeded(zrun("zcow-img", &["info", &img]));
    refused(
        zrun("zcow-io", &["-c", "write 0 512", &img]),
        &format!("zcow-io: can't open device {img}: Failed to get \"write\" lock\n{h}\n"),
    );
}

#[test]
fn served_zoned_image_refuses_second_server_check_repair_and_set_cond() {
    if !have("qemu-io") {
        return;
    }
    let dir = tmp();
    let img = zoned(dir.path(), "z.qcow2");
    let _srv = ServerProc::start(Path::new(&img), &[]);
    let h = hint(&img);
    let w = format!("Failed to get \"write\" lock\n{h}");

    // A second zcow-nbd on the same image.
    let o = Command::new(bin("zcow-nbd"))
        .args(["-p", &common_nbd::free_port().to_string(), &img])
        .output()
        .unwrap();
    refused(
        o,
        &format!("zcow-nbd: Failed to blk_new_open '{img}': {w}\n"),
    );
    refused(
        zrun("zcow-img", &["check", "-r", "all", &img]),
        &format!("zcow-img: Could not open '{img}': {w}\n"),
    );
    refused(
        zrun("zcow-img", &["repair", &img]),
        &format!("zcow-img: Could not open '{img}': {w}\n"),
    );
    let o = zrun("zcow-img", &["zone", "set-cond", &img, "2", "offline"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("zcow-img: Could not open '{img}': {w}\n")),
        "{err}"
    );
    assert!(err.contains("--control"), "{err}");
    refused(
        zrun("zcow-img", &["zone", "report", &img]),
        &format!("zcow-img: Could not open '{img}': Failed to get shared \"write\" lock\n{h}\n"),
    );
    let out = succeeded(zrun("zcow-img", &["zone", "report", "-U", &img]));
    assert!(out.contains("8 zones: "), "{out}");
    // qemu-io (which does not know the zoned feature) is stopped at the
    // lock, before it would look at the header.
    refused(
        run("qemu-io", &["-c", "write 0 512", &img]),
        &format!("qemu-io: can't open device {img}: {w}\n"),
    );
}

#[test]
fn backing_files_are_locked_as_qemu_locks_them() {
    if !have("qemu-io") || !have("qemu-img") || !have("qemu-nbd") {
        return;
    }
    let dir = tmp();
    let base = plain(dir.path(), "base.qcow2");
    let top: PathBuf = dir.path().join("top.qcow2");
    let top = s(&top).to_string();
    succeeded(run(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
        ],
    ));
    // zcow-io writing the top holds its backing file as a reader.
    {
        let _h = Holder::start(&[], &top);
        refused(
            run("qemu-io", &["-c", "write 0 512", &base]),
            &format!(
                "qemu-io: can't open device {base}: Failed to get \"write\" lock\n{}\n",
                hint(&base)
            ),
        );
        succeeded(run("qemu-img", &["info", &base]));
    }
    // qemu-nbd serving the top: zcow may read the backing file, not write it.
    let _srv = QemuNbd::start(&top, &[], &dir.path().join("sock"));
    succeeded(zrun("zcow-img", &["info", &base]));
    refused(
        zrun("zcow-io", &["-c", "write 0 512", &base]),
        &format!(
            "zcow-io: can't open device {base}: Failed to get \"write\" lock\n{}\n",
            hint(&base)
        ),
    );
}

/// zcow-nbd refuses an image another process holds with qemu-nbd's words
/// and exit code: both servers are started on an image qemu-io holds open,
/// read-write and with -r, and on a missing image.
#[test]
fn zcow_nbd_open_refusals_read_like_qemu_nbd() {
    if !have("qemu-io") || !have("qemu-nbd") || !have("qemu-img") {
        return;
    }
    let dir = tmp();
    let img = plain(dir.path(), "p.qcow2");
    let serve = |prog: &Path, extra: &[&str], image: &str, sock: &str| {
        let o = Command::new(prog)
            .args(["-t", "-k", s(&dir.path().join(sock))])
            .args(extra)
            .arg(image)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
        let (out, err) = text(&o);
        (o.status.code(), out, err)
    };
    let compare = |extra: &[&str], image: &str, what: &str| {
        let q = serve(Path::new("qemu-nbd"), extra, image, "q.sock");
        let z = serve(&bin("zcow-nbd"), extra, image, "z.sock");
        assert_eq!(q.0, Some(1), "qemu-nbd {what}: {q:?}");
        assert!(q.2.contains(what), "qemu-nbd {what}: {q:?}");
        let expected = q.2.replacen("qemu-nbd: ", "zcow-nbd: ", 1);
        assert_eq!(
            (z.0, z.1.as_str(), z.2.as_str()),
            (q.0, "", expected.as_str()),
            "{what}"
        );
    };
    {
        let _holder = Holder::start_prog(Path::new("qemu-io"), &[], &img);
        compare(&[], &img, "Failed to get \"write\" lock");
        compare(&["-r"], &img, "Failed to get shared \"write\" lock");
    }
    let missing = s(&dir.path().join("missing.qcow2")).to_string();
    compare(&[], &missing, "No such file or directory");
}
