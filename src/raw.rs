//! A raw image (or any byte store) as a [`BlockDevice`].

use crate::device::{check_range, BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use crate::format::FormatError;
use crate::storage::Storage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Raw format: guest offset = byte offset in the store.
#[derive(Debug)]
pub struct RawDevice {
    store: Arc<dyn Storage>,
    /// Where the device starts in the store (the raw driver's `offset`).
    base: u64,
    /// Device size; changes only by `truncate`.
    size: AtomicU64,
    /// A window with an explicit `size` cannot be resized (QEMU's rule).
    fixed: bool,
    read_only: bool,
    /// The format was guessed: refuse writes that would make block 0 look
    /// like another format (QEMU's rule for probed raw images).
    guard_block0: bool,
}

impl RawDevice {
    /// Wrap a store; the device size is the store's length now, rounded up
    /// to whole 512-byte sectors as QEMU's file driver does (the tail past
    /// the end of the file reads as zeros; writing there extends the file).
    pub fn new(store: Arc<dyn Storage>, read_only: bool) -> DevResult<Self> {
        let size = store
            .len()
            .map_err(FormatError::from)?
            .next_multiple_of(512);
        let read_only = read_only || store.is_read_only();
        Ok(Self {
            store,
            base: 0,
            size: AtomicU64::new(size),
            fixed: false,
            read_only,
            guard_block0: false,
        })
    }

    /// Protect block 0 as QEMU protects a raw image whose format was only
    /// guessed: a write that would make the first 512 bytes probe as
    /// another format (so that the next probing open would interpret the
    /// guest's data as image metadata) fails with EPERM.
    pub fn guard_block0(mut self) -> Self {
        self.guard_block0 = true;
        self
    }

    fn check_block0(&self, offset: u64, data: &[u8]) -> DevResult<()> {
        let n = crate::probe::PROBE_LEN as u64;
        if !self.guard_block0 || offset >= n || data.is_empty() {
            return Ok(());
        }
        let mut head = vec![0u8; crate::probe::PROBE_LEN];
        st(self.store.read_at_zero_fill(0, &mut head))?;
        let end = (offset + data.len() as u64).min(n);
        head[offset as usize..end as usize].copy_from_slice(&data[..(end - offset) as usize]);
        match crate::probe::probe(&head) {
            crate::probe::Probed::Raw => Ok(()),
            crate::probe::Probed::Qcow2 => Err(DeviceError::Denied(
                "the write would make block 0 look like a qcow2 image (the format was guessed \
                 raw; open with -f raw to write it)"
                    .into(),
            )),
            crate::probe::Probed::Other(f) => Err(DeviceError::Denied(format!(
                "the write would make block 0 look like a {f} image (the format was guessed \
                 raw; open with -f raw to write it)"
            ))),
        }
    }

    /// A window `[offset, offset+size)` of the store, as QEMU's raw driver
    /// `offset` and `size` options (size: to the end of the store when
    /// absent). The window must lie inside the store.
    pub fn window(
        store: Arc<dyn Storage>,
        read_only: bool,
        offset: u64,
        size: Option<u64>,
    ) -> DevResult<Self> {
        let len = store.len().map_err(FormatError::from)?;
        let size = match size {
            Some(s) => s,
            None => len.checked_sub(offset).ok_or_else(|| {
                DeviceError::Invalid(format!(
                    "The offset ({offset}) is beyond the end of the file ({len})"
                ))
            })?,
        };
        if offset.checked_add(size).is_none_or(|e| e > len) {
            return Err(DeviceError::Invalid(format!(
                "The sum of offset ({offset}) and size ({size}) has to be smaller or equal to the  actual size of the containing file ({len})"
            )));
        }
        let mut d = Self::new(store, read_only)?;
        d.base = offset;
        d.size = AtomicU64::new(size);
        d.fixed = offset != 0 || size != len;
        Ok(d)
    }

    /// An in-memory raw device of `size` zero bytes (tests).
    pub fn memory(size: u64) -> DevResult<Self> {
        let m = crate::storage::MemStorage::new();
        m.set_len(size).map_err(FormatError::from)?;
        Self::new(Arc::new(m), false)
    }

    fn writable(&self) -> DevResult<()> {
        if self.read_only {
            Err(DeviceError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

fn st<T>(r: crate::storage::Result<T>) -> DevResult<T> {
    r.map_err(|e| DeviceError::Format(FormatError::from(e)))
}

impl BlockDevice for RawDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        st(self.store.read_at_zero_fill(self.base + offset, buf))
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        self.writable()?;
        check_range(offset, data.len() as u64, self.size())?;
        self.check_block0(offset, data)?;
        st(self.store.write_at(self.base + offset, data))?;
        if fua {
            st(self.store.sync())?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        self.writable()?;
        check_range(offset, len, self.size())?;
        st(self.store.discard(self.base + offset, len))?;
        if flags.fua {
            st(self.store.sync())?;
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        self.writable()?;
        check_range(offset, len, self.size())?;
        st(self.store.discard(self.base + offset, len))
    }
    fn flush(&self) -> DevResult<()> {
        st(self.store.sync())
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        check_range(offset, len, self.size())?;
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
    fn truncate(&self, size: u64) -> DevResult<()> {
        self.writable()?;
        if self.fixed {
            return Err(DeviceError::Unsupported(
                "Cannot resize fixed-size raw disks".into(),
            ));
        }
        // The file is exactly the new size (QEMU's raw driver truncates the
        // file to the byte); the new range reads as zeroes.
        st(self.store.set_len(size))?;
        st(self.store.sync())?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }
    fn format_info(&self) -> Option<crate::device::FormatInfo> {
        Some(crate::device::FormatInfo {
            name: "raw".into(),
            cluster_size: 0,
            vm_state_offset: 0,
            specific: None,
        })
    }
    fn describe(&self) -> String {
        "raw".into()
    }
}
