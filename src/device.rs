//! The block-device interface every front end (zcow-io, zcow-nbd) uses: a
//! plain qcow2 or raw image, a zoned image through the engine, or a remote
//! export through the NBD client all look the same from above.

use crate::format::payload::{self, Payload};
use crate::format::FormatError;
use crate::zone::{ZoneDescriptor, ZoneError, ZoneGeometry, ZoneOp};
use std::fmt;

/// One run of a block-status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// Not allocated (reads from nothing).
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

/// Flags of a write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range may be deallocated (punched) instead of written.
    pub may_unmap: bool,
    /// Fail with `FastZeroUnsupported` instead of writing slowly.
    pub fast_only: bool,
    /// Durable before the call returns.
    pub fua: bool,
}

/// What qemu-io's `info` prints about an image's format.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatInfo {
    /// Driver name (`qcow2`, `raw`).
    pub name: String,
    /// Cluster size in bytes (0 for raw).
    pub cluster_size: u64,
    /// Where QEMU would keep VM state (0 for raw).
    pub vm_state_offset: u64,
    /// Format-specific data, QAPI keys (as `qemu-img info` shows them).
    pub specific: Option<serde_json::Value>,
}

/// Errors of the device interface, each with the errno it maps to.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A zone rule was broken.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// The image format layer failed.
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    /// The request lies (partly) outside the device.
    #[error("request at offset {offset:#x} length {len:#x} is past the end of the device ({size:#x} bytes)")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// A write to a read-only device.
    #[error("the device is read-only")]
    ReadOnly,
    /// An operation this device does not have.
    #[error("operation not supported: {0}")]
    Unsupported(String),
    /// A write-zeroes with `fast_only` that cannot be done fast.
    #[error("fast zeroing is not possible here")]
    FastZeroUnsupported,
    /// Invalid arguments.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request is not permitted (EPERM), e.g. a write that would make a
    /// guessed raw image look like another format.
    #[error("operation not permitted: {0}")]
    Denied(String),
    /// An error returned by a remote server (NBD).
    #[error("server error {errno} ({}): {message}", errno_name(*.errno))]
    Remote {
        /// POSIX errno value as sent by the server.
        errno: i32,
        /// Message the server gave, if any.
        message: String,
    },
    /// Transport failure talking to a remote device.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The host's kernel refused an operation on a host block device.
    #[error("{what}: {}", errno_name(*.errno))]
    Host {
        /// The errno the kernel returned.
        errno: i32,
        /// What was asked, and where.
        what: String,
    },
}

impl DeviceError {
    /// The POSIX errno this error becomes (NBD error numbering).
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Zone(z) => z.kind.nbd_errno(),
            DeviceError::Format(f) => f.errno(),
            DeviceError::OutOfRange { .. } | DeviceError::Invalid(_) => libc::EINVAL,
            DeviceError::ReadOnly | DeviceError::Denied(_) => libc::EPERM,
            DeviceError::Unsupported(_) | DeviceError::FastZeroUnsupported => libc::ENOTSUP,
            DeviceError::Remote { errno, .. } | DeviceError::Host { errno, .. } => *errno,
            DeviceError::Connection(_) => libc::EIO,
        }
    }
}

/// Short name of an errno, as strerror would say it.
pub fn errno_name(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or("")
        .to_string()
}

/// Result alias of the device interface.
pub type DevResult<T> = std::result::Result<T, DeviceError>;

/// A block device. Shared between threads; every method may be called
/// concurrently.
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Read `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()>;
    /// Write `data` at `offset`; with `fua` it is durable on return.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()>;
    /// [`BlockDevice::write`] with the bytes taken from `src`, which may
    /// put them into the image file itself (one copy instead of two); by
    /// default through memory.
    fn write_from(&self, offset: u64, src: &dyn Payload, fua: bool) -> DevResult<()> {
        payload::with_all(src, |d| self.write(offset, d, fua)).map_err(FormatError::Payload)?
    }
    /// Make a range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()>;
    /// Deallocate a range. Afterwards the range reads as zeroes or keeps
    /// its contents (whole qcow2 clusters are dropped; sequential zones keep
    /// their data, since only a zone reset may move a write pointer back).
    fn discard(&self, offset: u64, len: u64) -> DevResult<()>;
    /// Make every completed write durable.
    fn flush(&self) -> DevResult<()>;
    /// Allocation status from `offset`, covering at least one byte and at
    /// most `len` bytes (the answer may stop early).
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>>;

    /// Zero-copy reads: hand `sink` the host runs holding
    /// `[offset, offset+len)` (file ranges and zeroes), which stay this
    /// range's bytes until `sink` returns. False (sink not called): the
    /// device cannot, use [`BlockDevice::read`].
    fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: crate::format::PageUse,
        sink: &mut dyn FnMut(&[crate::format::HostRun<'_>]),
    ) -> DevResult<bool> {
        let _ = (offset, len, use_, sink);
        Ok(false)
    }

    /// Write whole clusters compressed (qemu-io's `write -c`, `convert -c`):
    /// only non-zoned qcow2 images can.
    fn write_compressed(&self, offset: u64, data: &[u8]) -> DevResult<()> {
        let _ = (offset, data);
        Err(DeviceError::Unsupported(
            "compressed writes need a non-zoned qcow2 image".into(),
        ))
    }

    /// Zone geometry, for zoned devices.
    fn zone_geometry(&self) -> Option<ZoneGeometry> {
        None
    }
    /// Report up to `max` zones starting with the zone holding `offset`.
    fn zone_report(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        let _ = (offset, max);
        Err(DeviceError::Unsupported(
            "zone report on a non-zoned device".into(),
        ))
    }
    /// Zone management over `[offset, offset+len)`.
    fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> DevResult<()> {
        let _ = (offset, len);
        Err(DeviceError::Unsupported(format!(
            "zone {} on a non-zoned device",
            op.verb()
        )))
    }
    /// Zone append: write `data` at the write pointer of the zone starting at
    /// `zone_start`; returns where it landed.
    fn zone_append(&self, zone_start: u64, data: &[u8], fua: bool) -> DevResult<u64> {
        let _ = (zone_start, data, fua);
        Err(DeviceError::Unsupported(
            "zone append on a non-zoned device".into(),
        ))
    }
    /// [`BlockDevice::zone_append`] with the bytes taken from `src` (see
    /// [`BlockDevice::write_from`]).
    fn zone_append_from(&self, zone_start: u64, src: &dyn Payload, fua: bool) -> DevResult<u64> {
        payload::with_all(src, |d| self.zone_append(zone_start, d, fua))
            .map_err(FormatError::Payload)?
    }
    /// The image format behind the device, for qemu-io's `info`.
    fn format_info(&self) -> Option<FormatInfo> {
        None
    }
    /// Make room at the active-zone limit for a zone-unaware writer:
    /// finish the least recently written active zone that is not being
    /// written and was not explicitly opened. Returns the zone finished, or
    /// `None` when nothing qualifies (or the device has no such policy).
    fn finish_least_recent_active(&self) -> DevResult<Option<u32>> {
        Ok(None)
    }
    /// Set or clear a persistent fault condition (READ_ONLY, OFFLINE) on
    /// zone `index`, durably, for every user of the device at once.
    fn zone_set_fault(&self, index: u32, fault: crate::engine::ZoneFault) -> DevResult<()> {
        let _ = (index, fault);
        Err(DeviceError::Unsupported(
            "zone conditions on a non-zoned device".into(),
        ))
    }
    /// Change the size to `size` bytes (qemu-io `truncate`): the range
    /// past the old end reads as zeroes; shrinking drops what lies past the
    /// new end.
    fn truncate(&self, size: u64) -> DevResult<()> {
        let _ = size;
        Err(DeviceError::Unsupported(
            "this device cannot be resized".into(),
        ))
    }
    /// Write `data` at `pos` of the VM-state area (qemu-io `write -b`).
    fn write_vmstate(&self, pos: u64, data: &[u8]) -> DevResult<()> {
        let _ = (pos, data);
        Err(DeviceError::Unsupported(
            "the device has no VM state area".into(),
        ))
    }
    /// Read from `pos` of the VM-state area (qemu-io `read -b`).
    fn read_vmstate(&self, pos: u64, buf: &mut [u8]) -> DevResult<()> {
        let _ = (pos, buf);
        Err(DeviceError::Unsupported(
            "the device has no VM state area".into(),
        ))
    }
    /// Human description of what is behind the device (for `info`).
    fn describe(&self) -> String {
        String::new()
    }
}

/// Check that `[offset, offset+len)` lies inside a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> DevResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange { offset, len, size }),
    }
}
