//! The zone emulation engine.

pub mod qcow2_store;
pub mod store;

pub use qcow2_store::Qcow2ZoneStore;
pub use store::{StoreResult, ZoneStore};
