//! The qemu-io command language of `zcow-io`.
//!
//! Commands (`help` lists them): `read`/`r`, `readv`, `write`/`w`,
//! `writev`, `aio_read`, `aio_write`, `aio_flush`, `flush`/`f`,
//! `discard`/`d`, `alloc`/`a`, `map`, `info`/`i`, `length`/`l`,
//! `zone_report`/`zrp`, `zone_open`/`zo`, `zone_close`/`zc`,
//! `zone_finish`/`zf`, `zone_reset`/`zrs`, `zone_append`/`zap`,
//! `open`/`o`, `reopen`, `close`/`c`, `sleep`, `abort`, `sigraise`,
//! `help`/`?`, `quit`/`q`.
//!
//! Where zcow-io differs from qemu-io on purpose:
//! - `aio_*` results print at `aio_flush` (or close/exit) in issue order;
//!   qemu-io prints them when they complete, in completion order.
//! - `zap off len` works with a single length (qemu-io wants at least
//!   three arguments), and `-p` may come anywhere.
//! - `open` takes `-r`, `-f FMT` and `-o` with the driver, read-only and
//!   file-name keys (qemu-io: more); `reopen -c`/`-o` options other than the
//!   raw window are recorded, not applied.
//! - `write -b` and `read -b` are parsed and checked as in qemu-io but
//!   fail with "Operation not supported" (no VM-state area in the device
//!   interface). `write -c` writes compressed clusters as qemu-io does;
//!   over an allocated cluster it replaces it (qemu-io fails with EIO).
//! - A failed request also prints the full error (zone, condition, write
//!   pointer) on stderr; stdout has only qemu-io's `... failed: strerror`.
//!   Errnos are the device's ([`crate::device::DeviceError::errno`]), except
//!   requests past the end, which are EIO as in qemu.
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
