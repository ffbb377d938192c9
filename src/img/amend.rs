//! `zcow-img amend`: change options of an existing qcow2 image in place:
//! `lazy_refcounts`, and on zoned images `zone.max_open_zones`,
//! `zone.max_active_zones` and `zone.max_append_bytes` with the create-time
//! rules. A change that would break the zones as they are (more zones
//! active than the new limit) is refused and nothing is written.

use super::{ImgError, ImgResult};
use crate::format::features::{COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY};
use crate::format::header::ParseMode;
use crate::format::image::read_header_cluster;
use crate::format::{Header, OpenOptions, Qcow2};
use crate::size::parse_size;
use crate::storage::{FileStorage, Storage};
use crate::zone::ZoneCond;
use std::path::Path;

/// The options `amend -o help` lists.
pub const AMEND_HELP: &str = "Amend options for 'qcow2':
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  zone.max_active_zones=<num> - Zones that may be open or closed at once (0: no limit)
  zone.max_append_bytes=<size> - Largest zone append (multiple of 512, below the capacity; 0: no append)
  zone.max_open_zones=<num> - Zones that may be open at once (0: no limit)
";

/// Options that only `create` takes.
const CREATE_ONLY: &[&str] = &[
    "cluster_size",
    "preallocation",
    "extended_l2",
    "compression_type",
    "encryption",
    "encrypt.format",
    "zone.mode",
    "zone.size",
    "zone.capacity",
    "zone.conventional_zones",
];

/// Options qemu-img can amend that zcow does not change.
const NOT_HERE: &[&str] = &[
    "compat",
    "refcount_bits",
    "size",
    "backing_file",
    "backing_fmt",
    "data_file",
    "data_file_raw",
];

fn failed(m: impl Into<String>) -> ImgError {
    ImgError::Failed(m.into())
}

#[derive(Debug, Default)]
struct Changes {
    lazy: Option<bool>,
    open: Option<u32>,
    active: Option<u32>,
    append: Option<u64>,
}

fn parse(opts: &[String]) -> ImgResult<Changes> {
    let mut c = Changes::default();
    for kv in opts
        .iter()
        .flat_map(|g| g.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| failed(format!("Parameter '{k}' expects a number, got '{v}'")))
        };
        match k {
            "lazy_refcounts" => {
                c.lazy = Some(match v {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => return Err(failed(format!("Parameter '{k}' expects 'on' or 'off'"))),
                })
            }
            "zone.max_open_zones" => c.open = Some(num(v)?),
            "zone.max_active_zones" => c.active = Some(num(v)?),
            "zone.max_append_bytes" => {
                c.append = Some(
                    parse_size(v)
                        .map_err(|e| failed(format!("Parameter '{k}' expects a size: {e}")))?,
                )
            }
            _ if CREATE_ONLY.contains(&k) => {
                return Err(failed(format!(
                    "Invalid parameter '{k}'\nThis option is only supported for image creation"
                )))
            }
            _ if NOT_HERE.contains(&k) => {
                return Err(failed(format!("zcow-img amend cannot change '{k}'")))
            }
            _ => return Err(failed(format!("Invalid parameter '{k}'"))),
        }
    }
    Ok(c)
}

/// Amend `path` (qcow2; `format` as given with `-f`).
pub fn run(path: &Path, format: Option<&str>, opts: &[String]) -> ImgResult<()> {
    if opts.is_empty() {
        return Err(ImgError::Usage("Must specify options (-o)".into()));
    }
    let name = path.display().to_string();
    let img = Qcow2::open_path(path, &OpenOptions::inspect());
    let img = match (img, format) {
        (_, Some(f)) if f != "qcow2" => {
            return Err(failed(format!(
                "Format driver '{f}' does not support option amendment"
            )))
        }
        (Ok(i), _) => i,
        (Err(e), Some(_)) => return Err(ImgError::Open(format!("Could not open '{name}': {e}"))),
        (Err(_), None) => {
            // Not qcow2: probed as raw, which qemu-img cannot amend either.
            if std::fs::metadata(path).is_err() {
                return Err(ImgError::Open(format!(
                    "Could not open '{name}': No such file or directory"
                )));
            }
            return Err(failed(
                "Format driver 'raw' does not support option amendment",
            ));
        }
    };
    let c = parse(opts)?;
    let zoned = img.zoned().cloned();
    if (c.open.is_some() || c.active.is_some() || c.append.is_some()) && zoned.is_none() {
        return Err(failed(format!(
            "{name}: zone.* options need a zoned image (this one is not)"
        )));
    }
    // The persistent view: partly written zones come back CLOSED (active).
    let active_now = match &zoned {
        Some(z) => {
            if let Some(p) = &z.problem {
                return Err(failed(format!("{name}: zoned metadata unusable: {p}")));
            }
            let entries = img
                .read_wp_entries()
                .map_err(|e| failed(format!("{name}: {e}")))?;
            (0..z.geometry.nr_zones)
                .filter(|&i| {
                    super::info::cond_from_entry(&z.geometry, i, entries[i as usize])
                        == ZoneCond::Closed
                })
                .count() as u32
        }
        None => 0,
    };
    drop(img);

    let st = FileStorage::open(path, false)
        .map_err(|e| ImgError::Open(format!("Could not open '{name}': {e}")))?;
    let c0 = read_header_cluster(&st).map_err(|e| failed(format!("{name}: {e}")))?;
    let mut h =
        Header::parse(&c0, ParseMode::default()).map_err(|e| failed(format!("{name}: {e}")))?;
    if let Some(on) = c.lazy {
        if h.version < 3 && on {
            return Err(failed(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
            ));
        }
        if !on && h.incompatible_features & INCOMPAT_DIRTY != 0 {
            return Err(failed(format!(
                "{name}: the image is dirty (its refcounts may be stale); run 'zcow-img check -r all' before turning lazy_refcounts off"
            )));
        }
        if on {
            h.compatible_features |= COMPAT_LAZY_REFCOUNTS;
        } else {
            h.compatible_features &= !COMPAT_LAZY_REFCOUNTS;
        }
    }
    if let Some(z) = h.zoned_mut() {
        let seq = z.nr_zones - z.conventional_zones;
        let given_open = c.open.is_some();
        let mut active = c.active.unwrap_or(z.max_active_zones);
        let mut open = c.open.unwrap_or(z.max_open_zones);
        // The create-time rules: a limit at or above the sequential zone
        // count means none; the open limit never exceeds the active one.
        if active >= seq {
            active = 0;
        }
        if open >= seq {
            open = 0;
        }
        if active != 0 && (open == 0 || open > active) {
            if given_open && open != 0 {
                return Err(failed(format!(
                    "{name}: zone.max_open_zones {open} exceeds zone.max_active_zones {active}"
                )));
            }
            open = active;
        }
        if active != 0 && active_now > active {
            return Err(failed(format!(
                "{name}: zone.max_active_zones={active} would break existing zones: {active_now} zones are partly written (CLOSED) and hold an active resource; finish or reset zones first"
            )));
        }
        if let Some(a) = c.append {
            if a % 512 != 0 {
                return Err(failed(format!(
                    "zone.max_append_bytes {a} must be a multiple of 512"
                )));
            }
            if a != 0 && a >= z.zone_capacity {
                return Err(failed(format!(
                    "zone.max_append_bytes {a} must be below zone.capacity {}",
                    z.zone_capacity
                )));
            }
            z.max_append_bytes = u32::try_from(a)
                .map_err(|_| failed(format!("zone.max_append_bytes {a} is too large")))?;
        }
        z.max_active_zones = active;
        z.max_open_zones = open;
    }
    let new = h.encode().map_err(|e| failed(format!("{name}: {e}")))?;
    let new = &new[..new.len().min(c0.len())];
    if new != &c0[..new.len()] {
        st.write_at(0, new)
            .and_then(|()| st.sync())
            .map_err(|e| failed(format!("{name}: writing the header failed: {e}")))?;
    }
    Ok(())
}
