//! Fault injection for canary tests: a tiny per-thread xorshift64 PRNG.

use std::cell::Cell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// Seed from the wall clock and the current thread's id (never zero).
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = DefaultHasher::new();
    nanos.hash(&mut h);
    std::thread::current().id().hash(&mut h);
    match h.finish() {
        0 => 0x9E37_79B9_7F4A_7C15,
        s => s,
    }
}

/// One xorshift64 step (Marsaglia's 13/7/17 triple, period 2^64 - 1).
pub fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Next pseudo-random `u64` from this thread's generator.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = xorshift64(s.get());
        s.set(x);
        x
    })
}

/// Uniform `f64` in `[0, 1)`.
pub fn next_f64() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `true` with probability `rate` (0.0 never, 1.0 always).
pub fn should_fail(rate: f64) -> bool {
    rate > 0.0 && (rate >= 1.0 || next_f64() < rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_nonzero_and_moves() {
        let mut x = 1;
        for _ in 0..1000 {
            let y = xorshift64(x);
            assert_ne!(y, 0);
            assert_ne!(y, x);
            x = y;
        }
    }

    #[test]
    fn unit_interval_and_extremes() {
        for _ in 0..10_000 {
            let f = next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!((0..1000).all(|_| !should_fail(0.0)));
        assert!((0..1000).all(|_| should_fail(1.0)));
        let hits = (0..10_000).filter(|_| should_fail(0.5)).count();
        assert!(hits > 0 && hits < 10_000);
    }
}
