//! qemu-io's `-s` (snapshot mode): the image opened read-only under an
//! in-memory copy-on-write layer, so writes are seen by later reads but
//! never reach the file and vanish when the program ends.

use crate::device::{check_range, BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Copy-on-write unit.
const CHUNK: u64 = 64 << 10;
/// Most memory the layer may hold (written data), so a long run fails
/// with ENOSPC instead of exhausting memory.
const MAX_BYTES: u64 = 1 << 30;

/// A read-only device with writes kept in memory.
#[derive(Debug)]
pub struct MemOverlay {
    base: Arc<dyn BlockDevice>,
    chunks: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl MemOverlay {
    /// Layer over `base` (opened read-only by the caller). Zoned devices
    /// are refused: their write pointers live in the image.
    pub fn new(base: Arc<dyn BlockDevice>) -> DevResult<Self> {
        if base.zone_geometry().is_some() {
            return Err(DeviceError::Unsupported(
                "snapshot mode (-s) on a zoned image".into(),
            ));
        }
        Ok(Self {
            base,
            chunks: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        // A panic elsewhere cannot leave a chunk half-copied: recover.
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply `f` to the overlay bytes of `[offset, offset+len)`, copying
    /// chunks from the base first.
    fn modify(&self, offset: u64, len: u64, mut f: impl FnMut(u64, &mut [u8])) -> DevResult<()> {
        check_range(offset, len, self.size())?;
        let mut map = self.lock();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = pos / CHUNK;
            let start = idx * CHUNK;
            if !map.contains_key(&idx) {
                if (map.len() as u64 + 1) * CHUNK > MAX_BYTES {
                    return Err(DeviceError::Format(crate::format::FormatError::NoSpace(
                        format!("snapshot mode keeps at most {MAX_BYTES} written bytes in memory"),
                    )));
                }
                let n = CHUNK.min(self.size() - start) as usize;
                let mut buf = vec![0u8; n].into_boxed_slice();
                self.base.read(start, &mut buf)?;
                map.insert(idx, buf);
            }
            let chunk = map.get_mut(&idx).expect("inserted above");
            let from = (pos - start) as usize;
            let to = ((end - start).min(chunk.len() as u64)) as usize;
            f(pos - offset, &mut chunk[from..to]);
            pos = start + to as u64;
        }
        Ok(())
    }
}

impl BlockDevice for MemOverlay {
    fn size(&self) -> u64 {
        self.base.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.base.read(offset, buf)?;
        let map = self.lock();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / CHUNK;
            let start = idx * CHUNK;
            let next = (start + CHUNK).min(end);
            if let Some(c) = map.get(&idx) {
                let a = (pos - offset) as usize;
                let b = (next - offset) as usize;
                buf[a..b].copy_from_slice(&c[(pos - start) as usize..(next - start) as usize]);
            }
            pos = next;
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> DevResult<()> {
        self.modify(offset, data.len() as u64, |at, dst| {
            let at = at as usize;
            dst.copy_from_slice(&data[at..at + dst.len()]);
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> DevResult<()> {
        self.modify(offset, len, |_, dst| dst.fill(0))
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        self.modify(offset, len, |_, dst| dst.fill(0))
    }
    fn flush(&self) -> DevResult<()> {
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        check_range(offset, len, self.size())?;
        let map = self.lock();
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / CHUNK;
            let next = ((idx + 1) * CHUNK).min(end);
            if map.contains_key(&idx) {
                out.push(Extent {
                    len: next - pos,
                    hole: false,
                    zero: false,
                });
            } else {
                out.extend(self.base.block_status(pos, next - pos)?);
            }
            pos = next;
        }
        Ok(out)
    }
    fn format_info(&self) -> Option<crate::device::FormatInfo> {
        self.base.format_info()
    }
    fn describe(&self) -> String {
        self.base.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::RawDevice;

    #[test]
    fn writes_stay_in_memory() {
        let base = Arc::new(RawDevice::memory(256 << 10).unwrap());
        base.write(0, &[1; 1024], false).unwrap();
        let o = MemOverlay::new(base.clone()).unwrap();
        o.write(512, &[7; 70000], false).unwrap();
        let mut b = vec![0; 71000];
        o.read(0, &mut b).unwrap();
        assert_eq!(&b[..512], &[1; 512][..]);
        assert!(b[512..70512].iter().all(|&x| x == 7));
        assert!(b[70512..].iter().all(|&x| x == 0));
        let mut b = [0; 1024];
        base.read(0, &mut b).unwrap();
        assert_eq!(b, [1; 1024]);
    }
}
