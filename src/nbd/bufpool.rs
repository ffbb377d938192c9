//! Per-thread reusable I/O buffers for the transmission phase.
//!
//! A fresh `vec![0; n]` per request costs an allocation and a pass that
//! zeroes the bytes the read or the payload then overwrites (perf showed
//! the memset at 6 % of the server's time on a sequential read). Each
//! worker thread keeps one buffer instead: it is zeroed only where it
//! grows, and kept between requests only up to [`KEEP_MAX`] bytes, so an
//! idle connection holds at most `workers × KEEP_MAX` bytes.

use std::cell::RefCell;

/// Largest buffer a thread keeps for the next request.
pub const KEEP_MAX: usize = 1 << 20;

thread_local! {
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `n` bytes (its contents are arbitrary; callers
/// fill the first `n` before using them). Takes this thread's spare buffer
/// when there is one.
pub fn take(n: usize) -> Vec<u8> {
    let mut v = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if v.len() < n {
        // Zeroes only the new part; `len` stays the initialised size.
        v.resize(n, 0);
    }
    v
}

/// Give a buffer back for this thread's next [`take`] (dropped when it is
/// larger than [`KEEP_MAX`] or the thread already holds a bigger one).
pub fn give(v: Vec<u8>) {
    if v.len() > KEEP_MAX || v.is_empty() {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < v.len() {
            *s = v;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut a = take(4096);
        assert!(a.len() >= 4096);
        a[0] = 7;
        let p = a.as_ptr();
        give(a);
        let b = take(100);
        assert_eq!(b.as_ptr(), p, "the spare buffer is reused");
        assert!(b.len() >= 100);
        give(b);
        give(vec![1u8; KEEP_MAX + 1]);
        assert!(take(1).len() <= KEEP_MAX, "an oversized buffer is not kept");
    }
}
