#![no_main]
//! cargo-fuzz target `header`: the logic lives in `zcow::fuzzing::fuzz_header`
//! so `cargo test` replays the corpus on stable Rust.
use libfuzzer_sys::fuzz_target;

mod alloc_limit;

fuzz_target!(|data: &[u8]| zcow::fuzzing::fuzz_header(data));
