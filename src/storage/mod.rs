//! Storage backends: the byte store under an image.
//!
//! The format layer only ever talks to [`Storage`], so a backend that injects
//! faults or simulates power loss ([`fault::FaultStorage`]) slots in without the
//! format code knowing.

pub mod fault;
pub mod file;
pub mod lock;
pub mod memory;

pub use fault::{FaultConfig, FaultStorage};
pub use file::FileStorage;
pub use memory::MemStorage;

use std::fmt;

/// The operation that failed, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Positioned read.
    Read,
    /// Positioned write.
    Write,
    /// Flush to stable storage.
    Sync,
    /// Length change.
    SetLen,
    /// Hole punch.
    Discard,
    /// Length query.
    Len,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Sync => "sync",
            Op::SetLen => "set length",
            Op::Discard => "discard",
            Op::Len => "length query",
        })
    }
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system failed the operation.
    #[error("{op} of {len} bytes at offset {offset:#x} failed: {source}")]
    Io {
        /// What was attempted.
        op: Op,
        /// Byte offset in the store.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// A read went past the end of the store.
    #[error(
        "read of {len} bytes at offset {offset:#x} runs past the end of the file ({size} bytes)"
    )]
    ShortRead {
        /// Byte offset in the store.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Size of the store.
        size: u64,
    },
    /// The store refuses writes.
    #[error("the storage is read-only")]
    ReadOnly,
    /// An error injected by a fault-injecting backend.
    #[error("injected {kind} error on {op} at offset {offset:#x}")]
    Injected {
        /// What was attempted.
        op: Op,
        /// Byte offset.
        offset: u64,
        /// `EIO` or `ENOSPC`.
        kind: InjectedKind,
    },
    /// The simulated machine lost power; nothing more reaches the store.
    #[error("simulated power loss: the storage is gone")]
    PowerLost,
}

/// Kind of an injected error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedKind {
    /// Input/output error.
    Eio,
    /// No space left on device.
    Enospc,
}

impl fmt::Display for InjectedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InjectedKind::Eio => "EIO",
            InjectedKind::Enospc => "ENOSPC",
        })
    }
}

impl StorageError {
    /// The closest POSIX errno, for mapping onto protocols.
    pub fn errno(&self) -> i32 {
        match self {
            StorageError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StorageError::ShortRead { .. } => libc::EIO,
            StorageError::ReadOnly => libc::EROFS,
            StorageError::Injected {
                kind: InjectedKind::Enospc,
                ..
            } => libc::ENOSPC,
            StorageError::Injected { .. } | StorageError::PowerLost => libc::EIO,
        }
    }
}

/// The first error of type `T` in `err`'s chain, looking inside
/// `io::Error`s too (their `source()` skips the wrapped error itself).
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(t) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<T>())
        {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Why an image file could not be opened, when QEMU's tools print that
/// reason on its own (a lock conflict, a directory given as an image):
/// front ends print it in place of their generic "Could not open" text.
pub fn open_refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(c) = find_in_chain::<lock::LockConflict>(err) {
        return Some(c.to_string());
    }
    find_in_chain::<file::NotRegularFile>(err).map(ToString::to_string)
}

/// Result alias of the storage layer.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A byte store with positioned I/O. Implementations are shared between threads.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Read exactly `buf.len()` bytes at `offset`. Bytes past the end of the
    /// store are an error ([`StorageError::ShortRead`]); callers that want zero
    /// fill use [`Storage::read_at_zero_fill`].
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Write all of `data` at `offset`, growing the store if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Make every completed write durable (`fdatasync`).
    fn sync(&self) -> Result<()>;
    /// Current length in bytes.
    fn len(&self) -> Result<u64>;
    /// Truncate or extend to `len` bytes (new bytes read as zero).
    fn set_len(&self, len: u64) -> Result<()>;
    /// Drop the bytes of a range; afterwards they read as zero. Best effort:
    /// a backend that cannot punch holes writes zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Whether the store refuses writes.
    fn is_read_only(&self) -> bool {
        false
    }
    /// Bytes actually allocated on the host, if known (for `disk size`).
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// Whether the store is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Read `buf.len()` bytes at `offset`; the part past the end reads as zero.
    fn read_at_zero_fill(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.len()?;
        let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            self.read_at(offset, &mut buf[..avail])?;
        }
        buf[avail..].fill(0);
        Ok(())
    }
}

/// Write zeroes over a range in bounded chunks (for backends without hole punching).
pub(crate) fn write_zeroes_chunked(s: &dyn Storage, offset: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        s.write_at(offset + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}
