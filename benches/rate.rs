//! The one timing loop of the cipher benchmarks (`cipher_ceiling.rs`, `aead/`).

use std::time::{Duration, Instant};

/// Long enough per figure for the clock and the CPU's frequency to settle.
pub const SPELL: Duration = Duration::from_millis(600);

/// Gbit/s of plaintext through `op`, called on `size` bytes with a new counter each time for
/// [`SPELL`], after a warm-up.
pub fn rate(size: usize, mut op: impl FnMut(u64)) -> f64 {
    for counter in 0..64 {
        op(counter);
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < SPELL {
        for _ in 0..64 {
            op(done);
            done += 1;
        }
    }
    (done as f64 * size as f64 * 8.0) / started.elapsed().as_secs_f64() / 1e9
}
