//! Rendering a check the way `qemu-img check` does: the human summary, the
//! repair preamble, the `ImageCheck` JSON (QEMU's QDict key order) and the
//! exit code.

use super::errno::strerror;
use super::{CheckReport, Counts, OutputFormat};
use std::io::{self, Write};

/// QEMU's `tdb_hash`, which decides the order QDict prints keys in.
pub fn tdb_hash(key: &str) -> u32 {
    let mut v: u32 = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (i, c) in key.bytes().enumerate() {
        v = v.wrapping_add((c as u32) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(v).wrapping_add(12345)
}

/// A JSON value as QEMU prints it.
#[derive(Debug, Clone)]
pub enum JVal {
    /// Integer.
    Int(i64),
    /// String.
    Str(String),
    /// Boolean.
    Bool(bool),
    /// Object with keys in schema (insertion) order; printed in QDict order.
    Obj(Vec<(String, JVal)>),
    /// List.
    List(Vec<JVal>),
}

/// Order keys like a QDict: ascending hash bucket (mod 512); within a bucket
/// the later-inserted key first.
pub fn qdict_order(keys: &[(String, JVal)]) -> Vec<&(String, JVal)> {
    let mut idx: Vec<(u32, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (tdb_hash(k) % 512, i))
        .collect();
    idx.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    idx.into_iter().map(|(_, i)| &keys[i]).collect()
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                o.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Pretty-print like QEMU's `qobject_to_json_pretty` (4-space indent).
pub fn to_json(v: &JVal, indent: usize, out: &mut String) {
    match v {
        JVal::Int(i) => out.push_str(&i.to_string()),
        JVal::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        JVal::Str(s) => out.push_str(&esc(s)),
        JVal::List(items) if items.is_empty() => out.push_str("[]"),
        JVal::List(items) => {
            out.push('[');
            for (n, v) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&" ".repeat(4 * (indent + 1)));
                to_json(v, indent + 1, out);
            }
            out.push('\n');
            out.push_str(&" ".repeat(4 * indent));
            out.push(']');
        }
        JVal::Obj(keys) => {
            out.push('{');
            let ordered = qdict_order(keys);
            for (n, (k, v)) in ordered.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&" ".repeat(4 * (indent + 1)));
                out.push_str(&esc(k));
                out.push_str(": ");
                to_json(v, indent + 1, out);
            }
            out.push('\n');
            out.push_str(&" ".repeat(4 * indent));
            out.push('}');
        }
    }
}

/// The `ImageCheck` object, fields in QAPI schema order, zeros omitted.
pub fn image_check_json(rep: &CheckReport, filename: &str) -> JVal {
    let c = &rep.counts;
    let mut k: Vec<(String, JVal)> = vec![
        ("filename".into(), JVal::Str(filename.into())),
        ("format".into(), JVal::Str("qcow2".into())),
        ("check-errors".into(), JVal::Int(c.check_errors)),
    ];
    let mut opt = |name: &str, v: i64| {
        if v != 0 {
            k.push((name.into(), JVal::Int(v)));
        }
    };
    opt("image-end-offset", c.image_end_offset as i64);
    opt("corruptions", c.corruptions);
    opt("leaks", c.leaks);
    opt("corruptions-fixed", c.corruptions_fixed);
    opt("leaks-fixed", c.leaks_fixed);
    opt("total-clusters", c.total_clusters as i64);
    opt("allocated-clusters", c.allocated_clusters as i64);
    opt("fragmented-clusters", c.fragmented_clusters as i64);
    opt("compressed-clusters", c.compressed_clusters as i64);
    if let Some(z) = &rep.zoned {
        k.push(("zoned".into(), z.to_json()));
    }
    // zcow's own keys appear only when a repair dropped data or moved a
    // write pointer, so other runs stay identical to qemu-img's.
    if !rep.lost.is_empty() {
        k.push(("zcow-lost".into(), lost_json(rep)));
    }
    if !rep.wp_changes.is_empty() {
        k.push(("zcow-wp-changes".into(), wp_json(rep)));
    }
    if !rep.lost_snapshots.is_empty() {
        k.push((
            "zcow-lost-snapshots".into(),
            JVal::List(
                rep.lost_snapshots
                    .iter()
                    .map(|s| JVal::Str(s.clone()))
                    .collect(),
            ),
        ));
    }
    JVal::Obj(k)
}

/// The guest ranges a repair dropped, as a JSON list.
pub fn lost_json(rep: &CheckReport) -> JVal {
    JVal::List(
        rep.lost
            .iter()
            .map(|l| {
                let mut k = vec![
                    ("offset".into(), JVal::Int(l.guest as i64)),
                    ("length".into(), JVal::Int(l.len as i64)),
                    ("reason".into(), JVal::Str(l.why.clone())),
                ];
                if let Some(s) = &l.snapshot {
                    k.push(("snapshot".into(), JVal::Str(s.clone())));
                }
                JVal::Obj(k)
            })
            .collect(),
    )
}

/// The write pointers a repair moved, as a JSON list.
pub fn wp_json(rep: &CheckReport) -> JVal {
    JVal::List(
        rep.wp_changes
            .iter()
            .map(|c| {
                JVal::Obj(vec![
                    ("zone".into(), JVal::Int(c.zone as i64)),
                    ("old".into(), JVal::Int(c.old as i64)),
                    ("new".into(), JVal::Int(c.new as i64)),
                ])
            })
            .collect(),
    )
}

/// The repair's account of what changed for the guest: every dropped
/// range, every moved write pointer, or "Nothing lost". `prefix` starts
/// each line (`zcow: ` on check's stderr; nothing on repair's stdout).
pub fn write_losses(out: &mut dyn Write, rep: &CheckReport, would: bool) -> io::Result<()> {
    let prefix = if would { "Dry run: " } else { "" };
    let (lose, moved, nothing) = if would {
        ("would lose", "would move", "Nothing would be lost.")
    } else {
        ("Lost", "moved", "Nothing lost.")
    };
    for l in &rep.lost {
        let of = l
            .snapshot
            .as_ref()
            .map(|s| format!(" of {s}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{prefix}{lose} guest bytes 0x{:x}-0x{:x}{of}: {}",
            l.guest,
            l.guest + l.len - 1,
            l.why
        )?;
    }
    for c in &rep.wp_changes {
        writeln!(
            out,
            "{prefix}Zone {} write pointer {moved} 0x{:x} -> 0x{:x}",
            c.zone, c.old, c.new
        )?;
    }
    for l in &rep.lost_snapshots {
        writeln!(out, "{prefix}{lose} {l}")?;
    }
    if rep.lost.is_empty() && rep.lost_snapshots.is_empty() {
        writeln!(out, "{prefix}{nothing}")?;
    }
    Ok(())
}

/// The dry run's preamble: what would be repaired (nothing was, and no
/// fixed image is double-checked).
pub fn write_dry_preamble(out: &mut dyn Write, c: &Counts) {
    let _ = write!(
        out,
        "Dry run: the following inconsistencies were found and would be repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDry run: a check after the repair would report:\n",
        c.leaks_fixed, c.corruptions_fixed
    );
}

/// The repair preamble printed before the second pass.
pub fn write_preamble(out: &mut dyn Write, c: &Counts) {
    let _ = write!(
        out,
        "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
        c.leaks_fixed, c.corruptions_fixed
    );
}

/// The human summary (QEMU `dump_human_image_check`).
pub fn write_human(out: &mut dyn Write, c: &Counts) -> io::Result<()> {
    if c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0 {
        writeln!(out, "No errors were found on the image.")?;
    } else {
        if c.corruptions != 0 {
            write!(out, "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", c.corruptions)?;
        }
        if c.leaks != 0 {
            write!(out, "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", c.leaks)?;
        }
        if c.check_errors != 0 {
            write!(
                out,
                "\n{} internal errors have occurred during the check.\n",
                c.check_errors
            )?;
        }
    }
    if c.total_clusters != 0 && c.allocated_clusters != 0 {
        let a = c.allocated_clusters as f64;
        writeln!(
            out,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            c.allocated_clusters,
            c.total_clusters,
            a * 100.0 / c.total_clusters as f64,
            c.fragmented_clusters as f64 * 100.0 / a,
            c.compressed_clusters as f64 * 100.0 / a
        )?;
    }
    if c.image_end_offset != 0 {
        writeln!(out, "Image end offset: {}", c.image_end_offset)?;
    }
    Ok(())
}

/// Print the result and return the exit code (QEMU `img_check`'s tail).
pub fn finish(
    rep: &CheckReport,
    filename: &str,
    format: OutputFormat,
    quiet: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    if let Some(e) = rep.failed {
        writeln!(
            err,
            "{}: Check failed: {}",
            crate::personality::name(crate::personality::Tool::Img),
            strerror(e)
        )?;
        return Ok(1);
    }
    if !quiet {
        match format {
            OutputFormat::Human => {
                write_human(out, &rep.counts)?;
                if let Some(z) = &rep.zoned {
                    z.write_human(out)?;
                }
            }
            OutputFormat::Json => {
                let mut s = String::new();
                to_json(&image_check_json(rep, filename), 0, &mut s);
                writeln!(out, "{s}")?;
            }
        }
    }
    let c = &rep.counts;
    if c.check_errors != 0 {
        writeln!(
            err,
            "{}: Check failed",
            crate::personality::name(crate::personality::Tool::Img)
        )?;
        return Ok(1);
    }
    Ok(if c.corruptions != 0 {
        2
    } else if c.leaks != 0 {
        3
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_key_order() {
        let keys = [
            "filename",
            "format",
            "check-errors",
            "image-end-offset",
            "corruptions",
            "leaks",
            "corruptions-fixed",
            "leaks-fixed",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
        ];
        let v: Vec<(String, JVal)> = keys.iter().map(|k| (k.to_string(), JVal::Int(1))).collect();
        let o: Vec<&str> = qdict_order(&v).iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            o,
            [
                "image-end-offset",
                "compressed-clusters",
                "total-clusters",
                "corruptions",
                "corruptions-fixed",
                "check-errors",
                "leaks",
                "leaks-fixed",
                "allocated-clusters",
                "filename",
                "format",
                "fragmented-clusters"
            ]
        );
        // Known collision: the later key prints first.
        assert_eq!(tdb_hash("children") % 512, 206);
        assert_eq!(tdb_hash("backing-filename-format") % 512, 206);
    }
}
