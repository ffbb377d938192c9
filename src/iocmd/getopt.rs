//! Option scanning as glibc `getopt` does it for qemu-io's commands:
//! clusters (`-qv`), arguments attached or separate (`-P0xab`, `-P 0xab`),
//! options after operands (`read 0 512 -v`), `--` ending options.

/// One item of a scan, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptItem {
    /// A known option and its argument, if it takes one.
    Opt(char, Option<String>),
    /// The scan stopped here; the message is what getopt prints to stderr.
    Error(String),
}

/// Options (stopping at the first error) and operands of a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Options in order; the last may be [`OptItem::Error`].
    pub opts: Vec<OptItem>,
    /// Operands, in order.
    pub operands: Vec<String>,
}

/// Scan `argv` (argv[0] is the command name as typed) against a getopt
/// option string such as `"CP:qv"` (a colon marks an option with argument).
pub fn scan(argv: &[String], optstring: &str) -> Scanned {
    let name = argv.first().map(String::as_str).unwrap_or("");
    let spec = |c: char| -> Option<bool> {
        if c == ':' {
            return None;
        }
        let mut it = optstring.chars().peekable();
        while let Some(o) = it.next() {
            let takes = it.peek() == Some(&':');
            if takes {
                it.next();
            }
            if o == c {
                return Some(takes);
            }
        }
        None
    };
    let mut out = Scanned::default();
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            out.operands.extend(argv[i + 1..].iter().cloned());
            break;
        }
        let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) else {
            out.operands.push(a.clone());
            i += 1;
            continue;
        };
        for (pos, c) in cluster.char_indices() {
            match spec(c) {
                None => {
                    out.opts
                        .push(OptItem::Error(format!("{name}: invalid option -- '{c}'")));
                    return out;
                }
                Some(false) => out.opts.push(OptItem::Opt(c, None)),
                Some(true) => {
                    let rest = &cluster[pos + c.len_utf8()..];
                    if !rest.is_empty() {
                        out.opts.push(OptItem::Opt(c, Some(rest.to_string())));
                    } else if let Some(next) = argv.get(i + 1) {
                        out.opts.push(OptItem::Opt(c, Some(next.clone())));
                        i += 1;
                    } else {
                        out.opts.push(OptItem::Error(format!(
                            "{name}: option requires an argument -- '{c}'"
                        )));
                        return out;
                    }
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn clusters_and_args() {
        let s = scan(&v("read -qvP0xab 0 -s 1 512"), "CP:qs:v");
        assert_eq!(
            s.opts,
            vec![
                OptItem::Opt('q', None),
                OptItem::Opt('v', None),
                OptItem::Opt('P', Some("0xab".into())),
                OptItem::Opt('s', Some("1".into())),
            ]
        );
        assert_eq!(s.operands, vec!["0", "512"]);
    }

    #[test]
    fn errors_and_dashdash() {
        let s = scan(&v("r -z 0 1"), "q");
        assert_eq!(
            s.opts,
            vec![OptItem::Error("r: invalid option -- 'z'".into())]
        );
        let s = scan(&v("read 0 -P"), "P:");
        assert_eq!(
            s.opts,
            vec![OptItem::Error(
                "read: option requires an argument -- 'P'".into()
            )]
        );
        let s = scan(&v("read -- -1 -"), "P:");
        assert!(s.opts.is_empty());
        assert_eq!(s.operands, vec!["-1", "-"]);
    }
}
