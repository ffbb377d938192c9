//! `zcow-img measure`: qemu-img's size estimate for a new raw or qcow2
//! image, with the write-pointer array of a zoned one (`-o zone.*`).

use super::map::{map, MapOptions};
use super::{is_uri, ImgError, ImgResult};
use crate::img::create::parse_options;

/// What `measure` takes from the command line.
#[derive(Debug, Clone, Default)]
pub struct MeasureOptions {
    /// `--size`: measure an empty image of this size.
    pub size: Option<u64>,
    /// The source image (instead of `--size`).
    pub file: Option<String>,
    /// `-f`: source format.
    pub format: Option<String>,
    /// `-O`: target format (default raw).
    pub out_format: Option<String>,
    /// `-o`: target create options.
    pub create_opts: Vec<String>,
}

/// The estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// Bytes the image needs for the source's data.
    pub required: u64,
    /// Bytes with every cluster allocated.
    pub fully_allocated: u64,
    /// Persistent bitmap bytes (shown only for a qcow2 source).
    pub bitmaps: Option<u64>,
}

/// Refcount table and block bytes for `clusters` clusters (QEMU's fixed point).
fn refcount_metadata_size(clusters: u64, cs: u64, refcount_order: u32) -> u64 {
    let per_table_cluster = cs / 8;
    let per_block = cs * 8 / (1 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            break;
        }
    }
    (blocks + table) * cs
}

/// Fully allocated size of a qcow2 image of `total` bytes, plus the extra
/// metadata clusters (the zoned write-pointer array).
fn prealloc_size(total: u64, cs: u64, refcount_order: u32, ext_l2: bool, extra: u64) -> u64 {
    let aligned = total.div_ceil(cs) * cs;
    let l2e: u64 = if ext_l2 { 16 } else { 8 };
    let mut meta = cs + extra;
    let nl2e = (aligned / cs).div_ceil(cs / l2e) * (cs / l2e);
    meta += nl2e * l2e;
    let nl1e = (nl2e * l2e / cs).div_ceil(cs / 8) * (cs / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size((meta + aligned) / cs, cs, refcount_order);
    meta + aligned
}

/// Compute the estimate.
pub fn measure(o: &MeasureOptions) -> ImgResult<Measure> {
    let fmt = o.out_format.as_deref().unwrap_or("raw");
    if fmt != "raw" && fmt != "qcow2" {
        return Err(ImgError::Failed(format!("Unknown file format '{fmt}'")));
    }
    // (source size, data bytes counted as qemu-img does, source is qcow2)
    let (size, data, src_qcow2) = match (&o.size, &o.file) {
        (Some(_), Some(_)) => {
            return Err(ImgError::Failed(
                "--size N cannot be used together with a filename.".into(),
            ))
        }
        (None, None) => {
            return Err(ImgError::Failed(
                "Either --size N or one filename must be specified.".into(),
            ))
        }
        (Some(s), None) => (*s, Box::new(|_| 0u64) as DataFn, false),
        (None, Some(f)) => {
            let dev = super::open_named(f, o.format.as_deref(), true)?;
            let size = dev.size();
            let qcow2 = !is_uri(f) && dev.describe() != "raw";
            drop(dev);
            (size, source_data(f, o.format.as_deref(), fmt)?, qcow2)
        }
    };
    if fmt == "raw" {
        if let Some(k) = o
            .create_opts
            .iter()
            .flat_map(|g| g.split(','))
            .find_map(|kv| {
                let k = kv.split_once('=').map_or(kv, |(k, _)| k);
                (!k.is_empty() && k != "size" && k != "preallocation").then(|| k.to_string())
            })
        {
            return Err(ImgError::Failed(format!("Invalid parameter '{k}'")));
        }
        let r = size.div_ceil(512) * 512;
        return Ok(Measure {
            required: r,
            fully_allocated: r,
            bitmaps: None,
        });
    }
    let co = parse_options(&o.create_opts, Some(size)).map_err(ImgError::Failed)?;
    let cs = co.cluster_size;
    crate::format::create::validate(&crate::format::create::CreateOptions {
        size: size.max(1),
        ..co.clone()
    })
    .map_err(|e| ImgError::Failed(e.to_string()))?;
    let virtual_size = size.div_ceil(cs) * cs;
    let wp_array = match &co.zoned {
        Some(z) => {
            let e = z.resolve(size, cs).map_err(ImgError::Failed)?;
            e.zonedmeta_size.div_ceil(cs) * cs
        }
        None => 0,
    };
    let required_data = if o.file.is_some() && co.backing_file.is_some() {
        virtual_size
    } else {
        data(cs)
    };
    let full = prealloc_size(
        virtual_size,
        cs,
        co.refcount_bits.trailing_zeros(),
        co.extended_l2,
        wp_array,
    );
    Ok(Measure {
        required: full - virtual_size + required_data,
        fully_allocated: full,
        bitmaps: (co.version >= 3 && src_qcow2).then_some(0),
    })
}

/// Data bytes of the source as qemu-img counts them for a target of
/// cluster size `cs`: every allocated data run, extended to its cluster end.
fn source_data(file: &str, format: Option<&str>, _fmt: &str) -> ImgResult<DataFn> {
    let (entries, _) = map(&MapOptions {
        file: file.to_string(),
        format: format.map(str::to_string),
        ..Default::default()
    })?;
    let runs: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| !e.zero && e.data && e.present)
        .map(|e| (e.start, e.len))
        .collect();
    Ok(Box::new(move |cs: u64| {
        let mut required = 0u64;
        let mut pos = 0u64;
        for &(start, len) in &runs {
            // qemu walks on from the previous run's cluster end.
            let s = start.max(pos);
            let end = start + len;
            if s >= end {
                continue;
            }
            let pnum = (end.div_ceil(cs) * cs) - s;
            required += s % cs + pnum;
            pos = s + pnum;
        }
        required
    }))
}

/// Data bytes counted for a target cluster size.
type DataFn = Box<dyn Fn(u64) -> u64>;

/// qemu-img's human form.
pub fn render_human(m: &Measure) -> String {
    let mut s = format!(
        "required size: {}\nfully allocated size: {}\n",
        m.required, m.fully_allocated
    );
    if let Some(b) = m.bitmaps {
        s.push_str(&format!("bitmaps size: {b}\n"));
    }
    s
}

/// qemu-img's JSON form.
pub fn render_json(m: &Measure) -> String {
    let mut s = String::from("{\n");
    if let Some(b) = m.bitmaps {
        s.push_str(&format!("    \"bitmaps\": {b},\n"));
    }
    s.push_str(&format!(
        "    \"required\": {},\n    \"fully-allocated\": {}\n}}\n",
        m.required, m.fully_allocated
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_image_sizes_match_qemu() {
        // qemu-img measure -O qcow2 --size 1G: 393216 / 1074135040.
        let m = measure(&MeasureOptions {
            size: Some(1 << 30),
            out_format: Some("qcow2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((m.required, m.fully_allocated), (393216, 1074135040));
    }
}
