//! Rebuilding the refcount structure from the IMRT (QEMU
//! `rebuild_refcount_structure`): refblocks and the reftable go to the
//! earliest free clusters, so the file does not grow when there is room.

use super::errno::{strerror, Errno};
use super::walk::Walk;
use super::Ctx;

/// QEMU `alloc_clusters_imrt`: first run of `count` free clusters at or
/// after `*first_free`, marked used in the IMRT.
fn alloc_imrt(w: &mut Walk, count: u64, first_free: &mut u64) -> Result<u64, Errno> {
    let mut cluster = *first_free;
    let mut first_gap = true;
    let mut run = 0u64;
    while cluster < w.imrt.n && run < count {
        if w.imrt.get(cluster) == 0 {
            run += 1;
            if first_gap {
                *first_free = cluster;
                first_gap = false;
            }
        } else {
            run = 0;
        }
        cluster += 1;
    }
    if run < count {
        w.imrt.grow(cluster + count - run)?;
    }
    let start = cluster - run;
    for i in 0..count {
        w.imrt.set(start + i, 1)?;
    }
    Ok(start)
}

/// Write refblocks for the non-zero IMRT entries in `[first, end)`.
/// Returns whether the reftable had to grow.
fn write_refblocks(
    cx: &mut Ctx,
    w: &mut Walk,
    first: u64,
    mut end: u64,
    rt: &mut Vec<u64>,
) -> Result<bool, Errno> {
    let rb_bits = cx.img.rb_bits;
    let cs = cx.img.cs;
    let mut first_free = 0u64;
    let mut grown = false;
    let mut cluster = first;
    while cluster < end {
        if w.imrt.get(cluster) == 0 {
            cluster += 1;
            continue;
        }
        let index = cluster >> rb_bits;
        let rb_start = index << rb_bits;
        let rb_off = if (index as usize) < rt.len() && rt[index as usize] != 0 {
            rt[index as usize]
        } else {
            first_free = first_free.max(rb_start);
            let c = alloc_imrt(w, 1, &mut first_free)?;
            if c >= end {
                end = c + 1;
            }
            if rt.len() as u64 <= index {
                let entries = ((index + 1) * 8).div_ceil(cs) * cs / 8;
                rt.resize(entries as usize, 0);
                grown = true;
            }
            rt[index as usize] = c * cs;
            c * cs
        };
        let block = w.imrt.block(index);
        cx.img.write(rb_off, &block)?;
        cluster = rb_start + (1 << rb_bits);
    }
    Ok(grown)
}

/// Pass `r` through, printing QEMU's `PROG: ERROR WHAT: strerror` line when
/// it is an error.
fn report_err<T>(cx: &mut Ctx, what: &str, r: Result<T, Errno>) -> Result<T, Errno> {
    if let Err(e) = &r {
        let _ = writeln!(cx.err, "{}: ERROR {what}: {}", cx.prog, strerror(*e));
    }
    r
}

/// Rebuild. On failure prints QEMU's message and returns the error.
pub(crate) fn rebuild(cx: &mut Ctx, w: &mut Walk) -> Result<(), Errno> {
    cx.img.drop_cache();
    let mut rt: Vec<u64> = Vec::new();
    let n = w.imrt.n;
    let r = write_refblocks(cx, w, 0, n, &mut rt);
    report_err(cx, "writing refblock", r)?;
    let cs = cx.img.cs;
    let (rt_off, rt_clusters) = loop {
        let len = rt.len() as u64 * 8;
        let clusters = len.div_ceil(cs);
        let mut ff = 0;
        let start = report_err(cx, "allocating reftable", alloc_imrt(w, clusters, &mut ff))?;
        let r = write_refblocks(cx, w, start, start + clusters, &mut rt);
        let changed = report_err(cx, "writing refblock", r)?;
        if !changed {
            break (start * cs, clusters);
        }
        for i in start..start + clusters {
            w.imrt.set(i, 0)?;
        }
    };
    let mut bytes = Vec::with_capacity(rt.len() * 8);
    for e in &rt {
        bytes.extend_from_slice(&e.to_be_bytes());
    }
    let r = cx.img.write(rt_off, &bytes).and_then(|_| cx.img.sync());
    report_err(cx, "writing reftable", r)?;
    let mut hf = rt_off.to_be_bytes().to_vec();
    hf.extend_from_slice(&(rt_clusters as u32).to_be_bytes());
    let r = cx
        .img
        .write_header_field(crate::format::header::field::REFTABLE_OFFSET, &hf)
        .and_then(|_| cx.img.sync());
    report_err(cx, "setting reftable", r)?;
    cx.img.reftable = rt;
    cx.img.reftable_offset = rt_off;
    cx.img.header.refcount_table_offset = rt_off;
    cx.img.header.refcount_table_clusters = rt_clusters as u32;
    cx.img.drop_cache();
    Ok(())
}
