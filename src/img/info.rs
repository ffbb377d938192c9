//! `zcow-img info`: qemu-img's fields, values and key order, plus a
//! `zoned` section for zoned images.

use crate::format::features::*;
use crate::format::wp::WpEntry;
use crate::format::{OpenOptions, Qcow2};
use crate::qjson::to_qemu_json;
use crate::size::human_size;
use crate::zone::{count_by_cond, summarize_counts, ZoneCond, ZoneGeometry};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Largest zone count `info` counts conditions for.
pub const INFO_COUNT_LIMIT: u32 = 1 << 24;

/// Zones per condition, paging through the array (constant memory for any
/// zone count); all zero when the array cannot be read.
fn count_conditions(img: &crate::format::Qcow2, geo: &ZoneGeometry) -> [u64; 8] {
    let page = crate::format::zoned::WP_PAGE;
    let mut buf = vec![0u64; page.min(geo.nr_zones) as usize];
    let mut counts = [0u64; 8];
    let mut first = 0u32;
    while first < geo.nr_zones {
        let k = page.min(geo.nr_zones - first);
        let chunk = &mut buf[..k as usize];
        if img.read_wp_range(first, chunk).is_err() {
            return [0; 8];
        }
        let c = count_by_cond(
            (first..)
                .zip(chunk.iter())
                .map(|(i, &e)| cond_from_entry(geo, i, WpEntry(e))),
        );
        for (a, b) in counts.iter_mut().zip(c) {
            *a += b;
        }
        first += k;
    }
    counts
}

/// Condition of a zone as reopen derives it from its entry (power cycle).
pub fn cond_from_entry(geo: &ZoneGeometry, i: u32, e: WpEntry) -> ZoneCond {
    let start = geo.zone_start(i);
    if e.offline() {
        ZoneCond::Offline
    } else if e.read_only() {
        ZoneCond::ReadOnly
    } else if geo.is_conventional(i) {
        ZoneCond::NotWp
    } else if e.wp() == start {
        ZoneCond::Empty
    } else if e.wp() >= start + geo.zone_cap(i) {
        ZoneCond::Full
    } else {
        ZoneCond::Closed
    }
}

/// Everything `info` prints.
#[derive(Debug)]
pub struct ImageInfo {
    json: Value,
    human: String,
}

impl ImageInfo {
    /// Human form (as `qemu-img info`).
    pub fn human(&self) -> &str {
        &self.human
    }
    /// JSON form (QEMU layout and key order), with a trailing newline.
    pub fn json(&self) -> String {
        to_qemu_json(&self.json) + "\n"
    }
    /// The JSON value.
    pub fn value(&self) -> &Value {
        &self.json
    }
}

fn local_time(sec: u32) -> String {
    let t = sec as libc::time_t;
    // SAFETY: localtime_r writes into the struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return String::new();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The `children` list: the protocol-level file node.
fn file_child_json(display_name: &str, rounded_len: u64, actual: u64) -> Value {
    let mut child = Map::new();
    child.insert("filename".into(), json!(display_name));
    child.insert("format".into(), json!("file"));
    child.insert("dirty-flag".into(), json!(false));
    child.insert("actual-size".into(), json!(actual));
    child.insert("virtual-size".into(), json!(rounded_len));
    child.insert(
        "format-specific".into(),
        json!({"type": "file", "data": {}}),
    );
    child.insert("children".into(), json!([]));
    json!([{"name": "file", "info": Value::Object(child)}])
}

/// The `Child node '/file'` section of the human form.
fn file_child_human(display_name: &str, rounded_len: u64, actual: u64) -> String {
    format!(
        "Child node '/file':\n    filename: {display_name}\n    protocol type: file\n    file length: {} ({rounded_len} bytes)\n    disk size: {}\n",
        human_size(rounded_len),
        human_size(actual)
    )
}

/// Info about a raw image.
pub fn raw_info(path: &Path, display_name: &str) -> crate::format::Result<ImageInfo> {
    // A raw reader shares everything, as qemu-img's does.
    let lock = crate::storage::lock::LockRequest::raw(true);
    let st = crate::storage::FileStorage::open_with(path, true, Some(lock)).map_err(|e| {
        crate::format::FormatError::Storage(crate::storage::StorageError::Io {
            op: crate::storage::Op::Read,
            offset: 0,
            len: 0,
            source: e,
        })
    })?;
    use crate::storage::Storage;
    let len = st.len()?;
    let actual = st.allocated_bytes().unwrap_or(len);
    let rounded = len.div_ceil(512) * 512;
    let mut top = Map::new();
    top.insert("filename".into(), json!(display_name));
    top.insert("format".into(), json!("raw"));
    top.insert("dirty-flag".into(), json!(false));
    top.insert("actual-size".into(), json!(actual));
    top.insert("virtual-size".into(), json!(len));
    top.insert(
        "children".into(),
        file_child_json(display_name, rounded, actual),
    );
    let human = format!(
        "image: {display_name}\nfile format: raw\nvirtual size: {} ({len} bytes)\ndisk size: {}\n{}",
        human_size(len),
        human_size(actual),
        file_child_human(display_name, rounded, actual)
    );
    Ok(ImageInfo {
        json: Value::Object(top),
        human,
    })
}

/// Info about the image at `path`, probing its format (qcow2 magic, else
/// raw) unless `format` names it.
pub fn image_info_probe(
    path: &Path,
    display_name: &str,
    format: Option<&str>,
) -> crate::format::Result<ImageInfo> {
    let is_qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") => false,
        Some(other) => {
            return Err(crate::format::FormatError::Unsupported(format!(
                "Unknown driver '{other}' (zcow-img reads qcow2 and raw)"
            )))
        }
        None => {
            // Unlocked probe of the first bytes; a short or unreadable file
            // probes as raw and the open below reports what is wrong.
            let mut head = vec![0u8; crate::probe::PROBE_LEN];
            let mut n = 0;
            if let Ok(mut f) = std::fs::File::open(path) {
                while n < head.len() {
                    match std::io::Read::read(&mut f, &mut head[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
            }
            match crate::probe::probe_file(path, &head[..n]) {
                crate::probe::Probed::Qcow2 => true,
                crate::probe::Probed::Raw => false,
                crate::probe::Probed::Other(f) => {
                    return Err(crate::format::FormatError::Unsupported(
                        crate::probe::unsupported_message(f),
                    ))
                }
            }
        }
    };
    if is_qcow2 {
        image_info(path, display_name)
    } else {
        raw_info(path, display_name)
    }
}

/// `--backing-chain`: the image and every backing file below it, nearest
/// first (bounded in depth, refusing loops).
pub fn chain_info(
    path: &Path,
    display_name: &str,
    format: Option<&str>,
) -> crate::format::Result<Vec<ImageInfo>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cur = (
        path.to_path_buf(),
        display_name.to_string(),
        format.map(str::to_string),
    );
    loop {
        let canon = std::fs::canonicalize(&cur.0).unwrap_or_else(|_| cur.0.clone());
        if !seen.insert(canon) || out.len() as u32 >= crate::format::image::MAX_BACKING_DEPTH {
            return Err(crate::format::FormatError::Invalid(format!(
                "backing chain of '{display_name}' loops or is deeper than {} images",
                crate::format::image::MAX_BACKING_DEPTH
            )));
        }
        let info = image_info_probe(&cur.0, &cur.1, cur.2.as_deref())?;
        let next = info
            .json
            .get("full-backing-filename")
            .and_then(Value::as_str)
            .map(|f| {
                let fmt = info
                    .json
                    .get("backing-filename-format")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                (std::path::PathBuf::from(f), f.to_string(), fmt)
            });
        out.push(info);
        match next {
            Some(n) => cur = n,
            None => return Ok(out),
        }
    }
}

/// Render a chain like `qemu-img info --backing-chain`.
pub fn render_chain(chain: &[ImageInfo], json: bool) -> String {
    if json {
        let v = Value::Array(chain.iter().map(|i| i.json.clone()).collect());
        to_qemu_json(&v) + "\n"
    } else {
        chain
            .iter()
            .map(|i| i.human.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Gather info about the image at `path` (opened read-only; backing files
/// are named, not opened, as `qemu-img info` does).
pub fn image_info(path: &Path, display_name: &str) -> crate::format::Result<ImageInfo> {
    let img = Qcow2::open_path(path, &OpenOptions::inspect())?;
    crate::open::warn_overlap(path, &img);
    let h = img.header();
    let st = img.storage();
    let file_len = st.len()?;
    let rounded_len = file_len.div_ceil(512) * 512;
    let actual = st.allocated_bytes().unwrap_or(file_len);
    let dirty = h.incompatible_features & INCOMPAT_DIRTY != 0;
    let data = crate::format::specific::format_specific(&img);

    let mut top = Map::new();
    top.insert("filename".into(), json!(display_name));
    top.insert("format".into(), json!("qcow2"));
    top.insert("dirty-flag".into(), json!(dirty));
    top.insert("actual-size".into(), json!(actual));
    top.insert("virtual-size".into(), json!(h.size));
    top.insert("cluster-size".into(), json!(h.cluster_size()));
    if h.crypt_method != 0 {
        top.insert("encrypted".into(), json!(true));
    }
    let mut full_backing = None;
    if let Some(b) = &h.backing_file {
        top.insert("backing-filename".into(), json!(b));
        let full = if Path::new(b).is_absolute() {
            b.clone()
        } else {
            path.parent()
                .map(|d| d.join(b))
                .unwrap_or_else(|| b.into())
                .to_string_lossy()
                .into_owned()
        };
        top.insert("full-backing-filename".into(), json!(full));
        full_backing = Some(full);
        if let Some(f) = h.backing_format() {
            top.insert("backing-filename-format".into(), json!(f));
        }
    }
    if !img.snapshots().is_empty() {
        let snaps: Vec<Value> = img
            .snapshots()
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("id".into(), json!(s.id));
                m.insert("name".into(), json!(s.name));
                m.insert("vm-state-size".into(), json!(s.vm_state_size));
                m.insert("date-sec".into(), json!(s.date_sec));
                m.insert("date-nsec".into(), json!(s.date_nsec));
                m.insert(
                    "vm-clock-sec".into(),
                    json!(s.vm_clock_nsec / 1_000_000_000),
                );
                m.insert(
                    "vm-clock-nsec".into(),
                    json!(s.vm_clock_nsec % 1_000_000_000),
                );
                if let Some(ic) = s.icount {
                    if ic != u64::MAX {
                        m.insert("icount".into(), json!(ic));
                    }
                }
                Value::Object(m)
            })
            .collect();
        top.insert("snapshots".into(), Value::Array(snaps));
    }
    top.insert(
        "format-specific".into(),
        json!({"type": "qcow2", "data": Value::Object(data)}),
    );
    top.insert(
        "children".into(),
        file_child_json(display_name, rounded_len, actual),
    );

    // Zoned section.
    let mut zoned_human = String::new();
    if let Some(z) = img.zoned() {
        let geo = z.geometry;
        // Counting pages through the whole array: only for a usable array of
        // at most INFO_COUNT_LIMIT zones (128 MiB read, a fraction of a
        // second). Otherwise info reads none of it and says so.
        let counts = (z.problem.is_none() && geo.nr_zones <= INFO_COUNT_LIMIT)
            .then(|| count_conditions(&img, &geo));
        let mut by = Map::new();
        for (k, c) in ZoneCond::ALL.iter().enumerate() {
            let Some(counts) = &counts else { break };
            by.insert(
                c.name().to_ascii_lowercase().replace('_', "-"),
                json!(counts[k]),
            );
        }
        let mut zm = Map::new();
        zm.insert("model".into(), json!("host-managed"));
        zm.insert("zone-size".into(), json!(geo.zone_size));
        zm.insert("zone-capacity".into(), json!(geo.zone_capacity));
        zm.insert("nr-zones".into(), json!(geo.nr_zones));
        zm.insert("conventional-zones".into(), json!(geo.conventional_zones));
        zm.insert("max-open-zones".into(), json!(geo.max_open_zones));
        zm.insert("max-active-zones".into(), json!(geo.max_active_zones));
        zm.insert("max-append-bytes".into(), json!(geo.max_append_bytes));
        zm.insert("metadata-offset".into(), json!(z.ext.zonedmeta_offset));
        zm.insert("metadata-size".into(), json!(z.ext.zonedmeta_size));
        if counts.is_some() {
            zm.insert("zones-by-condition".into(), Value::Object(by));
        }
        if let Some(p) = &z.problem {
            zm.insert("problem".into(), json!(p));
        }
        top.insert("zoned".into(), Value::Object(zm));
        let lim = |v: u32| {
            if v == 0 {
                "0 (unlimited)".to_string()
            } else {
                v.to_string()
            }
        };
        zoned_human.push_str("Zoned information:\n");
        zoned_human.push_str("    model: host-managed\n");
        zoned_human.push_str(&format!(
            "    zone size: {} ({} bytes)\n",
            human_size(geo.zone_size),
            geo.zone_size
        ));
        zoned_human.push_str(&format!(
            "    zone capacity: {} ({} bytes)\n",
            human_size(geo.zone_capacity),
            geo.zone_capacity
        ));
        zoned_human.push_str(&format!("    zone count: {}\n", geo.nr_zones));
        zoned_human.push_str(&format!(
            "    conventional zones: {}\n",
            geo.conventional_zones
        ));
        zoned_human.push_str(&format!(
            "    max open zones: {}\n",
            lim(geo.max_open_zones)
        ));
        zoned_human.push_str(&format!(
            "    max active zones: {}\n",
            lim(geo.max_active_zones)
        ));
        zoned_human.push_str(&format!(
            "    max append bytes: {}\n",
            if geo.max_append_bytes == 0 {
                "0 (zone append unsupported)".to_string()
            } else {
                geo.max_append_bytes.to_string()
            }
        ));
        zoned_human.push_str(&format!(
            "    metadata offset: {:#x}\n    metadata size: {}\n",
            z.ext.zonedmeta_offset, z.ext.zonedmeta_size
        ));
        zoned_human.push_str(&format!(
            "    zones by condition: {}\n",
            match &counts {
                Some(c) => summarize_counts(c),
                None if z.problem.is_some() => "not counted (the array is unusable)".into(),
                None => format!(
                    "not counted (more than {INFO_COUNT_LIMIT} zones; see 'zcow-img zone report')"
                ),
            }
        ));
        if let Some(p) = &z.problem {
            zoned_human.push_str(&format!("    problem: {p}\n"));
        }
    }

    // Human form.
    let mut s = String::new();
    s.push_str(&format!("image: {display_name}\n"));
    s.push_str("file format: qcow2\n");
    s.push_str(&format!(
        "virtual size: {} ({} bytes)\n",
        human_size(h.size),
        h.size
    ));
    s.push_str(&format!("disk size: {}\n", human_size(actual)));
    if h.crypt_method != 0 {
        s.push_str("encrypted: yes\n");
    }
    s.push_str(&format!("cluster_size: {}\n", h.cluster_size()));
    if dirty {
        s.push_str("cleanly shut down: no\n");
    }
    if let Some(b) = &h.backing_file {
        match &full_backing {
            Some(f) if f != b => s.push_str(&format!("backing file: {b} (actual path: {f})\n")),
            _ => s.push_str(&format!("backing file: {b}\n")),
        }
        if let Some(f) = h.backing_format() {
            s.push_str(&format!("backing file format: {f}\n"));
        }
    }
    if !img.snapshots().is_empty() {
        s.push_str("Snapshot list:\n");
        s.push_str(&format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
        ));
        for sn in img.snapshots() {
            let secs = sn.vm_clock_nsec / 1_000_000_000;
            let clock = format!(
                "{:04}:{:02}:{:02}.{:03}",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60,
                (sn.vm_clock_nsec / 1_000_000) % 1000
            );
            let icount = match sn.icount {
                Some(i) if i != u64::MAX => i.to_string(),
                _ => String::new(),
            };
            s.push_str(&format!(
                "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
                sn.id,
                sn.name,
                human_size(sn.vm_state_size),
                local_time(sn.date_sec),
                clock,
                icount
            ));
        }
    }
    s.push_str("Format specific information:\n");
    if let Some(d) = top.get("format-specific").and_then(|f| f.get("data")) {
        crate::qjson::dump_human(d, 1, &mut s);
    }
    s.push_str(&zoned_human);
    s.push_str(&file_child_human(display_name, rounded_len, actual));
    Ok(ImageInfo {
        json: Value::Object(top),
        human: s,
    })
}

/// Info about an NBD export (as qemu-img shows one: raw over the `nbd`
/// protocol), with the zone layout when the export is zoned.
pub fn nbd_info(uri: &str) -> Result<ImageInfo, super::ImgError> {
    let d = super::open_named(uri, None, true)?;
    let len = d.size();
    let mut child_info = Map::new();
    child_info.insert("children".into(), json!([]));
    child_info.insert("virtual-size".into(), json!(len));
    child_info.insert("filename".into(), json!(uri));
    child_info.insert("format".into(), json!("nbd"));
    let mut child = Map::new();
    child.insert("name".into(), json!("file"));
    child.insert("info".into(), Value::Object(child_info));
    let mut top = Map::new();
    top.insert("children".into(), json!([Value::Object(child)]));
    top.insert("virtual-size".into(), json!(len));
    top.insert("filename".into(), json!(uri));
    top.insert("format".into(), json!("raw"));
    let mut human = format!(
        "image: {uri}\nfile format: raw\nvirtual size: {} ({len} bytes)\ndisk size: unavailable\n",
        human_size(len)
    );
    if let Some(g) = d.zone_geometry() {
        let lim = |v: u32| {
            if v == 0 {
                "0 (unlimited)".to_string()
            } else {
                v.to_string()
            }
        };
        let mut conds = Vec::new();
        let mut off = 0;
        while (conds.len() as u64) < u64::from(g.nr_zones) {
            let z = d
                .zone_report(off, 65536)
                .map_err(|e| super::ImgError::Failed(format!("zone report of {uri}: {e}")))?;
            let Some(last) = z.last() else { break };
            off = last.start + last.len;
            conds.extend(z.iter().map(|z| z.cond));
        }
        human.push_str(&format!(
            "Zoned information:\n    model: host-managed\n    zone size: {} ({} bytes)\n    zone capacity: {} ({} bytes)\n    zone count: {}\n    conventional zones: {}\n    max open zones: {}\n    max active zones: {}\n    max append bytes: {}\n    zones by condition: {}\n",
            human_size(g.zone_size),
            g.zone_size,
            human_size(g.zone_capacity),
            g.zone_capacity,
            g.nr_zones,
            g.conventional_zones,
            lim(g.max_open_zones),
            lim(g.max_active_zones),
            g.max_append_bytes,
            crate::zone::summarize_counts(&crate::zone::count_by_cond(conds))
        ));
    }
    human.push_str(&format!(
        "Child node '/file':\n    filename: {uri}\n    protocol type: nbd\n    file length: {} ({len} bytes)\n    disk size: unavailable\n",
        human_size(len)
    ));
    Ok(ImageInfo {
        json: Value::Object(top),
        human,
    })
}
