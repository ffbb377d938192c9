//! What the engine needs from the image underneath: geometry, the persistent
//! write-pointer entries, data I/O, deallocation and a durability barrier.
//!
//! The zoned qcow2 image implements it (`qcow2_store.rs`); tests may use
//! [`MemZoneStore`](super::MemZoneStore).

use crate::format::payload::{self, Payload};
use crate::format::FormatError;
use crate::zone::ZoneGeometry;
use std::fmt::Debug;

/// Result alias for store operations.
pub type StoreResult<T> = std::result::Result<T, FormatError>;

/// Persistent backing of a zoned device.
///
/// Write-pointer entries use the on-disk encoding of `spec/zoned-qcow2.md`
/// (bits 0–58 absolute wp, bit 59 conventional, bit 60 READ_ONLY, bit 61
/// OFFLINE), already converted to native integers; see
/// [`crate::format::wp::WpEntry`].
pub trait ZoneStore: Send + Sync + Debug {
    /// The static geometry.
    fn geometry(&self) -> ZoneGeometry;
    /// The image format holding the zones, for qemu-io's `info`.
    fn format_info(&self) -> Option<crate::device::FormatInfo> {
        None
    }
    /// The entries of zones `first..first+out.len()`, as last written (at
    /// open: as on disk). The engine pages the array in with bounded chunks.
    fn load_wp_entries(&self, first: u32, out: &mut [u64]) -> StoreResult<()>;
    /// Write the entries of zones `first..first+entries.len()` to the image.
    /// Not durable until the next [`ZoneStore::sync`].
    fn store_wp_entries(&self, first: u32, entries: &[u64]) -> StoreResult<()>;
    /// Read guest bytes (unwritten space reads as zero).
    fn read(&self, offset: u64, buf: &mut [u8]) -> StoreResult<()>;
    /// Hand `sink` the host runs of `[offset, offset+len)` (see
    /// [`crate::format::Qcow2::read_direct`]); false: not possible here, read
    /// instead.
    fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: crate::format::PageUse,
        sink: &mut dyn FnMut(&[crate::format::HostRun<'_>]),
    ) -> StoreResult<bool> {
        let _ = (offset, len, use_, sink);
        Ok(false)
    }
    /// Write guest bytes.
    fn write(&self, offset: u64, data: &[u8]) -> StoreResult<()>;
    /// Write guest bytes taken from `src` (see
    /// [`crate::format::Qcow2::write_from`]); by default through memory.
    fn write_from(&self, offset: u64, src: &dyn Payload) -> StoreResult<()> {
        payload::with_all(src, |d| self.write(offset, d)).map_err(FormatError::Payload)?
    }
    /// Make a guest range read as zero and give back the space of every
    /// cluster it covers whole.
    fn deallocate(&self, offset: u64, len: u64) -> StoreResult<()>;
    /// Make everything written so far durable, mapping metadata first and in
    /// dependency order (refcounts, L2, L1), then the write-pointer entries.
    fn sync(&self) -> StoreResult<()>;
    /// Whether the image was opened read-only.
    fn is_read_only(&self) -> bool;
}
