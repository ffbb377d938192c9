#![no_main]
//! cargo-fuzz target `iocmd_parse`: the logic lives in `zcow::fuzzing::iocmd_parse::fuzz_iocmd_parse`
//! so `cargo test` replays the corpus on stable Rust.
use libfuzzer_sys::fuzz_target;

mod alloc_limit;

fuzz_target!(|data: &[u8]| zcow::fuzzing::iocmd_parse::fuzz_iocmd_parse(data));
