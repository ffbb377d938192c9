//! A non-zoned qcow2 image as a [`BlockDevice`].

use crate::device::FormatInfo;
use crate::device::{BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use crate::format::specific::{format_specific, vm_state_offset};
use crate::format::{Payload, Qcow2};

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        Qcow2::size(self)
    }
    fn is_read_only(&self) -> bool {
        Qcow2::is_read_only(self)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        Ok(Qcow2::read(self, offset, buf)?)
    }
    fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: crate::format::PageUse,
        sink: &mut dyn FnMut(&[crate::format::HostRun<'_>]),
    ) -> DevResult<bool> {
        Ok(Qcow2::read_direct(self, offset, len, use_, sink)?)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        BlockDevice::write_from(self, offset, &data, fua)
    }
    fn write_from(&self, offset: u64, src: &dyn Payload, fua: bool) -> DevResult<()> {
        Qcow2::write_from(self, offset, src)?;
        if fua {
            Qcow2::flush(self)?;
        }
        Ok(())
    }
    fn write_compressed(&self, offset: u64, data: &[u8]) -> DevResult<()> {
        Ok(Qcow2::write_compressed(self, offset, data)?)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        Qcow2::write_zeroes(self, offset, len)?;
        if flags.fua {
            Qcow2::flush(self)?;
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        Ok(Qcow2::discard(self, offset, len)?)
    }
    fn flush(&self) -> DevResult<()> {
        Ok(Qcow2::flush(self)?)
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        if len == 0 {
            return Err(DeviceError::Invalid(
                "block status of an empty range".into(),
            ));
        }
        Ok(Qcow2::block_status(self, offset, len)?
            .into_iter()
            .map(|(len, alloc, zero)| Extent {
                len,
                hole: !alloc,
                zero,
            })
            .collect())
    }
    fn format_info(&self) -> Option<FormatInfo> {
        Some(FormatInfo {
            name: "qcow2".into(),
            cluster_size: self.cluster_size(),
            vm_state_offset: vm_state_offset(self),
            specific: Some(serde_json::Value::Object(format_specific(self))),
        })
    }
    fn truncate(&self, size: u64) -> DevResult<()> {
        Ok(Qcow2::resize(self, size)?)
    }
    fn write_vmstate(&self, pos: u64, data: &[u8]) -> DevResult<()> {
        Ok(Qcow2::write_vmstate(self, pos, data)?)
    }
    fn read_vmstate(&self, pos: u64, buf: &mut [u8]) -> DevResult<()> {
        Ok(Qcow2::read_vmstate(self, pos, buf)?)
    }
    fn describe(&self) -> String {
        "qcow2".into()
    }
}
