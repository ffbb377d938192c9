//! What the kernel is told about the device: size, zone geometry and queue
//! limits, derived from a [`BlockDevice`] and turned into ublk parameters.

use crate::device::BlockDevice;
use crate::zone::ZoneGeometry;
use libublk::sys;

/// Why an image cannot be served as a ublk device.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Linux needs a power-of-two zone size (`chunk_sectors`).
    #[error("zone size {0:#x} is not a power of two; Linux zoned block devices need one")]
    ZoneSizeNotPowerOfTwo(u64),
    /// The zone size cannot be expressed in the kernel's 32-bit sector count.
    #[error("zone size {0:#x} is too large for a ublk device (at most 2 TiB)")]
    ZoneSizeTooLarge(u64),
    /// Nothing left to expose.
    #[error("device of {size:#x} bytes has no whole {what} to expose")]
    TooSmall {
        /// Device size in bytes.
        size: u64,
        /// What is missing ("zone", "sector").
        what: &'static str,
    },
}

/// Zone geometry as exposed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZonedLayout {
    /// The engine's geometry.
    pub geometry: ZoneGeometry,
    /// Zones exposed: the whole zones (Linux counts `size / zone_size`).
    pub nr_zones: u32,
    /// Open limit for the kernel (0 = none), at most `nr_zones`.
    pub max_open_zones: u32,
    /// Active limit for the kernel (0 = none), at most `nr_zones`.
    pub max_active_zones: u32,
    /// Largest zone append in sectors (never 0: the kernel requires a value).
    pub max_append_sectors: u32,
}

/// Everything the ublk front end tells the kernel about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes exposed (a multiple of 512; of the zone size on zoned devices).
    pub size: u64,
    /// Bytes of the image not exposed (a smaller last zone, a tail under
    /// 512 bytes).
    pub hidden: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Largest request in bytes (also the per-request buffer size).
    pub max_io_bytes: u32,
    /// Zone geometry, for zoned devices.
    pub zoned: Option<ZonedLayout>,
}

/// Bytes of one `struct blk_zone` record of a zone report.
pub const BLK_ZONE_BYTES: usize = 64;

const _: () = assert!(std::mem::size_of::<sys::blk_zone>() == BLK_ZONE_BYTES);

/// Work out the layout of `dev` with requests of at most `max_io_bytes`
/// (rounded down to 4 KiB, at least 4 KiB).
pub fn layout(dev: &dyn BlockDevice, max_io_bytes: u32) -> Result<Layout, LayoutError> {
    let max_io_bytes = (max_io_bytes & !4095).max(4096);
    let dev_size = dev.size();
    let read_only = dev.is_read_only();
    let Some(g) = dev.zone_geometry() else {
        let size = dev_size & !511;
        if size == 0 {
            return Err(LayoutError::TooSmall {
                size: dev_size,
                what: "sector",
            });
        }
        return Ok(Layout {
            size,
            hidden: dev_size - size,
            read_only,
            max_io_bytes,
            zoned: None,
        });
    };
    if !g.zone_size.is_power_of_two() {
        return Err(LayoutError::ZoneSizeNotPowerOfTwo(g.zone_size));
    }
    if g.zone_size >> 9 > u64::from(u32::MAX) {
        return Err(LayoutError::ZoneSizeTooLarge(g.zone_size));
    }
    // ublk computes nr_zones = dev_sectors / chunk_sectors and the block
    // layer wants every reported zone to cover the capacity, so a smaller
    // last zone cannot be shown.
    let nr_zones = u32::try_from(g.device_size / g.zone_size)
        .unwrap_or(u32::MAX)
        .min(g.nr_zones);
    if nr_zones == 0 {
        return Err(LayoutError::TooSmall {
            size: dev_size,
            what: "zone",
        });
    }
    let size = u64::from(nr_zones) * g.zone_size;
    let cap_sectors = (g.zone_cap(0) >> 9).max(1);
    let append = if g.max_append_bytes == 0 {
        // Appends fail with EOPNOTSUPP in the engine; the kernel still
        // insists on a limit.
        u64::from(max_io_bytes)
    } else {
        u64::from(g.max_append_bytes).min(u64::from(max_io_bytes))
    };
    let max_append_sectors = ((append >> 9).min(cap_sectors).max(1)) as u32;
    Ok(Layout {
        size,
        hidden: dev_size - size,
        read_only,
        max_io_bytes,
        zoned: Some(ZonedLayout {
            geometry: g,
            nr_zones,
            max_open_zones: g.max_open_zones.min(nr_zones),
            max_active_zones: g.max_active_zones.min(nr_zones),
            max_append_sectors,
        }),
    })
}

impl Layout {
    /// The ublk parameters (basic, discard, zoned) for this layout.
    pub fn params(&self) -> sys::ublk_params {
        let max_sectors = self.max_io_bytes >> 9;
        let mut attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
        if self.read_only {
            attrs |= sys::UBLK_ATTR_READ_ONLY;
        }
        let mut p = sys::ublk_params {
            types: sys::UBLK_PARAM_TYPE_BASIC,
            basic: sys::ublk_param_basic {
                attrs,
                logical_bs_shift: 9,
                physical_bs_shift: 12,
                io_opt_shift: 12,
                io_min_shift: 9,
                max_sectors,
                dev_sectors: self.size >> 9,
                ..Default::default()
            },
            ..Default::default()
        };
        if !self.read_only {
            p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
            p.discard = sys::ublk_param_discard {
                discard_alignment: 0,
                discard_granularity: 4096,
                max_discard_sectors: max_sectors,
                max_write_zeroes_sectors: max_sectors,
                max_discard_segments: 1,
                ..Default::default()
            };
        }
        if let Some(z) = &self.zoned {
            p.types |= sys::UBLK_PARAM_TYPE_ZONED;
            p.basic.chunk_sectors = (z.geometry.zone_size >> 9) as u32;
            p.zoned = sys::ublk_param_zoned {
                max_open_zones: z.max_open_zones,
                max_active_zones: z.max_active_zones,
                max_zone_append_sectors: z.max_append_sectors,
                ..Default::default()
            };
        }
        p
    }

    /// Device flags for `UBLK_CMD_ADD_DEV`: user copy always (data moves
    /// by pread/pwrite on the char device; the kernel requires it for
    /// zoned devices), zoned when the image is.
    pub fn ctrl_flags(&self) -> u64 {
        let mut f = u64::from(sys::UBLK_F_USER_COPY);
        if self.zoned.is_some() {
            f |= u64::from(sys::UBLK_F_ZONED);
        }
        f
    }
}
