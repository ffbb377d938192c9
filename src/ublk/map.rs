//! Requests of the ublk driver mapped onto a [`BlockDevice`]: a pure layer
//! (no kernel, no I/O rings), so it is tested on any host. The server moves
//! the payload between the kernel and the buffer; this decides what the
//! device does and what the request completes with.

use super::layout::{Layout, BLK_ZONE_BYTES};
use crate::device::{BlockDevice, DeviceError, ZeroFlags};
use crate::format::Payload;
use crate::zone::{ZoneDescriptor, ZoneOp, ZoneType};
use libublk::sys;

/// Sector size of the ublk interface.
pub const SECTOR: u64 = 512;

/// A ublk operation (`UBLK_IO_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read sectors.
    Read,
    /// Write sectors.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Deallocate.
    Discard,
    /// Make a range read as zeroes.
    WriteZeroes,
    /// Explicitly open a zone.
    ZoneOpen,
    /// Close a zone.
    ZoneClose,
    /// Finish a zone.
    ZoneFinish,
    /// Write at a zone's write pointer; completes with the sector written.
    ZoneAppend,
    /// Reset one zone.
    ZoneReset,
    /// Reset every sequential zone.
    ZoneResetAll,
    /// Fill the buffer with `struct blk_zone` records.
    ReportZones,
}

impl Op {
    /// The operation of a `UBLK_IO_OP_*` code (None for codes zcow does not
    /// serve, e.g. WRITE_SAME).
    pub fn from_code(code: u32) -> Option<Op> {
        Some(match code {
            sys::UBLK_IO_OP_READ => Op::Read,
            sys::UBLK_IO_OP_WRITE => Op::Write,
            sys::UBLK_IO_OP_FLUSH => Op::Flush,
            sys::UBLK_IO_OP_DISCARD => Op::Discard,
            sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
            sys::UBLK_IO_OP_ZONE_OPEN => Op::ZoneOpen,
            sys::UBLK_IO_OP_ZONE_CLOSE => Op::ZoneClose,
            sys::UBLK_IO_OP_ZONE_FINISH => Op::ZoneFinish,
            sys::UBLK_IO_OP_ZONE_APPEND => Op::ZoneAppend,
            sys::UBLK_IO_OP_ZONE_RESET => Op::ZoneReset,
            sys::UBLK_IO_OP_ZONE_RESET_ALL => Op::ZoneResetAll,
            sys::UBLK_IO_OP_REPORT_ZONES => Op::ReportZones,
            _ => return None,
        })
    }

    /// The `UBLK_IO_OP_*` code.
    pub fn code(self) -> u32 {
        match self {
            Op::Read => sys::UBLK_IO_OP_READ,
            Op::Write => sys::UBLK_IO_OP_WRITE,
            Op::Flush => sys::UBLK_IO_OP_FLUSH,
            Op::Discard => sys::UBLK_IO_OP_DISCARD,
            Op::WriteZeroes => sys::UBLK_IO_OP_WRITE_ZEROES,
            Op::ZoneOpen => sys::UBLK_IO_OP_ZONE_OPEN,
            Op::ZoneClose => sys::UBLK_IO_OP_ZONE_CLOSE,
            Op::ZoneFinish => sys::UBLK_IO_OP_ZONE_FINISH,
            Op::ZoneAppend => sys::UBLK_IO_OP_ZONE_APPEND,
            Op::ZoneReset => sys::UBLK_IO_OP_ZONE_RESET,
            Op::ZoneResetAll => sys::UBLK_IO_OP_ZONE_RESET_ALL,
            Op::ReportZones => sys::UBLK_IO_OP_REPORT_ZONES,
        }
    }
}

/// One request as the driver describes it (`struct ublksrv_io_desc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Operation in the low 8 bits, `UBLK_IO_F_*` flags above.
    pub op_flags: u32,
    /// First sector.
    pub start_sector: u64,
    /// Sectors; for REPORT_ZONES the number of zones asked for.
    pub nr_sectors: u32,
}

impl Request {
    /// A request of `op` (flags: FUA when `fua`).
    pub fn new(op: Op, start_sector: u64, nr_sectors: u32, fua: bool) -> Request {
        let fua = if fua { sys::UBLK_IO_F_FUA } else { 0 };
        Request {
            op_flags: op.code() | fua,
            start_sector,
            nr_sectors,
        }
    }

    /// The operation, if zcow serves it.
    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.op_flags & 0xff)
    }

    /// Forced unit access: durable before completion.
    pub fn fua(&self) -> bool {
        self.op_flags & sys::UBLK_IO_F_FUA != 0
    }

    /// Write-zeroes must not deallocate.
    pub fn nounmap(&self) -> bool {
        self.op_flags & sys::UBLK_IO_F_NOUNMAP != 0
    }

    /// Bytes of payload the server must fetch from the kernel before
    /// [`execute`] (writes and appends), else 0.
    pub fn payload_in(&self) -> usize {
        match self.op() {
            Some(Op::Write | Op::ZoneAppend) => self.bytes() as usize,
            _ => 0,
        }
    }

    /// Length in bytes (for REPORT_ZONES: zones × 512, meaningless).
    pub fn bytes(&self) -> u64 {
        u64::from(self.nr_sectors) * SECTOR
    }

    /// Byte offset of the request, None if it overflows.
    fn offset(&self) -> Option<u64> {
        self.start_sector.checked_mul(SECTOR)
    }
}

/// How a request completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Bytes done (reads, writes) or 0, or a negative errno.
    pub result: i32,
    /// Zone append that succeeded: the first sector written.
    pub append_sector: Option<u64>,
    /// Bytes at the start of the buffer to hand to the kernel (read data,
    /// zone report). For a report the server sends the whole zero-padded
    /// buffer and completes with the byte count the kernel took: the
    /// driver re-queues a report answered with fewer bytes than it asked.
    pub copy_out: usize,
}

impl Completion {
    /// Failed with `errno` (positive).
    pub fn error(errno: i32) -> Completion {
        Completion {
            result: -errno.abs(),
            append_sector: None,
            copy_out: 0,
        }
    }

    /// Succeeded with `bytes` done.
    pub(super) fn done(bytes: usize) -> Completion {
        Completion {
            result: i32::try_from(bytes).unwrap_or(i32::MAX),
            append_sector: None,
            copy_out: 0,
        }
    }
}

/// The Linux errno a device error completes with (zone errors as null_blk
/// reports them, so the block layer maps them to the zone statuses).
pub fn errno(e: &DeviceError) -> i32 {
    match e {
        DeviceError::Zone(z) => z.kind.linux_errno(),
        DeviceError::Unsupported(_) | DeviceError::FastZeroUnsupported => libc::EOPNOTSUPP,
        DeviceError::ReadOnly => libc::EROFS,
        // Refused by policy (a guessed raw image's block 0): permission.
        DeviceError::Denied(_) => libc::EPERM,
        DeviceError::OutOfRange { .. } | DeviceError::Invalid(_) => libc::EINVAL,
        DeviceError::Format(f) => match f.errno() {
            libc::ENOSPC => libc::ENOSPC,
            _ => libc::EIO,
        },
        DeviceError::Remote { .. } | DeviceError::Connection(_) => libc::EIO,
        // The host kernel's own answer for a host block device.
        DeviceError::Host { errno, .. } => *errno,
    }
}

/// Carry out `req` on `dev`. `buf` is the request's buffer: for writes and
/// appends it holds the payload ([`Request::payload_in`] bytes); reads and
/// reports fill it. Never panics; every outcome is a [`Completion`].
pub fn execute(
    dev: &dyn BlockDevice,
    layout: &Layout,
    req: &Request,
    buf: &mut [u8],
) -> Completion {
    match run(dev, layout, req, buf) {
        Ok(c) => c,
        Err(e) => Completion::error(errno(&e)),
    }
}

/// Carry out a write or zone append whose payload comes from `src`
/// ([`Request::payload_in`] bytes); other requests complete with `EINVAL`.
pub fn execute_write(
    dev: &dyn BlockDevice,
    layout: &Layout,
    req: &Request,
    src: &dyn Payload,
) -> Completion {
    match write(dev, layout, req, src) {
        Ok(c) => c,
        Err(e) => Completion::error(errno(&e)),
    }
}

/// The byte range of a read or write, when it is valid (within the
/// exposed size and the largest request).
pub(super) fn data_range(layout: &Layout, req: &Request) -> Option<(u64, u64)> {
    range(layout, req, layout.max_io_bytes as usize, true).ok()
}

fn invalid(what: String) -> DeviceError {
    DeviceError::Invalid(what)
}

/// The byte range of a data request, checked against the exposed size and
/// (when it carries data) the buffer.
fn range(
    layout: &Layout,
    req: &Request,
    buf_len: usize,
    data: bool,
) -> Result<(u64, u64), DeviceError> {
    let len = req.bytes();
    let off = req
        .offset()
        .ok_or_else(|| invalid(format!("sector {} overflows", req.start_sector)))?;
    match off.checked_add(len) {
        Some(end) if end <= layout.size => {}
        _ => {
            return Err(DeviceError::OutOfRange {
                offset: off,
                len,
                size: layout.size,
            })
        }
    }
    if data && len > buf_len as u64 {
        return Err(invalid(format!(
            "request of {len:#x} bytes exceeds the {buf_len:#x}-byte buffer"
        )));
    }
    Ok((off, len))
}

/// The byte offset a zone request names (management or report), which
/// must lie inside the exposed size.
fn zone_offset(layout: &Layout, req: &Request) -> Result<u64, DeviceError> {
    req.offset()
        .filter(|o| *o < layout.size)
        .ok_or_else(|| DeviceError::OutOfRange {
            offset: req.start_sector.saturating_mul(SECTOR),
            len: 0,
            size: layout.size,
        })
}

fn run(
    dev: &dyn BlockDevice,
    layout: &Layout,
    req: &Request,
    buf: &mut [u8],
) -> Result<Completion, DeviceError> {
    let op = req
        .op()
        .ok_or_else(|| DeviceError::Unsupported(format!("ublk op {}", req.op_flags & 0xff)))?;
    let zoned = layout.zoned.as_ref();
    match op {
        Op::Read => {
            let (off, len) = range(layout, req, buf.len(), true)?;
            let n = len as usize;
            dev.read(off, &mut buf[..n])?;
            Ok(Completion {
                copy_out: n,
                ..Completion::done(n)
            })
        }
        Op::Write | Op::ZoneAppend => {
            let (_, len) = range(layout, req, buf.len(), true)?;
            write(dev, layout, req, &&buf[..len as usize])
        }
        Op::Flush => {
            dev.flush()?;
            Ok(Completion::done(0))
        }
        Op::Discard => {
            let (off, len) = range(layout, req, buf.len(), false)?;
            dev.discard(off, len)?;
            Ok(Completion::done(0))
        }
        Op::WriteZeroes => {
            let (off, len) = range(layout, req, buf.len(), false)?;
            let flags = ZeroFlags {
                may_unmap: !req.nounmap(),
                fast_only: false,
                fua: req.fua(),
            };
            dev.write_zeroes(off, len, flags)?;
            Ok(Completion::done(0))
        }
        Op::ZoneOpen | Op::ZoneClose | Op::ZoneFinish | Op::ZoneReset => {
            let z = zoned.ok_or_else(|| {
                DeviceError::Unsupported("zone management on a non-zoned device".into())
            })?;
            let zop = match op {
                Op::ZoneOpen => ZoneOp::Open,
                Op::ZoneClose => ZoneOp::Close,
                Op::ZoneFinish => ZoneOp::Finish,
                _ => ZoneOp::Reset,
            };
            let off = zone_offset(layout, req)?;
            // The driver names the zone by its start; the length is the
            // zone's (the engine checks alignment).
            dev.zone_mgmt(zop, off, z.geometry.zone_size)?;
            Ok(Completion::done(0))
        }
        Op::ZoneResetAll => {
            zoned.ok_or_else(|| {
                DeviceError::Unsupported("reset-all on a non-zoned device".into())
            })?;
            dev.zone_mgmt(ZoneOp::Reset, 0, dev.size())?;
            Ok(Completion::done(0))
        }
        Op::ReportZones => {
            let z = zoned.ok_or_else(|| {
                DeviceError::Unsupported("zone report on a non-zoned device".into())
            })?;
            let off = zone_offset(layout, req)?;
            let first = (off / z.geometry.zone_size) as u32;
            let fit = (buf.len() / BLK_ZONE_BYTES) as u32;
            let max = req.nr_sectors.min(fit).min(z.nr_zones - first);
            if max == 0 {
                return Err(invalid(format!(
                    "zone report of {} zones into a {}-byte buffer",
                    req.nr_sectors,
                    buf.len()
                )));
            }
            let zones = dev.zone_report(off, max)?;
            // Zero padding: a zero-length record ends the report.
            buf.fill(0);
            for (slot, d) in buf
                .chunks_exact_mut(BLK_ZONE_BYTES)
                .zip(zones.iter().take(max as usize))
            {
                slot.copy_from_slice(&encode_zone(d));
            }
            Ok(Completion {
                copy_out: buf.len(),
                ..Completion::done(buf.len())
            })
        }
    }
}

/// A write or zone append of `src`'s bytes.
fn write(
    dev: &dyn BlockDevice,
    layout: &Layout,
    req: &Request,
    src: &dyn Payload,
) -> Result<Completion, DeviceError> {
    let (off, len) = range(layout, req, src.len(), true)?;
    let n = len as usize;
    if n != src.len() {
        return Err(invalid(format!(
            "request of {len:#x} bytes with {:#x} bytes of data",
            src.len()
        )));
    }
    match req.op() {
        Some(Op::Write) => {
            dev.write_from(off, src, req.fua())?;
            Ok(Completion::done(n))
        }
        Some(Op::ZoneAppend) => {
            let at = dev.zone_append_from(off, src, req.fua())?;
            Ok(Completion {
                append_sector: Some(at / SECTOR),
                ..Completion::done(n)
            })
        }
        _ => Err(invalid(format!(
            "ublk op {} carries no data to write",
            req.op_flags & 0xff
        ))),
    }
}

/// Encode a zone as the kernel's `struct blk_zone` (native byte order,
/// sectors). Conventional zones report capacity == length: Linux refuses
/// any other value for them.
pub fn encode_zone(d: &ZoneDescriptor) -> [u8; BLK_ZONE_BYTES] {
    let s = |b: u64| (b / SECTOR).to_ne_bytes();
    let mut r = [0u8; BLK_ZONE_BYTES];
    r[0..8].copy_from_slice(&s(d.start));
    r[8..16].copy_from_slice(&s(d.len));
    r[16..24].copy_from_slice(&s(d.wp));
    r[24] = d.zone_type.value();
    r[25] = d.cond.value();
    // non_seq, reset, resv[4] stay 0.
    let cap = if d.zone_type == ZoneType::Conventional {
        d.len
    } else {
        d.cap
    };
    r[32..40].copy_from_slice(&s(cap));
    r
}

/// Encode a list of zones (see [`encode_zone`]).
pub fn encode_zones(zones: &[ZoneDescriptor]) -> Vec<u8> {
    zones.iter().flat_map(encode_zone).collect()
}
