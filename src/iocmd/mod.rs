//! The qemu-io command language of `zcow-io`.
//!
//! Command lines are split and parsed as qemu-io does ([`parse::parse_line`],
//! pure and safe to fuzz), then run against a [`BlockDevice`] by a
//! [`Session`], which prints exactly what qemu-io prints: the same report
//! lines, hex dumps, zone report lines and error messages, on the same
//! stream (stdout or stderr). A command that fails makes the exit code 1.
//!
//! ```
//! use std::sync::Arc;
//! use zcow::iocmd::{normalize_timing, run_script};
//! use zcow::raw::RawDevice;
//!
//! let dev = Arc::new(RawDevice::memory(1 << 20).unwrap());
//! let out = run_script(dev, &["write -P 0xab 0 512", "read -q -P 0xab 0 512"]);
//! assert_eq!(
//!     normalize_timing(&out.stdout),
//!     "wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME (RATE)\n"
//! );
//! assert_eq!(out.exit_code, 0);
//! ```

pub mod format;
pub mod getopt;
pub mod number;
pub mod parse;
pub mod session;
pub mod table;

pub use format::normalize_timing;
pub use parse::{parse_line, Command, ParseError};
pub use session::{ScriptOutput, Session, Status};

use crate::device::BlockDevice;
use std::sync::Arc;

/// Run `commands` (as given with `-c`) on `dev` and return stdout, stderr
/// and the exit code qemu-io would have: the helper for scenario tests
/// ("these commands print exactly this").
pub fn run_script(dev: Arc<dyn BlockDevice>, commands: &[&str]) -> ScriptOutput {
    Session::new(Some(dev)).run_script(commands)
}
