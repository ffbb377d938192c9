//! Image locking compatible with QEMU's file driver.
//!
//! QEMU's `file-posix` driver expresses who uses an image file, and what it
//! lets others do, with open file description (OFD) byte-range locks: a
//! shared lock on byte `100 + bit` says "I use this permission", a shared
//! lock on byte `200 + bit` says "I do not let others use this permission".
//! Before it relies on its locks, a process tests (as if for an exclusive
//! lock) byte `200 + bit` of every permission it uses and byte `100 + bit`
//! of every permission it does not share; any lock held there by another
//! open file description is a conflict. zcow takes the same locks, so
//! zcow's tools and QEMU's (qemu-img, qemu-io, qemu-nbd, QEMU itself)
//! exclude each other exactly as QEMU's tools exclude each other.
//!
//! The permission bits (QEMU's `BLK_PERM_*`): consistent read 0, write 1,
//! write unchanged 2, resize 3.
//!
//! Locks belong to the open file description, so they are released when
//! the file is closed, also when the process dies.

use std::fmt;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Byte offset of the "I use this permission" locks.
pub const PERM_BASE: i64 = 100;
/// Byte offset of the "I do not share this permission" locks.
pub const SHARED_BASE: i64 = 200;

/// One of QEMU's block permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Reads see consistent data (bit 0).
    ConsistentRead = 0,
    /// Writes that change the data (bit 1).
    Write = 1,
    /// Writes that do not change the data (bit 2).
    WriteUnchanged = 2,
    /// Changing the file's length (bit 3).
    Resize = 3,
}

impl Perm {
    /// Every permission, in bit order (the order QEMU tests them in).
    pub const ALL: [Perm; 4] = [
        Perm::ConsistentRead,
        Perm::Write,
        Perm::WriteUnchanged,
        Perm::Resize,
    ];

    /// QEMU's name for the permission, as printed in lock errors.
    pub fn name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent read",
            Perm::Write => "write",
            Perm::WriteUnchanged => "write unchanged",
            Perm::Resize => "resize",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Perm`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet(u8);

impl PermSet {
    /// No permission.
    pub const NONE: PermSet = PermSet(0);
    /// Every permission.
    pub const ALL: PermSet = PermSet(0x0f);

    /// The set of the given permissions.
    pub fn of(perms: &[Perm]) -> PermSet {
        PermSet(perms.iter().fold(0, |a, p| a | p.bit()))
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Perm) -> bool {
        self.0 & p.bit() != 0
    }

    /// The set without `p`.
    pub fn without(self, p: Perm) -> PermSet {
        PermSet(self.0 & !p.bit())
    }
}

/// What an opener uses and what it lets others use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// Permissions this opener uses (locks at 100 + bit).
    pub perm: PermSet,
    /// Permissions this opener lets others use (the rest is locked at
    /// 200 + bit).
    pub shared: PermSet,
}

impl LockRequest {
    /// A file holding image metadata (qcow2, and the zoned write-pointer
    /// array inside it), as QEMU's format drivers lock their file: a reader
    /// uses consistent read; a writer also write and resize; neither lets
    /// others write or resize, because metadata changed underneath would be
    /// corrupt. A backing file is opened as a reader.
    pub fn image(read_only: bool) -> LockRequest {
        let perm = if read_only {
            PermSet::of(&[Perm::ConsistentRead])
        } else {
            PermSet::of(&[Perm::ConsistentRead, Perm::Write, Perm::Resize])
        };
        LockRequest {
            perm,
            shared: PermSet::ALL.without(Perm::Write).without(Perm::Resize),
        }
    }

    /// A raw image, as qemu-io locks one: consistent read, plus write when
    /// writable; everything shared (raw has no metadata to protect).
    pub fn raw(read_only: bool) -> LockRequest {
        let perm = if read_only {
            PermSet::of(&[Perm::ConsistentRead])
        } else {
            PermSet::of(&[Perm::ConsistentRead, Perm::Write])
        };
        LockRequest {
            perm,
            shared: PermSet::ALL,
        }
    }

    /// The request with everything shared (QEMU's `force-share=on`, the
    /// `-U` option): it then excludes no one. Only meaningful read-only.
    pub fn force_shared(self) -> LockRequest {
        LockRequest {
            shared: PermSet::ALL,
            ..self
        }
    }

    /// The request the process-wide policy gives an open of an image file:
    /// [`LockRequest::image`], force-shared when [`set_force_share`] is on
    /// and the open is read-only.
    pub fn default_for(read_only: bool) -> LockRequest {
        let r = LockRequest::image(read_only);
        if read_only && force_share() {
            r.force_shared()
        } else {
            r
        }
    }
}

static FORCE_SHARE: AtomicBool = AtomicBool::new(false);

/// Process-wide `-U`/`--force-share`: read-only opens of image files
/// (including backing files) share every permission, so they exclude no
/// one. Front ends set it once from their command line, before opening.
pub fn set_force_share(on: bool) {
    FORCE_SHARE.store(on, Ordering::Relaxed);
}

/// Whether [`set_force_share`] is on.
pub fn force_share() -> bool {
    FORCE_SHARE.load(Ordering::Relaxed)
}

/// Another process holds a lock that conflicts with ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConflict {
    /// The permission that could not be had.
    pub perm: Perm,
    /// True when another process uses `perm` that we do not share; false
    /// when another process refuses to share `perm` that we use.
    pub shared: bool,
    /// The file, as the caller named it.
    pub path: PathBuf,
}

impl fmt::Display for LockConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // QEMU's error and its hint, word for word.
        write!(
            f,
            "Failed to get {}\"{}\" lock\nIs another process using the image [{}]?",
            if self.shared { "shared " } else { "" },
            self.perm.name(),
            self.path.display()
        )
    }
}

impl std::error::Error for LockConflict {}

/// The lock conflict somewhere in an error's chain (also inside an
/// `io::Error`), if there is one.
pub fn conflict_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a LockConflict> {
    super::find_in_chain(err)
}

fn flock(l_type: libc::c_int, start: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = 1;
    // OFD locks require l_pid 0.
    fl.l_pid = 0;
    fl
}

fn set_shared_lock(file: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte);
    // SAFETY: fcntl with a valid fd and a pointer to an initialised flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte`.
fn is_held_elsewhere(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: fcntl with a valid fd and a pointer to an initialised flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// File systems without OFD lock support: locking is skipped there, as
/// QEMU's `locking=auto` does.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOLCK)
    )
}

/// Take the locks of `req` on `file` and check that no other opener
/// conflicts. Locks are taken before the check (as QEMU does) so that of
/// two racing openers at least one sees the other. On a conflict the error
/// wraps a [`LockConflict`]; the locks taken stay until `file` is closed,
/// so the caller drops the file.
pub fn acquire(file: &File, path: &Path, req: LockRequest) -> std::io::Result<()> {
    let apply = || -> std::io::Result<()> {
        for p in Perm::ALL {
            if req.perm.contains(p) {
                set_shared_lock(file, PERM_BASE + p as i64)?;
            }
            if !req.shared.contains(p) {
                set_shared_lock(file, SHARED_BASE + p as i64)?;
            }
        }
        Ok(())
    };
    match apply() {
        Ok(()) => {}
        Err(e) if unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    let conflict = |perm, shared| {
        std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            LockConflict {
                perm,
                shared,
                path: path.to_path_buf(),
            },
        )
    };
    let first_conflict = || -> std::io::Result<Option<(Perm, bool)>> {
        for p in Perm::ALL {
            if req.perm.contains(p) && is_held_elsewhere(file, SHARED_BASE + p as i64)? {
                return Ok(Some((p, false)));
            }
        }
        for p in Perm::ALL {
            if !req.shared.contains(p) && is_held_elsewhere(file, PERM_BASE + p as i64)? {
                return Ok(Some((p, true)));
            }
        }
        Ok(None)
    };
    // A closed image's locks outlive its close while a child process forked
    // by another thread still holds a copy of the descriptor (between fork
    // and exec), so a process that reopens an image it just closed can see
    // its own old locks for a moment. Look again briefly before calling it
    // a conflict; a real one (another opener) is still there after 50 ms.
    for attempt in 0.. {
        match first_conflict()? {
            None => return Ok(()),
            Some((p, shared)) if attempt >= 10 => return Err(conflict(p, shared)),
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, rw: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(rw)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writers_and_readers_exclude_each_other_as_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let w = open(&p, true);
        acquire(&w, &p, LockRequest::image(false)).unwrap();
        // A second writer: "write" (the first does not share it).
        let w2 = open(&p, true);
        let e = acquire(&w2, &p, LockRequest::image(false)).unwrap_err();
        let c = conflict_in(&e).unwrap();
        assert_eq!((c.perm, c.shared), (Perm::Write, false));
        drop(w2);
        // A reader: shared "write" (it does not share what the writer uses).
        let r = open(&p, false);
        let e = acquire(&r, &p, LockRequest::image(true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to get shared \"write\" lock\nIs another process using the image [{}]?",
                p.display()
            )
        );
        drop(r);
        // Force-share: no conflict.
        let r = open(&p, false);
        acquire(&r, &p, LockRequest::image(true).force_shared()).unwrap();
        drop(w);
        // Two readers coexist; then a writer is refused.
        let r2 = open(&p, false);
        acquire(&r2, &p, LockRequest::image(true)).unwrap();
        let r3 = open(&p, false);
        acquire(&r3, &p, LockRequest::image(true)).unwrap();
        let w = open(&p, true);
        let e = acquire(&w, &p, LockRequest::image(false)).unwrap_err();
        assert_eq!(conflict_in(&e).unwrap().perm, Perm::Write);
    }
}
