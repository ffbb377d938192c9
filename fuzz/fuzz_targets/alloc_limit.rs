//! A global allocator for the fuzz targets that aborts (a libFuzzer crash)
//! when live heap memory would exceed 512 MiB. Without a sanitizer libFuzzer
//! cannot hook malloc, and `-rss_limit_mb` misses allocations that are never
//! touched (calloc'd zero pages), so this enforces the memory bound exactly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live heap limit.
pub const LIMIT: usize = 512 << 20;

pub struct Limited;

static LIVE: AtomicUsize = AtomicUsize::new(0);

fn reserve(size: usize) {
    let before = LIVE.fetch_add(size, Ordering::Relaxed);
    if before.saturating_add(size) > LIMIT {
        // No allocation may happen here: write the message with libc.
        let msg = b"==zcow-fuzz== out-of-memory: live heap would exceed 512 MiB\n";
        unsafe {
            libc_write(2, msg.as_ptr(), msg.len());
        }
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        reserve(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        reserve(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            reserve(new - l.size());
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Limited = Limited;
