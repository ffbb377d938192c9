//! Busybox-style personality: zcow's binaries invoked under QEMU's names
//! (`qemu-img`, `qemu-io`, `qemu-nbd`, e.g. through symlinks) print QEMU's
//! program names, prompts and message prefixes, so scripts written for
//! QEMU's tools (its own iotests among them) run unchanged. Under their own
//! names they keep zcow's.
//!
//! The choice is made once per process from `argv[0]` ([`init`]); library
//! code that prefixes messages asks [`name`].

use std::sync::atomic::{AtomicBool, Ordering};

/// Which of the three tools a message is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `zcow-img` / `qemu-img`.
    Img,
    /// `zcow-io` / `qemu-io`.
    Io,
    /// `zcow-nbd` / `qemu-nbd`.
    Nbd,
}

static QEMU: AtomicBool = AtomicBool::new(false);

/// Whether a program invoked as `argv0` takes QEMU's names: its file name
/// starts with `qemu-`.
pub fn is_qemu_name(argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    base.starts_with("qemu-")
}

/// Choose the personality from this process's `argv[0]`; returns whether
/// QEMU's names are in use.
pub fn init() -> bool {
    let argv0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let q = is_qemu_name(&argv0);
    QEMU.store(q, Ordering::Relaxed);
    q
}

/// Whether QEMU's names are in use (set by [`init`]).
pub fn is_qemu() -> bool {
    QEMU.load(Ordering::Relaxed)
}

/// The program name to print for `tool` under the current personality.
pub fn name(tool: Tool) -> &'static str {
    match (tool, is_qemu()) {
        (Tool::Img, false) => "zcow-img",
        (Tool::Io, false) => "zcow-io",
        (Tool::Nbd, false) => "zcow-nbd",
        (Tool::Img, true) => "qemu-img",
        (Tool::Io, true) => "qemu-io",
        (Tool::Nbd, true) => "qemu-nbd",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_names_by_file_name() {
        assert!(is_qemu_name("/tmp/x/qemu-io"));
        assert!(is_qemu_name("qemu-img"));
        assert!(!is_qemu_name("/usr/bin/zcow-io"));
        assert!(!is_qemu_name("/opt/qemu-x/zcow-io"));
    }
}
