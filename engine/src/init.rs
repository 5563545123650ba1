//! Seeded parameter initialisation (used when no weights file is given).

use crate::{Init, ParamSpec, ParamStore, Tensor};

/// SplitMix64: a tiny, portable generator, so that a seed gives the same
/// initial weights on every machine.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Standard normal by Box-Muller over two uniforms, in f64 with `libm`,
    /// so the bits are the same on every machine.
    pub fn next_normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)) as f32
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Parameters for `specs` (full names) drawn from `seed`, in name order.
pub fn init_params(specs: &[ParamSpec], seed: u64) -> ParamStore {
    let mut rng = SplitMix64::new(seed);
    let mut sorted: Vec<&ParamSpec> = specs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
        .into_iter()
        .map(|spec| {
            let n: usize = spec.shape.iter().product();
            let data = match spec.init {
                Init::Uniform { bound } => (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect(),
                Init::Constant(c) => vec![c; n],
                Init::Normal { std } => (0..n).map(|_| rng.next_normal() * std).collect(),
            };
            (spec.name.clone(), Tensor::new(spec.shape.clone(), data).expect("n is the product of the shape"))
        })
        .collect()
}
