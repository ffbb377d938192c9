//! Write-pointer array entries (one u64 per zone, big-endian on disk).
//!
//! Bits 0–58: absolute byte offset of the write pointer in the virtual disk.
//! Bit 59: conventional zone. Bit 60: READ_ONLY. Bit 61: OFFLINE.
//! Bits 62–63: reserved, zero.

/// Mask of the write-pointer address bits (0–58).
pub const WP_ADDR_MASK: u64 = (1 << 59) - 1;
/// Conventional-zone flag.
pub const WP_CONVENTIONAL: u64 = 1 << 59;
/// Persistent READ_ONLY fault condition (zcow).
pub const WP_READ_ONLY: u64 = 1 << 60;
/// Persistent OFFLINE fault condition (zcow).
pub const WP_OFFLINE: u64 = 1 << 61;
/// Reserved bits that must be zero.
pub const WP_RESERVED: u64 = 3 << 62;

/// One decoded write-pointer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WpEntry(pub u64);

impl WpEntry {
    /// An entry for a zone whose write pointer is `wp`.
    pub fn new(wp: u64, conventional: bool) -> Self {
        WpEntry((wp & WP_ADDR_MASK) | if conventional { WP_CONVENTIONAL } else { 0 })
    }
    /// Absolute write pointer.
    pub fn wp(self) -> u64 {
        self.0 & WP_ADDR_MASK
    }
    /// Conventional flag.
    pub fn conventional(self) -> bool {
        self.0 & WP_CONVENTIONAL != 0
    }
    /// READ_ONLY fault bit.
    pub fn read_only(self) -> bool {
        self.0 & WP_READ_ONLY != 0
    }
    /// OFFLINE fault bit.
    pub fn offline(self) -> bool {
        self.0 & WP_OFFLINE != 0
    }
    /// Reserved bits (62–63).
    pub fn reserved(self) -> u64 {
        self.0 & WP_RESERVED
    }
    /// The same entry with another write pointer.
    pub fn with_wp(self, wp: u64) -> Self {
        WpEntry((self.0 & !WP_ADDR_MASK) | (wp & WP_ADDR_MASK))
    }
    /// The same entry with the fault bits set as given.
    pub fn with_faults(self, read_only: bool, offline: bool) -> Self {
        let mut v = self.0 & !(WP_READ_ONLY | WP_OFFLINE);
        if read_only {
            v |= WP_READ_ONLY;
        }
        if offline {
            v |= WP_OFFLINE;
        }
        WpEntry(v)
    }
}
