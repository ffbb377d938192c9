//! The zone emulation engine: the zone state machine of
//! `design/zone-model.md` over a [`ZoneStore`], exposed as a
//! [`BlockDevice`](crate::device::BlockDevice).

mod block;
mod error;
mod inflight;
mod lru;
mod mem_store;
pub mod qcow2_store;
mod state;
pub mod store;
mod zone_engine;

pub use error::{EngineError, EngineResult};
pub use mem_store::{MemZoneStore, MEM_ZONE_STORE_LIMIT};
pub use qcow2_store::Qcow2ZoneStore;
pub use store::{StoreResult, ZoneStore};
pub use zone_engine::{Engine, ZoneFault};
