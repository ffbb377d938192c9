//! The zoned qcow2 image as the engine's [`ZoneStore`].

use super::store::{StoreResult, ZoneStore};
use crate::format::wp::WpEntry;
use crate::format::{FormatError, Qcow2};
use crate::zone::ZoneGeometry;

/// A zoned [`Qcow2`] image serving the engine.
#[derive(Debug)]
pub struct Qcow2ZoneStore {
    img: Qcow2,
    geometry: ZoneGeometry,
}

impl Qcow2ZoneStore {
    /// Wrap an open zoned image; fails if it is not zoned or its zoned
    /// metadata is unusable.
    pub fn new(img: Qcow2) -> StoreResult<Self> {
        let z = img
            .zoned()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        if let Some(p) = &z.problem {
            return Err(FormatError::Invalid(format!(
                "zoned metadata unusable: {p}; run 'zcow-img repair'"
            )));
        }
        let geometry = z.geometry;
        Ok(Self { img, geometry })
    }

    /// The image underneath.
    pub fn image(&self) -> &Qcow2 {
        &self.img
    }
}

impl ZoneStore for Qcow2ZoneStore {
    fn format_info(&self) -> Option<crate::device::FormatInfo> {
        crate::device::BlockDevice::format_info(self.image())
    }
    fn geometry(&self) -> ZoneGeometry {
        self.geometry
    }
    fn load_wp_entries(&self, first: u32, out: &mut [u64]) -> StoreResult<()> {
        self.img.read_wp_range(first, out)
    }
    fn store_wp_entries(&self, first: u32, entries: &[u64]) -> StoreResult<()> {
        let e: Vec<WpEntry> = entries.iter().map(|&v| WpEntry(v)).collect();
        self.img.write_wp_entries(first, &e)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
        self.img.read(offset, buf)
    }
    fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: crate::format::PageUse,
        sink: &mut dyn FnMut(&[crate::format::HostRun<'_>]),
    ) -> StoreResult<bool> {
        self.img.read_direct(offset, len, use_, sink)
    }
    fn write(&self, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.img.write(offset, data)
    }
    fn write_from(&self, offset: u64, src: &dyn crate::format::Payload) -> StoreResult<()> {
        self.img.write_from(offset, src)
    }
    fn deallocate(&self, offset: u64, len: u64) -> StoreResult<()> {
        self.img.deallocate(offset, len)
    }
    fn sync(&self) -> StoreResult<()> {
        // flush() writes back refcounts, L2, L1 in order and syncs; the wp
        // entries written since the last call are covered by its syncs.
        self.img.flush()
    }
    fn is_read_only(&self) -> bool {
        self.img.is_read_only()
    }
}
