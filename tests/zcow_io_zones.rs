//! Zone commands of zcow-io (`zrp`, `zo`/`zc`/`zf`/`zrs`, `zap`) and their
//! error lines, on a small zoned test double. Each scenario is "these -c
//! commands print exactly this stdout".

use std::sync::{Arc, Mutex};
use zcow::device::{check_range, BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use zcow::iocmd::{normalize_timing, run_script, Session};
use zcow::raw::RawDevice;
use zcow::zone::{
    ZoneCond, ZoneCtx, ZoneDescriptor, ZoneError, ZoneErrorKind, ZoneGeometry, ZoneOp,
};

const MIB: u64 = 1 << 20;

/// Condition and write pointer of one zone.
type Zone = (ZoneCond, u64);

/// A tiny host-managed device: 1 MiB zones, zone 0 conventional, the last
/// zone 512 KiB, capacity 768 KiB, at most 2 open zones. Only what the
/// formatting tests need; the real engine has the full model.
#[derive(Debug)]
struct FakeZoned {
    geo: ZoneGeometry,
    state: Mutex<(Vec<u8>, Vec<Zone>)>,
}

impl FakeZoned {
    fn new() -> Self {
        let geo = ZoneGeometry {
            device_size: 3 * MIB + MIB / 2,
            zone_size: MIB,
            zone_capacity: 3 * MIB / 4,
            nr_zones: 4,
            conventional_zones: 1,
            max_open_zones: 2,
            max_active_zones: 0,
            max_append_bytes: 64 * 1024,
        };
        let zones = (0..geo.nr_zones)
            .map(|i| {
                let c = if geo.is_conventional(i) {
                    ZoneCond::NotWp
                } else {
                    ZoneCond::Empty
                };
                (c, geo.zone_start(i))
            })
            .collect();
        Self {
            geo,
            state: Mutex::new((vec![0; geo.device_size as usize], zones)),
        }
    }

    fn err(&self, i: u32, z: Zone, kind: ZoneErrorKind, detail: &str) -> DeviceError {
        DeviceError::Zone(ZoneError {
            kind,
            zone: Some(ZoneCtx {
                index: i,
                start: self.geo.zone_start(i),
                cond: z.0,
                wp: z.1,
            }),
            detail: detail.into(),
        })
    }

    fn open_count(zones: &[Zone]) -> u32 {
        zones
            .iter()
            .filter(|z| matches!(z.0, ZoneCond::ImpOpen | ZoneCond::ExpOpen))
            .count() as u32
    }

    /// Write `len` bytes at `offset` inside zone `i` following the rules.
    fn seq_write(&self, zones: &mut [Zone], i: u32, offset: u64, len: u64) -> DevResult<()> {
        let z = zones[i as usize];
        if self.geo.is_conventional(i) {
            return Ok(());
        }
        if z.0 == ZoneCond::Full {
            return Err(self.err(i, z, ZoneErrorKind::ZoneFull, "zone is full"));
        }
        if offset != z.1 {
            return Err(self.err(
                i,
                z,
                ZoneErrorKind::UnalignedWrite,
                &format!("write at {offset:#x} is not at the write pointer"),
            ));
        }
        let end = self.geo.zone_start(i) + self.geo.zone_cap(i);
        if offset + len > end {
            return Err(self.err(i, z, ZoneErrorKind::Boundary, "write passes the capacity"));
        }
        if z.0 == ZoneCond::Empty || z.0 == ZoneCond::Closed {
            if Self::open_count(zones) >= self.geo.max_open_zones {
                return Err(self.err(i, z, ZoneErrorKind::OpenResource, "too many open zones"));
            }
            zones[i as usize].0 = ZoneCond::ImpOpen;
        }
        zones[i as usize].1 += len;
        if zones[i as usize].1 == end {
            zones[i as usize].0 = ZoneCond::Full;
        }
        Ok(())
    }
}

impl BlockDevice for FakeZoned {
    fn size(&self) -> u64 {
        self.geo.device_size
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let st = self.state.lock().unwrap();
        buf.copy_from_slice(&st.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DevResult<()> {
        check_range(offset, data.len() as u64, self.size())?;
        let mut st = self.state.lock().unwrap();
        let i = self.geo.zone_index(offset).unwrap();
        self.seq_write(&mut st.1, i, offset, data.len() as u64)?;
        st.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _f: ZeroFlags) -> DevResult<()> {
        self.write(offset, &vec![0; len as usize], false)
    }
    fn discard(&self, _offset: u64, _len: u64) -> DevResult<()> {
        Err(DeviceError::Unsupported("discard".into()))
    }
    fn flush(&self) -> DevResult<()> {
        Ok(())
    }
    fn block_status(&self, _offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
    fn zone_geometry(&self) -> Option<ZoneGeometry> {
        Some(self.geo)
    }
    fn zone_report(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        let first = self.geo.zone_index(offset).ok_or(DeviceError::OutOfRange {
            offset,
            len: 0,
            size: self.size(),
        })?;
        let st = self.state.lock().unwrap();
        Ok((first..self.geo.nr_zones)
            .take(max as usize)
            .map(|i| ZoneDescriptor {
                index: i,
                start: self.geo.zone_start(i),
                len: self.geo.zone_len(i),
                cap: self.geo.zone_cap(i),
                wp: st.1[i as usize].1,
                zone_type: self.geo.zone_type(i),
                cond: st.1[i as usize].0,
            })
            .collect())
    }
    fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> DevResult<()> {
        let i = self.geo.zone_index(offset).ok_or(DeviceError::OutOfRange {
            offset,
            len,
            size: self.size(),
        })?;
        let mut st = self.state.lock().unwrap();
        let z = st.1[i as usize];
        if self.geo.is_conventional(i) {
            return Err(self.err(i, z, ZoneErrorKind::InvalidCommand, "conventional zone"));
        }
        let start = self.geo.zone_start(i);
        st.1[i as usize] = match op {
            ZoneOp::Open => {
                if Self::open_count(&st.1) >= self.geo.max_open_zones {
                    return Err(self.err(i, z, ZoneErrorKind::OpenResource, "too many open zones"));
                }
                (ZoneCond::ExpOpen, z.1)
            }
            ZoneOp::Close if z.1 == start => (ZoneCond::Empty, z.1),
            ZoneOp::Close => (ZoneCond::Closed, z.1),
            ZoneOp::Finish => (ZoneCond::Full, start + self.geo.zone_len(i)),
            ZoneOp::Reset => (ZoneCond::Empty, start),
        };
        Ok(())
    }
    fn zone_append(&self, zone_start: u64, data: &[u8], _fua: bool) -> DevResult<u64> {
        let i = self.geo.zone_index(zone_start).unwrap_or(0);
        let mut st = self.state.lock().unwrap();
        let z = st.1[i as usize];
        if zone_start != self.geo.zone_start(i) || self.geo.is_conventional(i) {
            return Err(self.err(
                i,
                z,
                ZoneErrorKind::InvalidCommand,
                "not a sequential zone start",
            ));
        }
        let at = z.1;
        self.seq_write(&mut st.1, i, at, data.len() as u64)?;
        st.0[at as usize..at as usize + data.len()].copy_from_slice(data);
        Ok(at)
    }
}

fn check(cmds: &[&str], expected: &str) {
    let out = run_script(Arc::new(FakeZoned::new()), cmds);
    assert_eq!(
        normalize_timing(&out.stdout),
        expected,
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn report_lines_in_sectors() {
    check(
        &["zrp 0 10"],
        "start: 0x0, len 0x800, cap 0x800, wptr 0x0, zcond:0, [type: 1]\n\
         start: 0x800, len 0x800, cap 0x600, wptr 0x800, zcond:1, [type: 2]\n\
         start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:1, [type: 2]\n\
         start: 0x1800, len 0x400, cap 0x400, wptr 0x1800, zcond:1, [type: 2]\n",
    );
    check(
        &["zone_report 2M 1", "zrp 1.5M 0"],
        "start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:1, [type: 2]\n",
    );
}

#[test]
fn append_prints_landing_sector() {
    check(
        &[
            "zap -p 1M 4k",
            "zone_append -p 1M 0x1000 0x2000",
            "zap 1M 512",
            "zrp 1M 1",
        ],
        "After zap done, the append sector is 0x800\n\
         After zap done, the append sector is 0x808\n\
         start: 0x800, len 0x800, cap 0x600, wptr 0x821, zcond:2, [type: 2]\n",
    );
}

#[test]
fn management_and_conditions() {
    check(
        &[
            "zo 2M 1M",
            "zrp 2M 1",
            "zc 2M 1M",
            "zrp 2M 1",
            "write -q 2M 4k",
            "zc 2M 1M",
            "zrp 2M 1",
            "zf 2M 1M",
            "zrp 2M 1",
            "zrs 2M 1M",
            "zrp 2M 1",
        ],
        "start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:3, [type: 2]\n\
         start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:1, [type: 2]\n\
         start: 0x1000, len 0x800, cap 0x600, wptr 0x1008, zcond:4, [type: 2]\n\
         start: 0x1000, len 0x800, cap 0x600, wptr 0x1800, zcond:14, [type: 2]\n\
         start: 0x1000, len 0x800, cap 0x600, wptr 0x1000, zcond:1, [type: 2]\n",
    );
}

#[test]
fn errors_like_qemu_io() {
    let out = run_script(
        Arc::new(FakeZoned::new()),
        &[
            "write -P 1 1M 4k",
            "write 1M 4k",
            "zo 2M 1M",
            "zo 3M 1M",
            "zo 0 1M",
            "zf 1M 1M",
            "zap -p 1M 4k",
            "zrp 4M 1",
            "read -P 1 1M 4k",
        ],
    );
    assert_eq!(
        normalize_timing(&out.stdout),
        "wrote 4096/4096 bytes at offset 1048576\n\
         4 KiB, 1 ops; TIME (RATE)\n\
         write failed: Invalid argument\n\
         zone open failed: No space left on device\n\
         zone open failed: Invalid argument\n\
         zone append failed: No space left on device\n\
         zone report failed: Input/output error\n\
         read 4096/4096 bytes at offset 1048576\n\
         4 KiB, 1 ops; TIME (RATE)\n"
    );
    // The detail (zone, condition, write pointer) goes to stderr.
    assert!(
        out.stderr
            .contains("zcow-io: zone 1 (start 0x100000, IMP_OPEN, wp 0x101000): write at 0x100000 is not at the write pointer"),
        "{}",
        out.stderr
    );
    assert_eq!(out.exit_code, 1);
}

#[test]
fn parse_errors_before_the_device() {
    check(
        &["zrp -1 1", "zo 0 1x", "zrp 0 4294967296", "zap -p 1M 3G"],
        "Parsing error: argument too large -- -1\n\
         Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1x\n\
         Number of zones must be less than 2^32\n\
         Argument '3G' exceeds maximum size 2147483136\n",
    );
}

#[test]
fn non_zoned_device_refuses_zone_commands() {
    let dev = Arc::new(RawDevice::memory(MIB).unwrap());
    let out = run_script(
        dev,
        &[
            "zrp 0 1",
            "zo 0 1M",
            "zc 0 1M",
            "zf 0 1M",
            "zrs 0 1M",
            "zap -p 0 4k",
        ],
    );
    assert_eq!(
        out.stdout,
        "zone report failed: Operation not supported\n\
         zone open failed: Operation not supported\n\
         zone close failed: Operation not supported\n\
         zone finish failed: Operation not supported\n\
         zone reset failed: Operation not supported\n\
         zone append failed: Operation not supported\n"
    );
    assert_eq!(out.exit_code, 1);
}

#[test]
fn info_shows_zone_geometry() {
    check(
        &["info", "length"],
        "zone model: host-managed\n\
         zone size: 1 MiB\n\
         zone capacity: 768 KiB\n\
         nr zones: 4\n\
         conventional zones: 1\n\
         max open zones: 2\n\
         max active zones: 0\n\
         max append: 64 KiB\n\
         3.500 MiB\n",
    );
}

#[test]
fn aio_writes_in_flight_report_in_issue_order() {
    // Four zones' worth of appends would race; plain aio writes to the
    // conventional zone may run in any order but print in issue order.
    check(
        &[
            "aio_write -P 1 0 4k",
            "aio_write -P 2 4k 4k",
            "aio_write -q -P 3 8k 4k",
            "aio_write 4M 512",
            "aio_flush",
            "read -q -P 1 0 4k",
            "read -q -P 2 4k 4k",
            "read -q -P 3 8k 4k",
        ],
        "wrote 4096/4096 bytes at offset 0\n\
         4 KiB, 1 ops; TIME (RATE)\n\
         wrote 4096/4096 bytes at offset 4096\n\
         4 KiB, 1 ops; TIME (RATE)\n\
         aio_write failed: Input/output error\n",
    );
}

#[test]
fn reopen_with_custom_opener() {
    let dev: Arc<dyn BlockDevice> = Arc::new(FakeZoned::new());
    let keep = dev.clone();
    let mut s = Session::new(Some(dev)).with_opener(Box::new(move |_, _| Ok(keep.clone())));
    let out = s.run_script(&[
        "zap 1M 4k",
        "close",
        "zrp 1M 1",
        "open img",
        "open img",
        "zrp 1M 1",
    ]);
    assert_eq!(
        out.stdout,
        "start: 0x800, len 0x800, cap 0x600, wptr 0x808, zcond:2, [type: 2]\n"
    );
    assert_eq!(
        out.stderr,
        "no file open, try 'help open'\nzcow-io: file open already, try 'help close'\n"
    );
    assert_eq!(out.exit_code, 1);
}
