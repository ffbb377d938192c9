//! Errors of the zone engine, one variant per layer that can fail.

use crate::device::DeviceError;
use crate::format::FormatError;
use crate::storage::{Op, StorageError};
use crate::zone::ZoneError;

/// Errors returned by [`Engine`](super::Engine).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A zone rule of the zone model was broken; nothing was changed.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// The store underneath failed while doing `what`.
    #[error("{what}: {source}")]
    Store {
        /// What the engine was doing, naming the zone when there is one.
        what: String,
        /// The store's error.
        source: FormatError,
    },
    /// A write whose own I/O may have succeeded but which was given up
    /// because an earlier write to the same zone, issued before it, failed.
    #[error("{what}: not completed because an earlier write to the zone failed")]
    Aborted {
        /// The write, with its zone.
        what: String,
        /// Offset of the write.
        offset: u64,
        /// Length of the write.
        len: u64,
    },
    /// The geometry or the write-pointer entries the store gave are invalid.
    #[error("{0}")]
    Invalid(String),
    /// A request outside the device.
    #[error("request at offset {offset:#x} length {len:#x} is past the end of the device ({size:#x} bytes)")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// A modifying request on an engine whose store is read-only.
    #[error("the device is read-only")]
    ReadOnly,
}

impl EngineError {
    /// The zone error kind, if this is a zone rule error.
    pub fn zone_kind(&self) -> Option<crate::zone::ZoneErrorKind> {
        match self {
            EngineError::Zone(z) => Some(z.kind),
            _ => None,
        }
    }

    pub(crate) fn store(what: impl Into<String>, source: FormatError) -> Self {
        EngineError::Store {
            what: what.into(),
            source,
        }
    }
}

impl From<EngineError> for DeviceError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Zone(z) => DeviceError::Zone(z),
            // The device interface has no place for the engine's context; the
            // store's own message already names the operation and offset.
            EngineError::Store { source, .. } => DeviceError::Format(source),
            EngineError::Aborted { what, offset, len } => {
                DeviceError::Format(FormatError::Storage(StorageError::Io {
                    op: Op::Write,
                    offset,
                    len,
                    source: std::io::Error::other(format!(
                        "{what}: given up because an earlier write to the zone failed"
                    )),
                }))
            }
            EngineError::Invalid(m) => DeviceError::Invalid(m),
            EngineError::OutOfRange { offset, len, size } => {
                DeviceError::OutOfRange { offset, len, size }
            }
            EngineError::ReadOnly => DeviceError::ReadOnly,
        }
    }
}

/// Result alias of the engine.
pub type EngineResult<T> = std::result::Result<T, EngineError>;
