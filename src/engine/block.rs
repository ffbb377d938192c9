//! [`BlockDevice`] over the engine: the inherent methods with errors mapped
//! to [`DeviceError`].

use super::zone_engine::Engine;
use crate::device::{BlockDevice, DevResult, Extent, ZeroFlags};
use crate::format::Payload;
use crate::zone::{ZoneDescriptor, ZoneGeometry, ZoneOp};

impl BlockDevice for Engine {
    fn size(&self) -> u64 {
        Engine::size(self)
    }
    fn is_read_only(&self) -> bool {
        Engine::is_read_only(self)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        Ok(Engine::read(self, offset, buf)?)
    }
    fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: crate::format::PageUse,
        sink: &mut dyn FnMut(&[crate::format::HostRun<'_>]),
    ) -> DevResult<bool> {
        Ok(Engine::read_direct(self, offset, len, use_, sink)?)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        Ok(Engine::write(self, offset, data, fua)?)
    }
    fn write_from(&self, offset: u64, src: &dyn Payload, fua: bool) -> DevResult<()> {
        Ok(Engine::write_from(self, offset, src, fua)?)
    }
    /// In a sequential zone: a write of zeroes at the write pointer (the
    /// range is deallocated, so `fast_only` is always satisfied). In
    /// conventional zones: the range is deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        Ok(Engine::write_zeroes(self, offset, len, flags.fua)?)
    }
    /// Conventional zones: deallocated (reads zero). Sequential zones: a
    /// no-op; only a reset drops their data.
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        Ok(Engine::discard(self, offset, len)?)
    }
    fn flush(&self) -> DevResult<()> {
        Ok(Engine::flush(self)?)
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        Ok(Engine::block_status(self, offset, len)?)
    }
    fn zone_geometry(&self) -> Option<ZoneGeometry> {
        Some(self.geometry())
    }
    fn zone_report(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        Ok(self.report(offset, max)?)
    }
    fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> DevResult<()> {
        Ok(Engine::zone_mgmt(self, op, offset, len)?)
    }
    fn zone_append(&self, zone_start: u64, data: &[u8], fua: bool) -> DevResult<u64> {
        Ok(self.append(zone_start, data, fua)?)
    }
    fn zone_append_from(&self, zone_start: u64, src: &dyn Payload, fua: bool) -> DevResult<u64> {
        Ok(self.append_from(zone_start, src, fua)?)
    }
    fn format_info(&self) -> Option<crate::device::FormatInfo> {
        self.store_format_info()
    }
    fn finish_least_recent_active(&self) -> DevResult<Option<u32>> {
        Ok(Engine::finish_least_recent_active(self)?)
    }
    fn zone_set_fault(&self, index: u32, fault: super::ZoneFault) -> DevResult<()> {
        Ok(self.set_condition(index, fault)?)
    }
    fn describe(&self) -> String {
        let g = self.geometry();
        format!(
            "zoned (host-managed): {} zones of {:#x} bytes, capacity {:#x}, {} conventional",
            g.nr_zones, g.zone_size, g.zone_capacity, g.conventional_zones
        )
    }
}
