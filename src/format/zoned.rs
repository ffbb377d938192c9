//! The zoned header extension (magic 0x007a6264) and its validation.
//!
//! Layout (56 bytes, big-endian, packed; zone_size and zone_capacity are not
//! 8-byte aligned, so fields are read from the byte slice, never by casting):
//! `u8 model, u8[3] reserved, u64 zone_size, u64 zone_capacity,
//! u32 conventional_zones, u32 nr_zones, u32 max_active_zones,
//! u32 max_open_zones, u32 max_append_bytes, u64 zonedmeta_size,
//! u64 zonedmeta_offset`.

use super::bytes::{be32, be64};
use super::error::{invalid, Result};
use super::wp::WpEntry;
use crate::zone::ZoneGeometry;

/// Header extension magic.
pub const ZONED_EXT_MAGIC: u32 = 0x007a_6264;
/// Length of the extension body zcow writes.
pub const ZONED_EXT_LEN: usize = 56;
/// Zone model value for host-managed.
pub const MODEL_HOST_MANAGED: u8 = 1;
/// Largest zone count the format allows ((2^32 - 1) / 8).
pub const MAX_ZONES: u64 = 536_870_911;

/// Decoded zoned extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonedExt {
    /// Zone model (1 = host-managed).
    pub model: u8,
    /// The three reserved bytes after the model (must be zero).
    pub reserved: [u8; 3],
    /// Bytes per zone.
    pub zone_size: u64,
    /// Writable bytes per zone.
    pub zone_capacity: u64,
    /// Number of leading conventional zones.
    pub conventional_zones: u32,
    /// Zone count.
    pub nr_zones: u32,
    /// Active limit (0 = none).
    pub max_active_zones: u32,
    /// Open limit (0 = none).
    pub max_open_zones: u32,
    /// Largest zone append in bytes (0 = unsupported).
    pub max_append_bytes: u32,
    /// Size of the write-pointer array in bytes.
    pub zonedmeta_size: u64,
    /// Offset of the write-pointer array in the image file.
    pub zonedmeta_offset: u64,
    /// Bytes past the 56 known ones, kept on rewrite.
    pub extra: Vec<u8>,
}

impl ZonedExt {
    /// Parse the extension body.
    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < ZONED_EXT_LEN {
            return Err(invalid!(
                "zoned extension is {} bytes long, expected at least {}",
                data.len(),
                ZONED_EXT_LEN
            ));
        }
        Ok(ZonedExt {
            model: data[0],
            reserved: [data[1], data[2], data[3]],
            zone_size: be64(data, 4),
            zone_capacity: be64(data, 12),
            conventional_zones: be32(data, 20),
            nr_zones: be32(data, 24),
            max_active_zones: be32(data, 28),
            max_open_zones: be32(data, 32),
            max_append_bytes: be32(data, 36),
            zonedmeta_size: be64(data, 40),
            zonedmeta_offset: be64(data, 48),
            extra: data[ZONED_EXT_LEN..].to_vec(),
        })
    }

    /// Serialise the extension body.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ZONED_EXT_LEN + self.extra.len());
        b.push(self.model);
        b.extend_from_slice(&self.reserved);
        b.extend_from_slice(&self.zone_size.to_be_bytes());
        b.extend_from_slice(&self.zone_capacity.to_be_bytes());
        b.extend_from_slice(&self.conventional_zones.to_be_bytes());
        b.extend_from_slice(&self.nr_zones.to_be_bytes());
        b.extend_from_slice(&self.max_active_zones.to_be_bytes());
        b.extend_from_slice(&self.max_open_zones.to_be_bytes());
        b.extend_from_slice(&self.max_append_bytes.to_be_bytes());
        b.extend_from_slice(&self.zonedmeta_size.to_be_bytes());
        b.extend_from_slice(&self.zonedmeta_offset.to_be_bytes());
        b.extend_from_slice(&self.extra);
        b
    }

    /// The zone count a disk of `size` bytes must have.
    pub fn expected_zones(&self, size: u64) -> u64 {
        if self.zone_size == 0 {
            return 0;
        }
        size.div_ceil(self.zone_size)
    }

    /// Validate the fields against the image (virtual size, cluster size,
    /// file length). Every failure names the field and its value.
    pub fn validate(&self, size: u64, cluster_size: u64, file_len: u64) -> Result<()> {
        if self.model != MODEL_HOST_MANAGED {
            return Err(invalid!(
                "zoned extension: zone model {} is not supported (only 1, host-managed)",
                self.model
            ));
        }
        if self.reserved != [0; 3] {
            return Err(invalid!(
                "zoned extension: reserved bytes 1-3 are not zero ({:02x?})",
                self.reserved
            ));
        }
        if self.zone_size < 512 || !self.zone_size.is_power_of_two() {
            return Err(invalid!(
                "zoned extension: zone_size {} is not a power of two of at least 512 bytes",
                self.zone_size
            ));
        }
        if self.zone_capacity == 0
            || self.zone_capacity > self.zone_size
            || self.zone_capacity % 512 != 0
        {
            return Err(invalid!(
                "zoned extension: zone_capacity {} must be a non-zero multiple of 512 no larger than zone_size {}",
                self.zone_capacity,
                self.zone_size
            ));
        }
        let expected = self.expected_zones(size);
        if self.nr_zones as u64 != expected {
            return Err(invalid!(
                "zoned extension: nr_zones is {} but a {}-byte disk with {}-byte zones has {}",
                self.nr_zones,
                size,
                self.zone_size,
                expected
            ));
        }
        if self.nr_zones as u64 > MAX_ZONES {
            return Err(invalid!(
                "zoned extension: nr_zones {} exceeds the maximum {}",
                self.nr_zones,
                MAX_ZONES
            ));
        }
        if self.conventional_zones >= self.nr_zones {
            return Err(invalid!(
                "zoned extension: conventional_zones {} must be below nr_zones {}",
                self.conventional_zones,
                self.nr_zones
            ));
        }
        let seq = self.nr_zones - self.conventional_zones;
        if self.max_active_zones > seq {
            return Err(invalid!(
                "zoned extension: max_active_zones {} exceeds the {} sequential zones",
                self.max_active_zones,
                seq
            ));
        }
        if self.max_open_zones > seq {
            return Err(invalid!(
                "zoned extension: max_open_zones {} exceeds the {} sequential zones",
                self.max_open_zones,
                seq
            ));
        }
        if self.max_active_zones != 0 && self.max_open_zones > self.max_active_zones {
            return Err(invalid!(
                "zoned extension: max_open_zones {} exceeds max_active_zones {}",
                self.max_open_zones,
                self.max_active_zones
            ));
        }
        if self.max_append_bytes % 512 != 0 || self.max_append_bytes as u64 >= self.zone_capacity {
            return Err(invalid!(
                "zoned extension: max_append_bytes {} must be a multiple of 512 below zone_capacity {}",
                self.max_append_bytes,
                self.zone_capacity
            ));
        }
        if self.zonedmeta_size != 8 * self.nr_zones as u64 {
            return Err(invalid!(
                "zoned extension: zonedmeta_size is {} but {} zones need {}",
                self.zonedmeta_size,
                self.nr_zones,
                8 * self.nr_zones as u64
            ));
        }
        if self.zonedmeta_offset == 0 || self.zonedmeta_offset % cluster_size != 0 {
            return Err(invalid!(
                "zoned extension: zonedmeta_offset {:#x} is not a non-zero multiple of the cluster size {}",
                self.zonedmeta_offset,
                cluster_size
            ));
        }
        match self.zonedmeta_offset.checked_add(self.zonedmeta_size) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(invalid!(
                    "zoned extension: write-pointer array at {:#x} ({} bytes) runs past the end of the file ({} bytes)",
                    self.zonedmeta_offset,
                    self.zonedmeta_size,
                    file_len
                ))
            }
        }
        // The geometry rules every consumer relies on (one place for them).
        self.geometry(size)
            .validate()
            .map_err(|e| invalid!("zoned extension: {}", e))?;
        if !self.extra.iter().all(|&b| b == 0) && self.extra.len() > 4096 {
            return Err(invalid!(
                "zoned extension: {} unexpected extra bytes",
                self.extra.len()
            ));
        }
        Ok(())
    }

    /// The geometry for the engine.
    pub fn geometry(&self, size: u64) -> ZoneGeometry {
        ZoneGeometry {
            device_size: size,
            zone_size: self.zone_size,
            zone_capacity: self.zone_capacity,
            nr_zones: self.nr_zones,
            conventional_zones: self.conventional_zones,
            max_open_zones: self.max_open_zones,
            max_active_zones: self.max_active_zones,
            max_append_bytes: self.max_append_bytes,
        }
    }
}

/// Byte order the write-pointer array was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WpByteOrder {
    /// Big-endian, as zcow writes it.
    BigEndian,
    /// Little-endian (host order of the QEMU patch series v3–v9 on x86).
    LittleEndian,
}

/// A rule of the format one write-pointer entry breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFault {
    /// Bits 62-63 are set (the raw entry).
    ReservedBits(u64),
    /// A conventional zone's entry lacks the conventional bit.
    ConventionalMissing,
    /// A sequential zone's entry has the conventional bit.
    ConventionalSet,
    /// The write pointer is outside `[start, end]` of its zone.
    WpOutside {
        /// The write pointer.
        wp: u64,
        /// Zone start.
        start: u64,
        /// Zone end.
        end: u64,
    },
}

impl std::fmt::Display for EntryFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            EntryFault::ReservedBits(raw) => write!(f, "reserved bits 62-63 set (entry {raw:#x})"),
            EntryFault::ConventionalMissing => {
                f.write_str("conventional bit missing on a conventional zone")
            }
            EntryFault::ConventionalSet => f.write_str("conventional bit set on a sequential zone"),
            EntryFault::WpOutside { wp, start, end } => {
                write!(
                    f,
                    "write pointer {wp:#x} outside the zone [{start:#x}, {end:#x}]"
                )
            }
        }
    }
}

/// Every rule entry `e` of zone `index` breaks, in a fixed order (reserved
/// bits, conventional bit, write pointer).
pub fn entry_faults(geo: &ZoneGeometry, index: u32, e: WpEntry) -> [Option<EntryFault>; 3] {
    let start = geo.zone_start(index);
    let end = start + geo.zone_len(index);
    let conv = geo.is_conventional(index);
    [
        (e.reserved() != 0).then_some(EntryFault::ReservedBits(e.0)),
        (e.conventional() != conv).then_some(if conv {
            EntryFault::ConventionalMissing
        } else {
            EntryFault::ConventionalSet
        }),
        (e.wp() < start || e.wp() > end).then_some(EntryFault::WpOutside {
            wp: e.wp(),
            start,
            end,
        }),
    ]
}

/// Why one write-pointer entry is invalid (its first fault), or None if it
/// is valid.
pub fn entry_problem(geo: &ZoneGeometry, index: u32, e: WpEntry) -> Option<String> {
    entry_faults(geo, index, e)
        .into_iter()
        .flatten()
        .next()
        .map(|f| f.to_string())
}

impl WpByteOrder {
    /// Decode one 8-byte entry stored in this byte order.
    pub fn decode(self, raw: &[u8]) -> WpEntry {
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[..8]);
        WpEntry(match self {
            WpByteOrder::BigEndian => u64::from_be_bytes(a),
            WpByteOrder::LittleEndian => u64::from_le_bytes(a),
        })
    }

    /// Encode one entry in this byte order.
    pub fn encode(self, e: WpEntry) -> [u8; 8] {
        match self {
            WpByteOrder::BigEndian => e.0.to_be_bytes(),
            WpByteOrder::LittleEndian => e.0.to_le_bytes(),
        }
    }
}

/// Whether every entry in `raw` (entries `first..` of the array) is valid
/// when read in byte order `order`. Lets a caller detect the order one
/// chunk at a time instead of holding the whole array.
pub fn wp_entries_valid(geo: &ZoneGeometry, first: u32, raw: &[u8], order: WpByteOrder) -> bool {
    raw.chunks_exact(8).zip(first..).all(|(c, i)| {
        entry_faults(geo, i, order.decode(c))
            .iter()
            .all(Option::is_none)
    })
}

/// Decode a raw array, detecting the byte order: big-endian if every entry
/// is valid that way, else little-endian if every entry is valid that way.
/// Returns the entries as read big-endian when neither order is fully valid
/// (the caller reports the bad entries).
pub fn decode_wp_array(geo: &ZoneGeometry, raw: &[u8]) -> (Vec<WpEntry>, Option<WpByteOrder>) {
    let order = [WpByteOrder::BigEndian, WpByteOrder::LittleEndian]
        .into_iter()
        .find(|&o| wp_entries_valid(geo, 0, raw, o));
    let as_read = order.unwrap_or(WpByteOrder::BigEndian);
    let entries = raw.chunks_exact(8).map(|c| as_read.decode(c)).collect();
    (entries, order)
}

/// Entries per read when the array is paged through (512 KiB).
pub const WP_PAGE: u32 = 65536;

/// Largest array [`decode_wp_array`]-style whole reads may load (32 Mi
/// zones, 256 MiB); callers past it page through the array instead.
pub const WP_WHOLE_LIMIT: u64 = 256 << 20;

/// What a scan of the whole array found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WpScan {
    /// Byte order every entry is valid in (big-endian preferred).
    pub order: Option<WpByteOrder>,
    /// The first entry invalid when read big-endian: (zone, why).
    pub first_bad: Option<(u32, String)>,
}

/// Scan the array of `geo.nr_zones` entries one [`WP_PAGE`] at a time
/// through `read(byte offset in the array, buf)`: memory stays constant
/// whatever the zone count, and the scan stops as soon as neither byte
/// order can hold (a bogus array of half a billion zones costs one page).
pub fn scan_wp_array<E>(
    geo: &ZoneGeometry,
    mut read: impl FnMut(u64, &mut [u8]) -> std::result::Result<(), E>,
) -> std::result::Result<WpScan, E> {
    let (mut be, mut le) = (true, true);
    let mut first_bad = None;
    let mut buf = Vec::new();
    let mut first = 0u32;
    while first < geo.nr_zones && (be || le) {
        let k = WP_PAGE.min(geo.nr_zones - first);
        buf.resize(k as usize * 8, 0);
        read(u64::from(first) * 8, &mut buf)?;
        if be && !wp_entries_valid(geo, first, &buf, WpByteOrder::BigEndian) {
            be = false;
            first_bad = buf.chunks_exact(8).zip(first..).find_map(|(c, i)| {
                entry_problem(geo, i, WpByteOrder::BigEndian.decode(c)).map(|w| (i, w))
            });
        }
        le = le && wp_entries_valid(geo, first, &buf, WpByteOrder::LittleEndian);
        first += k;
    }
    let order = if be {
        Some(WpByteOrder::BigEndian)
    } else if le {
        Some(WpByteOrder::LittleEndian)
    } else {
        None
    };
    Ok(WpScan { order, first_bad })
}

/// Encode entries big-endian.
pub fn encode_wp_entries(entries: &[WpEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 8);
    for e in entries {
        out.extend_from_slice(&e.0.to_be_bytes());
    }
    out
}

/// Options of a zoned image at create time (before defaults and clamping).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZonedCreateOptions {
    /// Zone size (default 256 MiB).
    pub zone_size: Option<u64>,
    /// Zone capacity (default = zone size).
    pub zone_capacity: Option<u64>,
    /// Conventional zone count (default 0).
    pub conventional_zones: Option<u32>,
    /// Open limit (default 0).
    pub max_open_zones: Option<u32>,
    /// Active limit (default 0).
    pub max_active_zones: Option<u32>,
    /// Append limit (default 64 KiB, lowered to fit a small capacity).
    pub max_append_bytes: Option<u64>,
}

/// Default zone size.
pub const DEFAULT_ZONE_SIZE: u64 = 256 << 20;
/// Default append limit.
pub const DEFAULT_MAX_APPEND: u64 = 64 << 10;

impl ZonedCreateOptions {
    /// Apply defaults and the design's rules, returning the extension (with
    /// zonedmeta_offset 0: the caller places the array) or the first error.
    pub fn resolve(&self, size: u64, cluster_size: u64) -> std::result::Result<ZonedExt, String> {
        let zone_size = self.zone_size.unwrap_or(DEFAULT_ZONE_SIZE);
        if zone_size == 0 || !zone_size.is_power_of_two() {
            return Err(format!("zone.size {zone_size} must be a power of two"));
        }
        if zone_size < 512 {
            return Err(format!("zone.size {zone_size} must be at least 512 bytes"));
        }
        if zone_size < cluster_size {
            return Err(format!(
                "zone.size {zone_size} must be at least the cluster size {cluster_size}"
            ));
        }
        let cap = self.zone_capacity.unwrap_or(zone_size);
        if cap == 0 || cap % 512 != 0 {
            return Err(format!(
                "zone.capacity {cap} must be a non-zero multiple of 512"
            ));
        }
        if cap > zone_size {
            return Err(format!("zone.capacity {cap} exceeds zone.size {zone_size}"));
        }
        if size == 0 {
            return Err("a zoned image needs a non-zero size".into());
        }
        let nr = size.div_ceil(zone_size);
        if nr > MAX_ZONES {
            return Err(format!(
                "{nr} zones exceed the maximum of {MAX_ZONES}; use a larger zone.size"
            ));
        }
        let nr = nr as u32;
        let conv = self.conventional_zones.unwrap_or(0);
        if conv >= nr {
            return Err(format!(
                "zone.conventional_zones {conv} must be below the zone count {nr}"
            ));
        }
        let seq = nr - conv;
        let mut active = self.max_active_zones.unwrap_or(0);
        let mut open = self.max_open_zones.unwrap_or(0);
        if active >= seq {
            active = 0;
        }
        if open >= seq {
            open = 0;
        }
        if active != 0 && (open == 0 || open > active) {
            open = active;
        }
        let append = match self.max_append_bytes {
            Some(a) => {
                if a % 512 != 0 {
                    return Err(format!(
                        "zone.max_append_bytes {a} must be a multiple of 512"
                    ));
                }
                if a != 0 && a >= cap {
                    return Err(format!(
                        "zone.max_append_bytes {a} must be below zone.capacity {cap}"
                    ));
                }
                a
            }
            // Lower the default to fit a small capacity (512-aligned, below it).
            None => DEFAULT_MAX_APPEND.min((cap - 1) / 512 * 512),
        };
        let append = u32::try_from(append)
            .map_err(|_| format!("zone.max_append_bytes {append} is too large"))?;
        Ok(ZonedExt {
            model: MODEL_HOST_MANAGED,
            reserved: [0; 3],
            zone_size,
            zone_capacity: cap,
            conventional_zones: conv,
            nr_zones: nr,
            max_active_zones: active,
            max_open_zones: open,
            max_append_bytes: append,
            zonedmeta_size: 8 * nr as u64,
            zonedmeta_offset: 0,
            extra: Vec::new(),
        })
    }
}

/// The initial write-pointer entries of a fresh zoned image.
pub fn initial_entries(ext: &ZonedExt) -> Vec<WpEntry> {
    (0..ext.nr_zones)
        .map(|i| WpEntry::new(i as u64 * ext.zone_size, i < ext.conventional_zones))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ZonedCreateOptions {
        ZonedCreateOptions {
            zone_size: Some(64 << 20),
            conventional_zones: Some(2),
            max_open_zones: Some(8),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_validate() {
        let mut e = opts().resolve(4 << 30, 65536).unwrap();
        e.zonedmeta_offset = 0x30000;
        let b = e.encode();
        assert_eq!(b.len(), ZONED_EXT_LEN);
        let p = ZonedExt::parse(&b).unwrap();
        assert_eq!(p, e);
        p.validate(4 << 30, 65536, 0x40000).unwrap();
        assert_eq!(p.nr_zones, 64);
        assert_eq!(p.max_open_zones, 8);
        assert_eq!(p.max_append_bytes, 65536);
    }

    #[test]
    fn create_rules() {
        let bad = |o: ZonedCreateOptions| o.resolve(1 << 30, 65536).unwrap_err();
        assert!(bad(ZonedCreateOptions {
            zone_size: Some(3 << 20),
            ..Default::default()
        })
        .contains("power of two"));
        assert!(bad(ZonedCreateOptions {
            zone_size: Some(64 << 20),
            zone_capacity: Some(128 << 20),
            ..Default::default()
        })
        .contains("exceeds zone.size"));
        assert!(bad(ZonedCreateOptions {
            zone_size: Some(64 << 20),
            conventional_zones: Some(16),
            ..Default::default()
        })
        .contains("conventional_zones"));
        assert!(bad(ZonedCreateOptions {
            zone_size: Some(64 << 20),
            max_append_bytes: Some(64 << 20),
            ..Default::default()
        })
        .contains("max_append_bytes"));
        // Limits at or above the sequential count become unlimited; open ≤ active.
        let e = ZonedCreateOptions {
            zone_size: Some(64 << 20),
            max_open_zones: Some(10),
            max_active_zones: Some(4),
            ..Default::default()
        }
        .resolve(1 << 30, 65536)
        .unwrap();
        assert_eq!((e.max_open_zones, e.max_active_zones), (4, 4));
        let e = ZonedCreateOptions {
            zone_size: Some(64 << 20),
            max_open_zones: Some(16),
            ..Default::default()
        }
        .resolve(1 << 30, 65536)
        .unwrap();
        assert_eq!(e.max_open_zones, 0);
    }

    #[test]
    fn detects_little_endian_arrays() {
        let mut e = opts().resolve(1 << 30, 65536).unwrap();
        e.zonedmeta_offset = 0x30000;
        let geo = e.geometry(1 << 30);
        let entries = initial_entries(&e);
        let le: Vec<u8> = entries.iter().flat_map(|x| x.0.to_le_bytes()).collect();
        let (dec, order) = decode_wp_array(&geo, &le);
        assert_eq!(order, Some(WpByteOrder::LittleEndian));
        assert_eq!(dec, entries);
        let (dec, order) = decode_wp_array(&geo, &encode_wp_entries(&entries));
        assert_eq!(order, Some(WpByteOrder::BigEndian));
        assert_eq!(dec, entries);
    }
}
