//! Helpers shared by the kernel tests: a seeded generator and comparisons.
#![allow(dead_code)]

/// Small deterministic generator (SplitMix64), so tests need no `rand`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Asserts `|a − b| <= atol + rtol·|b|` element-wise, naming the first failure.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = atol + rtol * w.abs();
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}

/// Bit patterns, for exact comparisons that treat NaNs and signed zeros strictly.
pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

use baton_kernels::Trans;

/// Every pair of operand transposes.
pub const TRANS: [(Trans, Trans); 4] =
    [(Trans::No, Trans::No), (Trans::No, Trans::Yes), (Trans::Yes, Trans::No), (Trans::Yes, Trans::Yes)];

/// Element (i, j) of op(x) where op(x) is `rows × cols`.
pub fn at(x: &[f32], t: Trans, rows: usize, cols: usize, i: usize, j: usize) -> f32 {
    match t {
        Trans::No => x[i * cols + j],
        Trans::Yes => x[j * rows + i],
    }
}

/// The definition: `acc = c0 or 0; acc = fma(a[i,p], b[p,j], acc)` for p in order.
#[allow(clippy::too_many_arguments)]
pub fn reference(
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    m: usize,
    k: usize,
    n: usize,
    c0: Option<&[f32]>,
) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = c0.map_or(0.0, |c0| c0[i * n + j]);
            for p in 0..k {
                acc = at(a, ta, m, k, i, p).mul_add(at(b, tb, k, n, p, j), acc);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// Values of wide dynamic range (so chains cancel, round and reach
/// subnormals), with some exact zeros and negative zeros.
pub fn data(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| match rng.next_u64() % 16 {
            0 => 0.0,
            1 => -0.0,
            2 => rng.uniform(-1.0, 1.0) * 2f32.powi(-((rng.next_u64() % 130) as i32)),
            3 => rng.uniform(-1.0, 1.0) * 2f32.powi((rng.next_u64() % 20) as i32),
            _ => rng.uniform(-1.0, 1.0),
        })
        .collect()
}

/// One random product of a shape and transpose pair, with the reference
/// results fresh and accumulated onto `c0`, bit patterns.
pub struct Product {
    pub a: Vec<f32>,
    pub ta: Trans,
    pub b: Vec<f32>,
    pub tb: Trans,
    pub c0: Vec<f32>,
    pub shape: (usize, usize, usize),
    pub fresh: Vec<u32>,
    pub accumulated: Vec<u32>,
}

impl Product {
    pub fn random(rng: &mut Rng, (ta, tb): (Trans, Trans), m: usize, k: usize, n: usize) -> Self {
        let (a, b, c0) = (data(rng, m * k), data(rng, k * n), data(rng, m * n));
        let fresh = bits(&reference(&a, ta, &b, tb, m, k, n, None));
        let accumulated = bits(&reference(&a, ta, &b, tb, m, k, n, Some(&c0)));
        Product { a, ta, b, tb, c0, shape: (m, k, n), fresh, accumulated }
    }

    /// Runs `matmul` on `isa`, fresh into NaNs and accumulating onto `c0`,
    /// and asserts both give the reference bits; `what` names the case.
    pub fn check(&self, isa: baton_kernels::isa::Isa, what: &str) {
        let (m, k, n) = self.shape;
        let run = |c: &mut [f32], accumulate: bool| {
            baton_kernels::isa::with_isa(isa, || {
                baton_kernels::matmul(c, &self.a, self.ta, &self.b, self.tb, m, k, n, accumulate)
            })
            .unwrap()
        };
        let mut c = vec![f32::NAN; m * n];
        run(&mut c, false);
        assert!(bits(&c) == self.fresh, "{what}: differs from the fma chain");
        let mut c = self.c0.clone();
        run(&mut c, true);
        assert!(bits(&c) == self.accumulated, "{what} accumulate: differs from the fma chain");
    }
}
