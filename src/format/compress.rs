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

/// How many bytes at the start of `src` hold one compressed cluster of
/// `cluster` bytes: `Some(n)` when the stream decompresses to a full
/// cluster from the first `n` bytes, `None` when it does not (the data
/// cannot be located there). Repair uses it to tell a wrong sector count
/// (the stream is intact; the count is shortened to fit it) from a wrong
/// offset (nothing decompresses).
pub fn stream_len(compression_type: u8, src: &[u8], cluster: usize) -> Option<usize> {
    let mut out = vec![0u8; cluster];
    match compression_type {
        0 => {
            let mut d = flate2::Decompress::new(false);
            match d.decompress(src, &mut out, flate2::FlushDecompress::Finish) {
                Ok(_) if d.total_out() as usize == cluster => Some(d.total_in() as usize),
                _ => None,
            }
        }
        1 => {
            let mut rest = src;
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut rest).ok()?;
            let mut done = 0;
            while done < cluster {
                match dec.read(&mut out[done..]) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => done += n,
                }
            }
            // Let the decoder finish the frame (its checksum, if any).
            let mut one = [0u8; 1];
            if !matches!(dec.read(&mut one), Ok(0)) {
                return None;
            }
            drop(dec);
            Some(src.len() - rest.len())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn stream_len_finds_the_deflate_stream_and_rejects_garbage() {
        let data = vec![0x5au8; 4096];
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        let mut z = e.finish().unwrap();
        let n = z.len();
        z.extend_from_slice(&[0xee; 700]);
        assert_eq!(stream_len(0, &z, 4096), Some(n));
        assert_eq!(stream_len(0, &z[..n - 1], 4096), None);
        assert_eq!(stream_len(0, &[0xee; 700], 4096), None);
    }
}
