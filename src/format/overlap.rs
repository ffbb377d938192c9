//! Metadata overlap protection: where every piece of metadata lives, so that
//! an image that lies (two structures in one cluster, an L2 entry pointing
//! into a table) can never make zcow overwrite its own metadata.
//!
//! The map holds what QEMU's `overlap-check=cached` knows without reading
//! anything beyond the tables already in memory: the header cluster (with
//! its extensions), the LUKS header, the active L1 table, the refcount table
//! and its blocks, the active L2 tables, the snapshot table and the
//! snapshots' L1 tables, the bitmap directory and the write-pointer array.
//! Like QEMU, regions are compared in whole clusters.

use super::header::Header;
use super::l2::l1_l2_offset;
use super::snapshot::Snapshot;
use super::zoned::ZonedExt;
use std::collections::BTreeMap;
use std::fmt;

/// One metadata structure of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The header cluster (header, extensions, backing file name).
    Header,
    /// The LUKS encryption header.
    CryptoHeader,
    /// The active L1 table.
    ActiveL1,
    /// The refcount table.
    RefcountTable,
    /// The refcount block of this refcount table index.
    RefcountBlock(u64),
    /// The L2 table of this active L1 index.
    ActiveL2(u64),
    /// The internal snapshot table.
    SnapshotTable,
    /// The L1 table of this snapshot (index in the snapshot table).
    InactiveL1(u32),
    /// The persistent bitmap directory.
    BitmapDirectory,
    /// The write-pointer array of a zoned image (`zonedmeta_offset`).
    WpArray,
}

/// What a region is, without which one: a metadata write may only touch
/// regions of the kind it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Region::Header`].
    Header,
    /// [`Region::CryptoHeader`].
    CryptoHeader,
    /// [`Region::ActiveL1`].
    ActiveL1,
    /// [`Region::RefcountTable`].
    RefcountTable,
    /// [`Region::RefcountBlock`].
    RefcountBlock,
    /// [`Region::ActiveL2`].
    ActiveL2,
    /// [`Region::SnapshotTable`].
    SnapshotTable,
    /// [`Region::InactiveL1`].
    InactiveL1,
    /// [`Region::BitmapDirectory`].
    BitmapDirectory,
    /// [`Region::WpArray`].
    WpArray,
}

impl Region {
    /// Its kind.
    pub fn kind(self) -> Kind {
        match self {
            Region::Header => Kind::Header,
            Region::CryptoHeader => Kind::CryptoHeader,
            Region::ActiveL1 => Kind::ActiveL1,
            Region::RefcountTable => Kind::RefcountTable,
            Region::RefcountBlock(_) => Kind::RefcountBlock,
            Region::ActiveL2(_) => Kind::ActiveL2,
            Region::SnapshotTable => Kind::SnapshotTable,
            Region::InactiveL1(_) => Kind::InactiveL1,
            Region::BitmapDirectory => Kind::BitmapDirectory,
            Region::WpArray => Kind::WpArray,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Header => write!(f, "the qcow2 header"),
            Region::CryptoHeader => write!(f, "the encryption header"),
            Region::ActiveL1 => write!(f, "the active L1 table"),
            Region::RefcountTable => write!(f, "the refcount table"),
            Region::RefcountBlock(i) => write!(f, "the refcount block of refcount table index {i}"),
            Region::ActiveL2(i) => write!(f, "the active L2 table of L1 index {i}"),
            Region::SnapshotTable => write!(f, "the snapshot table"),
            Region::InactiveL1(i) => write!(f, "the L1 table of snapshot {i}"),
            Region::BitmapDirectory => write!(f, "the bitmap directory"),
            Region::WpArray => write!(f, "the write-pointer array (zonedmeta_offset)"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Header => "the qcow2 header",
            Kind::CryptoHeader => "the encryption header",
            Kind::ActiveL1 => "the active L1 table",
            Kind::RefcountTable => "the refcount table",
            Kind::RefcountBlock => "a refcount block",
            Kind::ActiveL2 => "an active L2 table",
            Kind::SnapshotTable => "the snapshot table",
            Kind::InactiveL1 => "a snapshot L1 table",
            Kind::BitmapDirectory => "the bitmap directory",
            Kind::WpArray => "the write-pointer array (zonedmeta_offset)",
        })
    }
}

/// A region where it lies on disk (bytes as the image states them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Which structure.
    pub region: Region,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl fmt::Display for Placed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (offset {:#x}, {} bytes)",
            self.region, self.offset, self.len
        )
    }
}

/// Two regions sharing a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// The region being added.
    pub new: Placed,
    /// The region already there.
    pub existing: Placed,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} overlaps {}", self.new, self.existing)
    }
}

/// The metadata regions of an image, keyed by first cluster byte; regions
/// in the map never overlap one another.
#[derive(Debug, Clone)]
pub struct MetadataMap {
    cs: u64,
    /// Cluster-rounded start -> (cluster-rounded end, region as stated).
    map: BTreeMap<u64, (u64, Placed)>,
}

impl MetadataMap {
    /// An empty map for clusters of `cs` bytes (a power of two).
    pub fn new(cs: u64) -> Self {
        Self {
            cs,
            map: BTreeMap::new(),
        }
    }

    /// The cluster-rounded byte range of `[offset, offset+len)`.
    fn span(&self, offset: u64, len: u64) -> (u64, u64) {
        let start = offset & !(self.cs - 1);
        let end = offset.saturating_add(len.max(1));
        let end = end.checked_next_multiple_of(self.cs).unwrap_or(u64::MAX);
        (start, end)
    }

    /// Regions sharing a cluster with `[offset, offset+len)`.
    pub fn overlapping(&self, offset: u64, len: u64) -> impl Iterator<Item = &Placed> + '_ {
        let (start, end) = self.span(offset, len);
        self.map
            .range(..end)
            .rev()
            .take_while(move |(_, (e, _))| *e > start)
            .map(|(_, (_, p))| p)
    }

    /// Add a region; refused (map unchanged) if it shares a cluster with one
    /// already there.
    pub fn insert(&mut self, region: Region, offset: u64, len: u64) -> Result<(), Overlap> {
        let new = Placed {
            region,
            offset,
            len,
        };
        if let Some(existing) = self.overlapping(offset, len).next() {
            return Err(Overlap {
                new,
                existing: *existing,
            });
        }
        let (start, end) = self.span(offset, len);
        self.map.insert(start, (end, new));
        Ok(())
    }

    /// Drop the region starting at `offset` (a table that was replaced).
    pub fn remove(&mut self, offset: u64) {
        let (start, _) = self.span(offset, 1);
        self.map.remove(&start);
    }

    /// The first region a write of `target` (None: guest data) to
    /// `[offset, offset+len)` would wrongly touch.
    pub fn conflict(&self, target: Option<Kind>, offset: u64, len: u64) -> Option<Placed> {
        self.overlapping(offset, len)
            .find(|p| Some(p.region.kind()) != target)
            .copied()
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Build the map of an image being opened. Returns the map of the
    /// regions that do not overlap and the first overlap found, if any.
    pub fn build(img: &ImageRegions<'_>) -> (MetadataMap, Option<Overlap>) {
        let h = img.header;
        let cs = h.cluster_size();
        let mut m = MetadataMap::new(cs);
        let mut first: Option<Overlap> = None;
        let mut add = |m: &mut MetadataMap, r: Region, off: u64, len: u64| {
            if len == 0 {
                return;
            }
            if let Err(o) = m.insert(r, off, len) {
                first.get_or_insert(o);
            }
        };
        add(&mut m, Region::Header, 0, cs);
        if let Some((off, len)) = h.crypto() {
            add(&mut m, Region::CryptoHeader, off, len);
        }
        add(
            &mut m,
            Region::ActiveL1,
            h.l1_table_offset,
            h.l1_size as u64 * 8,
        );
        add(
            &mut m,
            Region::RefcountTable,
            h.refcount_table_offset,
            h.refcount_table_clusters as u64 * cs,
        );
        if h.nb_snapshots > 0 {
            add(
                &mut m,
                Region::SnapshotTable,
                h.snapshots_offset,
                img.snapshot_table_len,
            );
        }
        for (i, s) in img.snapshots.iter().enumerate() {
            add(
                &mut m,
                Region::InactiveL1(i as u32),
                s.l1_table_offset,
                s.l1_size as u64 * 8,
            );
        }
        if let Some(b) = h.bitmaps() {
            if b.nb_bitmaps > 0 {
                add(
                    &mut m,
                    Region::BitmapDirectory,
                    b.directory_offset,
                    b.directory_size,
                );
            }
        }
        if let Some(z) = img.wp_array {
            add(
                &mut m,
                Region::WpArray,
                z.zonedmeta_offset,
                z.zonedmeta_size,
            );
        }
        for (i, &e) in img.reftable.iter().enumerate() {
            let off = e & !0x1ff;
            if off != 0 {
                add(&mut m, Region::RefcountBlock(i as u64), off, cs);
            }
        }
        for (i, &e) in img.l1.iter().enumerate() {
            let off = l1_l2_offset(e).0;
            if off != 0 {
                add(&mut m, Region::ActiveL2(i as u64), off, cs);
            }
        }
        (m, first)
    }
}

/// What an image states about where its metadata lives.
#[derive(Debug)]
pub struct ImageRegions<'a> {
    /// The header.
    pub header: &'a Header,
    /// The active L1 table.
    pub l1: &'a [u64],
    /// The refcount table.
    pub reftable: &'a [u64],
    /// The snapshots.
    pub snapshots: &'a [Snapshot],
    /// Size of the snapshot table in bytes.
    pub snapshot_table_len: u64,
    /// The zoned extension, when its array placement is valid.
    pub wp_array: Option<&'a ZonedExt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_compared_whole() {
        let mut m = MetadataMap::new(0x10000);
        m.insert(Region::ActiveL1, 0x30000, 16).unwrap();
        let o = m.insert(Region::WpArray, 0x38000, 8).unwrap_err();
        assert_eq!(o.existing.region, Region::ActiveL1);
        assert_eq!(o.new.region, Region::WpArray);
        assert!(o.to_string().contains("write-pointer array"), "{o}");
        assert!(o.to_string().contains("active L1 table"), "{o}");
        m.insert(Region::RefcountBlock(0), 0x40000, 0x10000)
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.conflict(Some(Kind::ActiveL1), 0x30008, 8), None);
        assert_eq!(
            m.conflict(None, 0x30000, 0x20000).map(|p| p.region),
            Some(Region::RefcountBlock(0))
        );
        assert_eq!(m.conflict(None, 0x50000, 0x10000), None);
        m.remove(0x40000);
        assert_eq!(m.conflict(None, 0x40000, 0x10000), None);
    }

    #[test]
    fn huge_ranges_do_not_overflow() {
        let mut m = MetadataMap::new(0x200);
        m.insert(Region::WpArray, u64::MAX - 3, u64::MAX).unwrap();
        assert!(m.conflict(None, u64::MAX - 1, 1).is_some());
        assert!(m.insert(Region::ActiveL1, 0, u64::MAX).is_err());
    }
}
