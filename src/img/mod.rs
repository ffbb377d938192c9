//! The logic behind `zcow-img` commands (the binary only parses arguments).

pub mod amend;
pub mod compare;
pub mod convert;
pub mod create;
pub mod info;
pub mod map;
pub mod measure;
pub mod zone;
pub mod zonemap;

use crate::device::{BlockDevice, DeviceError};
use crate::open::{open_device, OpenOptions};
use std::path::Path;
use std::sync::Arc;

/// Errors of the image commands, split by how the binary reports them.
#[derive(Debug, thiserror::Error)]
pub enum ImgError {
    /// Bad arguments: the binary adds qemu-img's `Try '... --help'` hint.
    #[error("{0}")]
    Usage(String),
    /// An image could not be opened (qemu-img compare exits 2 for these).
    #[error("{0}")]
    Open(String),
    /// The command itself failed.
    #[error("{0}")]
    Failed(String),
}

/// Result alias of the image commands.
pub type ImgResult<T> = std::result::Result<T, ImgError>;

/// Open `name` (a file or an NBD URI) as a block device, with an error
/// naming it as qemu-img does (`Could not open 'NAME': ...`).
pub fn open_named(
    name: &str,
    format: Option<&str>,
    read_only: bool,
) -> ImgResult<Arc<dyn BlockDevice>> {
    if let Some(f) = format {
        if f != "raw" && f != "qcow2" {
            return Err(ImgError::Open(format!("Unknown driver '{f}'")));
        }
    }
    let opts = OpenOptions {
        format: format.map(str::to_string),
        read_only,
        allow_backing: true,
    };
    open_device(Path::new(name), &opts).map_err(|e| ImgError::Open(open_message(name, &e)))
}

/// `Could not open 'NAME': why`, without repeating the prefix the device
/// layer may already have put there.
pub fn open_message(name: &str, e: &DeviceError) -> String {
    let m = e.to_string();
    if m.starts_with("Could not open") {
        m
    } else {
        format!("Could not open '{name}': {m}")
    }
}

/// Whether `name` is an NBD URI rather than a file.
pub fn is_uri(name: &str) -> bool {
    ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether `name` is read through the device layer rather than as an image
/// file: an NBD URI, or a host-managed zoned block device of the host
/// (zones from the kernel).
pub fn is_device(name: &str) -> bool {
    is_uri(name) || crate::hostdev::is_host_managed(Path::new(name))
}

/// Whether every byte of `b` is zero (word at a time).
pub fn is_zero(b: &[u8]) -> bool {
    // SAFETY-free fast path: compare 16-byte chunks, then the tail.
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        let mut a = [0u8; 16];
        a.copy_from_slice(c);
        if u128::from_ne_bytes(a) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}
