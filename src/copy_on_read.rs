//! qemu-io's `-C` (copy-on-read): data a read finds in the backing chain is
//! written into the top image, whole clusters at a time, so later reads no
//! longer need the backing file.

use crate::device::{BlockDevice, DevResult, DeviceError, Extent, FormatInfo, ZeroFlags};
use std::sync::{Arc, Mutex, MutexGuard};

/// A device whose reads copy backing data up into it.
#[derive(Debug)]
pub struct CopyOnRead {
    inner: Arc<dyn BlockDevice>,
    /// Copy granularity (the cluster size; 512 for devices without one).
    unit: u64,
    /// Reads that copy and writes are serialised, so a copy never
    /// overwrites data a concurrent write has just put there.
    order: Mutex<()>,
}

impl CopyOnRead {
    /// Wrap `inner`. Zoned devices are refused (their writes follow write
    /// pointers; a copy could not).
    pub fn new(inner: Arc<dyn BlockDevice>) -> DevResult<Self> {
        if inner.zone_geometry().is_some() {
            return Err(DeviceError::Unsupported(
                "copy-on-read (-C) on a zoned image".into(),
            ));
        }
        let unit = inner
            .format_info()
            .map(|f| f.cluster_size)
            .filter(|&c| c >= 512)
            .unwrap_or(512);
        Ok(Self {
            inner,
            unit,
            order: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copy up every run of `[offset, offset+len)` (widened to whole
    /// units) that the top image does not hold and whose data from the
    /// backing chain is not all zeroes (QEMU copies allocated zeroes too;
    /// zcow leaves them, which reads the same and allocates less).
    fn copy_up(&self, offset: u64, len: u64) -> DevResult<()> {
        let size = self.inner.size();
        let start = offset / self.unit * self.unit;
        let end = (offset + len)
            .div_ceil(self.unit)
            .saturating_mul(self.unit)
            .min(size);
        let mut pos = start;
        while pos < end {
            let ext = self.inner.block_status(pos, end - pos)?;
            let Some(e) = ext.first().copied() else {
                break;
            };
            let n = e.len.min(end - pos).max(1);
            if e.hole && !e.zero {
                // Bounded by the request (at most one unit either side).
                let mut buf = vec![0u8; n as usize];
                self.inner.read(pos, &mut buf)?;
                // Zeroes are what an unallocated chain reads as too;
                // copying them would only allocate.
                if buf.iter().any(|&b| b != 0) {
                    self.inner.write(pos, &buf, false)?;
                }
            }
            pos += n;
        }
        Ok(())
    }
}

impl BlockDevice for CopyOnRead {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        let _g = self.lock();
        if !self.inner.is_read_only() && !buf.is_empty() {
            crate::device::check_range(offset, buf.len() as u64, self.size())?;
            self.copy_up(offset, buf.len() as u64)?;
        }
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        let _g = self.lock();
        self.inner.write(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        let _g = self.lock();
        self.inner.write_zeroes(offset, len, flags)
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        let _g = self.lock();
        self.inner.discard(offset, len)
    }
    fn flush(&self) -> DevResult<()> {
        self.inner.flush()
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }
    fn format_info(&self) -> Option<FormatInfo> {
        self.inner.format_info()
    }
    fn truncate(&self, size: u64) -> DevResult<()> {
        let _g = self.lock();
        self.inner.truncate(size)
    }
    fn write_vmstate(&self, pos: u64, data: &[u8]) -> DevResult<()> {
        self.inner.write_vmstate(pos, data)
    }
    fn read_vmstate(&self, pos: u64, buf: &mut [u8]) -> DevResult<()> {
        self.inner.read_vmstate(pos, buf)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
