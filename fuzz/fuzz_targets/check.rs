#![no_main]
//! cargo-fuzz target `check`: the logic lives in `zcow::fuzzing::check::fuzz_check`
//! so `cargo test` replays the corpus on stable Rust.
use libfuzzer_sys::fuzz_target;

mod alloc_limit;

fuzz_target!(|data: &[u8]| zcow::fuzzing::check::fuzz_check(data));
