//! Output formats of qemu-io: human sizes (`cvtstr`), elapsed times, the
//! two-line I/O report, the hex dump of `read -v`, and error strings.

use crate::device::{errno_name, DeviceError};
use std::fmt::Write as _;
use std::time::Duration;

const KIB: f64 = 1024.0;

/// qemu-io's `cvtstr`: `4 KiB`, `1.500 MiB`, `512 bytes`, `774.742 KiB`
/// (three decimals unless they are `.000`, which is dropped).
pub fn cvtstr(value: f64) -> String {
    let units = [
        (KIB.powi(6), " EiB"),
        (KIB.powi(5), " PiB"),
        (KIB.powi(4), " TiB"),
        (KIB.powi(3), " GiB"),
        (KIB.powi(2), " MiB"),
        (KIB, " KiB"),
    ];
    let (mut s, suffix) = units
        .iter()
        .find(|(scale, _)| value >= *scale)
        .map(|&(scale, suffix)| (c_fixed(value / scale, 3), suffix))
        .unwrap_or_else(|| (c_fixed(value, 6), " bytes"));
    // qemu cuts at the first ".000", even inside "12.000500".
    if let Some(i) = s.find(".000") {
        s.truncate(i);
    }
    s.push_str(suffix);
    s
}

/// printf `%.Nf` (Rust prints NaN as `NaN`, C as `nan` or `-nan`).
fn c_fixed(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    format!("{v:.decimals$}")
}

/// qemu-io's time string: `00.00 sec` under a second, `H:MM:SS.ss` from one
/// second on (always the latter with `verbose`, as `-C` uses).
pub fn timestr(t: Duration, verbose: bool) -> String {
    let secs = t.as_secs();
    let frac = t.subsec_nanos() as f64 / 1e9;
    if verbose || secs != 0 {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs % 3600) / 60,
            (secs % 60) as f64 + frac
        )
    } else {
        format!("{frac:05.2} sec")
    }
}

fn per_sec(value: f64, t: Duration) -> f64 {
    value / t.as_secs_f64()
}

/// The summary qemu-io prints after an I/O command:
/// `read 512/512 bytes at offset 0` and
/// `512 bytes, 1 ops; 00.00 sec (X MiB/sec and Y ops/sec)`, or with `csv`
/// (`-C`) one line `bytes,ops,time,bytes/sec,ops/sec`.
pub fn report(
    op: &str,
    t: Duration,
    offset: u64,
    count: u64,
    total: u64,
    cnt: u32,
    csv: bool,
) -> String {
    let ts = timestr(t, csv);
    let bps = per_sec(total as f64, t);
    let ops = per_sec(cnt as f64, t);
    if csv {
        format!(
            "{total},{cnt},{ts},{},{}\n",
            c_fixed(bps, 3),
            c_fixed(ops, 3)
        )
    } else {
        format!(
            "{op} {total}/{count} bytes at offset {offset}\n{}, {cnt} ops; {ts} ({}/sec and {} ops/sec)\n",
            cvtstr(total as f64),
            cvtstr(bps),
            c_fixed(ops, 4)
        )
    }
}

/// qemu-io's hex dump (`read -v`): 16 bytes a line, offset in 8+ hex
/// digits, alphanumeric ASCII shown, everything else as `.`.
pub fn dump_buffer(buf: &[u8], offset: u64) -> String {
    let mut v = Vec::with_capacity(buf.len() * 5);
    // Writing into a Vec cannot fail.
    let _ = write_dump(&mut v, buf, offset);
    String::from_utf8_lossy(&v).into_owned()
}

/// [`dump_buffer`] streamed to `w` a line at a time (a 2 GiB `read -v`
/// must not build a 10 GiB string first).
pub fn write_dump(w: &mut dyn std::io::Write, buf: &[u8], offset: u64) -> std::io::Result<()> {
    let mut s = String::with_capacity(80);
    for (i, line) in buf.chunks(16).enumerate() {
        s.clear();
        let _ = write!(s, "{:08x}:  ", offset.wrapping_add(i as u64 * 16));
        for b in line {
            let _ = write!(s, "{b:02x} ");
        }
        s.push(' ');
        for &b in line {
            s.push(if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            });
        }
        s.push('\n');
        w.write_all(s.as_bytes())?;
    }
    Ok(())
}

/// The errno an I/O error is reported with. Requests past the end are EIO,
/// as in qemu's block layer; everything else keeps the device's errno.
pub fn error_errno(e: &DeviceError) -> i32 {
    match e {
        DeviceError::OutOfRange { .. } => libc::EIO,
        other => other.errno(),
    }
}

/// `strerror` text of an errno (`Input/output error`).
pub fn strerror(errno: i32) -> String {
    errno_name(errno)
}

/// Replace the timing part of report lines (`00.00 sec (... ops/sec)`, and
/// the time and rates of `-C` lines) with fixed text, so outputs of two
/// runs (or of zcow-io and qemu-io) compare equal.
pub fn normalize_timing(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if let Some(pos) = body.find(" ops; ").filter(|_| body.ends_with(" ops/sec)")) {
            out.push_str(&body[..pos + 6]);
            out.push_str("TIME (RATE)");
        } else if is_csv_report(body) {
            let mut f = body.splitn(3, ',');
            let (a, b) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            out.push_str(&format!("{a},{b},TIME,RATE,RATE"));
        } else {
            out.push_str(body);
        }
        out.push_str(nl);
    }
    out
}

fn is_csv_report(line: &str) -> bool {
    let f: Vec<&str> = line.split(',').collect();
    f.len() == 5
        && f[0].parse::<u64>().is_ok()
        && f[1].parse::<u64>().is_ok()
        && f[2].contains(':')
        && f[3].parse::<f64>().is_ok()
        && f[4].parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(cvtstr(4096.0), "4 KiB");
        assert_eq!(cvtstr(64.0), "64 bytes");
        assert_eq!(cvtstr(1.0), "1 bytes");
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(1536.0), "1.500 KiB");
        assert_eq!(cvtstr(5.596 * 1024.0 * 1024.0), "5.596 MiB");
        assert_eq!(cvtstr(512.5), "512.500000 bytes");
        assert_eq!(cvtstr(f64::INFINITY), "inf EiB");
    }

    #[test]
    fn times() {
        assert_eq!(timestr(Duration::from_micros(1500), false), "00.00 sec");
        assert_eq!(timestr(Duration::from_millis(250), false), "00.25 sec");
        assert_eq!(timestr(Duration::from_millis(61_500), false), "0:01:01.50");
        assert_eq!(timestr(Duration::from_millis(250), true), "0:00:00.25");
    }

    #[test]
    fn report_lines() {
        let r = report("read", Duration::from_secs(1), 0, 512, 512, 1, false);
        assert_eq!(
            r,
            "read 512/512 bytes at offset 0\n512 bytes, 1 ops; 0:00:01.00 (512 bytes/sec and 1.0000 ops/sec)\n"
        );
        let r = report("wrote", Duration::from_secs(2), 0, 4096, 4096, 1, true);
        assert_eq!(r, "4096,1,0:00:02.00,2048.000,0.500\n");
    }

    #[test]
    fn dump() {
        let mut b = vec![0xabu8; 18];
        b[0] = b'A';
        b[1] = b'7';
        assert_eq!(
            dump_buffer(&b, 0x200),
            "00000200:  41 37 ab ab ab ab ab ab ab ab ab ab ab ab ab ab  A7..............\n\
             00000210:  ab ab  ..\n"
        );
    }

    #[test]
    fn normalize() {
        let s = "wrote 1/1 bytes at offset 0\n1 bytes, 1 ops; 00.00 sec (7.930 KiB/sec and 8119.8490 ops/sec)\n1,1,0:00:00.00,5.000,5.000\n";
        assert_eq!(
            normalize_timing(s),
            "wrote 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME (RATE)\n1,1,TIME,RATE,RATE\n"
        );
    }
}
