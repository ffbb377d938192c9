//! `zcow-img zone report` and `zone set-cond`, working on the persistent
//! write-pointer array (the view after a power cycle).

use super::info::cond_from_entry;
use crate::format::{BackingPolicy, FormatError, OpenOptions, Qcow2};
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

/// Zone descriptors of zones from the one holding `offset`, at most `count`.
pub fn report(
    path: &Path,
    offset: u64,
    count: Option<u32>,
) -> crate::format::Result<(ZoneGeometry, Vec<ZoneDescriptor>)> {
    let (img, g) = open(path, true)?;
    let entries = img.read_wp_entries()?;
    let first = g.zone_index(offset).ok_or(FormatError::OutOfRange {
        offset,
        len: 0,
        size: g.device_size,
    })?;
    let last = match count {
        Some(n) => (first as u64 + n as u64).min(g.nr_zones as u64) as u32,
        None => g.nr_zones,
    };
    let v = (first..last)
        .map(|i| {
            let e = entries[i as usize];
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

/// Render a report as a table with per-condition totals.
pub fn render_human(zones: &[ZoneDescriptor]) -> String {
    let mut s = format!(
        "{:>8}  {:>18}  {:>12}  {:>12}  {:>18}  {:<18}  {}\n",
        "ZONE", "START", "LENGTH", "CAPACITY", "WP", "TYPE", "CONDITION"
    );
    for z in zones {
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
pub fn render_json(zones: &[ZoneDescriptor]) -> String {
    let counts = count_by_cond(zones.iter().map(|z| z.cond));
    let mut by_cond = Map::new();
    for (c, n) in ZoneCond::ALL.iter().zip(counts) {
        by_cond.insert(qemu_name(c.name()), json!(n));
    }
    let list: Vec<Value> = zones
        .iter()
        .map(|z| {
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
pub fn render_blkzone(zones: &[ZoneDescriptor]) -> String {
    let mut s = String::new();
    for z in zones {
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
    let mut entries = img.read_wp_entries()?;
    let e = entries[index as usize];
    let new = match cond {
        FaultCond::ReadOnly => e.with_faults(true, false),
        FaultCond::Offline => e.with_faults(false, true),
        FaultCond::Clear => e.with_faults(false, false),
    };
    entries[index as usize] = new;
    img.write_wp_entries(index, &[new])?;
    img.sync_file()?;
    Ok(cond_from_entry(&g, index, new))
}
