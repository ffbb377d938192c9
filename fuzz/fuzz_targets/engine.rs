#![no_main]
//! cargo-fuzz target `engine`: the logic lives in `zcow::fuzzing::engine::fuzz_engine`
//! so `cargo test` replays the corpus on stable Rust.
use libfuzzer_sys::fuzz_target;

mod alloc_limit;

fuzz_target!(|data: &[u8]| zcow::fuzzing::engine::fuzz_engine(data));
