//! Where a write's bytes come from: a slice in memory, or a source that can
//! put them into the image file itself. zcow-ublk's requests are the second
//! kind: the driver copies a request's data straight into a mapping of the
//! file, one copy instead of two (driver to buffer, buffer to file).

use std::io;
use std::os::fd::BorrowedFd;

/// The bytes of one write.
pub trait Payload {
    /// Length in bytes.
    fn len(&self) -> usize;

    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run `f` on bytes `[at, at + len)` in memory.
    fn with_bytes(&self, at: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()>;

    /// Put bytes `[at, at + len)` at offset `host` of the file `fd` without
    /// a buffer in between. `Ok(false)`: not possible for this range (the
    /// caller takes the bytes through memory instead, so a partial attempt
    /// does no harm).
    fn write_to_file(
        &self,
        at: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        host: u64,
    ) -> io::Result<bool> {
        let _ = (at, len, fd, host);
        Ok(false)
    }
}

impl Payload for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn with_bytes(&self, at: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let bytes = at
            .checked_add(len)
            .and_then(|end| self.get(at..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        f(bytes);
        Ok(())
    }
}

/// Run `f` on all of `src`'s bytes in memory, returning what it returns.
pub fn with_all<R>(src: &dyn Payload, f: impl FnOnce(&[u8]) -> R) -> io::Result<R> {
    let mut f = Some(f);
    let mut out = None;
    src.with_bytes(0, src.len(), &mut |d| out = f.take().map(|f| f(d)))?;
    out.ok_or_else(|| io::Error::other("the payload gave no bytes"))
}
