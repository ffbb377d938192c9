//! The qcow2 format layer, with the zoned extension.

pub mod error;
pub mod wp;

pub use error::{FormatError, Result};
pub mod bitmap;
pub mod bytes;
pub mod cache;
pub mod compress;
pub mod create;
pub mod features;
pub mod header;
pub mod image;
pub mod l2;
pub mod luks;
pub mod map;
pub mod overlap;
pub mod payload;
pub mod refcount;
pub mod snapshot;
pub mod specific;
pub mod types;
pub mod zoned;

pub use header::Header;
pub use image::{
    BackingPolicy, HostRun, OpenOptions, PageUse, Qcow2, MAX_STATUS_RUNS, REUSE_POOL_BYTES,
};
pub use payload::Payload;
