//! Size strings with qemu's suffixes (`64M`, `1.5G`, `512`, `4k`).

/// Parse a size with an optional suffix k/K, M, G, T, P, E (powers of 1024)
/// or `b`/`B` (bytes). A bare number is bytes. Decimal fractions are allowed
/// with a suffix, as in qemu (`1.5G`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return Err(format!("invalid size suffix in '{s}'")),
            };
            (&t[..i], 1u64 << shift)
        }
        _ => (t, 1u64),
    };
    if num.is_empty() {
        return Err(format!("invalid size '{s}'"));
    }
    if let Some(hex) = num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        let v = u64::from_str_radix(hex, 16).map_err(|_| format!("invalid size '{s}'"))?;
        return v
            .checked_mul(mult)
            .ok_or_else(|| format!("size '{s}' is too large"));
    }
    if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
        if v.is_nan() || v < 0.0 {
            return Err(format!("invalid size '{s}'"));
        }
        let r = v * mult as f64;
        if r >= u64::MAX as f64 {
            return Err(format!("size '{s}' is too large"));
        }
        return Ok(r as u64);
    }
    let v: u64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    v.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Format bytes as qemu does in `virtual size: 4 GiB`: the largest binary
/// unit, up to three significant digits (`1.5 GiB`, `196 KiB`, `512 B`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        return format!("{n} B");
    }
    // qemu: "%0.3g" style
    let s = if v >= 100.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("1E").unwrap(), 1 << 60);
        assert!(parse_size("16E").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn formats_like_qemu() {
        assert_eq!(human_size(4 << 30), "4 GiB");
        assert_eq!(human_size(196 * 1024), "196 KiB");
        assert_eq!(human_size(197120), "192 KiB");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }
}
