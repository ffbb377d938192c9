//! JSON output the way QEMU prints it: QDict key order (hash buckets) and
//! QEMU's pretty-printer layout, so scripts diffing qemu-img output see
//! the same text.

use serde_json::{Map, Value};

/// QEMU's `tdb_hash` of a key.
pub fn tdb_hash(key: &str) -> u32 {
    let mut v: u32 = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (i, c) in key.bytes().enumerate() {
        v = v.wrapping_add((c as u32) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(v).wrapping_add(12345)
}

/// Order an object's keys as a QDict prints them: ascending bucket
/// (`tdb_hash % 512`); inside a bucket, the key inserted later first.
pub fn qdict_order(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<(usize, &String, &Value)> =
        m.iter().enumerate().map(|(i, (k, v))| (i, k, v)).collect();
    v.sort_by(|a, b| {
        let ba = tdb_hash(a.1) % 512;
        let bb = tdb_hash(b.1) % 512;
        ba.cmp(&bb).then(b.0.cmp(&a.0))
    });
    v.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// Pretty-print like QEMU's `qobject_to_json_pretty` (4-space indent,
/// empty containers still broken over two lines).
pub fn to_qemu_json(v: &Value) -> String {
    let mut s = String::new();
    write_value(&mut s, v, 0);
    s
}

fn indent(s: &mut String, n: usize) {
    for _ in 0..n {
        s.push_str("    ");
    }
}

fn write_value(s: &mut String, v: &Value, level: usize) {
    match v {
        Value::Object(m) => {
            s.push_str("{\n");
            let entries = qdict_order(m);
            for (i, (k, val)) in entries.iter().enumerate() {
                indent(s, level + 1);
                s.push_str(&Value::String((*k).clone()).to_string());
                s.push_str(": ");
                write_value(s, val, level + 1);
                if i + 1 < entries.len() {
                    s.push(',');
                }
                s.push('\n');
            }
            indent(s, level);
            s.push('}');
        }
        Value::Array(a) => {
            s.push_str("[\n");
            for (i, val) in a.iter().enumerate() {
                indent(s, level + 1);
                write_value(s, val, level + 1);
                if i + 1 < a.len() {
                    s.push(',');
                }
                s.push('\n');
            }
            indent(s, level);
            s.push(']');
        }
        other => s.push_str(&other.to_string()),
    }
}

/// Human dump of a QEMU object as `qemu-img info` prints format-specific
/// data: keys in QDict order with `-` shown as a space, nested objects and
/// lists indented by four more spaces, list items as `[i]:`.
pub fn dump_human(v: &Value, level: usize, out: &mut String) {
    let pad = "    ".repeat(level);
    let item = |out: &mut String, label: &str, val: &Value| match val {
        Value::Object(_) | Value::Array(_) => {
            out.push_str(&format!("{pad}{label}:\n"));
            dump_human(val, level + 1, out);
        }
        Value::String(s) => out.push_str(&format!("{pad}{label}: {s}\n")),
        other => out.push_str(&format!("{pad}{label}: {other}\n")),
    };
    match v {
        Value::Object(m) => {
            for (k, val) in qdict_order(m) {
                item(out, &k.replace('-', " "), val);
            }
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                item(out, &format!("[{i}]"), val);
            }
        }
        other => out.push_str(&format!("{pad}{other}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_reference() {
        assert_eq!(tdb_hash("children") % 512, 206);
        assert_eq!(tdb_hash("backing-filename-format") % 512, 206);
        assert_eq!(tdb_hash("dirty-flag") % 512, 501);
        assert_eq!(tdb_hash("image-end-offset") % 512, 30);
    }

    #[test]
    fn collision_puts_later_key_first() {
        let mut m = Map::new();
        m.insert("backing-filename-format".into(), Value::from("qcow2"));
        m.insert("children".into(), Value::Array(vec![]));
        let keys: Vec<&String> = qdict_order(&m).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["children", "backing-filename-format"]);
    }
}
