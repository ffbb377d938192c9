//! The zone emulation engine.

pub mod store;

pub use store::{StoreResult, ZoneStore};
