//! Offset newtypes: guest (virtual disk) offsets, host (image file) offsets
//! and host cluster indices are different things; mixing them is a bug the
//! compiler should catch.

use std::fmt;

/// A byte offset in the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestOffset(pub u64);

/// A byte offset in the image file (or data file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostOffset(pub u64);

/// Index of a host cluster (host offset >> cluster_bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostCluster(pub u64);

impl HostOffset {
    /// The host cluster holding this offset.
    pub fn cluster(self, cluster_bits: u32) -> HostCluster {
        HostCluster(self.0 >> cluster_bits)
    }
    /// Offset `n` bytes further.
    pub fn plus(self, n: u64) -> HostOffset {
        HostOffset(self.0 + n)
    }
    /// Whether the offset is a multiple of the cluster size.
    pub fn is_cluster_aligned(self, cluster_bits: u32) -> bool {
        self.0 & ((1u64 << cluster_bits) - 1) == 0
    }
}

impl HostCluster {
    /// Offset of the cluster's first byte.
    pub fn offset(self, cluster_bits: u32) -> HostOffset {
        HostOffset(self.0 << cluster_bits)
    }
}

impl GuestOffset {
    /// Offset `n` bytes further.
    pub fn plus(self, n: u64) -> GuestOffset {
        GuestOffset(self.0 + n)
    }
}

impl fmt::Display for HostOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for GuestOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for HostCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
