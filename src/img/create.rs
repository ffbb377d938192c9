//! `zcow-img create`: qemu-img's `-o` option syntax and `Formatting` line.

use crate::format::create::{CreateOptions, Preallocation};
use crate::format::zoned::ZonedCreateOptions;
use crate::size::parse_size;

/// Whether `-o` asks for the option list (`help` or `?`), as qemu-img takes it.
pub fn wants_help(opts: &[String]) -> bool {
    opts.iter()
        .flat_map(|g| g.split(','))
        .any(|o| o == "help" || o == "?")
}

/// `create -o help`: every option zcow's create takes, in qemu-img's layout.
pub fn options_help() -> String {
    const OPTS: &[(&str, &str, &str)] = &[
        ("backing_file", "str", "File name of a base image"),
        ("backing_fmt", "str", "Image format of the base image"),
        ("cluster_size", "size", "qcow2 cluster size"),
        (
            "compat",
            "str",
            "Compatibility level (v2 [0.10] or v3 [1.1])",
        ),
        (
            "compression_type",
            "str",
            "Compression method used for image cluster compression",
        ),
        ("extended_l2", "bool (on/off)", "Extended L2 tables"),
        (
            "lazy_refcounts",
            "bool (on/off)",
            "Postpone refcount updates",
        ),
        (
            "preallocation",
            "str",
            "Preallocation mode (allowed values: off, metadata)",
        ),
        (
            "refcount_bits",
            "num",
            "Width of a reference count entry in bits",
        ),
        ("size", "size", "Virtual disk size"),
        (
            "zone.capacity",
            "size",
            "Writable bytes of each zone (default: zone.size)",
        ),
        (
            "zone.conventional_zones",
            "num",
            "Leading zones without a write pointer (default 0)",
        ),
        (
            "zone.max_active_zones",
            "num",
            "Zones that may be open or closed at once (0: no limit)",
        ),
        (
            "zone.max_append_bytes",
            "size",
            "Largest zone append (multiple of 512, below the capacity; default 64k)",
        ),
        (
            "zone.max_open_zones",
            "num",
            "Zones that may be open at once (0: no limit)",
        ),
        (
            "zone.mode",
            "str",
            "Zone model: host-managed makes a zoned image",
        ),
        (
            "zone.size",
            "size",
            "Bytes per zone, a power of two (default 256M)",
        ),
    ];
    let mut s = String::from("Supported qcow2 options:\n");
    for (name, ty, desc) in OPTS {
        s.push_str(&format!("  {:<22} - {desc}\n", format!("{name}=<{ty}>")));
    }
    s
}

/// Parse `-o key=value,...` strings (several `-o` allowed; `,,` escapes a
/// comma as in qemu) into create options. `size` is the positional size.
pub fn parse_options(opts: &[String], size: Option<u64>) -> Result<CreateOptions, String> {
    let mut o = CreateOptions::default();
    let mut z = ZonedCreateOptions::default();
    let mut zoned_mode: Option<String> = None;
    let mut any_zone = false;
    let mut size_opt = None;
    for group in opts {
        for kv in split_opts(group) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("Invalid parameter '{kv}'"))?;
            let num = |v: &str| -> Result<u32, String> {
                v.parse::<u32>()
                    .map_err(|_| format!("Parameter '{k}' expects a number, got '{v}'"))
            };
            let sz = |v: &str| -> Result<u64, String> {
                parse_size(v).map_err(|e| format!("Parameter '{k}' expects a size: {e}"))
            };
            match k {
                "size" => size_opt = Some(sz(v)?),
                "cluster_size" => o.cluster_size = sz(v)?,
                "compat" => {
                    o.version = match v {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => return Err(format!("Invalid compatibility level: '{v}'")),
                    }
                }
                "refcount_bits" => o.refcount_bits = num(v)?,
                "lazy_refcounts" => o.lazy_refcounts = on_off(k, v)?,
                "extended_l2" => o.extended_l2 = on_off(k, v)?,
                "preallocation" => {
                    o.preallocation = match v {
                        "off" => Preallocation::Off,
                        "metadata" => Preallocation::Metadata,
                        "falloc" | "full" => {
                            return Err(format!(
                                "preallocation={v} is not supported by zcow (use off or metadata)"
                            ))
                        }
                        _ => return Err(format!("Invalid parameter '{v}' for preallocation")),
                    }
                }
                "backing_file" => o.backing_file = Some(v.to_string()),
                "backing_fmt" => o.backing_fmt = Some(v.to_string()),
                "compression_type" => {
                    o.compression_type = match v {
                        "zlib" => 0,
                        "zstd" => 1,
                        _ => return Err(format!("Invalid parameter '{v}' for compression_type")),
                    }
                }
                "zone.mode" => {
                    if v != "host-managed" {
                        return Err(format!(
                            "zone.mode '{v}' is not supported (only host-managed)"
                        ));
                    }
                    zoned_mode = Some(v.to_string());
                }
                "zone.size" => {
                    z.zone_size = Some(sz(v)?);
                    any_zone = true
                }
                "zone.capacity" => {
                    z.zone_capacity = Some(sz(v)?);
                    any_zone = true
                }
                "zone.conventional_zones" => {
                    z.conventional_zones = Some(num(v)?);
                    any_zone = true
                }
                "zone.max_open_zones" => {
                    z.max_open_zones = Some(num(v)?);
                    any_zone = true
                }
                "zone.max_active_zones" => {
                    z.max_active_zones = Some(num(v)?);
                    any_zone = true
                }
                "zone.max_append_bytes" => {
                    z.max_append_bytes = Some(sz(v)?);
                    any_zone = true
                }
                _ => return Err(format!("Invalid parameter '{k}'")),
            }
        }
    }
    if any_zone && zoned_mode.is_none() {
        return Err("zone.* options need zone.mode=host-managed".into());
    }
    if zoned_mode.is_some() {
        o.zoned = Some(z);
    }
    o.size = match (size, size_opt) {
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => 0,
    };
    Ok(o)
}

fn on_off(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("Parameter '{k}' expects 'on' or 'off'")),
    }
}

fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == ',' {
            if it.peek() == Some(&',') {
                it.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// qemu-img's `Formatting '...', fmt=qcow2 ...` line (zone options appended
/// when zoned, with their resolved values).
pub fn formatting_line(file: &str, o: &CreateOptions) -> String {
    let mut s = format!(
        "Formatting '{file}', fmt=qcow2 cluster_size={} extended_l2={}",
        o.cluster_size,
        if o.extended_l2 { "on" } else { "off" }
    );
    if o.preallocation == Preallocation::Metadata {
        s.push_str(" preallocation=metadata");
    }
    s.push_str(&format!(
        " compression_type={} size={}",
        if o.compression_type == 1 {
            "zstd"
        } else {
            "zlib"
        },
        o.size
    ));
    if o.version == 2 {
        s.push_str(" compat=0.10");
    }
    if let Some(b) = &o.backing_file {
        s.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = &o.backing_fmt {
        s.push_str(&format!(" backing_fmt={f}"));
    }
    s.push_str(&format!(
        " lazy_refcounts={} refcount_bits={}",
        if o.lazy_refcounts { "on" } else { "off" },
        o.refcount_bits
    ));
    if let Some(z) = &o.zoned {
        if let Ok(e) = z.resolve(o.size, o.cluster_size) {
            s.push_str(&format!(
                " zone.mode=host-managed zone.size={} zone.capacity={} zone.conventional_zones={} zone.max_open_zones={} zone.max_active_zones={} zone.max_append_bytes={}",
                e.zone_size,
                e.zone_capacity,
                e.conventional_zones,
                e.max_open_zones,
                e.max_active_zones,
                e.max_append_bytes
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_style_options() {
        let o = parse_options(
            &[
                "zone.mode=host-managed,zone.size=64M,zone.conventional_zones=2".into(),
                "zone.max_open_zones=8".into(),
            ],
            Some(4 << 30),
        )
        .unwrap();
        let z = o.zoned.clone().unwrap();
        assert_eq!(z.zone_size, Some(64 << 20));
        assert_eq!(z.conventional_zones, Some(2));
        assert_eq!(z.max_open_zones, Some(8));
        assert_eq!(
            formatting_line("disk.qcow2", &o),
            "Formatting 'disk.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=4294967296 lazy_refcounts=off refcount_bits=16 zone.mode=host-managed zone.size=67108864 zone.capacity=67108864 zone.conventional_zones=2 zone.max_open_zones=8 zone.max_active_zones=0 zone.max_append_bytes=65536"
        );
        assert!(parse_options(&["bogus=1".into()], Some(1)).is_err());
        assert!(parse_options(&["zone.size=64M".into()], Some(1)).is_err());
    }

    #[test]
    fn plain_line_matches_qemu() {
        let o = parse_options(&["compat=0.10".into()], Some(64 << 20)).unwrap();
        assert_eq!(
            formatting_line("/tmp/t.qcow2", &o),
            "Formatting '/tmp/t.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=67108864 compat=0.10 lazy_refcounts=off refcount_bits=16"
        );
    }
}
