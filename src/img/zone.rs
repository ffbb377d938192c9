//! `zcow-img zone report` and `zone set-cond`, working on the persistent
//! write-pointer array (the view after a power cycle).

use super::info::cond_from_entry;
use crate::format::wp::WpEntry;
use crate::format::{BackingPolicy, FormatError, OpenOptions, Qcow2};
use crate::progress::Progress;
use crate::qjson::to_qemu_json;
use crate::zone::{
    count_by_cond, summarize_counts, ZoneCond, ZoneDescriptor, ZoneGeometry, ZoneType,
};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Persistent fault condition to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCond {
    /// READ_ONLY (bit 60).
    ReadOnly,
    /// OFFLINE (bit 61).
    Offline,
    /// Clear both.
    Clear,
}

fn open(path: &Path, read_only: bool) -> crate::format::Result<(Qcow2, ZoneGeometry)> {
    let img = Qcow2::open_path(
        path,
        &OpenOptions {
            read_only,
            backing: BackingPolicy::Refuse,
            ..Default::default()
        },
    )?;
    let z = img.zoned().ok_or_else(|| {
        FormatError::Unsupported(format!("'{}' is not a zoned image", path.display()))
    })?;
    if let Some(p) = &z.problem {
        return Err(FormatError::Invalid(format!(
            "zoned metadata unusable: {p}"
        )));
    }
    let g = z.geometry;
    Ok((img, g))
}

/// Zones read (and rendered) between two progress updates.
const STEP: usize = 65536;

/// Share of a report's progress bar spent reading the zones; rendering
/// them is the rest.
pub const READ_SHARE: f64 = 0.4;

/// Zone descriptors of zones from the one holding `offset`, at most `count`,
/// reported on `progress` within the first [`READ_SHARE`] of the bar.
pub fn report(
    path: &Path,
    offset: u64,
    count: Option<u32>,
    progress: &Progress,
) -> crate::format::Result<(ZoneGeometry, Vec<ZoneDescriptor>)> {
    let (img, g) = open(path, true)?;
    let first = g.zone_index(offset).ok_or(FormatError::OutOfRange {
        offset,
        len: 0,
        size: g.device_size,
    })?;
    let last = match count {
        Some(n) => (first as u64 + n as u64).min(g.nr_zones as u64) as u32,
        None => g.nr_zones,
    };
    // Only the entries reported are read.
    let mut raw = vec![0u64; (last - first) as usize];
    progress.window(0.0, READ_SHARE);
    let total = raw.len() as u64;
    for (k, part) in raw.chunks_mut(STEP).enumerate() {
        progress.update((k * STEP) as u64, total);
        img.read_wp_range(first + (k * STEP) as u32, part)?;
    }
    let v = (first..last)
        .map(|i| {
            let e = WpEntry(raw[(i - first) as usize]);
            let cond = cond_from_entry(&g, i, e);
            ZoneDescriptor {
                index: i,
                start: g.zone_start(i),
                len: g.zone_len(i),
                cap: g.zone_cap(i),
                wp: if g.is_conventional(i) {
                    g.zone_start(i)
                } else {
                    e.wp()
                },
                zone_type: g.zone_type(i),
                cond,
            }
        })
        .collect();
    Ok((g, v))
}

/// Report rendering of `zones` on `progress`, from [`READ_SHARE`] to
/// `upto` of the bar: `row(i)` is called before zone `i` is rendered.
fn rendering<'a>(
    zones: &[ZoneDescriptor],
    progress: &'a Progress,
    upto: f64,
) -> impl Fn(usize) + 'a {
    progress.window(READ_SHARE, upto);
    let total = zones.len() as u64;
    move |i: usize| {
        if i % STEP == 0 {
            progress.update(i as u64, total);
        }
    }
}

/// Render a report as a table with per-condition totals.
pub fn render_human(zones: &[ZoneDescriptor], progress: &Progress) -> String {
    let row = rendering(zones, progress, 1.0);
    let mut s = format!(
        "{:>8}  {:>18}  {:>12}  {:>12}  {:>18}  {:<18}  {}\n",
        "ZONE", "START", "LENGTH", "CAPACITY", "WP", "TYPE", "CONDITION"
    );
    for (i, z) in zones.iter().enumerate() {
        row(i);
        s.push_str(&format!(
            "{:>8}  {:>#18x}  {:>#12x}  {:>#12x}  {:>#18x}  {:<18}  {}\n",
            z.index,
            z.start,
            z.len,
            z.cap,
            z.wp,
            z.zone_type.name(),
            z.cond.name()
        ));
    }
    let counts = count_by_cond(zones.iter().map(|z| z.cond));
    s.push_str(&format!(
        "{} zones: {}\n",
        zones.len(),
        summarize_counts(&counts)
    ));
    s
}

/// Render a report as JSON in the style of `info --output=json`: QEMU's
/// key spelling (lower case, hyphens), key order and layout.
/// Building the list is reported on `progress`; writing it out is not
/// (one call) and takes the rest of the bar.
pub fn render_json(zones: &[ZoneDescriptor], progress: &Progress) -> String {
    let row = rendering(zones, progress, 0.7);
    let counts = count_by_cond(zones.iter().map(|z| z.cond));
    let mut by_cond = Map::new();
    for (c, n) in ZoneCond::ALL.iter().zip(counts) {
        by_cond.insert(qemu_name(c.name()), json!(n));
    }
    let list: Vec<Value> = zones
        .iter()
        .enumerate()
        .map(|(i, z)| {
            row(i);
            json!({
                "index": z.index, "start": z.start, "length": z.len, "capacity": z.cap,
                "write-pointer": z.wp, "type": z.zone_type.name(),
                "condition": qemu_name(z.cond.name()),
            })
        })
        .collect();
    let v = json!({"zones": list, "zones-by-condition": Value::Object(by_cond)});
    to_qemu_json(&v) + "\n"
}

/// `IMP_OPEN` → `imp-open`: QEMU's enum and key spelling.
fn qemu_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Render a report exactly as util-linux `blkzone report` prints the same
/// zones of a block device (512-byte sectors, write pointer relative to the
/// zone start and 0 for conventional zones), so scripts written for real
/// devices read images unchanged.
pub fn render_blkzone(zones: &[ZoneDescriptor], progress: &Progress) -> String {
    let row = rendering(zones, progress, 1.0);
    let mut s = String::new();
    for (i, z) in zones.iter().enumerate() {
        row(i);
        let conventional = z.zone_type == ZoneType::Conventional;
        let wptr = if conventional {
            0
        } else {
            z.wp.saturating_sub(z.start) >> 9
        };
        s.push_str(&format!(
            "  start: 0x{:09x}, len 0x{:06x}, cap 0x{:06x}, wptr 0x{:06x} reset:0 non-seq:0, zcond:{:2}({}) [type: {}({})]\n",
            z.start >> 9,
            z.len >> 9,
            z.cap >> 9,
            wptr,
            z.cond.value(),
            blkzone_cond(z.cond),
            z.zone_type.value(),
            match z.zone_type {
                ZoneType::Conventional => "CONVENTIONAL",
                ZoneType::SeqWriteReq => "SEQ_WRITE_REQUIRED",
            },
        ));
    }
    s
}

/// blkzone's two-letter condition names.
fn blkzone_cond(c: ZoneCond) -> &'static str {
    match c {
        ZoneCond::NotWp => "nw",
        ZoneCond::Empty => "em",
        ZoneCond::ImpOpen => "oi",
        ZoneCond::ExpOpen => "oe",
        ZoneCond::Closed => "cl",
        ZoneCond::ReadOnly => "ro",
        ZoneCond::Full => "fu",
        ZoneCond::Offline => "of",
    }
}

/// Set or clear a persistent fault condition of zone `index`, durably.
pub fn set_cond(path: &Path, index: u32, cond: FaultCond) -> crate::format::Result<ZoneCond> {
    let (img, g) = open(path, false)?;
    if index >= g.nr_zones {
        return Err(FormatError::BadOption(format!(
            "zone {index} does not exist (the image has {} zones)",
            g.nr_zones
        )));
    }
    let mut one = [0u64];
    img.read_wp_range(index, &mut one)?;
    let e = WpEntry(one[0]);
    let new = match cond {
        FaultCond::ReadOnly => e.with_faults(true, false),
        FaultCond::Offline => e.with_faults(false, true),
        FaultCond::Clear => e.with_faults(false, false),
    };
    img.write_wp_entries(index, &[new])?;
    img.sync_file()?;
    Ok(cond_from_entry(&g, index, new))
}

/// Zone descriptors of a device opened by name (an NBD URI: the report
/// comes from the server's zoned extension), from the zone holding
/// `offset`, at most `count`; reported on `progress` as [`report`] does.
pub fn report_device(
    name: &str,
    offset: u64,
    count: Option<u32>,
    progress: &Progress,
) -> Result<Vec<ZoneDescriptor>, super::ImgError> {
    let d = super::open_named(name, None, true)?;
    let g = d
        .zone_geometry()
        .ok_or_else(|| super::ImgError::Failed(format!("'{name}' is not a zoned export")))?;
    let first = g.zone_index(offset).ok_or_else(|| {
        super::ImgError::Failed(format!("offset {offset} is past the end of '{name}'"))
    })?;
    let want = count.map_or(u64::from(g.nr_zones - first), u64::from);
    let mut out: Vec<ZoneDescriptor> = Vec::new();
    let mut off = g.zone_start(first);
    progress.window(0.0, READ_SHARE);
    while (out.len() as u64) < want {
        progress.update(out.len() as u64, want);
        let n = (want - out.len() as u64).min(65536) as u32;
        let z = d
            .zone_report(off, n)
            .map_err(|e| super::ImgError::Failed(format!("zone report of {name}: {e}")))?;
        let Some(last) = z.last() else { break };
        off = last.start + last.len;
        out.extend(z);
        if off >= g.device_size {
            break;
        }
    }
    out.truncate(want as usize);
    Ok(out)
}
