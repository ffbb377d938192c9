//! `zcow-img repair`: `check -r all` plus the zoned repairs, with a dry run
//! and an undo file.
//!
//! Every write of a repair goes through [`JournalStorage`], which keeps the
//! original bytes of each cluster before its first write (and, in a dry run,
//! keeps the writes in memory instead of the file).
//!
//! Backup file format (all integers big-endian): `"ZCOWBAK2"`, u64 flags
//! (1: the repair finished), u64 original file length, u64 file length
//! after the repair, u64 cluster size, u64 record count, then per record:
//! u64 offset, u64 length, u32 CRC-32 of the original bytes, u32 CRC-32 of
//! the bytes after the repair, `length` original bytes; last a u32 CRC-32
//! of everything before it. [`undo_repair`] verifies all of it, writes the
//! records back and restores the file length.

use super::report;
use super::{check_store, CheckOpenError, OutputFormat, RepairMode};
use crate::progress::Progress;
use crate::storage::{FileStorage, Op, Storage, StorageError};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Options of `zcow-img repair`.
#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Print what would change; write nothing.
    pub dry_run: bool,
    /// Save the original contents of every cluster the repair rewrites.
    pub backup: Option<PathBuf>,
    /// `--output`.
    pub output: OutputFormat,
    /// Replace an existing backup file (refused otherwise).
    pub force: bool,
    /// `-p`: progress bar (only when stderr is a terminal).
    pub progress: bool,
}

const MAGIC: &[u8; 8] = b"ZCOWBAK2";
/// Journal granularity when the cluster size is unknown.
const DEFAULT_CHUNK: u64 = 4096;

#[derive(Debug, Default)]
struct JState {
    saved: BTreeMap<u64, Vec<u8>>,
    overlay: BTreeMap<u64, Vec<u8>>,
    len: u64,
    orig_len: u64,
}

/// A store that journals the original bytes of every chunk written, and in
/// dry-run mode keeps the writes in memory.
#[derive(Debug)]
pub struct JournalStorage {
    base: Arc<dyn Storage>,
    dry_run: bool,
    /// Journal granularity: the image's cluster size.
    chunk: u64,
    st: Mutex<JState>,
}

impl JournalStorage {
    /// Wrap `base`, journaling whole `chunk`-byte blocks (a power of two;
    /// use the image's cluster size so every rewritten cluster is saved).
    pub fn new(base: Arc<dyn Storage>, dry_run: bool, chunk: u64) -> crate::storage::Result<Self> {
        let len = base.len()?;
        Ok(Self {
            base,
            dry_run,
            chunk: if chunk.is_power_of_two() {
                chunk
            } else {
                DEFAULT_CHUNK
            },
            st: Mutex::new(JState {
                len,
                orig_len: len,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Original contents of the chunks written so far (offset → bytes),
    /// limited to the original file length.
    pub fn originals(&self) -> (u64, Vec<(u64, Vec<u8>)>) {
        let st = self.lock();
        let v = st
            .saved
            .iter()
            .filter(|(o, _)| **o < st.orig_len)
            .map(|(o, b)| {
                let n = (st.orig_len - o).min(b.len() as u64) as usize;
                (*o, b[..n].to_vec())
            })
            .collect();
        (st.orig_len, v)
    }

    /// Offsets of the chunks written.
    pub fn written(&self) -> Vec<u64> {
        self.lock().saved.keys().copied().collect()
    }

    fn base_chunk(&self, c: u64) -> crate::storage::Result<Vec<u8>> {
        let mut b = vec![0u8; self.chunk as usize];
        self.base.read_at_zero_fill(c, &mut b)?;
        Ok(b)
    }
}

impl Storage for JournalStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::storage::Result<()> {
        if !self.dry_run {
            return self.base.read_at(offset, buf);
        }
        let st = self.lock();
        let end = offset + buf.len() as u64;
        if end > st.len {
            return Err(StorageError::ShortRead {
                offset,
                len: buf.len() as u64,
                size: st.len,
            });
        }
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk * self.chunk;
            let n = ((c + self.chunk).min(end) - pos) as usize;
            let dst = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            let inner = (pos - c) as usize;
            match st.overlay.get(&c) {
                Some(b) => dst.copy_from_slice(&b[inner..inner + n]),
                None => self.base.read_at_zero_fill(pos, dst)?,
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> crate::storage::Result<()> {
        let end = offset + data.len() as u64;
        {
            let mut st = self.lock();
            let mut c = offset / self.chunk * self.chunk;
            while c < end {
                if !st.saved.contains_key(&c) {
                    let orig = if st.dry_run_overlay_has(c) {
                        st.overlay[&c].clone()
                    } else {
                        self.base_chunk(c)?
                    };
                    st.saved.insert(c, orig);
                }
                if self.dry_run {
                    if let std::collections::btree_map::Entry::Vacant(v) = st.overlay.entry(c) {
                        v.insert(self.base_chunk(c)?);
                    }
                    let lo = offset.max(c);
                    let hi = end.min(c + self.chunk);
                    let chunk = st.overlay.get_mut(&c).ok_or(StorageError::ReadOnly)?;
                    chunk[(lo - c) as usize..(hi - c) as usize]
                        .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
                }
                c += self.chunk;
            }
            if end > st.len {
                st.len = end;
            }
        }
        if self.dry_run {
            Ok(())
        } else {
            self.base.write_at(offset, data)
        }
    }

    fn sync(&self) -> crate::storage::Result<()> {
        if self.dry_run {
            Ok(())
        } else {
            self.base.sync()
        }
    }

    fn len(&self) -> crate::storage::Result<u64> {
        if self.dry_run {
            Ok(self.lock().len)
        } else {
            self.base.len()
        }
    }

    fn set_len(&self, len: u64) -> crate::storage::Result<()> {
        self.lock().len = len;
        if self.dry_run {
            Ok(())
        } else {
            self.base.set_len(len)
        }
    }

    fn discard(&self, offset: u64, len: u64) -> crate::storage::Result<()> {
        let _ = Op::Discard;
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write_at(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }
}

impl JState {
    fn dry_run_overlay_has(&self, c: u64) -> bool {
        self.overlay.contains_key(&c)
    }
}

/// One saved chunk of a backup.
struct Record {
    off: u64,
    crc_orig: u32,
    /// Checksum of the chunk after the repair (0 in an incomplete backup).
    crc_after: u32,
    data: Vec<u8>,
}

/// A parsed backup file.
struct Backup {
    /// The repair finished and `after_len` / `crc_after` are known.
    complete: bool,
    orig_len: u64,
    after_len: u64,
    records: Vec<Record>,
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// Encode a backup (see the module docs for the layout).
fn encode_backup(b: &Backup, chunk: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&u64::from(b.complete).to_be_bytes());
    v.extend_from_slice(&b.orig_len.to_be_bytes());
    v.extend_from_slice(&b.after_len.to_be_bytes());
    v.extend_from_slice(&chunk.to_be_bytes());
    v.extend_from_slice(&(b.records.len() as u64).to_be_bytes());
    for r in &b.records {
        v.extend_from_slice(&r.off.to_be_bytes());
        v.extend_from_slice(&(r.data.len() as u64).to_be_bytes());
        v.extend_from_slice(&r.crc_orig.to_be_bytes());
        v.extend_from_slice(&r.crc_after.to_be_bytes());
        v.extend_from_slice(&r.data);
    }
    let sum = crc(&v);
    v.extend_from_slice(&sum.to_be_bytes());
    v
}

/// Parse and verify a backup file's bytes.
fn decode_backup(b: &[u8]) -> anyhow::Result<Backup> {
    if b.get(..8) == Some(&b"ZCOWBAK1"[..]) {
        bail!("backup has no checksum (written by an older zcow); refusing to restore from it");
    }
    if b.get(..8) != Some(&MAGIC[..]) {
        bail!("not a zcow repair backup (bad magic)");
    }
    if b.len() < 8 + 5 * 8 + 4 {
        bail!("backup is truncated ({} bytes)", b.len());
    }
    let (body, tail) = b.split_at(b.len() - 4);
    let want = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let got = crc(body);
    if want != got {
        bail!("backup is damaged: checksum 0x{got:08x}, recorded 0x{want:08x}");
    }
    let u64_at = |o: usize| -> anyhow::Result<u64> {
        let s = body
            .get(o..o + 8)
            .with_context(|| format!("backup is truncated at byte {o}"))?;
        Ok(u64::from_be_bytes(s.try_into()?))
    };
    let u32_at = |o: usize| -> anyhow::Result<u32> {
        let s = body
            .get(o..o + 4)
            .with_context(|| format!("backup is truncated at byte {o}"))?;
        Ok(u32::from_be_bytes(s.try_into()?))
    };
    let complete = u64_at(8)? == 1;
    let orig_len = u64_at(16)?;
    let after_len = u64_at(24)?;
    let n = u64_at(40)?;
    let mut pos = 48usize;
    let mut records = Vec::new();
    for i in 0..n {
        let off = u64_at(pos)?;
        let len = u64_at(pos + 8)?;
        let crc_orig = u32_at(pos + 16)?;
        let crc_after = u32_at(pos + 20)?;
        pos += 24;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= body.len())
            .with_context(|| format!("backup record {i} runs past the end of the file"))?;
        let data = body[pos..end].to_vec();
        if crc(&data) != crc_orig {
            bail!("backup record {i} (offset 0x{off:x}) is damaged");
        }
        if off.checked_add(len).is_none_or(|e| e > orig_len) {
            bail!("backup record {i} (offset 0x{off:x}) lies outside the original image");
        }
        records.push(Record {
            off,
            crc_orig,
            crc_after,
            data,
        });
        pos = end;
    }
    if pos != body.len() {
        bail!("backup has {} unexpected trailing bytes", body.len() - pos);
    }
    Ok(Backup {
        complete,
        orig_len,
        after_len,
        records,
    })
}

/// Write a backup atomically: a temporary file beside it, synced, renamed
/// over the target, and the directory synced. `fresh`: the target must not
/// exist (checked again here, not only up front).
fn write_backup(path: &Path, b: &Backup, chunk: u64, fresh: bool) -> anyhow::Result<()> {
    if fresh && path.exists() {
        bail!(
            "backup file '{}' already exists (use --force to replace it)",
            path.display()
        );
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".zcow-tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = encode_backup(b, chunk);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create backup file '{}'", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write backup file '{}'", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot create backup file '{}'", path.display()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn read_range(st: &dyn Storage, off: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    st.read_at_zero_fill(off, &mut b)?;
    Ok(b)
}

/// Undo a repair from its backup file. The backup's checksums are verified
/// first, and (for a finished repair) that the image is still as the repair
/// left it; only then are the saved chunks and the original length
/// restored, and read back to verify. A damaged or mismatched backup is
/// refused and the image is not touched.
pub fn undo_repair(image: &Path, backup: &Path) -> anyhow::Result<()> {
    let raw = std::fs::read(backup)
        .with_context(|| format!("cannot read backup file '{}'", backup.display()))?;
    let b = decode_backup(&raw)
        .with_context(|| format!("refusing backup file '{}'", backup.display()))?;
    let st = FileStorage::open(image, false)
        .with_context(|| format!("Could not open '{}'", image.display()))?;
    if b.complete {
        let len = st.len()?;
        if len != b.after_len {
            bail!(
                "'{}' is {len} bytes but the repair recorded in '{}' left it at {} bytes: it changed since, or the backup belongs to another image; nothing restored",
                image.display(),
                backup.display(),
                b.after_len
            );
        }
        for r in &b.records {
            let now = read_range(&st, r.off, r.data.len())?;
            if crc(&now) != r.crc_after {
                bail!(
                    "'{}' at offset 0x{:x} does not hold what the repair recorded in '{}' wrote: it changed since, or the backup belongs to another image; nothing restored",
                    image.display(),
                    r.off,
                    backup.display()
                );
            }
        }
    }
    for r in &b.records {
        st.write_at(r.off, &r.data)?;
    }
    st.set_len(b.orig_len)?;
    st.sync()?;
    if st.len()? != b.orig_len {
        bail!(
            "restore verification failed: the image length is not back to {}",
            b.orig_len
        );
    }
    for r in &b.records {
        if crc(&read_range(&st, r.off, r.data.len())?) != r.crc_orig {
            bail!(
                "restore verification failed at offset 0x{:x}: the image does not read back as saved",
                r.off
            );
        }
    }
    Ok(())
}

/// The backup of what `journal` saved; with `after`, the image's current
/// contents give the after-repair checksums.
fn backup_of(journal: &JournalStorage, after: Option<&dyn Storage>) -> anyhow::Result<Backup> {
    let (orig_len, recs) = journal.originals();
    let mut records = Vec::with_capacity(recs.len());
    for (off, data) in recs {
        let crc_after = match after {
            Some(st) => crc(&read_range(st, off, data.len())?),
            None => 0,
        };
        records.push(Record {
            off,
            crc_orig: crc(&data),
            crc_after,
            data,
        });
    }
    let after_len = match after {
        Some(st) => st.len()?,
        None => 0,
    };
    Ok(Backup {
        complete: after.is_some(),
        orig_len,
        after_len,
        records,
    })
}

/// Rewrites item lines of a dry run: "Repairing …" becomes
/// "Would repair …" (nothing is repaired).
struct WouldWriter<'a> {
    inner: &'a mut dyn Write,
    line: Vec<u8>,
}

impl WouldWriter<'_> {
    fn emit(&mut self) -> std::io::Result<()> {
        let l = std::mem::take(&mut self.line);
        match l.strip_prefix(b"Repairing ") {
            Some(rest) => {
                self.inner.write_all(b"Would repair ")?;
                self.inner.write_all(rest)
            }
            None => self.inner.write_all(&l),
        }
    }
}

impl Write for WouldWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &c in buf {
            self.line.push(c);
            if c == b'\n' {
                self.emit()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            self.emit()?;
        }
        self.inner.flush()
    }
}

/// `zcow-img repair`. Returns the exit code (as `check`: 0 clean afterwards,
/// 1 failed, 2 corruptions remain, 3 leaks remain).
pub fn run_repair(
    path: &Path,
    opts: &RepairOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let name = path.display().to_string();
    if let (Some(bk), false, false) = (&opts.backup, opts.dry_run, opts.force) {
        if bk.exists() {
            bail!(
                "backup file '{}' already exists (use --force to replace it); nothing was changed",
                bk.display()
            );
        }
    }
    let base = match FileStorage::open(path, opts.dry_run) {
        Ok(s) => Arc::new(s) as Arc<dyn Storage>,
        Err(e) => return Ok(CheckOpenError::unopenable(&name, &e).report(err, &name)?),
    };
    let chunk = crate::format::image::read_header_cluster(&*base)
        .ok()
        .and_then(|c0| crate::format::Header::peek_cluster_size(&c0).ok())
        .unwrap_or(DEFAULT_CHUNK);
    let progress = Progress::new(opts.progress);
    // Backups are written before anything changes: a dry run finds the
    // chunks the repair will touch.
    if let (Some(bk), false) = (&opts.backup, opts.dry_run) {
        let probe = Arc::new(JournalStorage::new(base.clone(), true, chunk)?);
        let mut sink = Vec::new();
        // The rehearsal is the first half of the job.
        progress.window(0.0, 0.5);
        let _ = check_store(
            probe.clone(),
            Some(RepairMode::All),
            &progress,
            &mut sink,
            |_| {},
        );
        write_backup(bk, &backup_of(&probe, None)?, chunk, !opts.force)?;
        progress.window(0.5, 1.0);
    }
    let journal = Arc::new(JournalStorage::new(base.clone(), opts.dry_run, chunk)?);
    let mut pre = Vec::new();
    let human = opts.output == OutputFormat::Human;
    let dry = opts.dry_run;
    let mut would = WouldWriter {
        inner: err,
        line: Vec::new(),
    };
    let item_err: &mut dyn Write = if dry { &mut would } else { would.inner };
    let mut item_err = progress.writer(item_err);
    let r = check_store(
        journal.clone(),
        Some(RepairMode::All),
        &progress,
        &mut item_err,
        |c| {
            if human {
                if dry {
                    report::write_dry_preamble(&mut pre, c);
                } else {
                    report::write_preamble(&mut pre, c);
                }
            }
        },
    );
    let _ = item_err.flush();
    drop(item_err);
    let err = would.inner;
    let rep = match r {
        Ok(r) => r,
        Err(e) => {
            drop(progress);
            return Ok(e.report(err, &name)?);
        }
    };
    if let (Some(bk), false) = (&opts.backup, opts.dry_run) {
        // Complete the backup (the real repair may have touched more than
        // the dry run predicted) and record what the repair left, so that
        // --undo can tell the image has not changed since.
        write_backup(bk, &backup_of(&journal, Some(&*base))?, chunk, false)?;
    }
    if rep.failed.is_none() {
        progress.finish();
    }
    drop(progress);
    let written = journal.written();
    if human {
        if written.is_empty() {
            writeln!(out, "Nothing to repair.")?;
        } else {
            let list: Vec<String> = written
                .iter()
                .take(32)
                .map(|o| format!("0x{o:x}"))
                .collect();
            writeln!(
                out,
                "{} {} metadata cluster(s) at: {}{}",
                if dry {
                    "Dry run: would rewrite"
                } else {
                    "Rewrote"
                },
                written.len(),
                list.join(" "),
                if written.len() > 32 { " ..." } else { "" }
            )?;
            report::write_losses(out, &rep, dry)?;
            if dry {
                writeln!(out, "Dry run: nothing was written to '{name}'.")?;
            } else if let Some(bk) = &opts.backup {
                writeln!(
                    out,
                    "Original contents saved to '{}' (undo with zcow-img repair --undo).",
                    bk.display()
                )?;
            }
        }
        out.write_all(&pre)?;
    }
    if !human {
        let mut rep_json = report::image_check_json(&rep, &name);
        if let report::JVal::Obj(k) = &mut rep_json {
            k.retain(|(n, _)| n != "zcow-lost" && n != "zcow-wp-changes");
            k.push(("lost".into(), report::lost_json(&rep)));
            k.push(("wp-changes".into(), report::wp_json(&rep)));
            k.push((
                "nothing-lost".into(),
                report::JVal::Bool(rep.lost.is_empty()),
            ));
            k.push(("dry-run".into(), report::JVal::Bool(dry)));
            k.push((
                "rewritten-clusters".into(),
                report::JVal::Int(written.len() as i64),
            ));
        }
        if rep.failed.is_none() {
            let mut s = String::new();
            report::to_json(&rep_json, 0, &mut s);
            writeln!(out, "{s}")?;
        }
        return Ok(report::finish(&rep, &name, opts.output, true, out, err)?);
    }
    Ok(report::finish(&rep, &name, opts.output, false, out, err)?)
}
