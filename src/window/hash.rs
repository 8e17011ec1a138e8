//! A fast, non-cryptographic hasher for the engine's maps: strings go through
//! xxh3, integers through a multiply-xorshift mix. The keys are token names,
//! wallet addresses, small integer tuples and already-random event hashes; none of
//! them is attacker-chosen in a way SipHash would protect (a flooding producer is
//! bounded by validation and Kafka quotas), and the hot path needs the speed.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher state: a running 64-bit value, mixed once more in `finish`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher {
    state: u64,
}

/// Odd 64-bit multiplier (2^64 / golden ratio): spreads a word's bits upward.
pub(crate) const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(MIX);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // Final avalanche (murmur3 fmix64) so every input bit reaches the low bits
        // (bucket index) and the top bits (control byte).
        let mut x = self.state;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let h = xxhash_rust::xxh3::xxh3_64(bytes);
        self.add(h);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        // Event keys are xxh3 outputs already: folding the halves is enough.
        self.add((i as u64) ^ ((i >> 64) as u64));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// Builds [`FastHasher`]s.
pub(crate) type FastBuild = BuildHasherDefault<FastHasher>;
/// A `HashMap` with the fast hasher.
pub(crate) type FastMap<K, V> = HashMap<K, V, FastBuild>;
/// A `HashSet` with the fast hasher.
pub(crate) type FastSet<K> = HashSet<K, FastBuild>;
