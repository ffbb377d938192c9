//! Target `check`: the input is an image file (≤ 1 MiB used). `check` runs
//! read-only on it, then `check -r all` on a copy in a capped in-memory store
//! (64 MiB). Neither may panic, hang or allocate without bound. When the
//! repair reports a clean result (no corruptions, leaks or check errors left,
//! no early failure: exit code 0 of `zcow-img check -r all`), a fresh
//! read-only check of the repaired bytes must be clean too
//! (`docs/check-and-repair.md`: "0 clean (after a repair: the second pass is
//! clean)").

use super::{CappedStorage, MAX_IMAGE_INPUT, WRITE_STORE_CAP};
use crate::check::{check_store, CheckReport, RepairMode};
use crate::progress::Progress;
use crate::storage::{MemStorage, Storage};
use std::sync::Arc;

fn clean(r: &CheckReport) -> bool {
    r.failed.is_none()
        && r.counts.corruptions == 0
        && r.counts.leaks == 0
        && r.counts.check_errors == 0
}

/// Target `check` (see the module documentation).
pub fn fuzz_check(data: &[u8]) {
    let data = &data[..data.len().min(MAX_IMAGE_INPUT)];
    let mut sink = std::io::sink();
    let hidden = Progress::hidden();
    let ro: Arc<dyn Storage> = Arc::new(MemStorage::read_only(data.to_vec()));
    let _ = check_store(ro, None, &hidden, &mut sink, |_| {});
    let store = Arc::new(CappedStorage::new(data.to_vec(), WRITE_STORE_CAP));
    let rw: Arc<dyn Storage> = store.clone();
    let Ok(rep) = check_store(rw, Some(RepairMode::All), &hidden, &mut sink, |_| {}) else {
        return;
    };
    if !clean(&rep) {
        return;
    }
    let bytes = store.to_vec();
    let ro: Arc<dyn Storage> = Arc::new(MemStorage::read_only(bytes));
    let mut msgs = Vec::new();
    match check_store(ro, None, &hidden, &mut msgs, |_| {}) {
        Ok(r2) if clean(&r2) => {}
        other => panic!(
            "check: -r all reported a clean image, a second check does not agree:\n\
             repair: {rep:?}\nre-check: {other:?}\n{}",
            String::from_utf8_lossy(&msgs)
        ),
    }
}
