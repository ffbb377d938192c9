//! Open an image file (or NBD URI) as a [`BlockDevice`].

use crate::device::{BlockDevice, DevResult, DeviceError};
use crate::raw::RawDevice;
use crate::storage::FileStorage;
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

/// Open `path` as a block device.
pub fn open_device(path: &Path, opts: &OpenOptions) -> DevResult<Arc<dyn BlockDevice>> {
    // NBD URIs go to the NBD client.
    if let Some(s) = path.to_str() {
        if ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return crate::nbd::connect_uri(s);
        }
    }
    let store = FileStorage::open(path, opts.read_only)
        .map_err(|e| DeviceError::Invalid(format!("Could not open '{}': {e}", path.display())))?;
    Ok(Arc::new(RawDevice::new(Arc::new(store), opts.read_only)?))
}
