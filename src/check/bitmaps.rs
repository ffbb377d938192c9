//! Persistent dirty bitmaps: the directory, each bitmap table and its data
//! clusters are references (QEMU `qcow2_check_bitmaps_refcounts`).

use super::errno::{Errno, EINVAL};
use super::walk::{inc_refcounts, Class, Walk};
use super::{Counts, Ctx};
use crate::format::bitmap::{parse_directory, MAX_DIRECTORY};
use crate::format::features::AUTOCLEAR_BITMAPS;

const ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
const ENTRY_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

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
    if b.directory_size > MAX_DIRECTORY || b.directory_size > file_len {
        res.corruptions += 1;
        w.incomplete
            .push("the bitmap directory cannot be read".into());
        return Err(EINVAL);
    }
    let mut dir = vec![0u8; b.directory_size as usize];
    cx.img.read(b.directory_offset, &mut dir)?;
    let Ok(entries) = parse_directory(&dir, b.nb_bitmaps) else {
        res.corruptions += 1;
        w.incomplete
            .push("the bitmap directory is truncated".into());
        return Err(EINVAL);
    };
    let tables = entries
        .iter()
        .map(|e| (e.table_offset, e.table_size as u64));
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
