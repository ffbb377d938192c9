//! `zcow-img compare`: qemu-img's messages and exit codes (0 identical,
//! 1 different, 2 an image could not be opened, 3 an allocation query
//! failed, 4 a read failed). When both images are zoned, their zone layouts,
//! write pointers and conditions are compared too, unless told not to.

use super::{open_named, ImgError};
use crate::device::{BlockDevice, Extent};
use crate::zone::{ZoneCond, ZoneDescriptor};
use std::io::Write;
use std::sync::Arc;

/// Bytes compared per read (qemu-img's IO_BUF_SIZE).
const CHUNK: u64 = 2 << 20;
/// Granularity of a reported content mismatch.
const SECTOR: usize = 512;

/// What `compare` takes from the command line.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// First image (file or NBD URI).
    pub a: String,
    /// Second image.
    pub b: String,
    /// `-f`: format of the first image.
    pub a_format: Option<String>,
    /// `-F`: format of the second image.
    pub b_format: Option<String>,
    /// `-s`: sizes and allocation status must match too.
    pub strict: bool,
    /// `-q`: print nothing.
    pub quiet: bool,
    /// `--ignore-zones`: skip the write-pointer comparison of zoned images.
    pub ignore_zones: bool,
}

/// How compare ended short of "identical".
enum Stop {
    /// Images differ: the message to print (exit 1).
    Differ(String),
    /// An error: exit code and message for stderr.
    Error(u8, String),
}

fn status(d: &Arc<dyn BlockDevice>, name: &str, off: u64, len: u64) -> Result<Extent, Stop> {
    let ext = d.block_status(off, len).map_err(|e| {
        Stop::Error(
            3,
            format!("error while reading block status at offset {off} of {name}: {e}"),
        )
    })?;
    match ext.first() {
        Some(e) if e.len > 0 => Ok(Extent {
            len: e.len.min(len),
            ..*e
        }),
        _ => Ok(Extent {
            len,
            hole: false,
            zero: false,
        }),
    }
}

fn read(d: &Arc<dyn BlockDevice>, name: &str, off: u64, buf: &mut [u8]) -> Result<(), Stop> {
    d.read(off, buf).map_err(|e| {
        Stop::Error(
            4,
            format!("Error while reading offset {off} of {name}: {e}"),
        )
    })
}

/// Offset (within `a`) of the first 512-byte sector where `a` and `b` differ.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.chunks(SECTOR)
        .zip(b.chunks(SECTOR))
        .position(|(x, y)| x != y)
        .map(|k| k * SECTOR)
}

/// Offset of the first sector of `a` that is not all zero.
fn first_nonzero(a: &[u8]) -> Option<usize> {
    a.chunks(SECTOR)
        .position(|x| !super::is_zero(x))
        .map(|k| k * SECTOR)
}

/// Check that `[off, off+len)` of `d` reads as zeroes.
fn check_empty(d: &Arc<dyn BlockDevice>, name: &str, off: u64, len: u64) -> Result<(), Stop> {
    let mut buf = vec![0u8; len.min(CHUNK) as usize];
    let mut pos = off;
    while pos < off + len {
        let n = (off + len - pos).min(CHUNK) as usize;
        read(d, name, pos, &mut buf[..n])?;
        if let Some(i) = first_nonzero(&buf[..n]) {
            return Err(Stop::Differ(format!(
                "Content mismatch at offset {}!",
                pos + i as u64
            )));
        }
        pos += n as u64;
    }
    Ok(())
}

fn compare_common(
    a: &Arc<dyn BlockDevice>,
    b: &Arc<dyn BlockDevice>,
    o: &CompareOptions,
    total: u64,
) -> Result<(), Stop> {
    let mut buf1 = Vec::new();
    let mut buf2 = Vec::new();
    let mut pos = 0;
    while pos < total {
        let want = (total - pos).min(CHUNK);
        let s1 = status(a, &o.a, pos, want)?;
        let s2 = status(b, &o.b, pos, want)?;
        let chunk = s1.len.min(s2.len);
        if o.strict && (s1.hole, s1.zero) != (s2.hole, s2.zero) {
            return Err(Stop::Differ(format!(
                "Strict mode: Offset {pos} block status mismatch!"
            )));
        }
        match (s1.zero, s2.zero) {
            (true, true) => {}
            (false, false) => {
                buf1.resize(chunk as usize, 0);
                buf2.resize(chunk as usize, 0);
                read(a, &o.a, pos, &mut buf1)?;
                read(b, &o.b, pos, &mut buf2)?;
                if let Some(i) = first_diff(&buf1, &buf2) {
                    return Err(Stop::Differ(format!(
                        "Content mismatch at offset {}!",
                        pos + i as u64
                    )));
                }
            }
            (true, false) => check_empty(b, &o.b, pos, chunk)?,
            (false, true) => check_empty(a, &o.a, pos, chunk)?,
        }
        pos += chunk;
    }
    Ok(())
}

fn all_zones(d: &Arc<dyn BlockDevice>, name: &str) -> Result<Vec<ZoneDescriptor>, Stop> {
    let Some(g) = d.zone_geometry() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<ZoneDescriptor> = Vec::with_capacity(g.nr_zones as usize);
    let mut off = 0;
    while out.len() < g.nr_zones as usize {
        let z = d
            .zone_report(off, 65536)
            .map_err(|e| Stop::Error(3, format!("zone report of {name} failed: {e}")))?;
        let Some(last) = z.last() else {
            return Err(Stop::Error(
                3,
                format!("zone report of {name} ended after {} zones", out.len()),
            ));
        };
        off = last.start + last.len;
        out.extend(z);
    }
    Ok(out)
}

fn compare_zones(
    a: &Arc<dyn BlockDevice>,
    b: &Arc<dyn BlockDevice>,
    o: &CompareOptions,
) -> Result<(), Stop> {
    let (Some(ga), Some(gb)) = (a.zone_geometry(), b.zone_geometry()) else {
        return Ok(());
    };
    if (
        ga.zone_size,
        ga.zone_capacity,
        ga.conventional_zones,
        ga.nr_zones,
    ) != (
        gb.zone_size,
        gb.zone_capacity,
        gb.conventional_zones,
        gb.nr_zones,
    ) {
        return Err(Stop::Differ("Zone layout mismatch!".into()));
    }
    let za = all_zones(a, &o.a)?;
    let zb = all_zones(b, &o.b)?;
    for (x, y) in za.iter().zip(&zb) {
        if !same_zone_state(x, y) {
            return Err(Stop::Differ(format!(
                "Write pointer mismatch in zone {} at offset {}: {:#x} {} vs {:#x} {}!",
                x.index, x.start, x.wp, x.cond, y.wp, y.cond
            )));
        }
    }
    Ok(())
}

/// Whether two zones hold the same persistent state. An open zone is the
/// CLOSED (or EMPTY) zone it becomes at the next power cycle, so a live
/// device compares equal to its copy; a FULL zone's write pointer is left
/// undefined by ZBC/ZNS (null_blk puts it at the zone end after a finish,
/// at the capacity end after writes), so only the condition counts there.
fn same_zone_state(x: &ZoneDescriptor, y: &ZoneDescriptor) -> bool {
    let persistent = |z: &ZoneDescriptor| match z.cond {
        ZoneCond::ImpOpen | ZoneCond::ExpOpen | ZoneCond::Closed if z.wp == z.start => {
            ZoneCond::Empty
        }
        ZoneCond::ImpOpen | ZoneCond::ExpOpen => ZoneCond::Closed,
        c => c,
    };
    let (cx, cy) = (persistent(x), persistent(y));
    cx == cy && (cx == ZoneCond::Full || x.wp == y.wp)
}

fn compare_open(
    a: &Arc<dyn BlockDevice>,
    b: &Arc<dyn BlockDevice>,
    o: &CompareOptions,
    out: &mut dyn Write,
) -> Result<(), Stop> {
    let (s1, s2) = (a.size(), b.size());
    if o.strict && s1 != s2 {
        return Err(Stop::Differ("Strict mode: Image size mismatch!".into()));
    }
    compare_common(a, b, o, s1.min(s2))?;
    if s1 != s2 {
        if !o.quiet {
            let _ = writeln!(out, "Warning: Image size mismatch!");
        }
        let (over, name) = if s1 > s2 { (a, &o.a) } else { (b, &o.b) };
        let mut pos = s1.min(s2);
        let end = s1.max(s2);
        while pos < end {
            let s = status(over, name, pos, (end - pos).min(CHUNK))?;
            if !s.zero {
                check_empty(over, name, pos, s.len)?;
            }
            pos += s.len;
        }
    }
    if !o.ignore_zones {
        compare_zones(a, b, o)?;
    }
    Ok(())
}

/// Run `compare`, printing to `out` (messages) and `err` (errors); returns
/// the exit code.
pub fn run(o: &CompareOptions, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let open = |name: &str, fmt: &Option<String>| open_named(name, fmt.as_deref(), true);
    let (a, b) = match (open(&o.a, &o.a_format), open(&o.b, &o.b_format)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(err, "zcow-img: {e}");
            return match e {
                ImgError::Usage(_) => 1,
                _ => 2,
            };
        }
    };
    match compare_open(&a, &b, o, out) {
        Ok(()) => {
            if !o.quiet {
                let _ = writeln!(out, "Images are identical.");
            }
            0
        }
        Err(Stop::Differ(m)) => {
            if !o.quiet {
                let _ = writeln!(out, "{m}");
            }
            1
        }
        Err(Stop::Error(code, m)) => {
            let _ = writeln!(err, "zcow-img: {m}");
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_is_reported_per_sector() {
        let a = vec![0u8; 2048];
        let mut b = a.clone();
        b[700] = 1;
        assert_eq!(first_diff(&a, &b), Some(512));
        assert_eq!(first_nonzero(&b), Some(512));
        assert_eq!(first_diff(&a, &a), None);
    }
    use crate::zone::ZoneType;

    fn z(wp: u64, cond: ZoneCond) -> ZoneDescriptor {
        ZoneDescriptor {
            index: 1,
            start: 0x100000,
            len: 0x100000,
            cap: 0xc0000,
            wp,
            zone_type: ZoneType::SeqWriteReq,
            cond,
        }
    }

    #[test]
    fn open_zones_compare_as_after_a_power_cycle() {
        use ZoneCond::*;
        assert!(same_zone_state(&z(0x110000, ImpOpen), &z(0x110000, Closed)));
        assert!(same_zone_state(
            &z(0x110000, ExpOpen),
            &z(0x110000, ImpOpen)
        ));
        assert!(same_zone_state(&z(0x100000, ExpOpen), &z(0x100000, Empty)));
        assert!(!same_zone_state(
            &z(0x110000, ImpOpen),
            &z(0x120000, Closed)
        ));
        assert!(!same_zone_state(&z(0x110000, Closed), &z(0x1c0000, Full)));
        assert!(!same_zone_state(&z(0x100000, Empty), &z(0x110000, Closed)));
    }

    #[test]
    fn a_full_zone_write_pointer_is_not_compared() {
        assert!(same_zone_state(
            &z(0x1c0000, ZoneCond::Full),
            &z(0x200000, ZoneCond::Full)
        ));
        assert!(!same_zone_state(
            &z(0x1c0000, ZoneCond::Full),
            &z(0x1c0000, ZoneCond::ReadOnly)
        ));
    }
}
