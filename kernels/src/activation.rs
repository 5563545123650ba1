//! Activation functions: `y = f(x)`; backward writes `dx = dy * f'(…)`.
//!
//! Transcendentals come from `libm` so results do not depend on the system
//! C library.

use crate::threads::par_chunks_mut;

/// 1/√2.
pub(crate) const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
pub(crate) const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Applies `f(x[i])` to every element: `y[i] = f(x[i])`.
fn map1(x: &[f32], y: &mut [f32], name: &str, f: impl Fn(f32) -> f32 + Sync + Send) {
    assert_eq!(x.len(), y.len(), "{name}: input and output lengths differ");
    par_chunks_mut(y, |off, y| {
        let n = y.len();
        for (y, &x) in y.iter_mut().zip(&x[off..off + n]) {
            *y = f(x);
        }
    });
}

/// `dx[i] = f(s[i], dy[i])` where `s` is the saved forward input or output.
fn map2(s: &[f32], dy: &[f32], dx: &mut [f32], name: &str, f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    assert_eq!(s.len(), dx.len(), "{name}: saved tensor and dx lengths differ");
    assert_eq!(dy.len(), dx.len(), "{name}: dy and dx lengths differ");
    par_chunks_mut(dx, |off, dx| {
        let n = dx.len();
        for ((dx, &s), &g) in dx.iter_mut().zip(&s[off..off + n]).zip(&dy[off..off + n]) {
            *dx = f(s, g);
        }
    });
}

/// `y = max(x, 0)`; NaN stays NaN, as in PyTorch.
pub fn relu(x: &[f32], y: &mut [f32]) {
    map1(x, y, "relu", |x| if x > 0.0 || x.is_nan() { x } else { 0.0 });
}

/// Uses the forward OUTPUT: `dx = dy` where `y > 0`, else 0.
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    map2(y, dy, dx, "relu_backward", |y, g| if y > 0.0 { g } else { 0.0 });
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`, like PyTorch's default.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    map1(x, y, "gelu", |x| 0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2)));
}

/// Uses the forward INPUT: `dx = dy·(Φ(x) + x·φ(x))`.
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map2(x, dy, dx, "gelu_backward", |x, g| {
        let cdf = 0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
        let pdf = libm::expf(-0.5 * x * x) * FRAC_1_SQRT_2PI;
        g * (cdf + x * pdf)
    });
}

/// `y = tanh(x)`.
pub fn tanh(x: &[f32], y: &mut [f32]) {
    map1(x, y, "tanh", libm::tanhf);
}

/// Uses the forward OUTPUT: `dx = dy·(1 − y²)`.
pub fn tanh_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    map2(y, dy, dx, "tanh_backward", |y, g| g * (1.0 - y * y));
}

/// `y = x · sigmoid(x)` (SiLU, a.k.a. swish).
pub fn silu(x: &[f32], y: &mut [f32]) {
    map1(x, y, "silu", |x| x / (1.0 + libm::expf(-x)));
}

/// Uses the forward INPUT: `dx = dy · s (1 + x (1 − s))`, `s = sigmoid(x)`.
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map2(x, dy, dx, "silu_backward", |x, g| {
        let s = 1.0 / (1.0 + libm::expf(-x));
        g * (s * (1.0 + x * (1.0 - s)))
    });
}
