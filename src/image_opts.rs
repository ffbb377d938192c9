//! QEMU's ways of naming an image by options rather than a file name:
//! `--image-opts` strings (`driver=qcow2,file.filename=disk.img`) and
//! `json:{...}` pseudo-filenames. zcow understands the subset that names
//! a format, a file and read-only; cache, AIO, locking and discard keys are
//! accepted and recorded (they change nothing zcow does observably).

use std::collections::BTreeMap;

/// An image named by options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageOpts {
    /// `driver` (the format), if given.
    pub driver: Option<String>,
    /// `file.filename` or `filename`.
    pub filename: String,
    /// `read-only=on`.
    pub read_only: bool,
    /// Raw driver `offset` (bytes into the file).
    pub offset: Option<u64>,
    /// Raw driver `size` (bytes of the window).
    pub size: Option<u64>,
    /// Keys accepted without effect, as given (for `--help`'s "recorded").
    pub recorded: BTreeMap<String, String>,
}

/// Split `key=val,key=val` with QEMU's `,,` escape for a literal comma.
pub fn split_opts(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut items = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    for it in items {
        if it.is_empty() {
            continue;
        }
        match it.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => return Err(format!("Invalid parameter '{it}'")),
        }
    }
    Ok(out)
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        serde_json::Value::Bool(b) => {
            out.push((prefix.to_string(), if *b { "on" } else { "off" }.into()))
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn is_on(v: &str) -> bool {
    matches!(v, "on" | "true" | "yes")
}

/// Build from flattened key/value pairs.
fn from_pairs(pairs: Vec<(String, String)>) -> Result<ImageOpts, String> {
    let mut o = ImageOpts::default();
    let mut file = None;
    for (k, v) in pairs {
        match k.as_str() {
            "driver" => o.driver = Some(v),
            "file.filename" | "filename" | "file" => file = Some(v),
            "read-only" => o.read_only = is_on(&v),
            "offset" | "size" => {
                let n = crate::size::parse_size(&v).map_err(|_| {
                    format!("Parameter '{k}' expects a non-negative number below 2^64")
                })?;
                if k == "offset" {
                    o.offset = Some(n);
                } else {
                    o.size = Some(n);
                }
            }
            "file.driver" if v == "file" => {}
            _ if k.starts_with("cache.")
                || k.starts_with("file.")
                || [
                    "discard",
                    "aio",
                    "detect-zeroes",
                    "auto-read-only",
                    "force-share",
                    "node-name",
                    "locking",
                    "lazy-refcounts",
                    "pass-discard-request",
                    "pass-discard-other",
                    "pass-discard-snapshot",
                    "overlap-check",
                    "cache-size",
                    "l2-cache-size",
                    "refcount-cache-size",
                    "cache-clean-interval",
                ]
                .contains(&k.as_str()) =>
            {
                o.recorded.insert(k, v);
            }
            _ => {
                let d = o.driver.as_deref().unwrap_or("file");
                return Err(format!(
                    "Block format '{d}' does not support the option '{k}'"
                ));
            }
        }
    }
    o.filename = file.ok_or_else(|| "A block device must be specified for \"file\"".to_string())?;
    Ok(o)
}

/// The path a file name with QEMU's `file:` protocol prefix names
/// (`file:a:b.img` is the file `a:b.img`), written as QEMU shows it: a
/// relative path whose first component holds a colon gets `./` so it does
/// not read as another protocol. Names without the prefix are unchanged.
pub fn file_protocol_path(name: &str) -> String {
    let Some(path) = name.strip_prefix("file:") else {
        return name.to_string();
    };
    let first = path.split('/').next().unwrap_or("");
    if !path.starts_with('/') && first.contains(':') {
        format!("./{path}")
    } else {
        path.to_string()
    }
}

/// Check qcow2 runtime options (`reopen -o`, `open -o`) as QEMU's qcow2
/// driver does, with its messages: typed values first, then the cache
/// sizes against each other and the image (`cluster_size`, `disk_size`),
/// the cache-clean interval and the overlap-check mode. zcow records valid
/// values (its caches and overlap checks have fixed settings).
pub fn check_qcow2_runtime_opts(
    opts: &[(String, String)],
    cluster_size: u64,
    disk_size: u64,
) -> Result<(), String> {
    const BOOLS: &[&str] = &[
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "discard-no-unref",
        "overlap-check.main-header",
        "overlap-check.active-l1",
        "overlap-check.active-l2",
        "overlap-check.refcount-table",
        "overlap-check.refcount-block",
        "overlap-check.snapshot-table",
        "overlap-check.inactive-l1",
        "overlap-check.inactive-l2",
        "overlap-check.bitmap-directory",
    ];
    const SIZES: &[&str] = &[
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
    ];
    let get = |k: &str| {
        opts.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let mut size = std::collections::HashMap::new();
    for (k, v) in opts {
        if BOOLS.contains(&k.as_str())
            && !["on", "off", "yes", "no", "true", "false", "y", "n"].contains(&v.as_str())
        {
            return Err(format!("Parameter '{k}' expects 'on' or 'off'"));
        }
        if SIZES.contains(&k.as_str()) {
            let n = crate::size::parse_size(v)
                .map_err(|_| format!("Parameter '{k}' expects a non-negative number below 2^64"))?;
            size.insert(k.as_str(), n);
        }
    }
    // A number option: "-1" wraps as in QEMU's unsigned parser.
    let interval = match get("cache-clean-interval") {
        None => 0,
        Some(v) => match v.strip_prefix('-') {
            Some(n) => n
                .parse::<u64>()
                .map(|n| n.wrapping_neg())
                .map_err(|_| "Parameter 'cache-clean-interval' expects a number".to_string())?,
            None => v
                .parse::<u64>()
                .map_err(|_| "Parameter 'cache-clean-interval' expects a number".to_string())?,
        },
    };
    let cs = cluster_size.max(512);
    let max_l2_cache = disk_size
        .div_ceil(cs)
        .saturating_mul(8)
        .next_multiple_of(cs);
    let min_refcount_cache = 4 * cs;
    let l2_set = size.get("l2-cache-size").copied();
    let rc_set = size.get("refcount-cache-size").copied();
    let l2_max_setting = l2_set.unwrap_or(32 << 20);
    let mut l2 = max_l2_cache.min(l2_max_setting);
    let mut rc = rc_set.unwrap_or(0);
    let entry = size.get("l2-cache-entry-size").copied().unwrap_or(cs);
    if let Some(&combined) = size.get("cache-size") {
        if l2_set.is_some() && rc_set.is_some() {
            return Err(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
                    .into(),
            );
        } else if l2_set.is_some() && l2_max_setting > combined {
            return Err("l2-cache-size may not exceed cache-size".into());
        } else if rc > combined {
            return Err("refcount-cache-size may not exceed cache-size".into());
        }
        if l2_set.is_some() {
            rc = combined - l2;
        } else if rc_set.is_some() {
            l2 = combined - rc;
        } else if combined >= max_l2_cache + min_refcount_cache {
            l2 = max_l2_cache;
            rc = combined - l2;
        } else {
            rc = combined.min(min_refcount_cache);
            l2 = combined - rc;
        }
    }
    if entry < 512 || entry > cs || !entry.is_power_of_two() {
        return Err(format!(
            "L2 cache entry size must be a power of two between 512 and the cluster size ({cs})"
        ));
    }
    if l2 / entry > i32::MAX as u64 {
        return Err("L2 cache size too big".into());
    }
    if rc / cs > i32::MAX as u64 {
        return Err("Refcount cache size too big".into());
    }
    if interval > u32::MAX as u64 {
        return Err("Cache clean interval too big".into());
    }
    let main = get("overlap-check");
    let template = get("overlap-check.template");
    if let (Some(m), Some(t)) = (main, template) {
        if m != t {
            return Err(format!(
                "Conflicting values for qcow2 options 'overlap-check' ('{m}') and 'overlap-check.template' ('{t}')"
            ));
        }
    }
    let mode = main.or(template).unwrap_or("cached");
    if !["none", "constant", "cached", "all"].contains(&mode) {
        return Err(format!(
            "Unsupported value '{mode}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
        ));
    }
    Ok(())
}

/// Object types QEMU's tools accept with `--object`.
const OBJECT_TYPES: &[&str] = &[
    "secret",
    "secret_keyring",
    "throttle-group",
    "iothread",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
    "authz-simple",
    "authz-list",
    "authz-listfile",
    "authz-pam",
];

/// Check an `--object` definition (`TYPE,id=ID,...` or `qom-type=TYPE,...`)
/// as QEMU's tools do: a known type and an `id`. zcow uses no objects, so a
/// valid one is only recorded.
pub fn check_object(def: &str) -> Result<(), String> {
    let (first, rest) = def.split_once(',').unwrap_or((def, ""));
    let (ty, rest) = if first.contains('=') {
        let ty = split_opts(def)?
            .into_iter()
            .find(|(k, _)| k == "qom-type")
            .map(|(_, v)| v)
            .ok_or_else(|| "Parameter 'qom-type' is missing".to_string())?;
        (ty, def)
    } else {
        (first.to_string(), rest)
    };
    if !OBJECT_TYPES.contains(&ty.as_str()) {
        return Err(format!("Parameter 'qom-type' does not accept value '{ty}'"));
    }
    if !split_opts(rest)?.iter().any(|(k, _)| k == "id") {
        return Err("Parameter 'id' is missing".into());
    }
    Ok(())
}

/// Parse an `--image-opts` string.
pub fn parse_image_opts(s: &str) -> Result<ImageOpts, String> {
    from_pairs(split_opts(s)?)
}

/// Parse a `json:{...}` filename; `None` if `s` is not one.
pub fn parse_json_filename(s: &str) -> Option<Result<ImageOpts, String>> {
    let body = s.strip_prefix("json:")?;
    Some(
        serde_json::from_str::<serde_json::Value>(body)
            .map_err(|e| format!("Could not parse the JSON options: {e}"))
            .and_then(|v| {
                if !v.is_object() {
                    return Err("Invalid JSON object given".into());
                }
                let mut pairs = Vec::new();
                flatten("", &v, &mut pairs);
                from_pairs(pairs)
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_opts_subset() {
        let o =
            parse_image_opts("driver=qcow2,file.filename=/t/a,,b.img,cache.direct=off").unwrap();
        assert_eq!(o.driver.as_deref(), Some("qcow2"));
        assert_eq!(o.filename, "/t/a,b.img");
        assert_eq!(
            o.recorded.get("cache.direct").map(String::as_str),
            Some("off")
        );
        assert!(parse_image_opts("driver=qcow2,bogus=1,file.filename=x").is_err());
        assert!(parse_image_opts("driver=qcow2").is_err());
    }

    #[test]
    fn file_protocol() {
        assert_eq!(file_protocol_path("file:/t/a:b.img"), "/t/a:b.img");
        assert_eq!(file_protocol_path("file:image:top.img"), "./image:top.img");
        assert_eq!(file_protocol_path("file:base.img"), "base.img");
        assert_eq!(file_protocol_path("a:b.img"), "a:b.img");
    }

    #[test]
    fn qcow2_runtime_opts() {
        let check =
            |s: &str, disk: u64| check_qcow2_runtime_opts(&split_opts(s).unwrap(), 65536, disk);
        let mib64 = 64 << 20;
        assert!(check(
            "lazy-refcounts=on,overlap-check.template=all,cache-size=1M",
            mib64
        )
        .is_ok());
        assert_eq!(
            check("lazy-refcounts=42", mib64).unwrap_err(),
            "Parameter 'lazy-refcounts' expects 'on' or 'off'"
        );
        assert_eq!(
            check("cache-size=1M,l2-cache-size=2M", mib64).unwrap_err(),
            "l2-cache-size may not exceed cache-size"
        );
        assert_eq!(
            check("refcount-cache-size=256T", mib64).unwrap_err(),
            "Refcount cache size too big"
        );
        assert_eq!(
            check("cache-clean-interval=-1", mib64).unwrap_err(),
            "Cache clean interval too big"
        );
        assert!(check("overlap-check.template=blubb", mib64)
            .unwrap_err()
            .starts_with("Unsupported value 'blubb' for qcow2 option 'overlap-check'"));
    }

    #[test]
    fn objects() {
        assert!(check_object("secret,id=s0,data=x").is_ok());
        assert!(check_object("qom-type=secret,id=s0,data=x").is_ok());
        assert_eq!(
            check_object("foo,id=s0").unwrap_err(),
            "Parameter 'qom-type' does not accept value 'foo'"
        );
        assert_eq!(
            check_object("secret,data=x").unwrap_err(),
            "Parameter 'id' is missing"
        );
    }

    #[test]
    fn json_filenames() {
        let o = parse_json_filename(
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"/t/x"},"read-only":true}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(o.driver.as_deref(), Some("raw"));
        assert_eq!(o.filename, "/t/x");
        assert!(o.read_only);
        assert!(parse_json_filename("/t/x").is_none());
        assert!(parse_json_filename("json:[1]").unwrap().is_err());
    }
}
