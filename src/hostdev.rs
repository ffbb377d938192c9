//! A host-managed zoned block device of the host (an SMR disk, a ZNS
//! namespace, `null_blk`, a `zcow-ublk` device) as a [`BlockDevice`], the
//! way QEMU's `host_device` driver drives one: zones from the kernel's
//! `BLKREPORTZONE`, zone management by `BLKRESETZONE`/`BLKOPENZONE`/
//! `BLKCLOSEZONE`/`BLKFINISHZONE`, reads and writes with `O_DIRECT` (the
//! page cache does not keep writes to a sequential zone in order).
//!
//! Userspace cannot issue a zone append to a block device, so zone append
//! is emulated as QEMU emulates it: under one lock per device, read the
//! zone's write pointer and write there. Appends from other processes
//! writing the same zone at the same time are not serialised with ours.

use crate::device::{
    check_range, BlockDevice, DevResult, DeviceError, Extent, FormatInfo, ZeroFlags,
};
use crate::storage::lock::{self, LockRequest};
use crate::zone::{ZoneCond, ZoneDescriptor, ZoneGeometry, ZoneOp, ZoneType};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ioctl numbers of <linux/blkzoned.h> (type 0x12): _IOWR/_IOW/_IOR with
// the sizes of the structs below.
/// `BLKGETSIZE64` of <linux/fs.h>: _IOR(0x12, 114, size_t).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKREPORTZONE: libc::c_ulong = 0xC010_1282;
const BLKRESETZONE: libc::c_ulong = 0x4010_1283;
const BLKGETZONESZ: libc::c_ulong = 0x8004_1284;
const BLKGETNRZONES: libc::c_ulong = 0x8004_1285;
const BLKOPENZONE: libc::c_ulong = 0x4010_1286;
const BLKCLOSEZONE: libc::c_ulong = 0x4010_1287;
const BLKFINISHZONE: libc::c_ulong = 0x4010_1288;
/// `blk_zone_report.flags`: the `capacity` field is valid.
const BLK_ZONE_REP_CAPACITY: u32 = 1;

/// `struct blk_zone_report` without its trailing array.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct ReportHeader {
    sector: u64,
    nr_zones: u32,
    flags: u32,
}

/// `struct blk_zone` (64 bytes, host byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct BlkZone {
    start: u64,
    len: u64,
    wp: u64,
    zone_type: u8,
    cond: u8,
    non_seq: u8,
    reset: u8,
    resv: [u8; 4],
    capacity: u64,
    reserved: [u8; 24],
}

/// `struct blk_zone_range`.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct ZoneRange {
    sector: u64,
    nr_sectors: u64,
}

/// Zones asked of the kernel per `BLKREPORTZONE` (256 KiB of descriptors).
const REPORT_BATCH: u32 = 4096;
/// Largest bounce buffer for one `O_DIRECT` transfer.
const MAX_IO: usize = 1 << 20;

/// Whether `path` is a block device whose queue says `host-managed`.
pub fn is_host_managed(path: &Path) -> bool {
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    md.file_type().is_block_device()
        && sysfs_queue(md.rdev(), "zoned").is_some_and(|z| z == "host-managed")
}

fn sysfs_queue(rdev: u64, attr: &str) -> Option<String> {
    let p = format!(
        "/sys/dev/block/{}:{}/queue/{attr}",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysfs_u32(rdev: u64, attr: &str) -> u32 {
    sysfs_queue(rdev, attr)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A heap buffer aligned for `O_DIRECT`.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize, align: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(align), align)
            .expect("block size is a power of two");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, layout }
    }
    fn buf(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len.min(self.layout.size())) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A host-managed zoned block device of the host.
#[derive(Debug)]
pub struct HostZoned {
    file: File,
    path: PathBuf,
    size: u64,
    geom: ZoneGeometry,
    /// Logical block size: the unit of every `O_DIRECT` transfer.
    block: u64,
    read_only: bool,
    /// Serialises emulated zone appends (read wp, write there).
    append: Mutex<()>,
}

fn os_err(what: String, e: std::io::Error) -> DeviceError {
    DeviceError::Host {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        what,
    }
}

impl HostZoned {
    /// Open a host-managed zoned block device with `O_DIRECT`, locked as
    /// QEMU locks a raw image.
    pub fn open(path: &Path, read_only: bool, lock: LockRequest) -> DevResult<Self> {
        let p = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| os_err(format!("Could not open '{p}'"), e))?;
        lock::acquire(&file, path, lock).map_err(|e| os_err(format!("Could not open '{p}'"), e))?;
        let md = file.metadata().map_err(|e| os_err(format!("'{p}'"), e))?;
        let rdev = md.rdev();
        let fd = file.as_raw_fd();
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
        if unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size) } < 0 {
            return Err(os_err(
                format!("'{p}': BLKGETSIZE64"),
                std::io::Error::last_os_error(),
            ));
        }
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut ssz) } < 0
            || ssz < 512
            || !(ssz as u32).is_power_of_two()
        {
            ssz = 512;
        }
        let mut zone_sectors: u32 = 0;
        let mut nr_zones: u32 = 0;
        // SAFETY: both ioctls write one u32 through the pointer.
        let ok = unsafe {
            libc::ioctl(fd, BLKGETZONESZ, &mut zone_sectors) >= 0
                && libc::ioctl(fd, BLKGETNRZONES, &mut nr_zones) >= 0
        };
        if !ok || zone_sectors == 0 || nr_zones == 0 {
            return Err(DeviceError::Invalid(format!(
                "'{p}': the kernel reports no zones for this device"
            )));
        }
        let mut dev = HostZoned {
            file,
            path: path.to_path_buf(),
            size,
            geom: ZoneGeometry {
                device_size: size,
                zone_size: zone_sectors as u64 * 512,
                zone_capacity: zone_sectors as u64 * 512,
                nr_zones,
                conventional_zones: 0,
                max_open_zones: sysfs_u32(rdev, "max_open_zones"),
                max_active_zones: sysfs_u32(rdev, "max_active_zones"),
                max_append_bytes: sysfs_u32(rdev, "zone_append_max_bytes"),
            },
            block: ssz as u64,
            read_only: read_only || md.permissions().readonly(),
            append: Mutex::new(()),
        };
        // Leading conventional zones and the sequential zones' capacity,
        // from as few batches as it takes to reach the first sequential zone.
        let mut at = 0u64;
        'scan: while at < size {
            let zones = dev.report_raw(at, REPORT_BATCH)?;
            if zones.is_empty() {
                break;
            }
            for z in &zones {
                if z.zone_type == ZoneType::Conventional {
                    dev.geom.conventional_zones += 1;
                } else {
                    dev.geom.zone_capacity = z.cap;
                    break 'scan;
                }
            }
            at = zones.last().map_or(size, |z| z.start + z.len);
        }
        dev.geom.validate().map_err(|e| {
            DeviceError::Invalid(format!("'{p}': zone geometry not supported: {e}"))
        })?;
        Ok(dev)
    }

    fn ioctl_range(&self, req: libc::c_ulong, name: &str, offset: u64, len: u64) -> DevResult<()> {
        let r = ZoneRange {
            sector: offset / 512,
            nr_sectors: len / 512,
        };
        // SAFETY: the zone ioctls read one blk_zone_range through the pointer.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), req, &r) } < 0 {
            return Err(os_err(
                format!("{name} at {offset:#x} length {len:#x}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Up to `max` zones from the one holding `offset`, straight from the
    /// kernel.
    fn report_raw(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        let n = max.min(REPORT_BATCH) as usize;
        let hdr = std::mem::size_of::<ReportHeader>();
        let zsz = std::mem::size_of::<BlkZone>();
        let mut buf = vec![0u8; hdr + n * zsz];
        let h = ReportHeader {
            sector: offset / 512,
            nr_zones: n as u32,
            flags: 0,
        };
        buf[..hdr].copy_from_slice(h.as_bytes());
        // SAFETY: the buffer holds the header and room for nr_zones zones,
        // which is all BLKREPORTZONE writes.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), BLKREPORTZONE, buf.as_mut_ptr()) } < 0 {
            return Err(os_err(
                format!("BLKREPORTZONE at {offset:#x}"),
                std::io::Error::last_os_error(),
            ));
        }
        let h = ReportHeader::read_from_bytes(&buf[..hdr])
            .map_err(|_| DeviceError::Invalid("BLKREPORTZONE: short header".into()))?;
        let got = (h.nr_zones as usize).min(n);
        let mut out = Vec::with_capacity(got);
        for chunk in buf[hdr..hdr + got * zsz].chunks_exact(zsz) {
            let z = BlkZone::read_from_bytes(chunk)
                .map_err(|_| DeviceError::Invalid("BLKREPORTZONE: short zone".into()))?;
            out.push(self.descriptor(&z, h.flags)?);
        }
        Ok(out)
    }

    fn descriptor(&self, z: &BlkZone, flags: u32) -> DevResult<ZoneDescriptor> {
        let start = z.start.saturating_mul(512);
        let len = z.len.saturating_mul(512);
        let zone_type = match z.zone_type {
            1 => ZoneType::Conventional,
            2 => ZoneType::SeqWriteReq,
            t => {
                return Err(DeviceError::Unsupported(format!(
                    "zone at {start:#x} has type {t} (only conventional and sequential-write-required zones are supported)"
                )))
            }
        };
        let cond = ZoneCond::from_value(z.cond).ok_or_else(|| {
            DeviceError::Invalid(format!(
                "zone at {start:#x} has unknown condition {:#x}",
                z.cond
            ))
        })?;
        let cap = if flags & BLK_ZONE_REP_CAPACITY != 0 {
            z.capacity.saturating_mul(512)
        } else {
            len
        };
        Ok(ZoneDescriptor {
            index: (start / self.geom.zone_size.max(1)) as u32,
            start,
            len,
            cap,
            wp: if zone_type == ZoneType::Conventional {
                start
            } else {
                z.wp.saturating_mul(512)
            },
            zone_type,
            cond,
        })
    }

    fn zone_at(&self, offset: u64) -> DevResult<ZoneDescriptor> {
        self.report_raw(offset, 1)?
            .into_iter()
            .next()
            .ok_or_else(|| DeviceError::Invalid(format!("no zone at {offset:#x}")))
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        offset % self.block == 0 && len % self.block == 0
    }

    /// Write `data` at `offset` (block-aligned) through a bounce buffer.
    fn write_direct(&self, offset: u64, data: &[u8]) -> DevResult<()> {
        let mut bounce = Aligned::new(data.len().min(MAX_IO), self.block as usize);
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_IO);
            let b = bounce.buf(n);
            b.copy_from_slice(&data[done..done + n]);
            let at = offset + done as u64;
            self.file
                .write_all_at(b, at)
                .map_err(|e| os_err(format!("write at {at:#x} length {n:#x}"), e))?;
            done += n;
        }
        Ok(())
    }
}

impl BlockDevice for HostZoned {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        // Whole blocks around the request, at most `cap` bytes at a time.
        let b = self.block as usize;
        let cap = MAX_IO.min((buf.len() + b).next_multiple_of(b) + b);
        let mut bounce = Aligned::new(cap, b);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let skip = (pos % b as u64) as usize;
            let a0 = pos - skip as u64;
            let take = (buf.len() - done).min(cap - skip);
            let n = (skip + take).next_multiple_of(b);
            let chunk = bounce.buf(n);
            self.file
                .read_exact_at(chunk, a0)
                .map_err(|e| os_err(format!("read at {a0:#x} length {n:#x}"), e))?;
            buf[done..done + take].copy_from_slice(&chunk[skip..skip + take]);
            done += take;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        check_range(offset, data.len() as u64, self.size)?;
        if !self.aligned(offset, data.len() as u64) {
            return Err(DeviceError::Invalid(format!(
                "write at {offset:#x} length {:#x}: a zoned host device takes whole {}-byte blocks",
                data.len(),
                self.block
            )));
        }
        self.write_direct(offset, data)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        if flags.fast_only {
            return Err(DeviceError::FastZeroUnsupported);
        }
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        if !self.aligned(offset, len) {
            return Err(DeviceError::Invalid(format!(
                "write zeroes at {offset:#x} length {len:#x}: a zoned host device takes whole {}-byte blocks",
                self.block
            )));
        }
        let zeroes = vec![0u8; (len as usize).min(MAX_IO)];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(MAX_IO as u64) as usize;
            self.write_direct(pos, &zeroes[..n])?;
            pos += n as u64;
        }
        if flags.fua {
            self.flush()?;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        // A hint only: sequential zones keep their data until a reset.
        check_range(offset, len, self.size)
    }

    fn flush(&self) -> DevResult<()> {
        self.file
            .sync_data()
            .map_err(|e| os_err(format!("flush of '{}'", self.path.display()), e))
    }

    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        // Written data up to the write pointer (a FULL or READ_ONLY zone: up
        // to its capacity), then the zone's unwritten rest, which reads as
        // zeroes.
        let z = self.zone_at(offset)?;
        let end = (offset + len).min(z.start + z.len);
        let mut v = Vec::new();
        let data_end = match z.cond {
            ZoneCond::NotWp => end,
            ZoneCond::Full | ZoneCond::ReadOnly => (z.start + z.cap).clamp(offset, end),
            ZoneCond::Offline => offset,
            _ => z.wp.clamp(offset, end),
        };
        if data_end > offset {
            v.push(Extent {
                len: data_end - offset,
                hole: false,
                zero: false,
            });
        }
        if end > data_end {
            v.push(Extent {
                len: end - data_end,
                hole: true,
                zero: true,
            });
        }
        Ok(v)
    }

    fn zone_geometry(&self) -> Option<ZoneGeometry> {
        Some(self.geom)
    }

    fn zone_report(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        self.report_raw(offset, max)
    }

    fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> DevResult<()> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        let (req, name) = match op {
            ZoneOp::Open => (BLKOPENZONE, "BLKOPENZONE"),
            ZoneOp::Close => (BLKCLOSEZONE, "BLKCLOSEZONE"),
            ZoneOp::Finish => (BLKFINISHZONE, "BLKFINISHZONE"),
            ZoneOp::Reset => (BLKRESETZONE, "BLKRESETZONE"),
        };
        self.ioctl_range(req, name, offset, len)
    }

    fn zone_append(&self, zone_start: u64, data: &[u8], fua: bool) -> DevResult<u64> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        let _g = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let z = self.zone_at(zone_start)?;
        if z.start != zone_start || z.zone_type != ZoneType::SeqWriteReq {
            return Err(DeviceError::Invalid(format!(
                "zone append at {zone_start:#x}: not the start of a sequential zone"
            )));
        }
        if z.wp + data.len() as u64 > z.start + z.cap {
            return Err(DeviceError::Host {
                errno: libc::ENOSPC,
                what: format!(
                    "zone append of {:#x} bytes at {zone_start:#x}: the zone has {:#x} bytes left",
                    data.len(),
                    (z.start + z.cap).saturating_sub(z.wp)
                ),
            });
        }
        self.write(z.wp, data, fua)?;
        Ok(z.wp)
    }

    fn format_info(&self) -> Option<FormatInfo> {
        Some(FormatInfo {
            name: "raw".into(),
            cluster_size: 0,
            vm_state_offset: 0,
            specific: None,
        })
    }

    fn describe(&self) -> String {
        format!(
            "host-managed zoned block device {} ({} zones)",
            self.path.display(),
            self.geom.nr_zones
        )
    }
}
