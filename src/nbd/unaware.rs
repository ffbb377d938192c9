//! Writes from zone-unaware clients (no `NBD_OPT_X_ZONED`) on a zoned export
//! under the default `strict` policy, so standard copy tools (`qemu-img
//! convert -n`, `nbdcopy`) can load data without knowing about zones. The
//! rules (`spec/nbd-zoned.md` §9) in short:
//!
//! - A WRITE or WRITE_ZEROES is split at zone boundaries; each sequential
//!   part must be at its zone's write pointer (checked for every part before
//!   anything is written).
//! - WRITE_ZEROES at or past the write pointer that reaches the end of the
//!   zone's capacity changes nothing: that range reads as zeroes already, and
//!   the zone keeps ending where its data ends. Zeroes at the write pointer
//!   that stop short of the capacity advance it without allocating clusters.
//! - A first part ahead of the write pointer waits (is *parked*) until the
//!   requests before it fill the gap, for at most [`PARK_LIMIT`]; out-of-order
//!   loaders (`qemu-img convert -W`) need that. Without FUA it is answered
//!   before it runs (see [`super::writeback`]).
//! - At the active-zone limit the least recently written idle active zone is
//!   finished implicitly (after every earlier request of the connection has
//!   completed), so a sequential loader never stalls on ENOSPC.
//!
//! Zone-aware sessions never come here: they keep the strict semantics.

use super::proto::NBD_EINVAL;
use crate::device::{BlockDevice, DeviceError, ZeroFlags};
use crate::zone::{ZoneCond, ZoneErrorKind, ZoneGeometry};
use std::time::Duration;

/// How long a write ahead of the write pointer waits for the gap to fill.
pub(crate) const PARK_LIMIT: Duration = Duration::from_secs(5);

/// At the open or active limit: how long a write waits for busy zones to
/// give their resources back before it fails with ENOSPC. As long as a
/// parked write may wait ([`PARK_LIMIT`]): the zones holding the resources
/// may be busy with exactly such writes (a copy tool with many requests in
/// flight), and a loaded machine stretches them. Each attempt after the
/// first either finishes a zone (active limit) or sleeps [`RESOURCE_RETRY`].
const RESOURCE_WAIT: Duration = PARK_LIMIT;
const RESOURCE_RETRY: Duration = Duration::from_millis(10);

/// The data of an unaware write request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    /// NBD_CMD_WRITE with its payload.
    Write(&'a [u8]),
    /// NBD_CMD_WRITE_ZEROES with its flags.
    Zeroes(ZeroFlags),
}

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done (every part written or skipped).
    Done,
    /// The first part lies ahead of zone `zone`'s write pointer: wait until
    /// the write pointer reaches `at`.
    Park {
        /// Zone index.
        zone: u32,
        /// The part's offset.
        at: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Hand the part to the device.
    Do,
    /// Zeroes where the zone reads zeroes anyway: nothing to do.
    Skip,
}

/// `[offset, offset+len)` cut at zone boundaries: `(zone, offset, len)`.
pub(crate) fn split(g: &ZoneGeometry, offset: u64, len: u64) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    let end = offset.saturating_add(len).min(g.device_size);
    let mut pos = offset;
    while pos < end {
        let Some(z) = g.zone_index(pos) else { break };
        let zend = g.zone_start(z).saturating_add(g.zone_len(z)).min(end);
        out.push((z, pos, zend - pos));
        pos = zend;
    }
    out
}

fn dev_err(e: DeviceError) -> (u32, String) {
    (super::proto::wire_errno(e.errno()), e.to_string())
}

/// One unaware WRITE or WRITE_ZEROES request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write<'a> {
    /// Export offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The payload or the zero flags.
    pub data: Data<'a>,
    /// Durable before the reply.
    pub fua: bool,
}

/// Run one unaware WRITE / WRITE_ZEROES. `wait_earlier` blocks until every
/// earlier request of the connection has completed (called before an
/// implicit finish); `note` logs what the policy did (trace level).
pub(crate) fn run(
    dev: &dyn BlockDevice,
    g: &ZoneGeometry,
    w: &Write<'_>,
    wait_earlier: &dyn Fn(),
    note: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<Outcome, (u32, String)> {
    let Write {
        offset,
        len,
        data,
        fua,
    } = *w;
    let parts = split(g, offset, len);
    let verb = match data {
        Data::Write(_) => "write",
        Data::Zeroes(_) => "write-zeroes",
    };
    // Plan every part before writing any, so a request that cannot be done
    // as a whole fails without a partial write.
    let mut steps = Vec::with_capacity(parts.len());
    for (k, &(z, s, l)) in parts.iter().enumerate() {
        if g.is_conventional(z) {
            steps.push(Step::Do);
            continue;
        }
        let d = dev
            .zone_report(s, 1)
            .map_err(dev_err)?
            .into_iter()
            .next()
            .ok_or_else(|| (super::proto::NBD_EIO, format!("no zone report at {s:#x}")))?;
        let cap_end = d.start + d.cap;
        let faulty = matches!(d.cond, ZoneCond::ReadOnly | ZoneCond::Offline);
        let zeroes = matches!(data, Data::Zeroes(_));
        if zeroes && !faulty && s >= d.wp && s + l >= cap_end {
            steps.push(Step::Skip);
            continue;
        }
        let ahead = s > d.wp && s < cap_end && !faulty && d.cond != ZoneCond::Full;
        if ahead && k == 0 {
            return Ok(Outcome::Park { zone: z, at: s });
        }
        if k > 0 && s != d.wp && !faulty {
            // The engine would refuse this part after the earlier ones were
            // written; refuse the request up front instead.
            return Err((
                NBD_EINVAL,
                format!(
                    "zone {z} (start {:#x}, {}, wp {:#x}): {verb} of {len:#x} bytes at {offset:#x} continues into the zone at {s:#x}, which is not the write pointer",
                    d.start, d.cond, d.wp
                ),
            ));
        }
        steps.push(Step::Do);
    }
    for (&(z, s, l), step) in parts.iter().zip(steps) {
        if step == Step::Skip {
            note(format_args!(
                "{verb} of {l:#x} bytes at {s:#x}: zone {z} already reads zeroes there (write pointer unchanged)"
            ));
            continue;
        }
        let mut tries = 0;
        let started = std::time::Instant::now();
        loop {
            let r = match data {
                Data::Write(p) => {
                    let from = (s - offset) as usize;
                    dev.write(s, &p[from..from + l as usize], fua)
                }
                Data::Zeroes(f) => dev.write_zeroes(s, l, ZeroFlags { fua, ..f }),
            };
            match r {
                Ok(()) => break,
                Err(DeviceError::Zone(ze))
                    if matches!(
                        ze.kind,
                        ZoneErrorKind::OpenResource | ZoneErrorKind::ActiveResource
                    ) && started.elapsed() < RESOURCE_WAIT =>
                {
                    tries += 1;
                    if tries == 1 {
                        // Earlier requests of the connection may still be
                        // writing the zones that hold the resources (a zone
                        // about to become FULL gives its resources back):
                        // let them complete, then try again.
                        wait_earlier();
                        continue;
                    }
                    if ze.kind == ZoneErrorKind::ActiveResource {
                        if let Some(v) = dev.finish_least_recent_active().map_err(dev_err)? {
                            note(format_args!(
                                "active zone limit: implicitly finished zone {v} (least recently written) for the {verb} at {s:#x}"
                            ));
                            continue;
                        }
                    }
                    // Every zone holding a resource has writes in flight
                    // (maybe from another connection): they end soon.
                    std::thread::sleep(RESOURCE_RETRY);
                }
                Err(e) => return Err(dev_err(e)),
            }
        }
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> ZoneGeometry {
        ZoneGeometry {
            device_size: 5 << 20,
            zone_size: 1 << 20,
            zone_capacity: 1 << 20,
            nr_zones: 5,
            conventional_zones: 1,
            max_open_zones: 0,
            max_active_zones: 0,
            max_append_bytes: 0,
        }
    }

    #[test]
    fn split_at_zone_boundaries() {
        let g = geo();
        assert_eq!(
            split(&g, 0x80000, 0x100000),
            vec![(0, 0x80000, 0x80000), (1, 0x100000, 0x80000)]
        );
        assert_eq!(split(&g, 0x400000, 0x200000), vec![(4, 0x400000, 0x100000)]);
        assert_eq!(split(&g, 0x100000, 0), vec![]);
        assert_eq!(split(&g, 0x0, 5 << 20).len(), 5);
    }
}
