//! Compression and decompression of compressed clusters: raw deflate
//! (type 0, `compression_type=zlib`) and zstd (type 1).
//!
//! Deflate uses a 4 KiB window (12 bits), as QEMU does on both sides:
//! QEMU inflates with that window, so a stream with longer back-references
//! (a 32 KiB-window deflater makes them in 64 KiB clusters) would not read
//! back in QEMU.

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

/// Deflate window QEMU compresses and decompresses with (2^12 bytes).
const DEFLATE_WINDOW_BITS: u8 = 12;

/// Compress one cluster. Returns the compressed stream when it is at most
/// `limit` bytes, or `None` when it would be larger (the caller then
/// writes the cluster uncompressed, as QEMU does).
pub fn compress(compression_type: u8, src: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
    match compression_type {
        0 => {
            // Level 6 (zlib's default), raw stream, QEMU's window.
            let mut c = flate2::Compress::new_with_window_bits(
                flate2::Compression::new(6),
                false,
                DEFLATE_WINDOW_BITS,
            );
            let mut out = Vec::with_capacity(limit);
            match c.compress_vec(src, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) if out.len() <= limit => Ok(Some(out)),
                // Output space ran out: not compressible enough.
                Ok(_) => Ok(None),
                Err(e) => Err(invalid!("deflate compression failed: {e}")),
            }
        }
        1 => {
            let out =
                ruzstd::encoding::compress_to_vec(src, ruzstd::encoding::CompressionLevel::Fastest);
            Ok((out.len() <= limit).then_some(out))
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

    /// Random letters repeating every `period` bytes (plus 10).
    fn sample(n: usize, period: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut x = 12345u32;
        let block: Vec<u8> = (0..period)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                b'a' + (x >> 16) as u8 % 26
            })
            .collect();
        while v.len() < n {
            v.extend_from_slice(&block);
            v.extend_from_slice(b"0123456789");
        }
        v.truncate(n);
        v
    }

    #[test]
    fn round_trips_both_types() {
        for t in [0u8, 1] {
            for n in [512usize, 4096, 65536] {
                let src = sample(n, 100);
                let c = compress(t, &src, n - 1).unwrap().expect("compressible");
                assert!(c.len() < n);
                let mut out = vec![0u8; n];
                decompress(t, &c, &mut out).unwrap();
                assert_eq!(out, src, "type {t} size {n}");
                // Trailing bytes of a neighbour's stream do not matter.
                let mut padded = c.clone();
                padded.extend_from_slice(&[0xa5; 700]);
                let mut out2 = vec![0u8; n];
                decompress(t, &padded, &mut out2).unwrap();
                assert_eq!(out2, src);
            }
        }
    }

    #[test]
    fn incompressible_data_is_refused() {
        let mut x = 1u64;
        let src: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for t in [0u8, 1] {
            assert_eq!(compress(t, &src, 4095).unwrap(), None, "type {t}");
        }
        assert!(compress(2, &src, 4095).is_err());
    }

    #[test]
    fn stream_len_finds_the_deflate_stream_and_rejects_garbage() {
        let data = vec![0x5au8; 4096];
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        let mut z = e.finish().unwrap();
        let n = z.len();
        z.extend_from_slice(&[0xee; 700]);
        assert_eq!(stream_len(0, &z, 4096), Some(n));
        // Cut short of its data (a stream missing only its end-of-block
        // bits still yields the whole cluster, which QEMU accepts too).
        assert_eq!(stream_len(0, &z[..n / 2], 4096), None);
        assert_eq!(stream_len(0, &[0xee; 700], 4096), None);
    }
}
