//! Helpers shared by the engine tests.
#![allow(dead_code)]

pub mod faulty;
pub mod zone_model;

use std::sync::Arc;
use zcow::engine::{Engine, MemZoneStore};
use zcow::zone::ZoneGeometry;

/// A geometry; `nr_zones` derived from the sizes.
pub fn geo(
    device_size: u64,
    zone_size: u64,
    zone_capacity: u64,
    conventional_zones: u32,
    max_open_zones: u32,
    max_active_zones: u32,
    max_append_bytes: u32,
) -> ZoneGeometry {
    ZoneGeometry {
        device_size,
        zone_size,
        zone_capacity,
        nr_zones: device_size.div_ceil(zone_size) as u32,
        conventional_zones,
        max_open_zones,
        max_active_zones,
        max_append_bytes,
    }
}

/// A fresh in-memory store and an engine over it.
pub fn engine(g: ZoneGeometry) -> (Arc<MemZoneStore>, Engine) {
    let store = Arc::new(MemZoneStore::new(g).unwrap());
    let e = Engine::open(store.clone()).unwrap();
    (store, e)
}

/// `len` bytes of a pattern that differs per seed and offset.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| seed.wrapping_mul(31).wrapping_add((k / 512) as u8) | 1)
        .collect()
}
