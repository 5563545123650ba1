//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use baton_engine::init::SplitMix64;
use baton_engine::{ParamStore, Recorder, Result, Segment, SegmentKey, Tensor, TensorId};

/// Deterministic tensor uniform in [-scale, scale].
pub fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let data = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

pub const KEY: SegmentKey = SegmentKey { step: 0, micro: 0, layer: 0 };

/// Records one segment with `build` on input `x`.
pub fn record(
    params: &ParamStore,
    x: Tensor,
    build: &dyn Fn(&mut Recorder<'_>, TensorId) -> Result<TensorId>,
) -> (Segment, Tensor) {
    let mut rec = Recorder::new(KEY, String::new(), params, x);
    let input = rec.input();
    let out = build(&mut rec, input).unwrap();
    rec.finish(out).unwrap()
}

/// Max |a - b| over two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Bitwise equality of two f32 slices.
pub fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
