//! Target `iocmd_parse`: the `zcow-io` command-line parser
//! ([`crate::iocmd::parse_line`]) on arbitrary text. The input is split at
//! newlines (as a `zcow-io` script is) and each line, decoded lossily as
//! UTF-8, is parsed; the whole input is parsed as one line too. Parsing
//! must return a command, nothing, or an error, never panic; a successful
//! parse must be deterministic.

use crate::iocmd::parse_line;

/// Largest input looked at.
pub const MAX_IOCMD_INPUT: usize = 64 << 10;

/// Target `iocmd_parse` (see the module documentation).
pub fn fuzz_iocmd_parse(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IOCMD_INPUT)];
    for line in data.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Ok(Some(c)) = parse_line(&line) {
            let again = parse_line(&line);
            assert!(
                matches!(&again, Ok(Some(c2)) if format!("{c2:?}") == format!("{c:?}")),
                "iocmd_parse: {line:?} parsed differently twice: {c:?} / {again:?}"
            );
        }
    }
    let _ = parse_line(&String::from_utf8_lossy(data));
}
