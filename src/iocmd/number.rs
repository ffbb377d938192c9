//! Number parsing exactly as qemu-io does it: `cvtnum` (sizes with suffixes,
//! qemu's `qemu_strtosz` rules) and `strtol`-style pattern bytes.
//!
//! The rules are subtle (hex only without suffix, fractions only with a
//! suffix, trailing garbage beats overflow), and users compare our messages
//! with qemu-io's, so this follows glibc `strtoull`/`strtod` and qemu's
//! `do_strtosz` behaviour step by step rather than using Rust's parsers.

/// Why [`cvtnum`] rejected a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CvtError {
    /// Not a number, or an unknown/extra suffix (`-EINVAL`).
    Invalid,
    /// Negative, or larger than `i64::MAX` (`-ERANGE`).
    TooLarge,
}

impl CvtError {
    /// qemu-io's message for this error about argument `arg`.
    pub fn message(self, arg: &str) -> String {
        match self {
            CvtError::Invalid => format!(
                "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}"
            ),
            CvtError::TooLarge => format!("Parsing error: argument too large -- {arg}"),
        }
    }

    /// The negative errno qemu-io returns for it.
    pub fn errno(self) -> i32 {
        match self {
            CvtError::Invalid => libc::EINVAL,
            CvtError::TooLarge => libc::ERANGE,
        }
    }
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn digit_value(b: u8) -> Option<u32> {
    (b as char).to_digit(36)
}

/// Result of a glibc-style `strtoull`/`strtol` scan.
struct Scan {
    /// Magnitude (saturated on overflow).
    magnitude: u64,
    negative: bool,
    overflow: bool,
    /// Index just past the number, or 0 when nothing was converted.
    end: usize,
}

/// glibc `strtoull`/`strtol` scanning for base 0, 10 or 16: leading space,
/// a sign, `0x` prefix (only when a hex digit follows), digits.
fn scan_integer(s: &[u8], base: u32) -> Scan {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        negative = s[i] == b'-';
        i += 1;
    }
    let mut base = base;
    let has_hex_prefix = |i: usize| {
        i + 2 < s.len()
            && s[i] == b'0'
            && (s[i + 1] == b'x' || s[i + 1] == b'X')
            && s[i + 2].is_ascii_hexdigit()
    };
    if (base == 0 || base == 16) && has_hex_prefix(i) {
        base = 16;
        i += 2;
    } else if base == 0 {
        base = if i < s.len() && s[i] == b'0' { 8 } else { 10 };
    }
    let start = i;
    let mut magnitude: u64 = 0;
    let mut overflow = false;
    while i < s.len() {
        match digit_value(s[i]) {
            Some(d) if d < base => {
                match magnitude
                    .checked_mul(base as u64)
                    .and_then(|m| m.checked_add(d as u64))
                {
                    Some(m) => magnitude = m,
                    None => {
                        overflow = true;
                        magnitude = u64::MAX;
                    }
                }
                i += 1;
            }
            _ => break,
        }
    }
    let end = if i == start { 0 } else { i };
    Scan {
        magnitude,
        negative,
        overflow,
        end,
    }
}

/// `strtod` on the fraction part (which never holds an exponent: the caller
/// cut it at the first `e`/`E`). Returns (value, chars used, underflowed).
fn scan_fraction(s: &[u8]) -> Option<(f64, usize)> {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let num_start = i;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        i += 1;
    }
    let rest = &s[i..];
    // inf/nan parse in strtod but are not finite: qemu rejects them.
    let lower: Vec<u8> = rest
        .iter()
        .take(3)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    if lower == b"inf" || lower == b"nan" {
        return None;
    }
    let mut digits = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if i < s.len() && s[i] == b'.' {
        let dot = i;
        i += 1;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
        if digits == 0 {
            i = dot;
        }
    }
    if digits == 0 {
        return None;
    }
    let text = std::str::from_utf8(&s[num_start..i]).ok()?;
    let v: f64 = text.parse().ok()?;
    Some((v, i))
}

fn suffix_mul(c: Option<u8>) -> Option<u64> {
    Some(match c?.to_ascii_uppercase() {
        b'B' => 1,
        b'K' => 1 << 10,
        b'M' => 1 << 20,
        b'G' => 1 << 30,
        b'T' => 1 << 40,
        b'P' => 1 << 50,
        b'E' => 1 << 60,
        _ => return None,
    })
}

/// qemu's `qemu_strtosz` with no end pointer: the whole string must parse.
fn strtosz(s: &[u8]) -> Result<u64, CvtError> {
    let at = |i: usize| s.get(i).copied();
    let mut end;
    let mut val: u64;
    let mut valf: u64 = 0;
    // Integral part as decimal (parse_uint: negative numbers are ERANGE).
    let dec = scan_integer(s, 10);
    let mut result: Result<(), CvtError> = if dec.end == 0 {
        Err(CvtError::Invalid)
    } else if dec.overflow || dec.negative {
        Err(CvtError::TooLarge)
    } else {
        Ok(())
    };
    end = dec.end;
    val = if result.is_ok() { dec.magnitude } else { 0 };

    'parse: {
        if result == Err(CvtError::TooLarge) {
            break 'parse;
        }
        if result.is_ok() && val == 0 && matches!(at(end), Some(b'x' | b'X')) {
            // Looks like hex: reparse, no fraction or suffix allowed.
            let hex = scan_integer(s, 16);
            if hex.end == 0 {
                result = Err(CvtError::Invalid);
                break 'parse;
            }
            end = hex.end;
            if hex.overflow {
                result = Err(CvtError::TooLarge);
                break 'parse;
            }
            val = hex.magnitude;
            if at(end) == Some(b'.') || suffix_mul(at(end)).is_some() {
                end = 0;
                result = Err(CvtError::Invalid);
                break 'parse;
            }
        } else if at(end) == Some(b'.') || (end == 0 && s.contains(&b'.')) {
            let mut fraction = 0.0f64;
            let mut nonzero_digits = false;
            if result.is_ok()
                && at(end) == Some(b'.')
                && !at(end + 1).is_some_and(|b| b.is_ascii_digit())
            {
                end += 1;
            } else {
                // strtod would read `e` as an exponent; it is a suffix here.
                let tail = &s[end..];
                let cut = tail
                    .iter()
                    .position(|&b| b == b'e' || b == b'E')
                    .unwrap_or(tail.len());
                match scan_fraction(&tail[..cut]) {
                    Some((f, used)) => {
                        nonzero_digits = tail[..used].iter().any(|b| (b'1'..=b'9').contains(b));
                        fraction = f;
                        end += used;
                        result = Ok(());
                        if f.is_sign_negative() {
                            result = Err(CvtError::TooLarge);
                            break 'parse;
                        }
                    }
                    None => result = Err(CvtError::Invalid),
                }
            }
            if fraction == 1.0 {
                match val.checked_add(1) {
                    Some(v) => val = v,
                    None => {
                        result = Err(CvtError::TooLarge);
                        break 'parse;
                    }
                }
            } else {
                // Any non-zero fraction must leave valf non-zero (underflow too).
                valf = (fraction * 18446744073709551616.0) as u64;
                if valf == 0 && nonzero_digits {
                    valf = 1;
                }
            }
        }
        if result.is_err() {
            break 'parse;
        }
        let mul = match suffix_mul(at(end)) {
            Some(m) => {
                end += 1;
                m
            }
            None => 1,
        };
        if mul == 1 {
            // A fraction needs a scale.
            if valf != 0 {
                end = 0;
                result = Err(CvtError::Invalid);
                break 'parse;
            }
        } else {
            // Exact 64.64 fixed point times the multiplier, rounding 0.5 up.
            let prod_f = valf as u128 * mul as u128;
            let total =
                val as u128 * mul as u128 + (prod_f >> 64) + ((prod_f as u64) >> 63) as u128;
            match u64::try_from(total) {
                Ok(v) => val = v,
                Err(_) => {
                    result = Err(CvtError::TooLarge);
                    break 'parse;
                }
            }
        }
        result = Ok(());
    }
    // Trailing garbage makes any result (even overflow) "invalid".
    if end < s.len() {
        return Err(CvtError::Invalid);
    }
    result.map(|()| val)
}

/// qemu-io's `cvtnum`: a byte count or offset with optional suffix
/// (`b`, `k`, `M`, `G`, `T`, `P`, `E`, powers of 1024), `0x` hex without
/// suffix, decimal fractions with a suffix (`1.5k`). At most `i64::MAX`.
pub fn cvtnum(s: &str) -> Result<u64, CvtError> {
    let v = strtosz(s.as_bytes())?;
    if v > i64::MAX as u64 {
        return Err(CvtError::TooLarge);
    }
    Ok(v)
}

/// C `strtol(s, &end, 0)` followed by a check that all of `s` was used:
/// `Some(value)` (saturated like strtol) or `None` on trailing garbage.
pub fn strtol_whole(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let scan = scan_integer(b, 0);
    // Nothing converted: strtol leaves end at the start.
    if scan.end != b.len() && !(scan.end == 0 && b.is_empty()) {
        return None;
    }
    let v = if scan.negative {
        if scan.overflow || scan.magnitude > i64::MAX as u64 + 1 {
            i64::MIN
        } else {
            (scan.magnitude as i128).wrapping_neg() as i64
        }
    } else if scan.overflow || scan.magnitude > i64::MAX as u64 {
        i64::MAX
    } else {
        scan.magnitude as i64
    };
    Some(v)
}

/// qemu-io's `-P` pattern byte: `strtol(arg, 0)` in 0..=255 using the whole
/// argument (`0xab`, `171`, `0253`). Err holds qemu-io's message.
pub fn parse_pattern(arg: &str) -> Result<u8, String> {
    match strtol_whole(arg) {
        Some(v) if (0..=255).contains(&v) => Ok(v as u8),
        _ => Err(format!("{arg} is not a valid pattern byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvtnum_cases() {
        let ok = [
            ("5", 5u64),
            ("0x10", 16),
            ("1.5k", 1536),
            ("1k", 1024),
            ("1M", 1 << 20),
            ("1e", 1 << 60),
            ("+5", 5),
            (".5k", 512),
            ("1.", 1),
            ("1.0", 1),
            ("1b", 1),
            ("1B", 1),
            ("0x1B", 27),
            ("+.5k", 512),
            ("1.k", 1024),
            (" 5", 5),
            ("\t5", 5),
            ("010", 10),
            ("1.5e", 3 << 59),
            ("0.9999999999999999999999k", 1024),
            ("1.0000000000000000001k", 1024),
            ("9223372036854775807", i64::MAX as u64),
        ];
        for (s, v) in ok {
            assert_eq!(cvtnum(s), Ok(v), "{s}");
        }
        let inval = [
            "1.5",
            "0x",
            "0x10k",
            "1x",
            "0.5",
            "0.5b",
            "1.5b",
            "-.5k",
            "-0.5k",
            "0x-5",
            "1e5",
            "1.1.1",
            "1..5",
            "..5",
            "1.5.k",
            "1.00000000000000000001",
            "5.5xk",
            "1ki",
            "1KB",
            "",
            "1.-5k",
            "1.+5k",
            "1.0x5",
            "0b101",
            "0o10",
            "k",
            "inf.k",
            "nan.",
            "00x5",
        ];
        for s in inval {
            assert_eq!(cvtnum(s), Err(CvtError::Invalid), "{s}");
        }
        let range = [
            "-1",
            "-0",
            "9223372036854775808",
            "18446744073709551616",
            "8E",
            "16E",
            "-.5",
        ];
        for s in range {
            assert_eq!(cvtnum(s), Err(CvtError::TooLarge), "{s}");
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("0xab"), Ok(0xab));
        assert_eq!(parse_pattern("010"), Ok(8));
        assert_eq!(parse_pattern("255"), Ok(255));
        assert_eq!(parse_pattern("-0"), Ok(0));
        assert_eq!(parse_pattern("+7"), Ok(7));
        for bad in [
            "256",
            "-1",
            "xyz",
            "0x",
            "08",
            "99999999999999999999999",
            "1 ",
        ] {
            assert_eq!(
                parse_pattern(bad),
                Err(format!("{bad} is not a valid pattern byte")),
                "{bad}"
            );
        }
    }
}
