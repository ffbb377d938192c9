//! TLS: certificates generated with openssl; QEMU (tls-creds-x509),
//! nbdinfo (nbds://) and our own client; plaintext refused before any
//! export data; client certificates when required.

mod common_nbd;

use common_nbd::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use zcow::nbd::proto::*;

fn openssl(dir: &Path, args: &[&str]) {
    ok(Command::new("openssl").current_dir(dir).args(args));
}

/// CA, server (SAN 127.0.0.1/localhost) and client certificates in QEMU's
/// and libnbd's file names.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=zcow test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca-cert.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    a.extend_from_slice(&ec);
    openssl(dir, &a);
    for (who, eku, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        ("client", "clientAuth", "subjectAltName=DNS:client"),
    ] {
        let key = format!("{who}-key.pem");
        let csr = format!("{who}.csr");
        let cert = format!("{who}-cert.pem");
        let subj = format!("/CN={who}");
        let mut a = vec!["req", "-new", "-subj", &subj, "-keyout", &key, "-out", &csr];
        a.extend_from_slice(&ec);
        openssl(dir, &a);
        let ext = dir.join(format!("{who}.ext"));
        std::fs::write(
            &ext,
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\n{san}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
    }
    // Keys must be PKCS#8 or SEC1 PEM; openssl 3 writes PKCS#8 already.
}

fn tls_ready() -> Option<tempfile::TempDir> {
    if !need("openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    Some(dir)
}

fn image(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("disk.raw");
    std::fs::write(&p, pattern(5, 4 << 20)).unwrap();
    p
}

#[test]
fn tls_qemu_nbdinfo_and_own_client() {
    let Some(certs) = tls_ready() else { return };
    let img = image(certs.path());
    let creds = certs.path().to_str().unwrap().to_string();
    let srv = ServerProc::start(&img, &["--tls-creds", &creds, "-e", "0"]);
    let port = srv.port.to_string();
    if need("qemu-img") {
        let obj = format!("tls-creds-x509,id=tls0,endpoint=client,dir={creds}");
        let opts = format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},tls-creds=tls0"
        );
        let out =
            ok(Command::new("qemu-img").args(["info", "--object", &obj, "--image-opts", &opts]));
        assert!(out.contains("virtual size: 4 MiB"), "{out}");
        let local = certs.path().join("copy.raw");
        let opts_raw = format!("driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port={port},file.tls-creds=tls0");
        ok(Command::new("qemu-img")
            .args([
                "convert",
                "--object",
                &obj,
                "--image-opts",
                &opts_raw,
                "-O",
                "raw",
            ])
            .arg(&local));
        assert_eq!(std::fs::read(&local).unwrap(), std::fs::read(&img).unwrap());
        // Plaintext QEMU is refused.
        let o = run(
            Command::new("qemu-img").args(["info", &srv.uri()]),
            Duration::from_secs(30),
        );
        assert!(!o.status.success());
    }
    if need("nbdinfo") {
        let uri = format!("nbds://127.0.0.1:{port}/?tls-certificates={creds}");
        let out = ok(Command::new("nbdinfo").arg(&uri));
        assert!(out.contains("newstyle-fixed with TLS"), "{out}");
        assert!(out.contains("export-size: 4194304"), "{out}");
        let o = run(
            Command::new("nbdinfo").arg(srv.uri()),
            Duration::from_secs(30),
        );
        assert!(!o.status.success());
    }
    if need("nbdcopy") {
        // Many requests in flight over one TLS session, both directions.
        let uri = format!("nbds://127.0.0.1:{port}/?tls-certificates={creds}");
        let out = certs.path().join("nbdcopy.raw");
        ok(Command::new("nbdcopy")
            .args(["-R", "32"])
            .arg(&uri)
            .arg(&out));
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
        let src = certs.path().join("src.raw");
        std::fs::write(&src, pattern(77, 4 << 20)).unwrap();
        ok(Command::new("nbdcopy")
            .args(["-R", "32", "--flush"])
            .arg(&src)
            .arg(&uri));
        ok(Command::new("nbdcopy").arg(&uri).arg(&out));
        assert_eq!(std::fs::read(&out).unwrap(), pattern(77, 4 << 20));
        // Put the original content back for the checks below.
        let orig = certs.path().join("orig.raw");
        std::fs::write(&orig, pattern(5, 4 << 20)).unwrap();
        ok(Command::new("nbdcopy").arg(&orig).arg(&uri));
    }
    // Our client.
    let uri = format!("nbds://127.0.0.1:{port}/?tls-certificates={creds}");
    let dev = zcow::nbd::connect_uri(&uri).expect("TLS connect");
    let mut b = vec![0u8; 1 << 20];
    dev.read(1 << 20, &mut b).unwrap();
    assert!(
        b == pattern(5, 4 << 20)[1 << 20..2 << 20],
        "content differs"
    );
    dev.write(0, &[1, 2, 3], true).unwrap();
    let mut b = [0u8; 3];
    dev.read(0, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3]);
}

#[test]
fn tls_required_refuses_plaintext_before_export_data() {
    let Some(certs) = tls_ready() else { return };
    let img = image(certs.path());
    let creds = certs.path().to_str().unwrap().to_string();
    let srv = ServerProc::start(&img, &["--tls-creds", &creds, "-e", "0"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    for opt in [
        OPT_GO,
        OPT_INFO,
        OPT_LIST,
        OPT_STRUCTURED_REPLY,
        OPT_SET_META_CONTEXT,
    ] {
        let data: &[u8] = if opt == OPT_GO || opt == OPT_INFO {
            &[0, 0, 0, 0, 0, 0]
        } else {
            &[]
        };
        write_option(&mut s, opt, data).unwrap();
        let r = read_option_reply(&mut s, 1 << 16).unwrap();
        assert_eq!(r.typ, REP_ERR_TLS_REQD, "option {opt}");
    }
    // EXPORT_NAME in plaintext: just closed, no size sent.
    write_option(&mut s, OPT_EXPORT_NAME, b"").unwrap();
    let mut b = [0u8; 8];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn tls_client_certificate_required() {
    let Some(certs) = tls_ready() else { return };
    let img = image(certs.path());
    let creds = certs.path().to_str().unwrap().to_string();
    let srv = ServerProc::start(
        &img,
        &[
            "--tls-creds",
            &creds,
            "--tls-require-client-cert",
            "-e",
            "0",
        ],
    );
    let with = format!("nbds://127.0.0.1:{}/?tls-certificates={creds}", srv.port);
    assert!(zcow::nbd::connect_uri(&with).is_ok());
    // A directory with only the CA: no client certificate, refused.
    let ca_only = tempfile::tempdir().unwrap();
    std::fs::copy(
        certs.path().join("ca-cert.pem"),
        ca_only.path().join("ca-cert.pem"),
    )
    .unwrap();
    let without = format!(
        "nbds://127.0.0.1:{}/?tls-certificates={}",
        srv.port,
        ca_only.path().display()
    );
    let r = zcow::nbd::connect_uri(&without);
    assert!(r.is_err(), "connected without a client certificate");
    if need("nbdinfo") {
        let out = ok(Command::new("nbdinfo").arg("--size").arg(&with));
        assert_eq!(out.trim(), "4194304");
    }
}
