//! Fault-injecting backend: injected errors and simulated power loss.
//!
//! It keeps the *durable* contents (as of the last completed sync) apart from
//! the writes issued since, so a test can ask for the states a disk could be in
//! after losing power: any subset of the unsynced writes, applied in any order,
//! with the last one possibly torn at a sector boundary.

use super::{InjectedKind, Op, Result, Storage, StorageError};
use std::sync::Mutex;

/// What to inject, counted over the operations of each kind since creation.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Fail the write with this 0-based index (counted over all writes).
    pub fail_write: Option<(u64, InjectedKind)>,
    /// Fail the sync with this 0-based index.
    pub fail_sync: Option<(u64, InjectedKind)>,
    /// Lose power right before the write with this index: it and everything
    /// after fail with [`StorageError::PowerLost`].
    pub power_loss_at_write: Option<u64>,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct State {
    durable: Vec<u8>,
    pending: Vec<Pending>,
    current: Vec<u8>,
    writes: u64,
    syncs: u64,
    powered_off: bool,
    cfg: FaultConfig,
}

/// Storage that injects faults and can enumerate power-loss states.
#[derive(Debug, Default)]
pub struct FaultStorage {
    st: Mutex<State>,
}

fn apply(v: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[*offset as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(n) => v.resize(*n as usize, 0),
    }
}

impl FaultStorage {
    /// A store holding `bytes`, all durable.
    pub fn new(bytes: Vec<u8>, cfg: FaultConfig) -> Self {
        Self {
            st: Mutex::new(State {
                durable: bytes.clone(),
                current: bytes,
                cfg,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the injection plan (counters keep running).
    pub fn set_config(&self, cfg: FaultConfig) {
        self.lock().cfg = cfg;
    }

    /// Number of writes issued so far (including failed ones).
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }

    /// Number of syncs issued so far.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Number of writes not yet covered by a sync.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// What the application sees now.
    pub fn current(&self) -> Vec<u8> {
        self.lock().current.clone()
    }

    /// What is certainly on stable storage.
    pub fn durable(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// One power-loss state: the durable contents plus the pending writes
    /// selected by `keep` (indices into the pending list, applied in the
    /// order given), with the write `torn` (an index in `keep`'s order) cut
    /// to its first `torn_sectors` 512-byte sectors.
    pub fn crash_state(&self, keep: &[usize], torn: Option<(usize, usize)>) -> Vec<u8> {
        let st = self.lock();
        let mut v = st.durable.clone();
        for (pos, &i) in keep.iter().enumerate() {
            let Some(p) = st.pending.get(i) else { continue };
            match (p, torn) {
                (Pending::Write { offset, data }, Some((t, sectors))) if t == pos => {
                    let n = (sectors * 512).min(data.len());
                    apply(
                        &mut v,
                        &Pending::Write {
                            offset: *offset,
                            data: data[..n].to_vec(),
                        },
                    );
                }
                _ => apply(&mut v, p),
            }
        }
        v
    }

    /// Lengths (in bytes) of the pending writes, in issue order (set-length
    /// operations report 0).
    pub fn pending_lengths(&self) -> Vec<usize> {
        self.lock()
            .pending
            .iter()
            .map(|p| match p {
                Pending::Write { data, .. } => data.len(),
                Pending::SetLen(_) => 0,
            })
            .collect()
    }

    fn check_power(st: &State) -> Result<()> {
        if st.powered_off {
            Err(StorageError::PowerLost)
        } else {
            Ok(())
        }
    }
}

impl Storage for FaultStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let st = self.lock();
        Self::check_power(&st)?;
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= st.current.len() as u64 => {
                buf.copy_from_slice(&st.current[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(StorageError::ShortRead {
                offset,
                len: buf.len() as u64,
                size: st.current.len() as u64,
            }),
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.lock();
        Self::check_power(&st)?;
        let idx = st.writes;
        st.writes += 1;
        if st.cfg.power_loss_at_write == Some(idx) {
            st.powered_off = true;
            return Err(StorageError::PowerLost);
        }
        if let Some((n, kind)) = st.cfg.fail_write {
            if n == idx {
                return Err(StorageError::Injected {
                    op: Op::Write,
                    offset,
                    kind,
                });
            }
        }
        if offset.saturating_add(data.len() as u64) > super::memory::MEM_STORAGE_MAX {
            return Err(StorageError::Injected {
                op: Op::Write,
                offset,
                kind: InjectedKind::Enospc,
            });
        }
        let p = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut st.current, &p);
        st.pending.push(p);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut st = self.lock();
        Self::check_power(&st)?;
        let idx = st.syncs;
        st.syncs += 1;
        if let Some((n, kind)) = st.cfg.fail_sync {
            if n == idx {
                return Err(StorageError::Injected {
                    op: Op::Sync,
                    offset: 0,
                    kind,
                });
            }
        }
        st.durable = st.current.clone();
        st.pending.clear();
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        let st = self.lock();
        Self::check_power(&st)?;
        Ok(st.current.len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        let mut st = self.lock();
        Self::check_power(&st)?;
        if len > super::memory::MEM_STORAGE_MAX {
            return Err(StorageError::Injected {
                op: Op::SetLen,
                offset: len,
                kind: InjectedKind::Enospc,
            });
        }
        let p = Pending::SetLen(len);
        apply(&mut st.current, &p);
        st.pending.push(p);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.len()?;
        if offset >= size {
            return Ok(());
        }
        super::write_zeroes_chunked(self, offset, len.min(size - offset))
    }
}
