//! SIGTERM and SIGINT for the serving front ends (`zcow-nbd`, `zcow-ublk`):
//! a handler that only raises a flag the main loop polls, so the servers
//! can stop clients, flush and close the image before they exit. SIGPIPE is
//! ignored so a client that goes away is an error on its socket, not the
//! end of the process.

use std::sync::atomic::{AtomicBool, Ordering};

/// Raised by SIGTERM or SIGINT once [`install`] ran.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Route SIGTERM and SIGINT to [`STOP`] and ignore SIGPIPE.
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Whether SIGTERM or SIGINT arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
