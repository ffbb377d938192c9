//! Open an image file (or NBD URI) as a [`BlockDevice`].

use crate::device::{BlockDevice, DevResult, DeviceError};
use crate::engine::{Engine, Qcow2ZoneStore};
use crate::format::{BackingPolicy, FormatError, Qcow2};
use crate::probe::Probed;
use crate::raw::RawDevice;
use crate::storage::lock::LockRequest;
use crate::storage::{FileStorage, Storage};
use std::io::Write;
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

fn open_err(path: &Path, e: impl std::error::Error + 'static) -> DeviceError {
    // A lock conflict reads as QEMU's, without the "Could not open" prefix
    // (qemu-io: "can't open device X: Failed to get "write" lock ...").
    if let Some(m) = crate::storage::open_refusal(&e) {
        return DeviceError::Invalid(m);
    }
    let msg = e.to_string();
    // QEMU names the failing backing file, not the image that named it.
    if msg.starts_with("Could not open backing file:") {
        return DeviceError::Invalid(msg);
    }
    DeviceError::Invalid(format!("Could not open '{}': {msg}", path.display()))
}

/// What the file's first bytes say it is.
fn probe_path(path: &Path, read_only: bool) -> DevResult<Probed> {
    // A short unlocked probe: the real open takes the locks and reports a
    // conflict the way the opener (reader or writer) would see it. Opened
    // with the final mode so a directory fails as it would (EISDIR for a
    // writer, "not a regular file" for a reader), as in QEMU.
    let st = FileStorage::open_with(path, read_only, None).map_err(|e| open_err(path, e))?;
    let mut head = [0u8; crate::probe::PROBE_LEN];
    st.read_at_zero_fill(0, &mut head)
        .map_err(|e| open_err(path, FormatError::from(e)))?;
    Ok(crate::probe::probe_file(path, &head))
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

/// Open `path` as a block device: an NBD URI through the NBD client, a
/// raw, plain qcow2 or zoned qcow2 image (zoned ones through the engine),
/// or a host-managed zoned block device of the host ([`crate::hostdev`]).
pub fn open_device(path: &Path, opts: &OpenOptions) -> DevResult<Arc<dyn BlockDevice>> {
    if let Some(s) = path.to_str() {
        if ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return crate::nbd::connect_uri(s);
        }
    }
    let mut guessed_raw = false;
    let fmt = match opts.format.as_deref() {
        Some(f) => f.to_string(),
        None => match probe_path(path, opts.read_only)? {
            Probed::Qcow2 => "qcow2".into(),
            Probed::Other(f) => {
                return Err(DeviceError::Invalid(format!(
                    "Could not open '{}': {}",
                    path.display(),
                    crate::probe::unsupported_message(f)
                )))
            }
            Probed::Raw => {
                guessed_raw = true;
                "raw".into()
            }
        },
    };
    match fmt.as_str() {
        "raw" => {
            let mut lock = LockRequest::raw(opts.read_only);
            if opts.read_only && crate::storage::lock::force_share() {
                lock = lock.force_shared();
            }
            if crate::hostdev::is_host_managed(path) {
                let dev = crate::hostdev::HostZoned::open(path, opts.read_only, lock)?;
                return Ok(Arc::new(dev));
            }
            let store = FileStorage::open_with(path, opts.read_only, Some(lock))
                .map_err(|e| open_err(path, e))?;
            let dev = RawDevice::new(Arc::new(store), opts.read_only)?;
            if guessed_raw && !opts.read_only {
                // QEMU's block layer warns on stderr at open, and so do we.
                let _ = writeln!(
                    std::io::stderr(),
                    "{}",
                    crate::probe::guessed_raw_warning(&path.display().to_string())
                );
                return Ok(Arc::new(dev.guard_block0()));
            }
            Ok(Arc::new(dev))
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
            warn_overlap(path, &img);
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

/// A read-only open of an image whose metadata overlaps proceeds (reads
/// cannot make it worse) but says so; a read-write open was refused.
pub fn warn_overlap(path: &Path, img: &Qcow2) {
    if let Some(w) = img.metadata_overlap() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "warning: '{}': {w} (opened read-only)",
            path.display()
        );
    }
}
