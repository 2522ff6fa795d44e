//! Seeded, stable hashing for deterministic train/test splits (independent of Rust's `Hash`).

/// A stable 64-bit hash of `key` under `seed` (FNV-1a, then a splitmix64 finaliser).
pub fn stable_hash(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `key` belongs to the test side of a split holding `test_fraction` of all keys (seeded, stable).
pub fn is_test(key: &str, seed: u64, test_fraction: f64) -> bool {
    let u = (stable_hash(seed, key) >> 11) as f64 / (1u64 << 53) as f64;
    u < test_fraction
}
