#![no_main]
//! cargo-fuzz target `nbd_client`: the logic lives in `zcow::fuzzing::nbd::fuzz_nbd_client`
//! so `cargo test` replays the corpus on stable Rust.
use libfuzzer_sys::fuzz_target;

mod alloc_limit;

fuzz_target!(|data: &[u8]| zcow::fuzzing::nbd::fuzz_nbd_client(data));
