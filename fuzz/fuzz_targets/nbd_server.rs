#![no_main]
//! cargo-fuzz target `nbd_server`: the logic lives in `zcow::fuzzing::nbd::fuzz_nbd_server`
//! so `cargo test` replays the corpus on stable Rust.
use libfuzzer_sys::fuzz_target;

mod alloc_limit;

fuzz_target!(|data: &[u8]| zcow::fuzzing::nbd::fuzz_nbd_server(data));
