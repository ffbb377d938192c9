//! `zcow-img map`: qemu-img's human and JSON mapping of guest ranges to
//! files and host offsets (raw files by SEEK_DATA/SEEK_HOLE, qcow2 by its
//! L1/L2 tables, backing files at depth > 0, NBD exports by block status).
//! Zoned images split the map at zone boundaries, show each zone, and map
//! what lies at or past a sequential zone's write pointer as unwritten.

use super::{is_device, open_named, ImgError, ImgResult};
use crate::format::map::{map_range, Mapping};
use crate::format::{OpenOptions, Qcow2};
use crate::zone::ZoneDescriptor;
use std::fmt::Write as _;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Deepest backing chain followed.
const MAX_DEPTH: u32 = 16;

/// One run of the map, as qemu-img's MapEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Guest offset.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// 0: this image; n: the n-th backing file.
    pub depth: u32,
    /// Allocated somewhere in the chain.
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Compressed.
    pub compressed: bool,
    /// Host offset in `file`.
    pub offset: Option<u64>,
    /// The file holding it.
    pub file: String,
    /// The zone it lies in (zoned images).
    pub zone: Option<u32>,
}

impl Entry {
    fn merges_with(&self, n: &Entry) -> bool {
        self.depth == n.depth
            && self.present == n.present
            && self.zero == n.zero
            && self.data == n.data
            && self.compressed == n.compressed
            && self.file == n.file
            && self.zone == n.zone
            && match (self.offset, n.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.len == b,
                _ => false,
            }
            && self.start + self.len == n.start
    }
}

fn push(out: &mut Vec<Entry>, e: Entry) {
    if e.len == 0 {
        return;
    }
    match out.last_mut() {
        Some(l) if l.merges_with(&e) => l.len += e.len,
        _ => out.push(e),
    }
}

fn failed(m: impl Into<String>) -> ImgError {
    ImgError::Failed(m.into())
}

fn probe_is_qcow2(path: &Path) -> ImgResult<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| ImgError::Open(format!("Could not open '{}': {e}", path.display())))?;
    let mut m = [0u8; 4];
    Ok(f.read_exact(&mut m).is_ok() && u32::from_be_bytes(m) == crate::format::header::QCOW_MAGIC)
}

/// Map a raw file: data where SEEK_DATA finds it, holes read as zeroes.
fn map_raw(
    path: &Path,
    name: &str,
    start: u64,
    end: u64,
    depth: u32,
    out: &mut Vec<Entry>,
) -> ImgResult<()> {
    let f = std::fs::File::open(path)
        .map_err(|e| ImgError::Open(format!("Could not open '{name}': {e}")))?;
    let size = f
        .metadata()
        .map_err(|e| failed(format!("{name}: {e}")))?
        .len();
    let fd = f.as_raw_fd();
    let entry = |s: u64, l: u64, data: bool| Entry {
        start: s,
        len: l,
        depth,
        present: true,
        zero: !data,
        data,
        compressed: false,
        offset: Some(s),
        file: name.to_string(),
        zone: None,
    };
    let mut pos = start;
    let stop = end.min(size);
    while pos < stop {
        // SAFETY: lseek on a file descriptor we own; no memory involved.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let data_at = if d < 0 { stop } else { (d as u64).min(stop) };
        push(out, entry(pos, data_at - pos, false));
        if data_at >= stop {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, data_at as libc::off_t, libc::SEEK_HOLE) };
        let hole_at = if h < 0 { stop } else { (h as u64).min(stop) };
        push(
            out,
            entry(data_at, hole_at.max(data_at + 1).min(stop) - data_at, true),
        );
        pos = hole_at.max(data_at + 1);
    }
    Ok(())
}

fn backing_path(img_path: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        img_path
            .parent()
            .map_or_else(|| p.to_path_buf(), |d| d.join(p))
    }
}

/// Map `[start, end)` of the image at `path` (and its backing files).
fn map_file(
    path: &Path,
    name: &str,
    format: Option<&str>,
    start: u64,
    end: u64,
    depth: u32,
    out: &mut Vec<Entry>,
) -> ImgResult<()> {
    if depth > MAX_DEPTH {
        return Err(failed(format!(
            "backing chain deeper than {MAX_DEPTH} at '{name}'"
        )));
    }
    let qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") => false,
        Some(f) => return Err(ImgError::Open(format!("Unknown driver '{f}'"))),
        None => probe_is_qcow2(path)?,
    };
    if !qcow2 {
        return map_raw(path, name, start, end, depth, out);
    }
    let img = Qcow2::open_path(path, &OpenOptions::inspect())
        .map_err(|e| ImgError::Open(format!("Could not open '{name}': {e}")))?;
    let end = end.min(img.size());
    if start >= end {
        return Ok(());
    }
    let h = img.header();
    let backing = h.backing_file.clone();
    let runs = map_range(&img, start, end - start).map_err(|e| failed(format!("{name}: {e}")))?;
    for r in runs {
        let e = |present, zero, data, compressed, offset| Entry {
            start: r.start,
            len: r.len,
            depth,
            present,
            zero,
            data,
            compressed,
            offset,
            file: name.to_string(),
            zone: None,
        };
        match r.map {
            Mapping::Data(o) => push(out, e(true, false, true, false, Some(o))),
            Mapping::Zero(o) => push(out, e(true, true, false, false, o)),
            Mapping::Compressed => push(out, e(true, false, true, true, None)),
            Mapping::Unallocated => match &backing {
                Some(b) => {
                    let bp = backing_path(path, b);
                    let before = out.len();
                    let bname = bp.to_string_lossy().into_owned();
                    map_file(
                        &bp,
                        &bname,
                        h.backing_format(),
                        r.start,
                        r.start + r.len,
                        depth + 1,
                        out,
                    )?;
                    // Past the end of a shorter backing file: zeroes.
                    let covered = out[before..].last().map_or(r.start, |l| l.start + l.len);
                    let tail = r.start + r.len;
                    if covered < tail {
                        push(
                            out,
                            Entry {
                                start: covered,
                                len: tail - covered,
                                depth,
                                present: false,
                                zero: true,
                                data: false,
                                compressed: false,
                                offset: None,
                                file: name.to_string(),
                                zone: None,
                            },
                        );
                    }
                }
                None => push(out, e(false, true, false, false, None)),
            },
        }
    }
    Ok(())
}

/// Map an NBD export by block status.
fn map_uri(name: &str, start: u64, end: u64, out: &mut Vec<Entry>) -> ImgResult<Option<u64>> {
    let d = open_named(name, None, true)?;
    let end = end.min(d.size());
    let mut pos = start;
    while pos < end {
        let ext = d
            .block_status(pos, end - pos)
            .map_err(|e| failed(format!("block status of {name} at {pos} failed: {e}")))?;
        let mut moved = false;
        for x in ext {
            let l = x.len.min(end - pos);
            if l == 0 {
                break;
            }
            let data = !x.hole && !x.zero;
            push(
                out,
                Entry {
                    start: pos,
                    len: l,
                    depth: 0,
                    present: !x.hole,
                    zero: x.zero,
                    data,
                    compressed: false,
                    offset: (!x.hole).then_some(pos),
                    file: name.to_string(),
                    zone: None,
                },
            );
            pos += l;
            moved = true;
        }
        if !moved {
            return Err(failed(format!(
                "block status of {name} at {pos} answered nothing"
            )));
        }
    }
    Ok(d.zone_geometry().map(|g| g.nr_zones as u64))
}

/// The zones of a zoned image or export (empty when not zoned).
fn zones_of(name: &str, format: Option<&str>) -> ImgResult<Vec<ZoneDescriptor>> {
    let d = open_named(name, format, true)?;
    let Some(g) = d.zone_geometry() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<ZoneDescriptor> = Vec::new();
    let mut off = 0;
    while out.len() < g.nr_zones as usize {
        let z = d
            .zone_report(off, 65536)
            .map_err(|e| failed(format!("zone report of {name} failed: {e}")))?;
        let Some(last) = z.last() else { break };
        off = last.start + last.len;
        out.extend(z);
    }
    Ok(out)
}

/// Split entries at zone boundaries and map what lies at or past a
/// sequential zone's write pointer as unwritten (it reads as zeroes).
fn apply_zones(entries: Vec<Entry>, zones: &[ZoneDescriptor]) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in entries {
        let mut pos = e.start;
        let end = e.start + e.len;
        while pos < end {
            let k = zones.partition_point(|z| z.start + z.len <= pos);
            let Some(z) = zones.get(k) else {
                push(
                    &mut out,
                    Entry {
                        start: pos,
                        len: end - pos,
                        ..e.clone()
                    },
                );
                break;
            };
            let seg_end = end.min(z.start + z.len);
            let seq = z.zone_type == crate::zone::ZoneType::SeqWriteReq;
            let wp = if seq {
                z.wp.clamp(pos, seg_end)
            } else {
                seg_end
            };
            let shift = |p: u64| e.offset.map(|o| o + (p - e.start));
            push(
                &mut out,
                Entry {
                    start: pos,
                    len: wp - pos,
                    offset: shift(pos),
                    zone: Some(z.index),
                    ..e.clone()
                },
            );
            push(
                &mut out,
                Entry {
                    start: wp,
                    len: seg_end - wp,
                    depth: 0,
                    present: false,
                    zero: true,
                    data: false,
                    compressed: false,
                    offset: None,
                    zone: Some(z.index),
                    file: e.file.clone(),
                },
            );
            pos = seg_end;
        }
    }
    out
}

/// What `map` takes from the command line.
#[derive(Debug, Clone, Default)]
pub struct MapOptions {
    /// Image file or NBD URI.
    pub file: String,
    /// `-f`.
    pub format: Option<String>,
    /// `--output=json`.
    pub json: bool,
    /// `--start-offset`.
    pub start: u64,
    /// `--max-length`.
    pub max_len: Option<u64>,
}

/// The map entries and the zones (empty unless zoned).
pub fn map(o: &MapOptions) -> ImgResult<(Vec<Entry>, Vec<ZoneDescriptor>)> {
    let end = o.start.saturating_add(o.max_len.unwrap_or(u64::MAX));
    let mut entries = Vec::new();
    if is_device(&o.file) {
        map_uri(&o.file, o.start, end, &mut entries)?;
    } else {
        map_file(
            Path::new(&o.file),
            &o.file,
            o.format.as_deref(),
            o.start,
            end,
            0,
            &mut entries,
        )?;
    }
    let zones = zones_of(&o.file, o.format.as_deref())?;
    if zones.is_empty() {
        return Ok((entries, zones));
    }
    let shown: Vec<ZoneDescriptor> = zones
        .iter()
        .filter(|z| z.start + z.len > o.start && z.start < end)
        .copied()
        .collect();
    Ok((apply_zones(entries, &zones), shown))
}

fn zone_line(z: &ZoneDescriptor) -> String {
    format!(
        "Zone {} start {:#x} length {:#x} capacity {:#x} wp {:#x} {} {}\n",
        z.index,
        z.start,
        z.len,
        z.cap,
        z.wp,
        z.zone_type.name(),
        z.cond.name()
    )
}

/// qemu-img's human form: data runs with their host offsets (zoned images:
/// each zone's line before its runs).
pub fn render_human(entries: &[Entry], zones: &[ZoneDescriptor]) -> ImgResult<String> {
    let mut s = String::new();
    render_human_into(entries, zones, &mut s)?;
    Ok(s)
}

/// [`render_human`] into `s`; on an error `s` holds what qemu-img prints
/// before it (the header and the runs before a compressed one).
pub fn render_human_into(
    entries: &[Entry],
    zones: &[ZoneDescriptor],
    s: &mut String,
) -> ImgResult<()> {
    s.push_str("Offset          Length          Mapped to       File\n");
    let mut zi = 0;
    for e in entries {
        if e.data && e.offset.is_none() {
            return Err(failed(
                "File contains external, encrypted or compressed clusters.",
            ));
        }
        while let Some(z) = zones.get(zi) {
            if z.start > e.start {
                break;
            }
            s.push_str(&zone_line(z));
            zi += 1;
        }
        if let (true, Some(off)) = (e.data, e.offset) {
            let _ = writeln!(
                s,
                "{:<16}{:<16}{:<16}{}",
                hex(e.start),
                hex(e.len),
                hex(off),
                e.file
            );
        }
    }
    for z in &zones[zi..] {
        s.push_str(&zone_line(z));
    }
    Ok(())
}

/// C's `%#x`: `0` for zero, else `0x...`.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// qemu-img's JSON form (zoned images add `"zone": N` to each run).
pub fn render_json(entries: &[Entry]) -> String {
    let mut s = String::from("[");
    for (k, e) in entries.iter().enumerate() {
        if k > 0 {
            s.push_str(",\n");
        }
        let _ = write!(
            s,
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            e.start, e.len, e.depth, e.present, e.zero, e.data, e.compressed
        );
        if let Some(o) = e.offset {
            let _ = write!(s, ", \"offset\": {o}");
        }
        if let Some(z) = e.zone {
            let _ = write!(s, ", \"zone\": {z}");
        }
        s.push('}');
    }
    s.push_str("]\n");
    s
}
