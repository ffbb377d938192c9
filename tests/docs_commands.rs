//! Every shell example in README.md, docs/ and spec/ runs: each ```sh (or
//! ```bash) block is executed with bash -e in a scratch directory shared by
//! the blocks of one file (later blocks use what earlier ones made), with
//! zcow's binaries on PATH. Placeholders are filled in: the NBD port 10809
//! becomes a free port, `./target/release/` the built binaries, and a
//! server started with `&` is waited for until it listens. A block that
//! cannot run here (a kernel module, root-only system changes, the whole CI)
//! is marked by the line `<!-- docs-check: skip REASON -->` right before
//! its fence; every other block must exit 0.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Block {
    file: PathBuf,
    line: usize,
    text: String,
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    // Inside a fence: whether the block is kept, and the block so far.
    let mut open: Option<(bool, Block)> = None;
    let mut prev = "";
    for (i, l) in text.lines().enumerate() {
        let fence = l.trim_start().starts_with("```");
        match (&mut open, fence) {
            (Some(_), true) => {
                if let Some((true, b)) = open.take() {
                    out.push(b);
                }
            }
            (Some((_, b)), false) => {
                b.text.push_str(l);
                b.text.push('\n');
            }
            (None, true) => {
                let lang = l.trim_start().trim_start_matches('`').trim();
                let keep = (lang == "sh" || lang == "bash")
                    && !prev.trim_start().starts_with("<!-- docs-check: skip");
                let b = Block {
                    file: file.to_path_buf(),
                    line: i + 1,
                    text: String::new(),
                };
                open = Some((keep, b));
            }
            (None, false) => {}
        }
        prev = l;
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn prepare(script: &str, port: u16) -> String {
    // A server started with `&` is waited for until its port listens (read
    // from /proc/net/tcp, so no probe connection reaches it), at most 10 s.
    let mut s = format!(
        "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT\n\
         wait_listen() {{ for _ in $(seq 100); do \
         grep -q ':{port:04X} 00000000:0000 0A' /proc/net/tcp && return 0; sleep 0.1; done; }}\n"
    );
    for l in script.lines() {
        let l = l
            .replace("10809", &port.to_string())
            .replace("./target/release/", "")
            .replace("cargo build --release && ", "");
        s.push_str(&l);
        s.push('\n');
        let code = l.split(" #").next().unwrap_or("").trim_end();
        if code.ends_with('&') && !code.ends_with("&&") {
            s.push_str("wait_listen\n");
        }
    }
    s
}

#[test]
fn every_shell_example_in_the_docs_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "spec"] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        v.sort();
        files.extend(v);
    }
    let bin_dir = bin("zcow-img").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    let mut failures = Vec::new();
    for f in &files {
        let scratch = tmp();
        for b in blocks(f) {
            let script = prepare(&b.text, free_port());
            let o = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(scratch.path())
                .env("PATH", &path)
                .output()
                .unwrap();
            ran += 1;
            if !o.status.success() {
                failures.push(format!(
                    "{}:{} exited {:?}\n--- script\n{}--- stdout\n{}--- stderr\n{}",
                    b.file.strip_prefix(root).unwrap_or(&b.file).display(),
                    b.line,
                    o.status.code(),
                    script,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
    }
    eprintln!("docs examples: {ran} blocks run, {} failed", failures.len());
    assert!(ran >= 3, "found only {ran} shell blocks");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
