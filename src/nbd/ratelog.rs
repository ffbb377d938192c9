//! Rate-limited log of rejected requests: every rejection is worth a line
//! for the operator, but a hostile or broken client must not be able to
//! flood the log. A token bucket allows bursts of [`BURST`] lines and
//! [`PER_SECOND`] lines a second after that; lines dropped meanwhile are
//! counted and the count is printed with the next line that goes out.

use std::sync::Mutex;
use std::time::Instant;

/// Lines that may go out back to back.
pub(crate) const BURST: u32 = 20;
/// Sustained lines per second.
pub(crate) const PER_SECOND: u32 = 5;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

/// A token-bucket limited writer of `zcow-nbd: ...` lines to stderr.
#[derive(Debug)]
pub(crate) struct RateLog {
    b: Mutex<Bucket>,
}

impl Default for RateLog {
    fn default() -> Self {
        RateLog {
            b: Mutex::new(Bucket {
                tokens: f64::from(BURST),
                last: Instant::now(),
                dropped: 0,
            }),
        }
    }
}

impl RateLog {
    /// Whether a line may go out now; `Some(n)` also says how many lines
    /// were dropped since the last one that went out.
    pub(crate) fn admit(&self) -> Option<u64> {
        let Ok(mut b) = self.b.lock() else {
            return None;
        };
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(PER_SECOND);
        b.tokens = (b.tokens + refill).min(f64::from(BURST));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.dropped))
        } else {
            b.dropped += 1;
            None
        }
    }

    /// Print `zcow-nbd: <line>` if the limit allows (one write(2), so lines
    /// of concurrent connections do not run together).
    pub(crate) fn log(&self, line: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if let Some(dropped) = self.admit() {
            let mut s = String::new();
            if dropped > 0 {
                s.push_str(&format!(
                    "zcow-nbd: {dropped} more rejected requests not logged (rate limit)\n"
                ));
            }
            s.push_str(&format!("zcow-nbd: {line}\n"));
            let _ = std::io::stderr().write_all(s.as_bytes());
        }
    }
}

impl RateLog {
    /// Say how many lines were dropped since the last one that went out
    /// (at the end of a connection, so a burst's tail is not lost silently).
    pub(crate) fn flush_dropped(&self) {
        use std::io::Write;
        let dropped = match self.b.lock() {
            Ok(mut b) => std::mem::take(&mut b.dropped),
            Err(_) => 0,
        };
        if dropped > 0 {
            let _ = std::io::stderr().write_all(
                format!("zcow-nbd: {dropped} more rejected requests not logged (rate limit)\n")
                    .as_bytes(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_drops_counted() {
        let r = RateLog::default();
        let admitted = (0..1000).filter(|_| r.admit().is_some()).count();
        // The burst plus whatever refilled while the loop ran (well under
        // a second).
        assert!(
            (BURST as usize..BURST as usize + 5).contains(&admitted),
            "{admitted}"
        );
        std::thread::sleep(std::time::Duration::from_millis(
            1000 / PER_SECOND as u64 + 20,
        ));
        // The next line that goes out reports every line dropped.
        let d = r.admit().expect("refilled");
        assert_eq!(d, 1000 - admitted as u64);
    }
}
