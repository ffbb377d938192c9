//! POSIX error numbers as QEMU reports them (`strerror` text).

/// An errno value (positive).
pub type Errno = i32;

/// Input/output error.
pub const EIO: Errno = libc::EIO;
/// Out of memory.
pub const ENOMEM: Errno = libc::ENOMEM;
/// File too large.
pub const EFBIG: Errno = libc::EFBIG;
/// Invalid argument.
pub const EINVAL: Errno = libc::EINVAL;
/// Read-only.
pub const EROFS: Errno = libc::EROFS;
/// No space.
pub const ENOSPC: Errno = libc::ENOSPC;

/// glibc's `strerror` text for the errors check can produce.
pub fn strerror(e: Errno) -> String {
    match e {
        libc::EIO => "Input/output error".into(),
        libc::ENOMEM => "Cannot allocate memory".into(),
        libc::EFBIG => "File too large".into(),
        libc::EINVAL => "Invalid argument".into(),
        libc::EROFS => "Read-only file system".into(),
        libc::ENOSPC => "No space left on device".into(),
        libc::EPERM => "Operation not permitted".into(),
        libc::ENOTSUP => "Operation not supported".into(),
        libc::ENOENT => "No such file or directory".into(),
        libc::EACCES => "Permission denied".into(),
        _ => {
            let s = std::io::Error::from_raw_os_error(e).to_string();
            match s.find(" (os error") {
                Some(p) => s[..p].to_string(),
                None => s,
            }
        }
    }
}
