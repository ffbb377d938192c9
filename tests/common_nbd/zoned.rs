//! A small in-memory zoned device for tests (until the real engine is
//! merged): host-managed, conventional zones first, write pointer rules,
//! append, open/close/finish/reset. No open/active limits.

use std::sync::Mutex;
use zcow::device::{check_range, BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use zcow::zone::*;

#[derive(Debug)]
struct St {
    data: Vec<u8>,
    zones: Vec<(u64, ZoneCond)>,
}

#[derive(Debug)]
pub struct ZonedMem {
    g: ZoneGeometry,
    st: Mutex<St>,
}

impl ZonedMem {
    pub fn new(size: u64, zone_size: u64, cap: u64, conventional: u32, max_append: u32) -> Self {
        let nr = size.div_ceil(zone_size) as u32;
        let g = ZoneGeometry {
            device_size: size,
            zone_size,
            zone_capacity: cap,
            nr_zones: nr,
            conventional_zones: conventional,
            max_open_zones: 0,
            max_active_zones: 0,
            max_append_bytes: max_append,
        };
        let zones = (0..nr)
            .map(|i| {
                let c = if i < conventional {
                    ZoneCond::NotWp
                } else {
                    ZoneCond::Empty
                };
                (g.zone_start(i), c)
            })
            .collect();
        ZonedMem {
            g,
            st: Mutex::new(St {
                data: vec![0; size as usize],
                zones,
            }),
        }
    }
}

fn zerr(kind: ZoneErrorKind, i: u32, st: &St, g: &ZoneGeometry, detail: String) -> DeviceError {
    let (wp, cond) = st.zones[i as usize];
    DeviceError::Zone(ZoneError {
        kind,
        zone: Some(ZoneCtx {
            index: i,
            start: g.zone_start(i),
            cond,
            wp,
        }),
        detail,
    })
}

impl ZonedMem {
    fn seq_write(
        &self,
        st: &mut St,
        offset: u64,
        data: Option<&[u8]>,
        len: u64,
        append: bool,
    ) -> DevResult<u64> {
        let g = &self.g;
        let i = g.zone_index(offset).ok_or(DeviceError::OutOfRange {
            offset,
            len,
            size: g.device_size,
        })?;
        if g.is_conventional(i) {
            if append {
                return Err(zerr(
                    ZoneErrorKind::InvalidCommand,
                    i,
                    st,
                    g,
                    "append to a conventional zone".into(),
                ));
            }
            // Conventional: plain write, may cross into the next conventional zone.
            let end = offset + len;
            if end > g.zone_start(g.conventional_zones) {
                return Err(zerr(
                    ZoneErrorKind::Boundary,
                    i,
                    st,
                    g,
                    "write crosses into a sequential zone".into(),
                ));
            }
            match data {
                Some(d) => st.data[offset as usize..end as usize].copy_from_slice(d),
                None => st.data[offset as usize..end as usize].fill(0),
            }
            return Ok(offset);
        }
        let (wp, cond) = st.zones[i as usize];
        let start = g.zone_start(i);
        if offset % 512 != 0 || len % 512 != 0 {
            return Err(zerr(
                ZoneErrorKind::InvalidCommand,
                i,
                st,
                g,
                format!("write at {offset:#x} not 512-aligned"),
            ));
        }
        if append {
            if offset != start {
                return Err(zerr(
                    ZoneErrorKind::InvalidCommand,
                    i,
                    st,
                    g,
                    "append not at zone start".into(),
                ));
            }
            if g.max_append_bytes == 0 {
                return Err(zerr(
                    ZoneErrorKind::Unsupported,
                    i,
                    st,
                    g,
                    "append unsupported".into(),
                ));
            }
            if len > g.max_append_bytes as u64 {
                return Err(zerr(
                    ZoneErrorKind::InvalidCommand,
                    i,
                    st,
                    g,
                    "append too long".into(),
                ));
            }
        }
        if cond == ZoneCond::Full {
            return Err(zerr(
                ZoneErrorKind::ZoneFull,
                i,
                st,
                g,
                format!("write at {offset:#x}: zone is full"),
            ));
        }
        let at = if append { wp } else { offset };
        if at != wp {
            return Err(zerr(
                ZoneErrorKind::UnalignedWrite,
                i,
                st,
                g,
                format!("write at {offset:#x} is not at the write pointer"),
            ));
        }
        let capend = start + g.zone_cap(i);
        if at + len > capend {
            return Err(zerr(
                ZoneErrorKind::Boundary,
                i,
                st,
                g,
                format!("write at {at:#x} length {len:#x} passes the capacity"),
            ));
        }
        match data {
            Some(d) => st.data[at as usize..(at + len) as usize].copy_from_slice(d),
            None => st.data[at as usize..(at + len) as usize].fill(0),
        }
        let nwp = at + len;
        let ncond = if nwp == capend {
            ZoneCond::Full
        } else if cond == ZoneCond::ExpOpen || len == 0 {
            cond
        } else {
            ZoneCond::ImpOpen
        };
        st.zones[i as usize] = (nwp, ncond);
        Ok(at)
    }
}

impl BlockDevice for ZonedMem {
    fn size(&self) -> u64 {
        self.g.device_size
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        check_range(offset, buf.len() as u64, self.g.device_size)?;
        let st = self.st.lock().unwrap();
        buf.copy_from_slice(&st.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DevResult<()> {
        check_range(offset, data.len() as u64, self.g.device_size)?;
        let mut st = self.st.lock().unwrap();
        self.seq_write(&mut st, offset, Some(data), data.len() as u64, false)
            .map(|_| ())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> DevResult<()> {
        check_range(offset, len, self.g.device_size)?;
        let mut st = self.st.lock().unwrap();
        self.seq_write(&mut st, offset, None, len, false)
            .map(|_| ())
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        check_range(offset, len, self.g.device_size)?;
        Ok(())
    }
    fn flush(&self) -> DevResult<()> {
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        check_range(offset, len, self.g.device_size)?;
        let st = self.st.lock().unwrap();
        let mut out = Vec::new();
        let (mut pos, end) = (offset, offset + len);
        while pos < end {
            let i = self.g.zone_index(pos).unwrap();
            let zend = (self.g.zone_start(i) + self.g.zone_len(i)).min(end);
            if self.g.is_conventional(i) {
                out.push(Extent {
                    len: zend - pos,
                    hole: false,
                    zero: false,
                });
            } else {
                let wp = st.zones[i as usize].0;
                if pos < wp {
                    let e = wp.min(zend);
                    out.push(Extent {
                        len: e - pos,
                        hole: false,
                        zero: false,
                    });
                    pos = e;
                }
                if pos < zend {
                    out.push(Extent {
                        len: zend - pos,
                        hole: true,
                        zero: true,
                    });
                }
            }
            pos = zend;
        }
        Ok(out)
    }
    fn zone_geometry(&self) -> Option<ZoneGeometry> {
        Some(self.g)
    }
    fn zone_report(&self, offset: u64, max: u32) -> DevResult<Vec<ZoneDescriptor>> {
        let first = self.g.zone_index(offset).ok_or(DeviceError::OutOfRange {
            offset,
            len: 0,
            size: self.g.device_size,
        })?;
        let st = self.st.lock().unwrap();
        Ok((first..self.g.nr_zones.min(first.saturating_add(max)))
            .map(|i| {
                let (wp, cond) = st.zones[i as usize];
                ZoneDescriptor {
                    index: i,
                    start: self.g.zone_start(i),
                    len: self.g.zone_len(i),
                    cap: self.g.zone_cap(i),
                    wp,
                    zone_type: self.g.zone_type(i),
                    cond,
                }
            })
            .collect())
    }
    fn zone_mgmt(&self, op: ZoneOp, offset: u64, len: u64) -> DevResult<()> {
        let g = &self.g;
        let mut st = self.st.lock().unwrap();
        let i0 = g.zone_index(offset).ok_or(DeviceError::OutOfRange {
            offset,
            len,
            size: g.device_size,
        })?;
        if offset != g.zone_start(i0) || len == 0 {
            return Err(zerr(
                ZoneErrorKind::InvalidCommand,
                i0,
                &st,
                g,
                format!("{} at {offset:#x}: not zone aligned", op.verb()),
            ));
        }
        let all = op == ZoneOp::Reset && offset == 0 && len == g.device_size;
        let mut pos = offset;
        while pos < offset + len {
            let i = g.zone_index(pos).unwrap();
            let start = g.zone_start(i);
            pos = start + g.zone_len(i);
            if g.is_conventional(i) {
                if all {
                    continue;
                }
                return Err(zerr(
                    ZoneErrorKind::InvalidCommand,
                    i,
                    &st,
                    g,
                    format!("{} of a conventional zone", op.verb()),
                ));
            }
            let (wp, cond) = st.zones[i as usize];
            let new = match (op, cond) {
                (ZoneOp::Open, ZoneCond::Full) => {
                    return Err(zerr(
                        ZoneErrorKind::InvalidTransition,
                        i,
                        &st,
                        g,
                        "open of a full zone".into(),
                    ))
                }
                (ZoneOp::Open, _) => (wp, ZoneCond::ExpOpen),
                (ZoneOp::Close, ZoneCond::ImpOpen | ZoneCond::ExpOpen) => (
                    wp,
                    if wp == start {
                        ZoneCond::Empty
                    } else {
                        ZoneCond::Closed
                    },
                ),
                (ZoneOp::Close, _) => (wp, cond),
                (ZoneOp::Finish, _) => (start + g.zone_len(i), ZoneCond::Full),
                (ZoneOp::Reset, _) => {
                    let e = start + g.zone_len(i);
                    st.data[start as usize..e as usize].fill(0);
                    (start, ZoneCond::Empty)
                }
            };
            st.zones[i as usize] = new;
        }
        if pos != offset + len && pos != g.device_size {
            return Err(DeviceError::Invalid(
                "length not a multiple of the zone size".into(),
            ));
        }
        Ok(())
    }
    fn zone_append(&self, zone_start: u64, data: &[u8], _fua: bool) -> DevResult<u64> {
        check_range(zone_start, data.len() as u64, self.g.device_size)?;
        let mut st = self.st.lock().unwrap();
        self.seq_write(&mut st, zone_start, Some(data), data.len() as u64, true)
    }
}
