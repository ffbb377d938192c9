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

/// Largest device size a zone geometry may describe: write pointers are
/// stored in 59 bits (`spec/zoned-qcow2.md`), and every offset computed from
/// a valid geometry then stays far below `u64::MAX`.
pub const MAX_DEVICE_SIZE: u64 = (1 << 59) - 1;

/// Write granularity of sequential zones, and the unit every size of a
/// geometry is a multiple of.
pub const GEOMETRY_SECTOR: u64 = 512;

/// Why a zone geometry from outside (image header, NBD peer, a store) was
/// refused. [`ZoneGeometry::validate`] is the one place that decides it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneGeometryError {
    /// The zone size is not a power of two of at least 512 bytes.
    #[error("zone size {0:#x} is not a power of two of at least 512 bytes")]
    ZoneSize(u64),
    /// The capacity is 0, not a multiple of 512 or larger than the zone.
    #[error(
        "zone capacity {cap:#x} is not a non-zero multiple of 512 up to the zone size {size:#x}"
    )]
    Capacity {
        /// Zone capacity.
        cap: u64,
        /// Zone size.
        size: u64,
    },
    /// The device size is 0, not a multiple of 512 or too large.
    #[error("device size {0:#x} is not a non-zero multiple of 512 below 2^59")]
    DeviceSize(u64),
    /// The zone count does not match the device and zone sizes.
    #[error(
        "nr_zones {nr} does not match ceil(device size {size:#x} / zone size {zone:#x}) = {want}"
    )]
    ZoneCount {
        /// Declared zone count.
        nr: u32,
        /// Device size.
        size: u64,
        /// Zone size.
        zone: u64,
        /// The count the sizes give.
        want: u64,
    },
    /// Every zone is conventional.
    #[error("{conv} conventional zones of {nr} zones: at least one must be sequential")]
    Conventional {
        /// Declared conventional zones.
        conv: u32,
        /// Zone count.
        nr: u32,
    },
    /// The append limit is not a multiple of 512.
    #[error("max_append_bytes {0:#x} is not a multiple of 512")]
    MaxAppend(u32),
}

impl ZoneGeometry {
    /// Check a geometry that came from outside (image, NBD peer, store)
    /// before any arithmetic relies on it. A valid geometry has
    /// `zone_start(i) + zone_len(i) <= device_size < 2^59` for every zone,
    /// so no offset computed from it can overflow.
    pub fn validate(&self) -> Result<(), ZoneGeometryError> {
        use ZoneGeometryError as E;
        let s = GEOMETRY_SECTOR;
        if self.zone_size < s || !self.zone_size.is_power_of_two() {
            return Err(E::ZoneSize(self.zone_size));
        }
        if self.zone_capacity == 0
            || self.zone_capacity > self.zone_size
            || self.zone_capacity % s != 0
        {
            return Err(E::Capacity {
                cap: self.zone_capacity,
                size: self.zone_size,
            });
        }
        if self.device_size == 0 || self.device_size % s != 0 || self.device_size > MAX_DEVICE_SIZE
        {
            return Err(E::DeviceSize(self.device_size));
        }
        let want = self.device_size.div_ceil(self.zone_size);
        if u64::from(self.nr_zones) != want {
            return Err(E::ZoneCount {
                nr: self.nr_zones,
                size: self.device_size,
                zone: self.zone_size,
                want,
            });
        }
        if self.conventional_zones >= self.nr_zones {
            return Err(E::Conventional {
                conv: self.conventional_zones,
                nr: self.nr_zones,
            });
        }
        if u64::from(self.max_append_bytes) % s != 0 {
            return Err(E::MaxAppend(self.max_append_bytes));
        }
        Ok(())
    }

    /// Start offset of zone `i`. Saturates instead of wrapping, so even a
    /// geometry that skipped [`ZoneGeometry::validate`] cannot overflow.
    pub fn zone_start(&self, i: u32) -> u64 {
        u64::from(i).saturating_mul(self.zone_size)
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
    /// One past the last byte of zone `i`.
    pub fn zone_end(&self, i: u32) -> u64 {
        self.zone_start(i).saturating_add(self.zone_len(i))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geo(device_size: u64, zone_size: u64, cap: u64, nr: u32, conv: u32) -> ZoneGeometry {
        ZoneGeometry {
            device_size,
            zone_size,
            zone_capacity: cap,
            nr_zones: nr,
            conventional_zones: conv,
            max_open_zones: 0,
            max_active_zones: 0,
            max_append_bytes: 0,
        }
    }

    #[test]
    fn refuses_what_would_overflow() {
        // The nbd_client fuzz finding: a peer's zone size times a zone index
        // overflowed in zone_start.
        let g = geo(1 << 40, 1 << 63, 512, 2, 0);
        assert!(g.validate().is_err());
        assert_eq!(g.zone_start(u32::MAX), u64::MAX);
        assert_eq!(g.zone_len(u32::MAX), 0);
        let big = geo(!511, 512, 512, u32::MAX, 0);
        assert!(matches!(
            big.validate(),
            Err(ZoneGeometryError::DeviceSize(_))
        ));
        let count = geo(1 << 20, 4096, 4096, 7, 0);
        assert_eq!(
            count.validate().unwrap_err().to_string(),
            "nr_zones 7 does not match ceil(device size 0x100000 / zone size 0x1000) = 256"
        );
        assert!(geo(1 << 20, 4096, 4096, 256, 0).validate().is_ok());
        assert!(geo(1 << 20, 4096, 4096, 256, 256).validate().is_err());
    }

    proptest! {
        /// Large and hostile geometries (beyond what the fuzzers' small
        /// inputs reach): a geometry either fails validation or every
        /// zone's range lies inside the device with no overflow.
        #[test]
        fn valid_geometries_never_overflow(
            shift in 0u32..64,
            dev in any::<u64>(),
            cap in any::<u64>(),
            nr in any::<u32>(),
            conv in any::<u32>(),
            use_exact in any::<bool>(),
            probe in any::<u32>(),
        ) {
            let zone_size = 1u64 << shift;
            let dev = if use_exact { dev & crate::zone::MAX_DEVICE_SIZE & !511 } else { dev };
            let nr = if use_exact && zone_size > 0 {
                u32::try_from(dev.div_ceil(zone_size)).unwrap_or(nr)
            } else { nr };
            let cap = if use_exact { (cap % zone_size.max(1)) & !511 } else { cap };
            let g = geo(dev, zone_size, cap.max(512).min(zone_size), nr, conv % nr.max(1));
            // Never panics, valid or not.
            let _ = (g.zone_start(probe), g.zone_len(probe), g.zone_cap(probe), g.zone_index(dev));
            if g.validate().is_ok() {
                for i in [0, probe % g.nr_zones, g.nr_zones - 1] {
                    let end = g.zone_start(i).checked_add(g.zone_len(i));
                    prop_assert!(end.is_some_and(|e| e <= g.device_size));
                    prop_assert!(g.zone_len(i) > 0);
                    prop_assert!(g.zone_cap(i) <= g.zone_len(i));
                    prop_assert_eq!(g.zone_index(g.zone_start(i)), Some(i));
                }
                prop_assert_eq!(g.zone_end(g.nr_zones - 1), g.device_size);
            }
        }
    }
}
