//! Dropout masks from a counter-based RNG: element `i` of the tensor keyed
//! `key` is kept when a hash of `(seed, key, i)` falls at or above `p`.
//!
//! The mask depends only on those numbers, so every worker (and a forward
//! recomputed after a migration) draws the same one, and backward redraws
//! it instead of saving it.

/// SplitMix64's finaliser: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether element `index` of the tensor `key` survives dropout with rate `p`.
pub fn keep(seed: u64, key: u64, index: u64, p: f32) -> bool {
    let bits = mix(mix(seed ^ mix(key)).wrapping_add(index));
    // 24 high bits give a uniform in [0, 1) exactly representable in f32.
    let u = (bits >> 40) as f32 * (1.0 / 16_777_216.0);
    u >= p
}

/// `y[i] = x[i] / (1 - p)` where kept, else 0 (also the backward, with dy in x's place).
///
/// # Panics
/// If `y.len() != x.len()` or `p` is not in `[0, 1)`.
pub fn apply(x: &[f32], seed: u64, key: u64, p: f32, y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "dropout: lengths differ");
    assert!((0.0..1.0).contains(&p), "dropout: p = {p} is not in [0, 1)");
    let scale = 1.0 / (1.0 - p);
    for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        *y = if keep(seed, key, i as u64, p) { x * scale } else { 0.0 };
    }
}
