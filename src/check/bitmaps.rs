//! Persistent dirty bitmaps: the directory, each bitmap table and its data
//! clusters are references (QEMU `qcow2_check_bitmaps_refcounts`).

use super::errno::{Errno, EINVAL};
use super::walk::{inc_refcounts, Class, Walk};
use super::{Counts, Ctx};
use crate::format::features::AUTOCLEAR_BITMAPS;

/// QEMU's directory size limit.
const MAX_DIR: u64 = 64 << 20;
const ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
const ENTRY_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

/// Count the bitmaps' clusters. A directory that does not parse is one
/// corruption and fails the check (`-EINVAL`), as in QEMU.
pub(crate) fn check_bitmaps(cx: &mut Ctx, res: &mut Counts, w: &mut Walk) -> Result<(), Errno> {
    // QEMU ignores the extension when the autoclear bit was cleared.
    if cx.img.header.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
        return Ok(());
    }
    let Some(b) = cx.img.header.bitmaps().cloned() else {
        return Ok(());
    };
    if b.nb_bitmaps == 0 {
        return Ok(());
    }
    inc_refcounts(
        cx,
        res,
        w,
        b.directory_offset,
        b.directory_size,
        Class::Single,
    )?;
    let file_len = cx.img.file_len();
    if b.directory_size > MAX_DIR || b.directory_size > file_len {
        res.corruptions += 1;
        w.incomplete
            .push("the bitmap directory cannot be read".into());
        return Err(EINVAL);
    }
    let mut dir = vec![0u8; b.directory_size as usize];
    cx.img.read(b.directory_offset, &mut dir)?;
    let mut pos = 0usize;
    let mut tables = Vec::new();
    for _ in 0..b.nb_bitmaps {
        if pos + 24 > dir.len() {
            res.corruptions += 1;
            w.incomplete
                .push("the bitmap directory is truncated".into());
            return Err(EINVAL);
        }
        let toff = be64(&dir, pos);
        let tsize = be32(&dir, pos + 8) as u64;
        let name = u16::from_be_bytes([dir[pos + 18], dir[pos + 19]]) as usize;
        let extra = be32(&dir, pos + 20) as usize;
        tables.push((toff, tsize));
        pos = (pos + 24 + extra + name).div_ceil(8) * 8;
    }
    for (toff, tsize) in tables {
        inc_refcounts(cx, res, w, toff, tsize * 8, Class::Single)?;
        if tsize * 8 > file_len || toff & (cx.img.cs - 1) != 0 {
            res.corruptions += 1;
            w.incomplete
                .push(format!("the bitmap table at 0x{toff:x} cannot be read"));
            return Ok(());
        }
        let t = super::image::read_u64s(&*cx.img.store, toff, tsize)?;
        for e in t {
            let off = e & ENTRY_OFFSET;
            if e & ENTRY_RESERVED != 0 || (off != 0 && (e & 1 != 0 || off & (cx.img.cs - 1) != 0)) {
                res.corruptions += 1;
                continue;
            }
            if off != 0 {
                inc_refcounts(cx, res, w, off, cx.img.cs, Class::Single)?;
            }
        }
    }
    Ok(())
}
