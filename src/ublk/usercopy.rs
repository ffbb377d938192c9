//! Moving a request's bytes between the driver and memory: with
//! `UBLK_F_USER_COPY` a `pread`/`pwrite` on the ublk char device at the
//! request's position copies them (the position names queue, tag and the
//! byte offset inside the request). The memory is a buffer, or a mapping
//! of the image file ([`super::filemap`]): a page of it the kernel cannot
//! fault in makes the call fail with `EFAULT`, never a signal.

use std::io;
use std::os::fd::RawFd;

/// pread until `buf` is full or the request's data ends (a short count).
pub fn pread_full(fd: RawFd, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe { pread_raw(fd, buf.as_mut_ptr(), buf.len(), pos) }
}

/// pwrite until `buf` is sent or the kernel's buffer is full (short count).
pub fn pwrite_full(fd: RawFd, buf: &[u8], pos: u64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    unsafe { pwrite_raw(fd, buf.as_ptr(), buf.len(), pos) }
}

/// [`pread_full`] into `len` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr+len` is memory the kernel may write: a buffer, or a shared
/// mapping that nothing in this process reads or writes meanwhile.
pub unsafe fn pread_raw(fd: RawFd, ptr: *mut u8, len: usize, pos: u64) -> io::Result<usize> {
    transfer_full(len, |done| {
        // SAFETY: the caller's promise, for the rest of the range.
        unsafe {
            libc::pread(
                fd,
                ptr.add(done).cast(),
                len - done,
                (pos + done as u64) as libc::off_t,
            )
        }
    })
}

/// [`pwrite_full`] from `len` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr+len` is memory the kernel may read (a buffer or a mapping).
pub unsafe fn pwrite_raw(fd: RawFd, ptr: *const u8, len: usize, pos: u64) -> io::Result<usize> {
    transfer_full(len, |done| {
        // SAFETY: the caller's promise, for the rest of the range.
        unsafe {
            libc::pwrite(
                fd,
                ptr.add(done).cast(),
                len - done,
                (pos + done as u64) as libc::off_t,
            )
        }
    })
}

/// Repeat `step(done)` (one pread/pwrite of the rest) until `len` bytes
/// moved, retrying EINTR; a 0 or an error after some bytes is the end of
/// the kernel's buffer (a short count), an error before any is returned.
fn transfer_full(len: usize, mut step: impl FnMut(usize) -> isize) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        match step(done) {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done > 0 {
                    break;
                }
                return Err(e);
            }
            0 => break,
            n => done += n as usize,
        }
    }
    Ok(done)
}
