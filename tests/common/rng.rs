//! A tiny deterministic xorshift generator for seeded test workloads.
#![allow(dead_code)]

/// xorshift64; the state must not be zero.
pub struct Rng(pub u64);

impl Rng {
    /// A generator whose sequence depends on `seed` (any value).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
