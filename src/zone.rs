//! Zone vocabulary shared by the engine, the NBD layer and the front ends:
//! geometry, conditions, descriptors, management operations and the typed
//! zone errors of `design/zone-model.md`.

use serde::Serialize;
use std::fmt;

/// Zone condition, with the Linux / virtio-blk / NVMe numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum ZoneCond {
    /// Conventional zone: no write pointer.
    NotWp = 0x0,
    /// Sequential zone, nothing written.
    Empty = 0x1,
    /// Opened by a write.
    ImpOpen = 0x2,
    /// Opened by an open command.
    ExpOpen = 0x3,
    /// Written, then closed (holds an active resource).
    Closed = 0x4,
    /// Device condition: readable, not writable.
    ReadOnly = 0xD,
    /// Written to capacity or finished.
    Full = 0xE,
    /// Device condition: neither readable nor writable.
    Offline = 0xF,
}

impl ZoneCond {
    /// Upper-case name as used in messages (`IMP_OPEN`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ZoneCond::NotWp => "NOT_WP",
            ZoneCond::Empty => "EMPTY",
            ZoneCond::ImpOpen => "IMP_OPEN",
            ZoneCond::ExpOpen => "EXP_OPEN",
            ZoneCond::Closed => "CLOSED",
            ZoneCond::ReadOnly => "READ_ONLY",
            ZoneCond::Full => "FULL",
            ZoneCond::Offline => "OFFLINE",
        }
    }

    /// The numeric value.
    pub fn value(self) -> u8 {
        self as u8
    }

    /// Parse the numeric value.
    pub fn from_value(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => ZoneCond::NotWp,
            0x1 => ZoneCond::Empty,
            0x2 => ZoneCond::ImpOpen,
            0x3 => ZoneCond::ExpOpen,
            0x4 => ZoneCond::Closed,
            0xD => ZoneCond::ReadOnly,
            0xE => ZoneCond::Full,
            0xF => ZoneCond::Offline,
            _ => return None,
        })
    }

    /// All conditions, in numeric order.
    pub const ALL: [ZoneCond; 8] = [
        ZoneCond::NotWp,
        ZoneCond::Empty,
        ZoneCond::ImpOpen,
        ZoneCond::ExpOpen,
        ZoneCond::Closed,
        ZoneCond::ReadOnly,
        ZoneCond::Full,
        ZoneCond::Offline,
    ];
}

/// Zones per condition, in [`ZoneCond::ALL`] order.
pub fn count_by_cond(conds: impl IntoIterator<Item = ZoneCond>) -> [u64; 8] {
    let mut counts = [0u64; 8];
    for c in conds {
        if let Some(k) = ZoneCond::ALL.iter().position(|x| *x == c) {
            counts[k] += 1;
        }
    }
    counts
}

/// `NOT_WP 2, EMPTY 62, ...`: the non-zero counts of [`count_by_cond`].
pub fn summarize_counts(counts: &[u64; 8]) -> String {
    ZoneCond::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{} {n}", c.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for ZoneCond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Zone type, Linux numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum ZoneType {
    /// Random writes allowed.
    Conventional = 1,
    /// Sequential write required.
    SeqWriteReq = 2,
}

impl ZoneType {
    /// The numeric value.
    pub fn value(self) -> u8 {
        self as u8
    }
    /// Lower-case name (`conventional`, `seq-write-required`).
    pub fn name(self) -> &'static str {
        match self {
            ZoneType::Conventional => "conventional",
            ZoneType::SeqWriteReq => "seq-write-required",
        }
    }
}

/// Static zone geometry of a device (all values in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ZoneGeometry {
    /// Device (virtual disk) size.
    pub device_size: u64,
    /// Size of every zone but possibly the last.
    pub zone_size: u64,
    /// Writable bytes per zone (the last zone: min(capacity, its length)).
    pub zone_capacity: u64,
    /// Number of zones.
    pub nr_zones: u32,
    /// The first `conventional_zones` zones are conventional.
    pub conventional_zones: u32,
    /// 0 = unlimited.
    pub max_open_zones: u32,
    /// 0 = unlimited.
    pub max_active_zones: u32,
    /// 0 = zone append unsupported.
    pub max_append_bytes: u32,
}

impl ZoneGeometry {
    /// Start offset of zone `i`.
    pub fn zone_start(&self, i: u32) -> u64 {
        i as u64 * self.zone_size
    }
    /// Length of zone `i` (the last may be shorter).
    pub fn zone_len(&self, i: u32) -> u64 {
        let start = self.zone_start(i);
        self.zone_size.min(self.device_size.saturating_sub(start))
    }
    /// Capacity of zone `i`: the zone capacity for sequential zones; a
    /// conventional zone's whole length (Linux refuses a device whose
    /// conventional zones report less).
    pub fn zone_cap(&self, i: u32) -> u64 {
        if self.is_conventional(i) {
            self.zone_len(i)
        } else {
            self.zone_capacity.min(self.zone_len(i))
        }
    }
    /// Index of the zone holding byte `offset` (None past the end).
    pub fn zone_index(&self, offset: u64) -> Option<u32> {
        if offset >= self.device_size || self.zone_size == 0 {
            return None;
        }
        u32::try_from(offset / self.zone_size).ok()
    }
    /// Whether zone `i` is conventional.
    pub fn is_conventional(&self, i: u32) -> bool {
        i < self.conventional_zones
    }
    /// Type of zone `i`.
    pub fn zone_type(&self, i: u32) -> ZoneType {
        if self.is_conventional(i) {
            ZoneType::Conventional
        } else {
            ZoneType::SeqWriteReq
        }
    }
}

/// One zone as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ZoneDescriptor {
    /// Zone index.
    pub index: u32,
    /// Start offset in bytes.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Capacity in bytes.
    pub cap: u64,
    /// Write pointer (absolute byte offset; for conventional zones the start).
    pub wp: u64,
    /// Zone type.
    pub zone_type: ZoneType,
    /// Condition.
    pub cond: ZoneCond,
}

/// Zone management operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneOp {
    /// Explicit open.
    Open,
    /// Close.
    Close,
    /// Finish (wp to zone end, FULL).
    Finish,
    /// Reset (wp to start, EMPTY, data gone).
    Reset,
}

impl ZoneOp {
    /// Lower-case verb (`open`, `close`, `finish`, `reset`).
    pub fn verb(self) -> &'static str {
        match self {
            ZoneOp::Open => "open",
            ZoneOp::Close => "close",
            ZoneOp::Finish => "finish",
            ZoneOp::Reset => "reset",
        }
    }
}

/// The kinds of zone error of the design's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ZoneErrorKind {
    /// Write in a sequential zone not at the write pointer.
    UnalignedWrite,
    /// Write passing the capacity or spanning two zones.
    Boundary,
    /// Command not valid for this zone or these arguments.
    InvalidCommand,
    /// State transition not allowed.
    InvalidTransition,
    /// Zone is full.
    ZoneFull,
    /// Open limit reached and no implicitly open zone could be closed.
    OpenResource,
    /// Active limit reached.
    ActiveResource,
    /// Zone is read-only.
    ReadOnly,
    /// Zone is offline.
    Offline,
    /// Operation not supported (zone append with max_append 0).
    Unsupported,
}

impl ZoneErrorKind {
    /// NBD error value (errno numbering of the NBD protocol).
    pub fn nbd_errno(self) -> i32 {
        match self {
            ZoneErrorKind::UnalignedWrite
            | ZoneErrorKind::Boundary
            | ZoneErrorKind::InvalidCommand
            | ZoneErrorKind::InvalidTransition => libc::EINVAL,
            ZoneErrorKind::ZoneFull
            | ZoneErrorKind::OpenResource
            | ZoneErrorKind::ActiveResource => libc::ENOSPC,
            ZoneErrorKind::ReadOnly => libc::EPERM,
            ZoneErrorKind::Offline => libc::EIO,
            ZoneErrorKind::Unsupported => libc::ENOTSUP,
        }
    }

    /// Linux errno as null_blk reports it.
    pub fn linux_errno(self) -> i32 {
        match self {
            ZoneErrorKind::OpenResource => libc::ETOOMANYREFS,
            ZoneErrorKind::ActiveResource => libc::EOVERFLOW,
            ZoneErrorKind::Unsupported => libc::EOPNOTSUPP,
            _ => libc::EIO,
        }
    }

    /// virtio-blk zoned status.
    pub fn virtio_status(self) -> u8 {
        match self {
            ZoneErrorKind::UnalignedWrite => 4,
            ZoneErrorKind::OpenResource => 5,
            ZoneErrorKind::ActiveResource => 6,
            ZoneErrorKind::Unsupported => 2,
            _ => 3,
        }
    }
}

/// The zone a failed request was aimed at, as it was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ZoneCtx {
    /// Zone index.
    pub index: u32,
    /// Zone start.
    pub start: u64,
    /// Condition at the time of the error.
    pub cond: ZoneCond,
    /// Write pointer at the time of the error.
    pub wp: u64,
}

/// A typed zone error with the zone and request it concerns. Display gives
/// e.g. `zone 12 (start 0x3000000, IMP_OPEN, wp 0x3010000): write at
/// 0x3020000 is not at the write pointer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ZoneError {
    /// Which rule was broken.
    pub kind: ZoneErrorKind,
    /// The zone concerned, when there is one.
    pub zone: Option<ZoneCtx>,
    /// What was asked and why it failed, e.g. `write at 0x3020000 is not at
    /// the write pointer`.
    pub detail: String,
}

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.zone {
            Some(z) => write!(
                f,
                "zone {} (start {:#x}, {}, wp {:#x}): {}",
                z.index, z.start, z.cond, z.wp, self.detail
            ),
            None => f.write_str(&self.detail),
        }
    }
}
