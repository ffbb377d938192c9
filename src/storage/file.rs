//! File backend: positioned I/O with `pread`/`pwrite`, `fdatasync`, hole punching.

use super::lock::LockRequest;
use super::{Op, Result, Storage, StorageError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A directory was given where an image file belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRegularFile(pub PathBuf);

impl std::fmt::Display for NotRegularFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // QEMU's file driver's words.
        write!(
            f,
            "'file' driver requires '{}' to be a regular file",
            self.0.display()
        )
    }
}

impl std::error::Error for NotRegularFile {}

/// A regular file (or block device) as image storage.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    read_only: bool,
}

impl FileStorage {
    /// Open an existing image file, locked as QEMU locks an image file
    /// ([`LockRequest::default_for`]: a reader or a writer of metadata,
    /// force-shared under `-U`). Another process's conflicting lock fails
    /// the open with an error wrapping a [`super::lock::LockConflict`].
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        Self::open_with(path, read_only, Some(LockRequest::default_for(read_only)))
    }

    /// Open an existing file with the given locks (None: no locks, for
    /// a short probe of the first bytes).
    pub fn open_with(
        path: &Path,
        read_only: bool,
        lock: Option<LockRequest>,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        if file.metadata()?.is_dir() {
            // open(2) of a directory read-only succeeds; QEMU's file driver
            // refuses it.
            return Err(std::io::Error::other(NotRegularFile(path.to_path_buf())));
        }
        if let Some(req) = lock {
            super::lock::acquire(&file, path, req)?;
        }
        Ok(Self { file, read_only })
    }

    /// Create (or truncate) a file for writing. The file is checked for
    /// other users' locks before it is truncated.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        super::lock::acquire(&file, path, LockRequest::image(false))?;
        file.set_len(0)?;
        Ok(Self {
            file,
            read_only: false,
        })
    }

    /// A second descriptor of the same open file (`dup`), for callers that
    /// hand file ranges to the kernel (`sendfile`). It shares the open file
    /// description, so it is the locked file, and closing it releases no
    /// lock.
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Wrap an already open file.
    pub fn from_file(file: File, read_only: bool) -> Self {
        Self { file, read_only }
    }

    fn io(op: Op, offset: u64, len: u64, source: std::io::Error) -> StorageError {
        StorageError::Io {
            op,
            offset,
            len,
            source,
        }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(StorageError::ShortRead {
                        offset,
                        len: buf.len() as u64,
                        size: self.len()?,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io(Op::Read, offset, buf.len() as u64, e)),
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Self::io(Op::Write, offset, data.len() as u64, e))
    }

    fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| Self::io(Op::Sync, 0, 0, e))
    }

    fn len(&self) -> Result<u64> {
        let md = self
            .file
            .metadata()
            .map_err(|e| Self::io(Op::Len, 0, 0, e))?;
        if md.file_type().is_file() {
            return Ok(md.len());
        }
        // Block devices report length 0 in metadata; seek to the end instead.
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on a valid fd has no memory effects.
        let end = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
        if end < 0 {
            return Err(Self::io(Op::Len, 0, 0, std::io::Error::last_os_error()));
        }
        Ok(end as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        self.file
            .set_len(len)
            .map_err(|e| Self::io(Op::SetLen, len, 0, e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fallocate on a valid fd has no memory effects.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let size = self.len()?;
        if offset >= size {
            return Ok(());
        }
        super::write_zeroes_chunked(self, offset, len.min(size - offset))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }
}
