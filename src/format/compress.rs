//! Decompression of compressed clusters: raw deflate (type 0) and zstd (type 1).

use super::error::{invalid, Result};
use std::io::Read;

/// Inflate `src` into `out` (one cluster). Succeeds when the stream ends or
/// when the output cluster is full, as QEMU does.
pub fn decompress(compression_type: u8, src: &[u8], out: &mut [u8]) -> Result<()> {
    match compression_type {
        0 => {
            let mut d = flate2::Decompress::new(false);
            match d.decompress(src, out, flate2::FlushDecompress::Finish) {
                Ok(flate2::Status::StreamEnd) => Ok(()),
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                Ok(_) => Err(invalid!(
                    "compressed cluster: deflate stream ended after {} of {} bytes",
                    d.total_out(),
                    out.len()
                )),
                Err(e) => Err(invalid!("compressed cluster: bad deflate data: {e}")),
            }
        }
        1 => {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(src)
                .map_err(|e| invalid!("compressed cluster: bad zstd frame: {e}"))?;
            let mut done = 0;
            while done < out.len() {
                match dec.read(&mut out[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(invalid!("compressed cluster: bad zstd data: {e}")),
                }
            }
            if done != out.len() {
                return Err(invalid!(
                    "compressed cluster: zstd frame gave {} of {} bytes",
                    done,
                    out.len()
                ));
            }
            Ok(())
        }
        t => Err(invalid!("unknown compression type {t}")),
    }
}
