//! Zone control of a running device: a Unix socket speaking JSON lines.
//!
//! A front end that serves a zoned device (zcow-nbd `--control PATH`, and
//! any other server over a [`BlockDevice`]) runs a [`ControlServer`]; an
//! operator or a test sends one JSON object per line and gets one JSON
//! reply line per request. Changes go through the shared engine, so they
//! take effect for every connection at once (a request already running in
//! the zone finishes first), and each is durable before it is answered.
//! The protocol is described in `docs/control.md`.

use crate::device::{BlockDevice, DeviceError};
use crate::engine::ZoneFault;
use crate::zone::{ZoneDescriptor, ZoneOp};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 4096;
/// Most zones one `report` reply carries.
pub const MAX_REPORT: u32 = 4096;
/// Most control connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// A control connection idle (or not reading its replies) this long is
/// closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(300);

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Report `count` zones from zone `zone`.
    Report {
        /// First zone.
        zone: u32,
        /// How many (capped at [`MAX_REPORT`]).
        count: u32,
    },
    /// Open, close, finish or reset one zone.
    Mgmt {
        /// The operation.
        op: ZoneOp,
        /// Zone index.
        zone: u32,
    },
    /// Reset every written sequential zone, as `BLKRESETZONE` over the
    /// whole device or NBD's reset-all do (READ_ONLY, OFFLINE, conventional
    /// and EMPTY zones are left as they are).
    ResetAll,
    /// Set READ_ONLY or OFFLINE on a zone, or clear it.
    SetCond {
        /// Zone index.
        zone: u32,
        /// The condition.
        cond: ZoneFault,
    },
}

fn field_u32(o: &Map<String, Value>, name: &str) -> Result<Option<u32>, String> {
    match o.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("\"{name}\" must be a zone number (0 to 4294967295)")),
    }
}

/// Parse one request line.
pub fn parse(line: &str) -> Result<Request, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let o = v
        .as_object()
        .ok_or_else(|| "a request is a JSON object".to_string())?;
    let op = o.get("op").and_then(Value::as_str).ok_or_else(|| {
        "missing \"op\" (report, open, close, finish, reset, reset-all, set-cond)".to_string()
    })?;
    let allowed: &[&str] = match op {
        "report" => &["op", "zone", "count"],
        "set-cond" => &["op", "zone", "cond"],
        "reset-all" => &["op"],
        _ => &["op", "zone"],
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown field \"{k}\" for op \"{op}\""));
    }
    let zone = field_u32(o, "zone")?;
    let need_zone = || zone.ok_or_else(|| format!("op \"{op}\" needs \"zone\""));
    let mgmt = |op| {
        Ok(Request::Mgmt {
            op,
            zone: need_zone()?,
        })
    };
    match op {
        "report" => Ok(Request::Report {
            zone: zone.unwrap_or(0),
            count: field_u32(o, "count")?.unwrap_or(MAX_REPORT).min(MAX_REPORT),
        }),
        "open" => mgmt(ZoneOp::Open),
        "close" => mgmt(ZoneOp::Close),
        "finish" => mgmt(ZoneOp::Finish),
        "reset" => mgmt(ZoneOp::Reset),
        "reset-all" => Ok(Request::ResetAll),
        "set-cond" => {
            let cond = match o.get("cond").and_then(Value::as_str) {
                Some("readonly") | Some("read-only") => ZoneFault::ReadOnly,
                Some("offline") => ZoneFault::Offline,
                Some("clear") => ZoneFault::Clear,
                _ => return Err("\"cond\" must be readonly, offline or clear".into()),
            };
            Ok(Request::SetCond {
                zone: need_zone()?,
                cond,
            })
        }
        other => Err(format!(
            "unknown op \"{other}\" (report, open, close, finish, reset, reset-all, set-cond)"
        )),
    }
}

fn zone_json(z: &ZoneDescriptor) -> Value {
    json!({
        "index": z.index, "start": z.start, "length": z.len, "capacity": z.cap,
        "wp": z.wp, "type": z.zone_type.name(), "condition": z.cond.name(),
    })
}

fn zone_of(dev: &dyn BlockDevice, zone: u32) -> Result<ZoneDescriptor, DeviceError> {
    let g = dev
        .zone_geometry()
        .ok_or_else(|| DeviceError::Unsupported("the device is not zoned".into()))?;
    if zone >= g.nr_zones {
        return Err(DeviceError::Invalid(format!(
            "zone {zone} does not exist (the device has {} zones)",
            g.nr_zones
        )));
    }
    dev.zone_report(g.zone_start(zone), 1)?
        .into_iter()
        .next()
        .ok_or_else(|| DeviceError::Invalid(format!("zone {zone} is not reported")))
}

/// Carry out a request on `dev`; the reply object (without `ok`).
pub fn execute(dev: &dyn BlockDevice, req: &Request) -> Result<Value, DeviceError> {
    match *req {
        Request::Report { zone, count } => {
            zone_of(dev, zone)?;
            let geo = dev
                .zone_geometry()
                .ok_or_else(|| DeviceError::Unsupported("the device is not zoned".into()))?;
            let zones = dev.zone_report(geo.zone_start(zone), count)?;
            Ok(json!({"zones": zones.iter().map(zone_json).collect::<Vec<_>>()}))
        }
        Request::Mgmt { op, zone } => {
            let z = zone_of(dev, zone)?;
            dev.zone_mgmt(op, z.start, z.len)?;
            // Durable before the answer: a restart shows the change.
            dev.flush()?;
            Ok(json!({"zone": zone_json(&zone_of(dev, zone)?)}))
        }
        Request::ResetAll => {
            let g = dev
                .zone_geometry()
                .ok_or_else(|| DeviceError::Unsupported("the device is not zoned".into()))?;
            // The whole device in one request is the device's reset-all.
            dev.zone_mgmt(ZoneOp::Reset, 0, g.device_size)?;
            dev.flush()?;
            Ok(json!({}))
        }
        Request::SetCond { zone, cond } => {
            zone_of(dev, zone)?;
            dev.zone_set_fault(zone, cond)?;
            Ok(json!({"zone": zone_json(&zone_of(dev, zone)?)}))
        }
    }
}

/// Answer one request line: `{"ok":true,...}` or `{"ok":false,"error":...}`.
pub fn handle_line(dev: &dyn BlockDevice, line: &str) -> String {
    let r = parse(line).and_then(|req| execute(dev, &req).map_err(|e| e.to_string()));
    let v = match r {
        Ok(Value::Object(mut m)) => {
            let mut o = Map::new();
            o.insert("ok".into(), json!(true));
            o.append(&mut m);
            Value::Object(o)
        }
        Ok(other) => json!({"ok": true, "result": other}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    v.to_string()
}

/// Read one line of at most [`MAX_LINE`] bytes; None at end of input.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<Result<String, String>>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return Ok(Some(Err(format!("request longer than {MAX_LINE} bytes"))));
    }
    Ok(Some(
        String::from_utf8(buf).map_err(|_| "request is not UTF-8".to_string()),
    ))
}

fn serve_conn(dev: &dyn BlockDevice, stream: UnixStream) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    while let Some(line) = read_line(&mut r)? {
        let reply = match line {
            Ok(l) if l.trim().is_empty() => continue,
            Ok(l) => handle_line(dev, &l),
            Err(e) => {
                // The rest of an over-long line is not a request: answer and
                // hang up.
                let v = json!({"ok": false, "error": e}).to_string();
                writeln!(w, "{v}")?;
                return Ok(());
            }
        };
        writeln!(w, "{reply}")?;
    }
    Ok(())
}

/// A control socket served by background threads; the socket file is
/// removed when it is dropped.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Listen on the Unix socket `path` (replacing a stale socket file) and
    /// serve requests on `dev` until dropped.
    pub fn start(path: &Path, dev: Arc<dyn BlockDevice>) -> std::io::Result<ControlServer> {
        if std::fs::symlink_metadata(path)
            .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .unwrap_or(false)
        {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // Whoever can connect can take zones offline: owner only.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let live = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        // An idle or stuck peer gives its slot back.
                        let _ = s.set_read_timeout(Some(IDLE_LIMIT));
                        let _ = s.set_write_timeout(Some(IDLE_LIMIT));
                        if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                            let v = json!({"ok": false, "error": "too many control connections"});
                            let _ = writeln!(s, "{v}");
                            continue;
                        }
                        live.fetch_add(1, Ordering::SeqCst);
                        let dev = dev.clone();
                        let live = live.clone();
                        std::thread::spawn(move || {
                            let _ = serve_conn(dev.as_ref(), s);
                            live.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Send one request to the control socket at `path` and return the reply
/// object (a client for `zcow-img zone set-cond --control`).
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    writeln!(s, "{req}")?;
    let mut r = BufReader::new(s);
    match read_line(&mut r)? {
        Some(Ok(l)) => serde_json::from_str(&l).map_err(std::io::Error::other),
        Some(Err(e)) => Err(std::io::Error::other(e)),
        None => Err(std::io::Error::other(
            "the control socket closed without a reply",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_requests() {
        assert_eq!(
            parse(r#"{"op":"set-cond","zone":2,"cond":"offline"}"#),
            Ok(Request::SetCond {
                zone: 2,
                cond: ZoneFault::Offline
            })
        );
        assert_eq!(
            parse(r#"{"op":"reset","zone":3}"#),
            Ok(Request::Mgmt {
                op: ZoneOp::Reset,
                zone: 3
            })
        );
        assert_eq!(
            parse(r#"{"op":"report"}"#),
            Ok(Request::Report {
                zone: 0,
                count: MAX_REPORT
            })
        );
        assert!(parse(r#"{"op":"reset"}"#)
            .unwrap_err()
            .contains("needs \"zone\""));
        assert!(parse(r#"{"op":"reset","zone":-1}"#).is_err());
        assert!(parse(r#"{"op":"open","zone":1,"x":1}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse("[").is_err());
        assert_eq!(parse(r#"{"op":"reset-all"}"#), Ok(Request::ResetAll));
        assert!(parse(r#"{"op":"reset-all","zone":1}"#)
            .unwrap_err()
            .contains("unknown field \"zone\""));
    }
}
