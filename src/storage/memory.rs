//! In-memory backend, for tests and fuzzing.

use super::{Result, Storage, StorageError};
use std::sync::RwLock;

/// Upper bound on the size of an in-memory store, so hostile metadata cannot
/// make a test or fuzz target allocate without limit.
pub const MEM_STORAGE_MAX: u64 = 1 << 30;

/// A growable byte vector as image storage.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(bytes),
            read_only: false,
        }
    }

    /// A read-only store holding `bytes`.
    pub fn read_only(bytes: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(bytes),
            read_only: true,
        }
    }

    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn grow(v: &mut Vec<u8>, end: u64) -> Result<()> {
        if end > MEM_STORAGE_MAX {
            return Err(StorageError::Injected {
                op: super::Op::Write,
                offset: end,
                kind: super::InjectedKind::Enospc,
            });
        }
        if (v.len() as u64) < end {
            v.resize(end as usize, 0);
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let v = self.data.read().unwrap_or_else(|e| e.into_inner());
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= v.len() as u64 => {
                buf.copy_from_slice(&v[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(StorageError::ShortRead {
                offset,
                len: buf.len() as u64,
                size: v.len() as u64,
            }),
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        let mut v = self.data.write().unwrap_or_else(|e| e.into_inner());
        let end = offset.saturating_add(data.len() as u64);
        Self::grow(&mut v, end)?;
        v[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        let mut v = self.data.write().unwrap_or_else(|e| e.into_inner());
        if len > MEM_STORAGE_MAX {
            return Err(StorageError::Injected {
                op: super::Op::SetLen,
                offset: len,
                kind: super::InjectedKind::Enospc,
            });
        }
        v.resize(len as usize, 0);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        let mut v = self.data.write().unwrap_or_else(|e| e.into_inner());
        let size = v.len() as u64;
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        v[start..end].fill(0);
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.len().ok()
    }
}
