//! Creating images: plain qcow2 as qemu-img lays them out, and zoned ones
//! with the write-pointer array after the L1 table.

use super::error::{FormatError, Result};
use super::features::*;
use super::header::{required_l1_entries, Extension, Header, MAX_HOST_OFFSET, V3_HEADER_LEN};
use super::l2::COPIED;
use super::refcount;
use super::zoned::{encode_wp_entries, initial_entries, ZonedCreateOptions};
use crate::progress::Progress;
use crate::storage::Storage;

/// Preallocation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing allocated.
    #[default]
    Off,
    /// L2 tables and data clusters allocated (file extended sparsely).
    Metadata,
}

/// Everything `create` needs.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size (power of two, 512 B – 2 MiB).
    pub cluster_size: u64,
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// Refcount width (1, 2, 4, ..., 64).
    pub refcount_bits: u32,
    /// Set the lazy-refcounts compatible bit.
    pub lazy_refcounts: bool,
    /// Preallocation.
    pub preallocation: Preallocation,
    /// Backing file name, stored as given.
    pub backing_file: Option<String>,
    /// Backing file format name.
    pub backing_fmt: Option<String>,
    /// 0 = zlib, 1 = zstd.
    pub compression_type: u8,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Zoned options, when zoned.
    pub zoned: Option<ZonedCreateOptions>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_fmt: None,
            compression_type: 0,
            extended_l2: false,
            zoned: None,
        }
    }
}

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::BadOption(msg.into())
}

/// Check the option combination; the first problem is returned.
pub fn validate(o: &CreateOptions) -> Result<()> {
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(bad(format!(
            "Cluster size must be a power of two between 512 and 2048k (got {cs})"
        )));
    }
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(bad(format!(
            "Refcount width must be a power of two and may not exceed 64 bits (got {})",
            o.refcount_bits
        )));
    }
    if o.version != 2 && o.version != 3 {
        return Err(bad(format!(
            "Invalid compatibility level: version {}",
            o.version
        )));
    }
    if o.version == 2 {
        if o.refcount_bits != 16 {
            return Err(bad(
                "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
            ));
        }
        if o.lazy_refcounts {
            return Err(bad(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
            ));
        }
        if o.extended_l2 {
            return Err(bad(
                "Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
            ));
        }
        if o.compression_type != 0 {
            return Err(bad(
                "Compression type can only be set with compatibility level 1.1 and above (use compat=1.1 or greater)",
            ));
        }
    }
    if o.extended_l2 && cs < 16384 {
        return Err(bad(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    if o.backing_fmt.is_some() && o.backing_file.is_none() {
        return Err(bad("Backing format cannot be used without backing file"));
    }
    if o.backing_file.is_some() && o.preallocation != Preallocation::Off {
        return Err(bad(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    if let Some(z) = &o.zoned {
        if o.version < 3 {
            return Err(bad("zoned images require compat=1.1 (qcow2 version 3)"));
        }
        if o.backing_file.is_some() {
            return Err(bad("zoned images cannot have a backing file"));
        }
        if o.extended_l2 {
            return Err(bad("zoned images cannot use extended L2 entries"));
        }
        z.resolve(o.size, cs).map_err(bad)?;
    }
    let cb = cs.trailing_zeros();
    let l1 = required_l1_entries(o.size, cb, if o.extended_l2 { 16 } else { 8 });
    if l1 * 8 > super::header::MAX_L1_BYTES || o.size > MAX_HOST_OFFSET {
        // qemu-img's words; the numbers: size over cs-byte clusters.
        return Err(bad(
            "The image size is too large for file format 'qcow2' (try using a larger cluster size)"
                .to_string(),
        ));
    }
    Ok(())
}

/// Create an image on an empty store.
pub fn create(store: &dyn Storage, o: &CreateOptions) -> Result<()> {
    create_with_progress(store, o, &Progress::hidden())
}

/// [`create`], reporting on `progress` as the tables are written (a
/// preallocated image writes an L2 table per `cluster_size / 8` clusters).
/// The caller finishes the bar.
pub fn create_with_progress(
    store: &dyn Storage,
    o: &CreateOptions,
    progress: &Progress,
) -> Result<()> {
    validate(o)?;
    let cs = o.cluster_size;
    let cb = cs.trailing_zeros();
    let order = o.refcount_bits.trailing_zeros();
    let rbe = refcount::entries_per_block(cb, order);
    let l2_es: u64 = if o.extended_l2 { 16 } else { 8 };
    let l2_entries = cs / l2_es;
    let l1_size = required_l1_entries(o.size, cb, l2_es);
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let zoned = match &o.zoned {
        Some(z) => Some(z.resolve(o.size, cs).map_err(bad)?),
        None => None,
    };
    let wp_clusters = zoned.as_ref().map_or(0, |z| z.zonedmeta_size.div_ceil(cs));
    let data_clusters = match o.preallocation {
        Preallocation::Off => 0,
        Preallocation::Metadata => o.size.div_ceil(cs),
    };
    let l2_tables = data_clusters.div_ceil(l2_entries);
    // Fixed point: refblocks and reftable must cover everything incl. themselves.
    let fixed = 1 + l1_clusters + wp_clusters + l2_tables + data_clusters;
    let (mut rt_clusters, mut rbs) = (1u64, 1u64);
    loop {
        let total = fixed + rt_clusters + rbs;
        let need_rbs = total.div_ceil(rbe);
        let need_rt = (need_rbs * 8).div_ceil(cs).max(1);
        if need_rbs == rbs && need_rt == rt_clusters {
            break;
        }
        rbs = need_rbs;
        rt_clusters = need_rt;
    }
    if rt_clusters * cs > super::header::MAX_REFTABLE_BYTES {
        return Err(bad(
            "the refcount table would exceed 8 MiB; use larger clusters",
        ));
    }
    let rt_off = cs;
    let rb_first = 1 + rt_clusters;
    let l1_off = (rb_first + rbs) * cs;
    let wp_first = rb_first + rbs + l1_clusters;
    let prealloc_first = wp_first + wp_clusters;
    let total = prealloc_first + l2_tables + data_clusters;
    if total * cs > MAX_HOST_OFFSET {
        return Err(bad("the image file would exceed 2^56 bytes"));
    }

    // Header.
    let mut incompat = 0u64;
    let mut exts = Vec::new();
    if let Some(f) = &o.backing_fmt {
        exts.push(Extension::BackingFormat(f.clone()));
    }
    if o.version >= 3 {
        exts.push(Extension::FeatureTable(if zoned.is_some() {
            default_feature_table()
        } else {
            qemu_feature_table()
        }));
    }
    if let Some(mut z) = zoned.clone() {
        z.zonedmeta_offset = wp_first * cs;
        exts.push(Extension::Zoned(z));
        incompat |= INCOMPAT_ZONED;
    }
    if o.compression_type != 0 {
        incompat |= INCOMPAT_COMPRESSION;
    }
    if o.extended_l2 {
        incompat |= INCOMPAT_EXTL2;
    }
    let mut h = Header {
        version: o.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: cb,
        size: o.size,
        crypt_method: 0,
        l1_size: l1_size as u32,
        l1_table_offset: l1_off,
        refcount_table_offset: rt_off,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompat,
        compatible_features: if o.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: order,
        header_length: if o.version >= 3 { V3_HEADER_LEN } else { 72 },
        compression_type: o.compression_type,
        additional: vec![0; 7],
        extensions: exts,
        backing_file: o.backing_file.clone(),
    };
    let c0 = match h.encode() {
        Ok(c) => c,
        Err(_) if zoned.is_some() => {
            // Small clusters: keep only the name qemu-img needs to explain
            // why it refuses the image.
            for e in h.extensions.iter_mut() {
                if let Extension::FeatureTable(t) = e {
                    t.retain(|f| f.kind == 0 && f.bit == 5);
                }
            }
            h.encode()?
        }
        Err(e) => return Err(e),
    };

    store.set_len(0)?;
    // Reftable.
    let mut rt = vec![0u8; (rt_clusters * cs) as usize];
    for i in 0..rbs {
        let off = (rb_first + i) * cs;
        rt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
    }
    store.write_at(rt_off, &rt)?;
    // Refblocks: refcount 1 for clusters [0, total).
    // Each table written is one step: the refblocks' share of the bar is
    // their share of the tables.
    let l2_share = l2_tables as f64 / (rbs + l2_tables).max(1) as f64;
    progress.window(0.0, 0.95 * (1.0 - l2_share));
    for i in 0..rbs {
        progress.update(i, rbs);
        let mut b = vec![0u8; cs as usize];
        let first = i * rbe;
        let last = ((i + 1) * rbe).min(total);
        for c in first..last {
            refcount::set(&mut b, order, (c - first) as usize, 1);
        }
        store.write_at((rb_first + i) * cs, &b)?;
    }
    // Preallocated L2 tables, each followed by its data clusters.
    let mut l1 = vec![0u64; l1_size as usize];
    let mut next = prealloc_first;
    let mut remaining = data_clusters;
    progress.window(0.95 * (1.0 - l2_share), 0.95);
    for t in 0..l2_tables {
        progress.update(t, l2_tables);
        let l2c = next;
        next += 1;
        let n = remaining.min(l2_entries);
        let mut tbl = vec![0u8; cs as usize];
        for j in 0..n {
            let e = ((next + j) * cs) | COPIED;
            let at = (j * l2_es) as usize;
            tbl[at..at + 8].copy_from_slice(&e.to_be_bytes());
        }
        store.write_at(l2c * cs, &tbl)?;
        l1[t as usize] = (l2c * cs) | COPIED;
        next += n;
        remaining -= n;
    }
    // L1: QEMU writes only the entries, so the file may end mid-cluster.
    let mut l1b = Vec::with_capacity(l1.len() * 8);
    for e in &l1 {
        l1b.extend_from_slice(&e.to_be_bytes());
    }
    if l1b.is_empty() {
        // Keep the L1 cluster inside the file even for a zero-size disk.
        l1b.resize(8, 0);
    }
    store.write_at(l1_off, &l1b)?;
    if let Some(z) = &zoned {
        store.write_at(wp_first * cs, &encode_wp_entries(&initial_entries(z)))?;
    }
    if data_clusters > 0 {
        store.set_len(total * cs)?;
    }
    // Header last: until it is written the file is not a qcow2 image.
    progress.window(0.95, 0.95);
    store.sync()?;
    store.write_at(0, &c0)?;
    store.sync()?;
    progress.window(1.0, 1.0);
    Ok(())
}
