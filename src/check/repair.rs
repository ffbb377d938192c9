//! `zcow-img repair`: `check -r all` plus the zoned repairs, with a dry run
//! and an undo file.
//!
//! Every write of a repair goes through [`JournalStorage`], which keeps the
//! original bytes of each cluster before its first write (and, in a dry run,
//! keeps the writes in memory instead of the file).
//!
//! Backup file format (all integers big-endian):
//! `"ZCOWBAK1"`, u64 original file length, u64 cluster size, u64 record
//! count, then per record: u64 offset, u64 length, `length` original bytes.
//! [`undo_repair`] writes the records back and restores the file length.

use super::report;
use super::{check_store, CheckOpenError, OutputFormat, RepairMode};
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
}

const MAGIC: &[u8; 8] = b"ZCOWBAK1";
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

fn write_backup(
    path: &Path,
    orig_len: u64,
    chunk: u64,
    recs: &[(u64, Vec<u8>)],
) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("cannot create backup file '{}'", path.display()))?;
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&orig_len.to_be_bytes());
    b.extend_from_slice(&chunk.to_be_bytes());
    b.extend_from_slice(&(recs.len() as u64).to_be_bytes());
    for (o, d) in recs {
        b.extend_from_slice(&o.to_be_bytes());
        b.extend_from_slice(&(d.len() as u64).to_be_bytes());
        b.extend_from_slice(d);
    }
    f.write_all(&b)?;
    f.sync_all()?;
    Ok(())
}

/// Undo a repair from its backup file: restore every saved chunk and the
/// original file length.
pub fn undo_repair(image: &Path, backup: &Path) -> anyhow::Result<()> {
    let b = std::fs::read(backup)
        .with_context(|| format!("cannot read backup file '{}'", backup.display()))?;
    let rd = |o: usize| -> anyhow::Result<u64> {
        let s = b.get(o..o + 8).context("backup file is truncated")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    };
    if b.get(..8) != Some(&MAGIC[..]) {
        bail!("'{}' is not a zcow repair backup", backup.display());
    }
    let orig_len = rd(8)?;
    let n = rd(24)?;
    let st = FileStorage::open(image, false)
        .with_context(|| format!("Could not open '{}'", image.display()))?;
    let mut pos = 32usize;
    for _ in 0..n {
        let off = rd(pos)?;
        let len = rd(pos + 8)? as usize;
        pos += 16;
        let data = b.get(pos..pos + len).context("backup file is truncated")?;
        st.write_at(off, data)?;
        pos += len;
    }
    st.set_len(orig_len)?;
    st.sync()?;
    Ok(())
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
    let base = match FileStorage::open(path, opts.dry_run) {
        Ok(s) => Arc::new(s) as Arc<dyn Storage>,
        Err(e) => return Ok(CheckOpenError::unopenable(&name, &e).report(err, &name)?),
    };
    let chunk = crate::format::image::read_header_cluster(&*base)
        .ok()
        .and_then(|c0| crate::format::Header::peek_cluster_size(&c0).ok())
        .unwrap_or(DEFAULT_CHUNK);
    // Backups are written before anything changes: a dry run finds the
    // chunks the repair will touch.
    if let (Some(bk), false) = (&opts.backup, opts.dry_run) {
        let probe = Arc::new(JournalStorage::new(base.clone(), true, chunk)?);
        let mut sink = Vec::new();
        let _ = check_store(
            probe.clone(),
            Some(RepairMode::All),
            false,
            &mut sink,
            |_| {},
        );
        let (orig_len, recs) = probe.originals();
        write_backup(bk, orig_len, chunk, &recs)?;
    }
    let journal = Arc::new(JournalStorage::new(base, opts.dry_run, chunk)?);
    let mut pre = Vec::new();
    let human = opts.output == OutputFormat::Human;
    let r = check_store(journal.clone(), Some(RepairMode::All), false, err, |c| {
        if human {
            report::write_preamble(&mut pre, c);
        }
    });
    let rep = match r {
        Ok(r) => r,
        Err(e) => return Ok(e.report(err, &name)?),
    };
    if let (Some(bk), false) = (&opts.backup, opts.dry_run) {
        // Keep the backup complete even if the repair touched more than the
        // dry run predicted.
        let (orig_len, recs) = journal.originals();
        write_backup(bk, orig_len, chunk, &recs)?;
    }
    if human {
        out.write_all(&pre)?;
        let written = journal.written();
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
                if opts.dry_run {
                    "Dry run: would rewrite"
                } else {
                    "Rewrote"
                },
                written.len(),
                list.join(" "),
                if written.len() > 32 { " ..." } else { "" }
            )?;
            if opts.dry_run {
                writeln!(out, "Dry run: nothing was written to '{name}'.")?;
            } else if let Some(bk) = &opts.backup {
                writeln!(
                    out,
                    "Original contents saved to '{}' (undo with zcow-img repair --undo).",
                    bk.display()
                )?;
            }
        }
    }
    Ok(report::finish(&rep, &name, opts.output, false, out, err)?)
}
