//! Guest reads: data, compressed clusters, unallocated ranges (backing
//! image or zeroes).

use super::mapping::Piece;
use super::*;

impl GuestRead for Qcow2 {
    fn guest_size(&self) -> u64 {
        self.size()
    }
    fn read_guest(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.size();
        let n = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            self.read(offset, &mut buf[..n])?;
        }
        buf[n..].fill(0);
        Ok(())
    }
}

impl Qcow2 {
    pub(super) fn read_compressed(&self, offset: u64, size: u64) -> Result<Vec<u8>> {
        if self.p.has_data_file {
            return Err(FormatError::Corrupt(
                "compressed cluster in an image with an external data file".into(),
            ));
        }
        let size = size.min(2 * self.p.cs + 512);
        let mut src = vec![0u8; size as usize];
        self.store.read_at_zero_fill(offset, &mut src)?;
        let mut out = vec![0u8; self.p.cs as usize];
        decompress(self.p.compression_type, &src, &mut out).map_err(|e| {
            FormatError::Corrupt(format!(
                "compressed cluster at host offset {offset:#x}: {e}"
            ))
        })?;
        Ok(out)
    }

    pub(super) fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<()> {
        match self.data.read_at(host, buf) {
            Ok(()) => Ok(()),
            // Clusters of a sparse tail past EOF read as zero.
            Err(StorageError::ShortRead { .. }) => Ok(self.data.read_at_zero_fill(host, buf)?),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn read_unalloc(&self, guest: u64, buf: &mut [u8]) -> Result<()> {
        match &self.backing {
            Some(b) => b.read_guest(guest, buf),
            None => {
                // No lock here: this runs as unlocked I/O (see UnlockedIo).
                if self.p.names_backing {
                    return Err(FormatError::Unsupported(
                        "the backing file was not opened".into(),
                    ));
                }
                buf.fill(0);
                Ok(())
            }
        }
    }

    pub(super) fn encryption_check(&self) -> Result<()> {
        if lock(&self.meta).header.crypt_method != 0 {
            return Err(FormatError::Unsupported(
                "Parameter 'encrypt.key-secret' is required for cipher: zcow does not decrypt images".into(),
            ));
        }
        Ok(())
    }

    /// Read guest bytes.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.read_mapped(offset, buf, false)
    }

    /// Read through the mapping at any offset the L1 table may cover (the
    /// caller checked the range). `own_only`: unallocated clusters read as
    /// zeroes instead of from the backing image (the VM-state area, which
    /// is this image's alone).
    pub(super) fn read_mapped(&self, offset: u64, buf: &mut [u8], own_only: bool) -> Result<()> {
        self.encryption_check()?;
        let (pieces, _io) = {
            let mut m = lock(&self.meta);
            let p = self.map_range(&mut m, offset, buf.len() as u64)?;
            (p, UnlockedIo::start(&self.unlocked_io))
        };
        let mut at = 0usize;
        for p in pieces {
            match p {
                Piece::Zero(l) => {
                    buf[at..at + l as usize].fill(0);
                    at += l as usize;
                }
                Piece::Unalloc { len, .. } if own_only => {
                    buf[at..at + len as usize].fill(0);
                    at += len as usize;
                }
                Piece::Unalloc { guest, len } => {
                    self.read_unalloc(guest, &mut buf[at..at + len as usize])?;
                    at += len as usize;
                }
                Piece::Data { host, len } => {
                    self.read_data(host, &mut buf[at..at + len as usize])?;
                    at += len as usize;
                }
                Piece::Compressed {
                    offset: co,
                    size,
                    in_off,
                    len,
                } => {
                    let c = self.read_compressed(co, size)?;
                    buf[at..at + len as usize]
                        .copy_from_slice(&c[in_off as usize..(in_off + len) as usize]);
                    at += len as usize;
                }
            }
        }
        Ok(())
    }
}

/// A piece of a guest range as the host holds it, for a caller that sends
/// the bytes straight from the image file (`sendfile`) instead of reading
/// them into a buffer.
#[derive(Debug, Clone, Copy)]
pub enum HostRun<'a> {
    /// `len` bytes at `offset` of the open file `fd`. Bytes past the end
    /// of the file read as zeroes (a sparse tail).
    File {
        /// The image file.
        fd: std::os::fd::BorrowedFd<'a>,
        /// Host offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `len` bytes of zeroes.
    Zero(u64),
}

/// What a [`Qcow2::read_direct`] sink does with the file's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageUse {
    /// It uses the pages only while it runs: copies them (ublk: a `pwrite`
    /// to the driver from a mapping of the file) or only looks at them.
    /// Freed clusters stay reusable (the reuse pool).
    Borrow,
    /// It hands the pages to something that outlives it (`sendfile` queues
    /// them in a socket): from then on freed clusters are punched at once
    /// instead of reused, so a queued page never changes.
    Lend,
}

impl Qcow2 {
    /// Map `[offset, offset+len)` to host runs and hand them to `sink`
    /// while the clusters they name cannot be freed and reused (freeing
    /// waits until `sink` returns; it is called without the metadata lock).
    /// Returns false without calling `sink` when the range is not served
    /// from this image's file alone (compressed clusters, a backing file,
    /// an external data file, encryption, an image opened on a store): the
    /// caller then reads as usual.
    pub fn read_direct(
        &self,
        offset: u64,
        len: u64,
        use_: PageUse,
        sink: &mut dyn FnMut(&[HostRun<'_>]),
    ) -> Result<bool> {
        let Some(file) = self.direct.as_ref().filter(|_| !self.p.has_data_file) else {
            return Ok(false);
        };
        self.check_range(offset, len)?;
        let (runs, _io) = {
            let mut m = lock(&self.meta);
            if m.header.crypt_method != 0 {
                return Ok(false);
            }
            let pieces = self.map_range(&mut m, offset, len)?;
            let fd = std::os::fd::AsFd::as_fd(file);
            let mut runs: Vec<HostRun<'_>> = Vec::with_capacity(pieces.len());
            for p in pieces {
                let run = match p {
                    Piece::Data { host, len } => HostRun::File {
                        fd,
                        offset: host,
                        len,
                    },
                    Piece::Zero(l) => HostRun::Zero(l),
                    Piece::Unalloc { len, .. }
                        if self.backing.is_none() && !self.p.names_backing =>
                    {
                        HostRun::Zero(len)
                    }
                    Piece::Unalloc { .. } | Piece::Compressed { .. } => return Ok(false),
                };
                if use_ == PageUse::Lend && matches!(run, HostRun::File { .. }) {
                    m.pages_lent = true;
                }
                match (runs.last_mut(), run) {
                    (Some(HostRun::Zero(a)), HostRun::Zero(b)) => *a += b,
                    _ => runs.push(run),
                }
            }
            (runs, UnlockedIo::start(&self.unlocked_io))
        };
        sink(&runs);
        Ok(true)
    }
}
