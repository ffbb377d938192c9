//! Zoned checks (zcow extension): feature bit 5 against the extension, the
//! extension's fields, features zones forbid, the write-pointer array
//! (placement, byte order, every entry), and the data of each sequential
//! zone against its write pointer.
//!
//! Findings print as `ERROR zoned: …` (corruptions) or `Leaked zone …`
//! (stale data after a crash; counted as leaks). With `-r` they print with
//! `Repairing` instead when repaired.

use super::errno::Errno;
use super::image::CheckImage;
use super::report::JVal;
use super::snapshots::free_range;
use super::walk::Walk;
use super::{Counts, Ctx, Fix};
use crate::format::features::INCOMPAT_ZONED;
use crate::format::header::field;
use crate::format::wp::{WpEntry, WP_CONVENTIONAL, WP_OFFLINE, WP_READ_ONLY, WP_RESERVED};
use crate::format::zoned::{
    entry_faults, wp_entries_valid, EntryFault, WpByteOrder, ZonedExt, MAX_ZONES,
    MODEL_HOST_MANAGED, ZONED_EXT_MAGIC,
};
use crate::zone::ZoneGeometry;
use std::io::{self, Write};

/// Where the write-pointer array is and how to read it. The array itself
/// (8 bytes per zone: 8 MiB for 1M zones) is never held whole: check reads
/// it in zone order, one chunk at a time.
#[derive(Debug, Clone)]
pub(crate) struct ZoneMap {
    geo: ZoneGeometry,
    cs: u64,
    offset: u64,
    /// Byte order every entry is valid in (None: some entries are invalid
    /// either way; they are read big-endian and reported).
    order: Option<WpByteOrder>,
}

/// Entries per read of the array (64 KiB).
const WP_CHUNK: u32 = 8192;

/// Most zone findings (bad entries, write pointers past the data) and
/// most stale-cluster findings one check keeps in memory (16 and 40 bytes
/// each: at most 56 MiB whatever the image declares). Findings past the
/// limit are counted and summarised in one line; a repair fixes the ones
/// kept, and the next run finds the rest.
pub(crate) const MAX_FINDINGS: usize = 1 << 20;

impl ZoneMap {
    /// Zone holding guest byte `g`.
    pub fn zone_of(&self, g: u64) -> Option<u32> {
        self.geo.zone_index(g)
    }

    /// (first guest offset that counts as stale, wp) of zone `z` with entry
    /// `e`, or None for conventional zones and invalid entries.
    pub fn stale_from(&self, z: u32, e: WpEntry) -> Option<(u64, u64)> {
        let (geo, cs) = (&self.geo, self.cs);
        if geo.is_conventional(z) || !entry_ok(geo, z, e) {
            return None;
        }
        let start = geo.zone_start(z);
        let by_wp = e.wp().div_ceil(cs) * cs;
        let by_cap = start + geo.zone_cap(z).div_ceil(cs) * cs;
        Some((by_wp.min(by_cap), e.wp()))
    }

    fn reader(&self) -> WpReader {
        WpReader {
            offset: self.offset,
            n: self.geo.nr_zones,
            order: self.order.unwrap_or(WpByteOrder::BigEndian),
            first: 0,
            buf: Vec::new(),
            dirty: false,
            rewrite_all: false,
        }
    }
}

/// A window of [`WP_CHUNK`] entries of the array, moved in ascending zone
/// order; entries changed by repair are written back (big-endian) when the
/// window moves on.
struct WpReader {
    offset: u64,
    n: u32,
    /// Byte order of the entries on disk (and in `buf`).
    order: WpByteOrder,
    /// Zone of the window's first entry.
    first: u32,
    /// The window's raw bytes as read.
    buf: Vec<u8>,
    dirty: bool,
    /// Rewrite every window (a little-endian array converted to big-endian):
    /// the window then visits every chunk in turn.
    rewrite_all: bool,
}

impl WpReader {
    /// Entry of zone `z` (`z` < zone count).
    fn get(&mut self, img: &mut CheckImage, z: u32) -> Result<WpEntry, Errno> {
        self.load(img, z)?;
        let at = (z - self.first) as usize * 8;
        Ok(self.order.decode(&self.buf[at..at + 8]))
    }

    fn holds(&self, z: u32) -> bool {
        z >= self.first && (z as u64) < self.first as u64 + self.buf.len() as u64 / 8
    }

    /// Move the window to zone `z`'s entry (never backwards).
    fn load(&mut self, img: &mut CheckImage, z: u32) -> Result<(), Errno> {
        if z >= self.n || (z < self.first && !self.buf.is_empty()) {
            return Err(super::errno::EINVAL);
        }
        while !self.holds(z) {
            self.write_back(img)?;
            let target = z / WP_CHUNK * WP_CHUNK;
            self.first = match (self.rewrite_all, self.buf.is_empty()) {
                (true, true) => 0,
                (true, false) => self.first + WP_CHUNK,
                (false, _) => target,
            };
            let len = WP_CHUNK.min(self.n - self.first) as usize * 8;
            self.buf.resize(len, 0);
            img.read(self.offset + self.first as u64 * 8, &mut self.buf)?;
            self.dirty = self.rewrite_all;
        }
        Ok(())
    }

    /// Replace zone `z`'s entry.
    fn set(&mut self, img: &mut CheckImage, z: u32, e: WpEntry) -> Result<(), Errno> {
        self.load(img, z)?;
        let at = (z - self.first) as usize * 8;
        self.buf[at..at + 8].copy_from_slice(&self.order.encode(e));
        self.dirty = true;
        Ok(())
    }

    /// Write the window back if it changed; call once more at the end.
    fn write_back(&mut self, img: &mut CheckImage) -> Result<(), Errno> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        if self.order == WpByteOrder::BigEndian {
            return img.write(self.offset + self.first as u64 * 8, &self.buf);
        }
        let be = WpByteOrder::BigEndian;
        let out: Vec<u8> = self
            .buf
            .chunks_exact(8)
            .flat_map(|c| be.encode(self.order.decode(c)))
            .collect();
        img.write(self.offset + self.first as u64 * 8, &out)
    }
}

/// The zoned part of the reference walk: follows the active L1 walk in
/// guest order, reading each zone's entry as the walk reaches the zone, and
/// keeps the end of data only of zones that need it. Holding a table of
/// every zone's data end would cost 8 bytes per zone.
pub(crate) struct ZoneScan {
    map: ZoneMap,
    rd: WpReader,
    /// First zone not yet judged.
    next: u32,
    /// The zone the walk is in: (zone, entry, end of its data; 0 = none yet).
    cur: Option<(u32, WpEntry, u64)>,
    /// (zone, end of its data) of every zone whose entry is invalid or whose
    /// write pointer is past its data, in zone order; at most
    /// [`MAX_FINDINGS`].
    judged: Vec<(u32, u64)>,
    /// Zones past the limit: (invalid entries, write pointers past data).
    unlisted: (u64, u64),
    /// Why the array could not be read.
    failed: Option<Errno>,
}

impl std::fmt::Debug for ZoneScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneScan")
            .field("next", &self.next)
            .field("judged", &self.judged.len())
            .finish()
    }
}

impl ZoneScan {
    pub fn new(map: &ZoneMap) -> Self {
        ZoneScan {
            map: map.clone(),
            rd: map.reader(),
            next: 0,
            cur: None,
            judged: Vec::new(),
            unlisted: (0, 0),
            failed: None,
        }
    }

    /// The walk found an L2 entry for guest byte `guest` (`written`: it is
    /// not unallocated). Returns the zone and its entry for the stale-data
    /// check. Guest offsets must come in ascending order.
    pub fn visit(
        &mut self,
        img: &mut CheckImage,
        guest: u64,
        written: bool,
    ) -> Option<(u32, WpEntry, &ZoneMap)> {
        let z = self.map.zone_of(guest)?;
        if self.failed.is_some() {
            return None;
        }
        if self.cur.map(|c| c.0) != Some(z) {
            if z < self.next {
                return None; // out of order: nothing to learn
            }
            self.judge_until(img, z);
            let e = self.entry(img, z)?;
            self.cur = Some((z, e, 0));
        }
        let cs = self.map.cs;
        let cur = self.cur.as_mut()?;
        if written {
            cur.2 = cur.2.max(guest + cs);
        }
        Some((z, cur.1, &self.map))
    }

    /// The walk is over: judge every remaining zone.
    pub fn finish(&mut self, img: &mut CheckImage) {
        self.judge_until(img, self.map.geo.nr_zones);
    }

    fn entry(&mut self, img: &mut CheckImage, z: u32) -> Option<WpEntry> {
        match self.rd.get(img, z) {
            Ok(e) => Some(e),
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }

    /// Judge zones `next..z` (the current one with its data end, the others
    /// holding no data).
    fn judge_until(&mut self, img: &mut CheckImage, z: u32) {
        let cur = self.cur.take();
        while self.next < z && self.failed.is_none() {
            let i = self.next;
            let (e, end) = match cur {
                Some((c, e, end)) if c == i => (e, end),
                _ => match self.entry(img, i) {
                    Some(e) => (e, 0),
                    None => return,
                },
            };
            let geo = &self.map.geo;
            let start = geo.zone_start(i);
            let data_end = if end == 0 { start } else { end };
            let bad = !entry_ok(geo, i, e);
            if bad || past_data(geo, self.map.cs, i, e, data_end) {
                if self.judged.len() < MAX_FINDINGS {
                    self.judged.push((i, data_end));
                } else if bad {
                    self.unlisted.0 += 1;
                } else {
                    self.unlisted.1 += 1;
                }
            }
            self.next += 1;
        }
    }
}

/// Whether sequential zone `i`'s write pointer is past the data really
/// there (the data did not reach the disk before a crash). A FULL zone
/// (written to capacity, or finished: wp at the zone end) legitimately has
/// a wp past its data. Cluster-granular: zeros written into a partial
/// cluster that already read as zero leave no trace in the L2 table.
fn past_data(geo: &ZoneGeometry, cs: u64, i: u32, e: WpEntry, data_end: u64) -> bool {
    let start = geo.zone_start(i);
    let full = e.wp() >= start + geo.zone_cap(i);
    !geo.is_conventional(i) && !e.offline() && !full && e.wp() / cs * cs > data_end.max(start)
}

/// The `zoned` section of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZonedSummary {
    /// Zone count (from the extension).
    pub zones: u32,
    /// Conventional zones.
    pub conventional_zones: u32,
    /// Byte order the write-pointer array was found in (None: invalid).
    pub wp_byte_order: Option<&'static str>,
    /// Zoned corruptions left.
    pub corruptions: i64,
    /// Stale-data findings left (counted as leaks).
    pub stale: i64,
    /// Zoned findings repaired.
    pub fixed: i64,
}

impl ZonedSummary {
    /// JSON object (QDict key order applies).
    pub fn to_json(&self) -> JVal {
        let mut k = vec![
            ("zones".to_string(), JVal::Int(self.zones as i64)),
            (
                "conventional-zones".to_string(),
                JVal::Int(self.conventional_zones as i64),
            ),
        ];
        if let Some(o) = self.wp_byte_order {
            k.push(("wp-byte-order".into(), JVal::Str(o.into())));
        }
        for (n, v) in [
            ("corruptions", self.corruptions),
            ("stale-clusters", self.stale),
            ("fixed", self.fixed),
        ] {
            if v != 0 {
                k.push((n.into(), JVal::Int(v)));
            }
        }
        JVal::Obj(k)
    }

    /// Human output adds nothing: the item lines say it all, and the
    /// summary stays byte-identical to qemu-img's.
    pub fn write_human(&self, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }
}

fn geometry_ok(z: &ZonedExt, size: u64, cs: u64, file_len: u64) -> bool {
    z.zone_size >= 512
        && z.zone_size.is_power_of_two()
        && z.zone_capacity != 0
        && z.zone_capacity <= z.zone_size
        && z.nr_zones as u64 == z.expected_zones(size)
        && z.nr_zones as u64 <= MAX_ZONES
        && z.zonedmeta_size == 8 * z.nr_zones as u64
        && z.zonedmeta_offset != 0
        && z.zonedmeta_offset % cs == 0
        && z.zonedmeta_offset
            .checked_add(z.zonedmeta_size)
            .is_some_and(|e| e <= file_len)
}

/// Find the write-pointer array and its byte order when the geometry is
/// sound enough to read it.
pub(crate) fn prepare(cx: &mut Ctx) -> Option<ZoneMap> {
    let z = cx.img.header.zoned()?.clone();
    let size = cx.img.header.size;
    let cs = cx.img.cs;
    if !geometry_ok(&z, size, cs, cx.img.file_len()) {
        return None;
    }
    let geo = z.geometry(size);
    let mut order = None;
    let mut buf = Vec::new();
    'orders: for o in [WpByteOrder::BigEndian, WpByteOrder::LittleEndian] {
        let mut first = 0u32;
        while first < geo.nr_zones {
            let len = WP_CHUNK.min(geo.nr_zones - first) as usize * 8;
            buf.resize(len, 0);
            cx.img
                .read(z.zonedmeta_offset + first as u64 * 8, &mut buf)
                .ok()?;
            if !wp_entries_valid(&geo, first, &buf, o) {
                continue 'orders;
            }
            first += WP_CHUNK.min(geo.nr_zones - first);
        }
        order = Some(o);
        break;
    }
    Some(ZoneMap {
        geo,
        cs,
        offset: z.zonedmeta_offset,
        order,
    })
}

/// Whether [`entry_problems`] finds nothing (without building messages:
/// this runs for every zone and every data cluster).
fn entry_ok(geo: &ZoneGeometry, i: u32, e: WpEntry) -> bool {
    entry_faults(geo, i, e).iter().all(Option::is_none) && !both_fault_bits(e)
}

fn both_fault_bits(e: WpEntry) -> bool {
    e.0 & WP_READ_ONLY != 0 && e.0 & WP_OFFLINE != 0
}

/// What is wrong with one entry (the format's rules plus conflicting
/// fault bits), and the entry with the derivable fields repaired (a wp
/// outside its zone is left for the caller to clamp).
fn entry_problems(geo: &ZoneGeometry, i: u32, e: WpEntry) -> Option<(String, WpEntry)> {
    let mut what = Vec::new();
    let mut fixed = e;
    for f in entry_faults(geo, i, e).into_iter().flatten() {
        fixed = match f {
            EntryFault::ReservedBits(_) => WpEntry(fixed.0 & !WP_RESERVED),
            EntryFault::ConventionalMissing => WpEntry(fixed.0 | WP_CONVENTIONAL),
            EntryFault::ConventionalSet => WpEntry(fixed.0 & !WP_CONVENTIONAL),
            EntryFault::WpOutside { .. } => fixed,
        };
        what.push(f.to_string());
    }
    if both_fault_bits(e) {
        what.push("both READ_ONLY and OFFLINE fault bits set".into());
    }
    (!what.is_empty()).then(|| (what.join(", "), fixed))
}

/// Offset of the zoned extension's body in cluster 0.
fn ext_body_offset(cx: &Ctx) -> Option<u64> {
    let cs = cx.img.cs as usize;
    let mut c0 = vec![0u8; cs];
    cx.img.read(0, &mut c0).ok()?;
    let mut off = cx.img.header.header_length as usize;
    while off + 8 <= cs {
        let magic = u32::from_be_bytes([c0[off], c0[off + 1], c0[off + 2], c0[off + 3]]);
        let len = u32::from_be_bytes([c0[off + 4], c0[off + 5], c0[off + 6], c0[off + 7]]) as usize;
        if magic == 0 {
            return None;
        }
        if magic == ZONED_EXT_MAGIC {
            return Some(off as u64 + 8);
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    None
}

struct Out<'s> {
    sum: &'s mut ZonedSummary,
}

impl Out<'_> {
    fn corrupt(&mut self, cx: &mut Ctx, res: &mut Counts, fixed: bool, msg: &str) {
        let _ = writeln!(
            cx.err,
            "{} zoned: {msg}",
            if fixed { "Repairing" } else { "ERROR" }
        );
        if fixed {
            res.corruptions_fixed += 1;
            self.sum.fixed += 1;
        } else {
            res.corruptions += 1;
            self.sum.corruptions += 1;
        }
    }
}

/// Run the zoned checks after the refcount check of a pass. `rc_clean`:
/// the refcount part ended without corruptions or errors (required before
/// repairs that change refcounts).
pub(crate) fn check(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    w: &Walk,
    rc_clean: bool,
    compressed: bool,
) -> Option<ZonedSummary> {
    let bit = cx.img.header.incompatible_features & INCOMPAT_ZONED != 0;
    let ext = cx.img.header.zoned().cloned();
    let mut sum = ZonedSummary::default();
    let mut o = Out { sum: &mut sum };
    let Some(z) = ext else {
        if bit {
            let fixing = fix.errors && clear_bit(cx).is_ok();
            o.corrupt(cx, res, fixing, "incompatible feature bit 5 (zoned format) is set but the image has no zoned header extension");
            return Some(sum);
        }
        return None;
    };
    o.sum.zones = z.nr_zones;
    o.sum.conventional_zones = z.conventional_zones;
    if !bit {
        let ok = fix.errors && set_bit(cx).is_ok();
        o.corrupt(
            cx,
            res,
            ok,
            "zoned header extension present but incompatible feature bit 5 (zoned format) is clear",
        );
    }
    // Features zones cannot be combined with.
    let h = cx.img.header.clone();
    let forbidden = [
        (
            h.version < 3,
            "zoned images must be qcow2 version 3 (compat=1.1)".to_string(),
        ),
        (
            h.backing_file.is_some(),
            "zoned images cannot have a backing file".into(),
        ),
        (
            cx.img.has_data_file(),
            "zoned images cannot use an external data file".into(),
        ),
        (
            cx.img.raw_nb_snapshots > 0,
            format!(
                "zoned images cannot have internal snapshots ({} found)",
                cx.img.raw_nb_snapshots
            ),
        ),
        (
            compressed,
            "zoned images cannot contain compressed clusters".into(),
        ),
        (
            h.extended_l2(),
            "zoned images cannot use extended L2 entries".into(),
        ),
        (
            h.crypt_method != 0,
            "zoned images cannot be encrypted".into(),
        ),
    ];
    for (bad, msg) in forbidden {
        if bad {
            o.corrupt(cx, res, false, &msg);
        }
    }
    // Extension fields.
    let size = h.size;
    let cs = cx.img.cs;
    let file_len = cx.img.file_len();
    let mut newz = z.clone();
    if z.model != MODEL_HOST_MANAGED {
        o.corrupt(
            cx,
            res,
            false,
            &format!("zone model {} is not host-managed (1)", z.model),
        );
    }
    if z.reserved != [0; 3] {
        if fix.errors {
            newz.reserved = [0; 3];
        }
        o.corrupt(
            cx,
            res,
            fix.errors,
            &format!(
                "reserved bytes 1-3 of the extension are not zero ({:02x?})",
                z.reserved
            ),
        );
    }
    let size_ok = z.zone_size >= 512 && z.zone_size.is_power_of_two();
    if !size_ok {
        o.corrupt(
            cx,
            res,
            false,
            &format!(
                "zone_size {} is not a power of two of at least 512 bytes",
                z.zone_size
            ),
        );
    }
    if z.zone_capacity == 0 || z.zone_capacity > z.zone_size || z.zone_capacity % 512 != 0 {
        o.corrupt(
            cx,
            res,
            false,
            &format!(
                "zone_capacity {} must be a non-zero multiple of 512 no larger than zone_size {}",
                z.zone_capacity, z.zone_size
            ),
        );
    }
    let expected = if size_ok {
        z.expected_zones(size)
    } else {
        z.nr_zones as u64
    };
    let array_clusters_bytes = z.zonedmeta_size.div_ceil(cs).saturating_mul(cs);
    if expected > MAX_ZONES {
        o.corrupt(
            cx,
            res,
            false,
            &format!("{expected} zones exceed the maximum of {MAX_ZONES}"),
        );
    } else if z.nr_zones as u64 != expected || z.zonedmeta_size != 8 * expected {
        // The array size can be derived when its clusters still hold it.
        let can = fix.errors && 8 * expected <= array_clusters_bytes && expected > 0;
        if can {
            newz.nr_zones = expected as u32;
            newz.zonedmeta_size = 8 * expected;
        }
        if z.nr_zones as u64 != expected {
            o.corrupt(
                cx,
                res,
                can,
                &format!(
                    "nr_zones is {} but a {size}-byte disk with {}-byte zones has {expected}",
                    z.nr_zones, z.zone_size
                ),
            );
        }
        if z.zonedmeta_size != 8 * expected {
            o.corrupt(
                cx,
                res,
                can,
                &format!(
                    "zonedmeta_size is {} but {expected} zones need {}",
                    z.zonedmeta_size,
                    8 * expected
                ),
            );
        }
    }
    let nz = newz.nr_zones;
    if newz.conventional_zones >= nz && nz > 0 {
        o.corrupt(
            cx,
            res,
            false,
            &format!(
                "conventional_zones {} must be below nr_zones {nz}",
                z.conventional_zones
            ),
        );
    }
    let seq = nz.saturating_sub(z.conventional_zones);
    if z.max_active_zones > seq
        || z.max_open_zones > seq
        || (z.max_active_zones != 0 && z.max_open_zones > z.max_active_zones)
    {
        o.corrupt(cx, res, false, &format!("zone limits max_open_zones {} / max_active_zones {} do not fit the {seq} sequential zones", z.max_open_zones, z.max_active_zones));
    }
    if z.max_append_bytes % 512 != 0 || (z.max_append_bytes as u64) >= z.zone_capacity {
        o.corrupt(
            cx,
            res,
            false,
            &format!(
                "max_append_bytes {} must be a multiple of 512 below zone_capacity {}",
                z.max_append_bytes, z.zone_capacity
            ),
        );
    }
    let off_ok = z.zonedmeta_offset != 0 && z.zonedmeta_offset % cs == 0;
    let in_file = z
        .zonedmeta_offset
        .checked_add(z.zonedmeta_size)
        .is_some_and(|e| e <= file_len);
    // A missing array (no valid offset, or past the end of the file) is
    // rebuilt from the data the zones hold when the rest is sound.
    let rebuilt = (!off_ok || !in_file)
        && fix.errors
        && newz == z
        && geometry_ok(
            &ZonedExt {
                zonedmeta_offset: cs,
                ..z.clone()
            },
            size,
            cs,
            u64::MAX,
        )
        && match rebuild_array(cx, &z) {
            Ok(off) => {
                newz.zonedmeta_offset = off;
                true
            }
            Err(_) => false,
        };
    if !off_ok {
        o.corrupt(
            cx,
            res,
            rebuilt,
            &format!(
                "zonedmeta_offset 0x{:x} is not a non-zero multiple of the cluster size",
                z.zonedmeta_offset
            ),
        );
    } else if z
        .zonedmeta_offset
        .checked_add(z.zonedmeta_size)
        .is_none_or(|e| e > file_len)
    {
        o.corrupt(cx, res, rebuilt, &format!("write-pointer array at 0x{:x} ({} bytes) runs past the end of the file ({file_len} bytes)", z.zonedmeta_offset, z.zonedmeta_size));
    } else {
        // Placement: the array's clusters must belong to it alone.
        let first = z.zonedmeta_offset / cs;
        let last = (z.zonedmeta_offset + z.zonedmeta_size.max(1) - 1) / cs;
        for c in first..=last {
            if let Some(why) = w.distrust(c) {
                o.corrupt(
                    cx,
                    res,
                    false,
                    &format!(
                        "write-pointer array cluster {c} overlaps other metadata or data: {why}"
                    ),
                );
            }
        }
    }
    if newz != z {
        if let Some(at) = ext_body_offset(cx) {
            let body = newz.encode();
            if cx
                .img
                .write(at, &body[..56])
                .and_then(|_| cx.img.sync())
                .is_err()
            {
                res.check_errors += 1;
            } else if let Some(h) = cx.img.header.zoned_mut() {
                *h = newz.clone();
            }
        }
    }
    // The array itself.
    if let Some(map) = cx.zones.take() {
        check_entries(cx, res, fix, w, rc_clean, &map, &mut o);
        cx.zones = Some(map);
    }
    Some(sum)
}

/// Write a new write-pointer array at the end of the file from what the
/// image holds: each sequential zone's wp is the end of its last mapped
/// cluster (the zone's start when it holds nothing; FULL, at capacity, when
/// written to capacity). No zone holding data is reset. The array is
/// durable and refcounted before the caller's header write names it.
/// Returns its offset.
fn rebuild_array(cx: &mut Ctx, z: &ZonedExt) -> Result<u64, Errno> {
    use crate::format::l2::{decode_l2, ClusterType, OFFSET_MASK};
    let cs = cx.img.cs;
    let cb = cx.img.cb;
    let size = cx.img.header.size;
    let geo = z.geometry(size);
    let per_l2 = cs / 8;
    let mut ends: Vec<u64> = (0..geo.nr_zones).map(|i| geo.zone_start(i)).collect();
    let mut table = vec![0u8; cs as usize];
    for i in 0..cx.img.l1.len() {
        let l2 = cx.img.l1[i] & OFFSET_MASK;
        if l2 == 0 || l2 % cs != 0 || l2 >= cx.img.file_len() {
            continue;
        }
        cx.img.read(l2, &mut table)?;
        for j in 0..per_l2 {
            let e = u64::from_be_bytes(
                table[(j * 8) as usize..(j * 8 + 8) as usize]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            if matches!(decode_l2(e, cb, false, false), ClusterType::Unallocated) {
                continue;
            }
            let g = (i as u64 * per_l2 + j) * cs;
            if let Some(k) = geo.zone_index(g) {
                ends[k as usize] =
                    ends[k as usize].max((g + cs).min(geo.zone_start(k) + geo.zone_len(k)));
            }
        }
    }
    let mut bytes = Vec::with_capacity(ends.len() * 8);
    for (k, end) in ends.iter().enumerate() {
        let k = k as u32;
        let start = geo.zone_start(k);
        let e = if geo.is_conventional(k) {
            WpEntry::new(start, true)
        } else {
            WpEntry::new((*end).min(start + geo.zone_cap(k)), false)
        };
        bytes.extend_from_slice(&e.0.to_be_bytes());
    }
    let off = cx.img.file_len().div_ceil(cs) * cs;
    let _ = writeln!(
        cx.err,
        "Repairing zoned: write-pointer array rebuilt at 0x{off:x} from the data each zone holds"
    );
    cx.img.write(off, &bytes)?;
    cx.img.sync()?;
    let mut c = off;
    while c < off + bytes.len() as u64 {
        let k = c >> cb;
        if !cx.img.has_refblock(k, &mut *cx.err) {
            return Err(super::errno::EIO);
        }
        cx.img.set_refcount(k, 1, &mut *cx.err)?;
        c += cs;
    }
    cx.img.sync()?;
    Ok(off)
}

fn clear_bit(cx: &mut Ctx) -> Result<(), super::errno::Errno> {
    let n = cx.img.header.incompatible_features & !INCOMPAT_ZONED;
    cx.img
        .write_header_field(field::INCOMPAT, &n.to_be_bytes())?;
    cx.img.header.incompatible_features = n;
    Ok(())
}

fn set_bit(cx: &mut Ctx) -> Result<(), super::errno::Errno> {
    let n = cx.img.header.incompatible_features | INCOMPAT_ZONED;
    cx.img
        .write_header_field(field::INCOMPAT, &n.to_be_bytes())?;
    cx.img.header.incompatible_features = n;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_entries(
    cx: &mut Ctx,
    res: &mut Counts,
    fix: Fix,
    w: &Walk,
    rc_clean: bool,
    map: &ZoneMap,
    o: &mut Out,
) {
    let geo = &map.geo;
    let Some(scan) = &w.zones else {
        return;
    };
    if let Some(e) = scan.failed {
        let _ = writeln!(
            cx.err,
            "ERROR zoned: could not read the write-pointer array at 0x{:x}: {}",
            map.offset,
            super::errno::strerror(e)
        );
        res.check_errors += 1;
        return;
    }
    o.sum.wp_byte_order = match map.order {
        Some(WpByteOrder::BigEndian) => Some("big-endian"),
        Some(WpByteOrder::LittleEndian) => Some("little-endian"),
        None => None,
    };
    let to_be = map.order == Some(WpByteOrder::LittleEndian) && fix.errors;
    if map.order == Some(WpByteOrder::LittleEndian) {
        o.corrupt(cx, res, fix.errors, "write-pointer array is little-endian (host order of the QEMU patch series v3-v9); zcow stores it big-endian");
    }
    let cs = cx.img.cs;
    let mut rd = map.reader();
    rd.rewrite_all = to_be;
    let mut failed = None;
    // The walk judged the zones worth a look; every other zone is fine.
    for &(iu, data_end) in &scan.judged {
        let i = iu as usize;
        let e = match rd.get(&mut cx.img, iu) {
            Ok(e) => e,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let start = geo.zone_start(iu);
        let mut repaired = None;
        if let Some((what, mut fixed)) = entry_problems(geo, iu, e) {
            let end = start + geo.zone_len(iu);
            let both_faults = both_fault_bits(e);
            if fixed.wp() < start || fixed.wp() > end {
                // Clamp to the data that is really in the zone.
                let wp = data_end.clamp(start, start + geo.zone_cap(iu));
                fixed = fixed.with_wp(if geo.is_conventional(iu) { start } else { wp });
            }
            let can = fix.errors && !both_faults;
            o.corrupt(cx, res, can, &format!("zone {i}: {what}"));
            if can {
                repaired = Some(fixed);
            }
        } else if past_data(geo, cs, iu, e, data_end) {
            // A zone-kind leak: the wp moves back to the data.
            let can = fix.leaks && rc_clean && w.incomplete.is_empty();
            let _ = writeln!(
                cx.err,
                "{} zone {i}: write pointer 0x{:x} is past the zone's data, which ends at 0x{data_end:x}",
                if can { "Repairing" } else { "Leaked" },
                e.wp()
            );
            if can {
                repaired = Some(e.with_wp(data_end));
                res.leaks_fixed += 1;
                o.sum.fixed += 1;
            } else {
                res.leaks += 1;
                o.sum.stale += 1;
            }
        }
        if let Some(new) = repaired {
            if new.wp() != e.wp() {
                cx.wp_changes.push(super::WpChange {
                    zone: iu,
                    old: e.wp(),
                    new: new.wp(),
                });
            }
            if let Err(e) = rd.set(&mut cx.img, iu, new) {
                failed = Some(e);
                break;
            }
        }
    }
    let (bad, past) = scan.unlisted;
    if bad > 0 {
        res.corruptions += bad as i64;
        o.sum.corruptions += bad as i64;
        let _ = writeln!(
            cx.err,
            "ERROR zoned: {bad} more zones with invalid write-pointer entries are not listed (at most {MAX_FINDINGS} zone findings are kept); run check again after repair"
        );
    }
    if past > 0 {
        res.leaks += past as i64;
        o.sum.stale += past as i64;
        let _ = writeln!(
            cx.err,
            "Leaked zones: {past} more zones with a write pointer past their data are not listed (at most {MAX_FINDINGS} zone findings are kept); run check again after repair"
        );
    }
    // A little-endian array is rewritten whole, big-endian.
    if to_be && failed.is_none() && geo.nr_zones > 0 {
        failed = rd.load(&mut cx.img, geo.nr_zones - 1).err();
    }
    if failed
        .or_else(|| rd.write_back(&mut cx.img).err())
        .is_some()
    {
        res.check_errors += 1;
    }
    if w.stale_unlisted > 0 {
        res.leaks += w.stale_unlisted as i64;
        o.sum.stale += w.stale_unlisted as i64;
        let _ = writeln!(
            cx.err,
            "Leaked zone clusters: {} more clusters at or past their zone's write pointer are not listed (at most {MAX_FINDINGS} are kept); run check again after repair",
            w.stale_unlisted
        );
    }
    // Stale data at or past a sequential zone's write pointer. Crash
    // safety: every L2 entry is cleared and synced before any refcount
    // drops, so a crash in between leaves leaks, never a cluster that is
    // still mapped but free.
    let mut cleared = Vec::new();
    let mut buf = vec![0u8; cs as usize];
    for s in &w.stale {
        // A cluster past the wp that reads as zeroes holds nothing the
        // guest wrote: preallocation (preallocation=metadata maps every
        // cluster up front), not stale data.
        if s.host % cs == 0 && cx.img.read(s.host, &mut buf).is_ok() && buf.iter().all(|&b| b == 0)
        {
            continue;
        }
        let host_cluster = s.host / cs;
        let table_cluster = s.entry_at / cs;
        let can = fix.leaks
            && rc_clean
            && w.incomplete.is_empty()
            && s.host % cs == 0
            && w.distrust(host_cluster).is_none()
            && w.distrust(table_cluster).is_none();
        let _ = writeln!(
            cx.err,
            "{} zone cluster: zone {} guest offset 0x{:x} (host cluster {host_cluster}) is at or past the write pointer 0x{:x}",
            if can { "Repairing" } else { "Leaked" },
            s.zone,
            s.guest,
            s.wp
        );
        let zero = vec![0u8; cx.img.header.l2_entry_size() as usize];
        if can && cx.img.write(s.entry_at, &zero).is_ok() {
            cleared.push(s);
        } else {
            res.leaks += 1;
            o.sum.stale += 1;
        }
    }
    if cleared.is_empty() {
        return;
    }
    if cx.img.sync().is_err() {
        // The references may not be gone: dropping refcounts now could
        // free clusters still mapped after a crash.
        res.check_errors += 1;
        return;
    }
    for s in cleared {
        cx.lost.push(super::Lost {
            guest: s.guest,
            len: cs,
            why: format!("stale data of zone {} past its write pointer", s.zone),
            snapshot: None,
        });
        if free_range(cx, s.host, cs).is_ok() {
            res.leaks_fixed += 1;
            o.sum.fixed += 1;
        } else {
            res.leaks += 1;
            o.sum.stale += 1;
        }
    }
    if cx.img.sync().is_err() {
        res.check_errors += 1;
    }
}
