//! Softmax over the last dimension, optionally causal, and its backward.
//!
//! Rows are independent; within a row the max and the sum run in element
//! order with `libm::expf`, so the bits depend on nothing but the data.

use crate::reduce::sum_map2;
use crate::threads::par_rows_mut;

/// Columns of row `r` that take part: all of them, or with a causal mask over
/// square `[.., T, T]` blocks (`cols == T`), positions `0..=r % T`.
fn visible(r: usize, cols: usize, causal: bool) -> usize {
    if causal {
        r % cols + 1
    } else {
        cols
    }
}

/// `y[r, :] = softmax(x[r, :])` over rows of `cols` elements. With `causal`,
/// row `r` sees only columns `0..=r % cols` (query position `r % cols` of a
/// `[.., T, T]` score tensor); masked entries are exactly 0.
///
/// # Panics
/// If `cols == 0`, `x.len() % cols != 0` or `y.len() != x.len()`.
pub fn softmax(x: &[f32], cols: usize, causal: bool, y: &mut [f32]) {
    assert!(cols > 0, "softmax: cols == 0");
    assert_eq!(x.len() % cols, 0, "softmax: x.len() % cols != 0");
    assert_eq!(y.len(), x.len(), "softmax: y.len() != x.len()");
    par_rows_mut(y, cols, |r0, y| {
        for (i, yr) in y.chunks_exact_mut(cols).enumerate() {
            let r = r0 + i;
            let n = visible(r, cols, causal);
            let xr = &x[r * cols..r * cols + n];
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (y, &v) in yr[..n].iter_mut().zip(xr) {
                *y = libm::expf(v - max);
                sum += *y;
            }
            let inv = 1.0 / sum;
            yr[..n].iter_mut().for_each(|y| *y *= inv);
            yr[n..].fill(0.0);
        }
    });
}

/// `dx = y ⊙ (dy − Σ_j y_j dy_j)` per row, from the forward output `y`
/// (masked entries have `y = 0`, so they get no gradient).
///
/// # Panics
/// If `cols == 0` or any length differs from `y.len()` or is not whole rows.
pub fn softmax_backward(y: &[f32], dy: &[f32], cols: usize, dx: &mut [f32]) {
    assert!(cols > 0, "softmax_backward: cols == 0");
    assert_eq!(y.len() % cols, 0, "softmax_backward: y.len() % cols != 0");
    assert_eq!(dy.len(), y.len(), "softmax_backward: dy.len() != y.len()");
    assert_eq!(dx.len(), y.len(), "softmax_backward: dx.len() != y.len()");
    par_rows_mut(dx, cols, |r0, dx| {
        for (i, dxr) in dx.chunks_exact_mut(cols).enumerate() {
            let r = r0 + i;
            let (yr, gr) = (&y[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
            let dot = sum_map2(yr, gr, |a, b| a * b);
            for ((d, &y), &g) in dxr.iter_mut().zip(yr).zip(gr) {
                *d = y * (g - dot);
            }
        }
    });
}
