//! Errors of the format layer.

use crate::storage::StorageError;

/// Errors of the qcow2 format layer. Every variant says what is wrong and
/// where (field, offset, value).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The storage underneath failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The image is malformed: a field has a value the format does not allow.
    #[error("{0}")]
    Invalid(String),
    /// The image uses something zcow does not support.
    #[error("{0}")]
    Unsupported(String),
    /// Metadata found corrupt while working on the image.
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    /// A guest request outside the virtual disk.
    #[error("request at offset {offset:#x} length {len:#x} is past the end of the virtual disk ({size:#x} bytes)")]
    OutOfRange {
        /// Guest offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },
    /// A write to an image opened read-only.
    #[error("the image is open read-only")]
    ReadOnly,
    /// The image cannot grow (host offsets are limited to 2^56).
    #[error("no space: {0}")]
    NoSpace(String),
    /// Bad arguments to create or another operation.
    #[error("{0}")]
    BadOption(String),
    /// A write's bytes could not be fetched from their source (zcow-ublk:
    /// the driver's copy of the request failed).
    #[error("cannot fetch the data to write: {0}")]
    Payload(std::io::Error),
}

impl FormatError {
    /// The closest POSIX errno.
    pub fn errno(&self) -> i32 {
        match self {
            FormatError::Storage(s) => s.errno(),
            FormatError::OutOfRange { .. } | FormatError::BadOption(_) => libc::EINVAL,
            FormatError::ReadOnly => libc::EPERM,
            FormatError::NoSpace(_) => libc::ENOSPC,
            FormatError::Unsupported(_) => libc::ENOTSUP,
            FormatError::Invalid(_) | FormatError::Corrupt(_) => libc::EIO,
            FormatError::Payload(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Result alias of the format layer.
pub type Result<T> = std::result::Result<T, FormatError>;

/// Build a [`FormatError::Invalid`] from format arguments.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::format::FormatError::Invalid(format!($($arg)*)) };
}
pub(crate) use invalid;
