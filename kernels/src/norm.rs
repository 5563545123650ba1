//! LayerNorm over the last dimension (`cols`), biased variance like PyTorch,
//! `eps` inside the square root. Row statistics use fixed-order `f32` sums.

use rayon::prelude::*;

use crate::reduce::{sum_map, sum_map2, sum_map3};
use crate::threads::{par_rows_mut, pool_for, COL_BLOCK};

/// Forward LayerNorm of a row-major `rows × cols` matrix, `rows = x.len() / cols`.
///
/// `stats.len() == 2*rows`: `stats[0..rows]` = mean per row,
/// `stats[rows..2*rows]` = rstd = 1/sqrt(var + eps) per row.
///
/// # Panics
/// If `cols == 0`, `x.len() % cols != 0`, `y.len() != x.len()`,
/// `gamma.len() != cols`, `beta.len() != cols` or `stats.len() != 2*rows`.
pub fn layernorm(x: &[f32], gamma: &[f32], beta: &[f32], cols: usize, eps: f32, y: &mut [f32], stats: &mut [f32]) {
    assert!(cols > 0, "layernorm: cols == 0");
    assert_eq!(x.len() % cols, 0, "layernorm: x.len() % cols != 0");
    let rows = x.len() / cols;
    assert_eq!(y.len(), x.len(), "layernorm: y.len() != x.len()");
    assert_eq!(gamma.len(), cols, "layernorm: gamma.len() != cols");
    assert_eq!(beta.len(), cols, "layernorm: beta.len() != cols");
    assert_eq!(stats.len(), 2 * rows, "layernorm: stats.len() != 2*rows");
    let (mean, rstd) = stats.split_at_mut(rows);
    let block = |x: &[f32], y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]| {
        for (r, (xr, yr)) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)).enumerate() {
            (mean[r], rstd[r]) = ln_row(xr, gamma, beta, eps, yr);
        }
    };
    let Some(pool) = pool_for(x.len()) else {
        return block(x, y, mean, rstd);
    };
    let rb = crate::threads::rows_per_task(cols);
    pool.install(|| {
        x.par_chunks(rb * cols)
            .zip(y.par_chunks_mut(rb * cols))
            .zip(mean.par_chunks_mut(rb).zip(rstd.par_chunks_mut(rb)))
            .for_each(|((x, y), (m, s))| block(x, y, m, s));
    });
}

/// Normalises one row into `y`; returns (mean, rstd). Two-pass mean and
/// variance with fixed-order `f32` sums ([`crate::reduce`]).
fn ln_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) -> (f32, f32) {
    let inv_n = 1.0 / x.len() as f32;
    let mean = sum_map(x, |v| v) * inv_n;
    let var = sum_map(x, |v| (v - mean) * (v - mean)) * inv_n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *y = (x - mean) * rstd * g + b;
    }
    (mean, rstd)
}

/// Backward LayerNorm. `dx` is written; `dgamma`/`dbeta` are written
/// (`accumulate == false`) or added to (`accumulate == true`), with rows
/// summed strictly in order 0, 1, 2, … for any thread count.
///
/// # Panics
/// On any length mismatch with `rows = x.len() / cols` (see [`layernorm`]).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
    cols: usize,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    accumulate: bool,
) {
    assert!(cols > 0, "layernorm_backward: cols == 0");
    assert_eq!(x.len() % cols, 0, "layernorm_backward: x.len() % cols != 0");
    let rows = x.len() / cols;
    assert_eq!(gamma.len(), cols, "layernorm_backward: gamma.len() != cols");
    assert_eq!(stats.len(), 2 * rows, "layernorm_backward: stats.len() != 2*rows");
    assert_eq!(dy.len(), x.len(), "layernorm_backward: dy.len() != x.len()");
    assert_eq!(dx.len(), x.len(), "layernorm_backward: dx.len() != x.len()");
    assert_eq!(dgamma.len(), cols, "layernorm_backward: dgamma.len() != cols");
    assert_eq!(dbeta.len(), cols, "layernorm_backward: dbeta.len() != cols");
    let (mean, rstd) = stats.split_at(rows);
    ln_backward_dx(x, gamma, mean, rstd, dy, cols, dx);
    if !accumulate {
        dgamma.fill(0.0);
        dbeta.fill(0.0);
    }
    ln_backward_params(x, mean, rstd, dy, cols, dgamma, dbeta);
}

/// `dx` for every row; rows are independent, so they run in parallel.
fn ln_backward_dx(x: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], dy: &[f32], cols: usize, dx: &mut [f32]) {
    par_rows_mut(dx, cols, |r0, dx| {
        for (i, dxr) in dx.chunks_exact_mut(cols).enumerate() {
            let r = r0 + i;
            let span = r * cols..(r + 1) * cols;
            ln_row_backward(&x[span.clone()], gamma, mean[r], rstd[r], &dy[span], dxr);
        }
    });
}

/// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·γ, x̂ = (x − mean)·rstd.
fn ln_row_backward(x: &[f32], gamma: &[f32], mean: f32, rstd: f32, dy: &[f32], dx: &mut [f32]) {
    let inv_n = 1.0 / x.len() as f32;
    let mg = sum_map2(dy, gamma, |dy, g| dy * g) * inv_n;
    let mgx = sum_map3(dy, gamma, x, |dy, g, x| dy * g * ((x - mean) * rstd)) * inv_n;
    for (((dx, &x), &g), &dy) in dx.iter_mut().zip(x).zip(gamma).zip(dy) {
        let xhat = (x - mean) * rstd;
        *dx = rstd * (dy * g - mg - xhat * mgx);
    }
}

/// dγ += Σ_r dy·x̂, dβ += Σ_r dy, each column summed over rows in order;
/// parallel over column blocks only.
fn ln_backward_params(
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    cols: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let block = |c0: usize, dg: &mut [f32], db: &mut [f32]| {
        let w = dg.len();
        for (r, (xr, dyr)) in x.chunks_exact(cols).zip(dy.chunks_exact(cols)).enumerate() {
            let (xr, dyr) = (&xr[c0..c0 + w], &dyr[c0..c0 + w]);
            let (m, s) = (mean[r], rstd[r]);
            for (((dg, db), &x), &dy) in dg.iter_mut().zip(db.iter_mut()).zip(xr).zip(dyr) {
                *dg += dy * ((x - m) * s);
                *db += dy;
            }
        }
    };
    let pool = if cols >= 2 * COL_BLOCK { pool_for(x.len()) } else { None };
    let Some(pool) = pool else {
        return block(0, dgamma, dbeta);
    };
    pool.install(|| {
        dgamma
            .par_chunks_mut(COL_BLOCK)
            .zip(dbeta.par_chunks_mut(COL_BLOCK))
            .enumerate()
            .for_each(|(i, (dg, db))| block(i * COL_BLOCK, dg, db));
    });
}

/// Forward RMSNorm over rows of `cols`: `y = x · rstd · gamma`,
/// `rstd = 1/sqrt(mean(x²) + eps)`, written per row into `rstd`.
///
/// # Panics
/// If `cols == 0`, `x.len() % cols != 0`, `y.len() != x.len()`,
/// `gamma.len() != cols` or `rstd.len() != rows`.
pub fn rmsnorm(x: &[f32], gamma: &[f32], cols: usize, eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    assert!(cols > 0, "rmsnorm: cols == 0");
    assert_eq!(x.len() % cols, 0, "rmsnorm: x.len() % cols != 0");
    assert_eq!(y.len(), x.len(), "rmsnorm: y.len() != x.len()");
    assert_eq!(gamma.len(), cols, "rmsnorm: gamma.len() != cols");
    assert_eq!(rstd.len(), x.len() / cols, "rmsnorm: rstd.len() != rows");
    let inv_n = 1.0 / cols as f32;
    for ((xr, yr), s) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)).zip(rstd.iter_mut()) {
        *s = 1.0 / (sum_map(xr, |v| v * v) * inv_n + eps).sqrt();
        for ((y, &x), &g) in yr.iter_mut().zip(xr).zip(gamma) {
            *y = x * *s * g;
        }
    }
}

/// Backward RMSNorm: `dx = rstd (gamma dy) − x rstd³ / n · Σ gamma dy x`;
/// `dgamma = Σ_rows dy x rstd`, rows summed in order; both written.
///
/// # Panics
/// On any length mismatch (see [`rmsnorm`]).
pub fn rmsnorm_backward(
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
    dy: &[f32],
    cols: usize,
    dx: &mut [f32],
    dgamma: &mut [f32],
) {
    assert!(cols > 0, "rmsnorm_backward: cols == 0");
    assert_eq!(x.len() % cols, 0, "rmsnorm_backward: x.len() % cols != 0");
    let rows = x.len() / cols;
    assert!(dy.len() == x.len() && dx.len() == x.len(), "rmsnorm_backward: dy/dx lengths");
    assert!(gamma.len() == cols && dgamma.len() == cols && rstd.len() == rows, "rmsnorm_backward: lengths");
    let inv_n = 1.0 / cols as f32;
    dgamma.fill(0.0);
    for r in 0..rows {
        let (xr, gr, s) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols], rstd[r]);
        let dot = sum_map3(xr, gr, gamma, |x, g, w| x * g * w);
        let k = s * s * s * inv_n * dot;
        for c in 0..cols {
            dx[r * cols + c] = s * (gamma[c] * gr[c]) - xr[c] * k;
            dgamma[c] += gr[c] * xr[c] * s;
        }
    }
}
