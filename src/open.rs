//! Open an image file (or NBD URI) as a [`BlockDevice`].

use crate::device::{BlockDevice, DevResult, DeviceError};
use crate::engine::{Engine, Qcow2ZoneStore};
use crate::format::{BackingPolicy, FormatError, Qcow2};
use crate::raw::RawDevice;
use crate::storage::{FileStorage, Storage};
use std::path::Path;
use std::sync::Arc;

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// `qcow2`, `raw`, or None to probe.
    pub format: Option<String>,
    /// Open read-only.
    pub read_only: bool,
    /// Follow backing files named by the image (local CLI tools: yes; a
    /// server handling untrusted images: only if the operator allows).
    pub allow_backing: bool,
}

fn open_err(path: &Path, e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Invalid(format!("Could not open '{}': {e}", path.display()))
}

/// Whether the file starts with the qcow2 magic.
fn probe_qcow2(path: &Path) -> DevResult<bool> {
    let st = FileStorage::open(path, true).map_err(|e| open_err(path, e))?;
    if st.len().map_err(FormatError::from)? < 4 {
        return Ok(false);
    }
    let mut m = [0u8; 4];
    st.read_at(0, &mut m).map_err(FormatError::from)?;
    Ok(u32::from_be_bytes(m) == crate::format::header::QCOW_MAGIC)
}

/// Open `path` as a raw device limited to `[offset, offset+size)` of the
/// file (QEMU's raw `offset`/`size` options).
pub fn open_raw_window(
    path: &Path,
    read_only: bool,
    offset: u64,
    size: Option<u64>,
) -> DevResult<Arc<dyn BlockDevice>> {
    let store = FileStorage::open(path, read_only).map_err(|e| open_err(path, e))?;
    Ok(Arc::new(RawDevice::window(
        Arc::new(store),
        read_only,
        offset,
        size,
    )?))
}

/// Open `path` as a block device: an NBD URI through the NBD client, or a
/// raw, plain qcow2 or zoned qcow2 image (zoned ones through the engine).
pub fn open_device(path: &Path, opts: &OpenOptions) -> DevResult<Arc<dyn BlockDevice>> {
    if let Some(s) = path.to_str() {
        if ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return crate::nbd::connect_uri(s);
        }
    }
    let fmt = match opts.format.as_deref() {
        Some(f) => f.to_string(),
        None => {
            if probe_qcow2(path)? {
                "qcow2".into()
            } else {
                "raw".into()
            }
        }
    };
    match fmt.as_str() {
        "raw" => {
            let store = FileStorage::open(path, opts.read_only).map_err(|e| open_err(path, e))?;
            Ok(Arc::new(RawDevice::new(Arc::new(store), opts.read_only)?))
        }
        "qcow2" => {
            let img = Qcow2::open_path(
                path,
                &crate::format::OpenOptions {
                    read_only: opts.read_only,
                    backing: if opts.allow_backing {
                        BackingPolicy::Follow
                    } else {
                        BackingPolicy::Refuse
                    },
                    ..Default::default()
                },
            )
            .map_err(|e| open_err(path, e))?;
            if img.zoned().is_some() {
                return open_zoned(img).map_err(|e| open_err(path, e));
            }
            Ok(Arc::new(img))
        }
        other => Err(DeviceError::Unsupported(format!(
            "image format '{other}' (zcow supports qcow2 and raw)"
        ))),
    }
}

fn open_zoned(img: Qcow2) -> DevResult<Arc<dyn BlockDevice>> {
    let store = Qcow2ZoneStore::new(img)?;
    let engine = Engine::open(Arc::new(store))?;
    Ok(Arc::new(engine))
}
