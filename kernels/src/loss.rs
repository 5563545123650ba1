//! Losses and their gradients. Every sum runs in a fixed order that is
//! independent of the thread count.

use rayon::prelude::*;

use crate::reduce::sum_map2;
use crate::threads::{block_sum, par_chunks_mut, par_rows_mut, pool_for};

/// Mean over all elements of `(pred − target)²`: fixed-order `f32` sums
/// within fixed blocks, block sums added in order in `f64`. NaN for empty input (0/0, like PyTorch).
///
/// # Panics
/// If `pred.len() != target.len()`.
pub fn mse(pred: &[f32], target: &[f32]) -> f32 {
    assert_eq!(pred.len(), target.len(), "mse: pred.len() != target.len()");
    let sum = block_sum(pred.len(), |r| sum_map2(&pred[r.clone()], &target[r], |p, t| (p - t) * (p - t)) as f64);
    (sum / pred.len() as f64) as f32
}

/// `dpred = scale · 2·(pred − target)/N`, `N = pred.len()`.
///
/// # Panics
/// Unless `pred`, `target` and `dpred` have equal lengths.
pub fn mse_backward(pred: &[f32], target: &[f32], scale: f32, dpred: &mut [f32]) {
    assert_eq!(pred.len(), dpred.len(), "mse_backward: pred.len() != dpred.len()");
    assert_eq!(target.len(), dpred.len(), "mse_backward: target.len() != dpred.len()");
    let k = (2.0 * scale as f64 / pred.len() as f64) as f32;
    par_chunks_mut(dpred, |off, d| {
        let n = d.len();
        for ((d, &p), &t) in d.iter_mut().zip(&pred[off..off + n]).zip(&target[off..off + n]) {
            *d = k * (p - t);
        }
    });
}

/// Softmax cross-entropy with integer targets. `rows = targets.len()`;
/// `logits` is `rows × classes`. Writes `probs = softmax(logits)` per row
/// (max-subtracted) and returns the mean over rows of
/// `−log softmax(logits)[target]`, computed via log-sum-exp. Row losses are
/// summed in `f64` in row order. Returns NaN for zero rows (0/0, like PyTorch).
///
/// # Panics
/// If `classes == 0`, `logits.len() != rows*classes`,
/// `probs.len() != logits.len()` or a target is `>= classes`.
pub fn cross_entropy(logits: &[f32], classes: usize, targets: &[u32], probs: &mut [f32]) -> f32 {
    assert!(classes > 0, "cross_entropy: classes == 0");
    let rows = targets.len();
    assert_eq!(logits.len(), rows * classes, "cross_entropy: logits.len() != rows*classes");
    assert_eq!(probs.len(), logits.len(), "cross_entropy: probs.len() != logits.len()");
    check_targets(targets, classes);
    let mut losses = vec![0.0f64; rows];
    let block = |r0: usize, probs: &mut [f32], losses: &mut [f64]| {
        for (i, (p, l)) in probs.chunks_exact_mut(classes).zip(losses).enumerate() {
            let r = r0 + i;
            let row = &logits[r * classes..(r + 1) * classes];
            *l = ce_row(row, targets[r] as usize, p);
        }
    };
    match pool_for(logits.len()) {
        None => block(0, probs, &mut losses),
        Some(pool) => {
            let rb = crate::threads::rows_per_task(classes);
            pool.install(|| {
                probs
                    .par_chunks_mut(rb * classes)
                    .zip(losses.par_chunks_mut(rb))
                    .enumerate()
                    .for_each(|(i, (p, l))| block(i * rb, p, l));
            });
        }
    }
    (losses.iter().fold(0.0f64, |a, &l| a + l) / rows as f64) as f32
}

/// Panics with the offending index if a target is out of range.
fn check_targets(targets: &[u32], classes: usize) {
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= classes) {
        panic!("cross_entropy: targets[{i}] = {t} >= classes = {classes}");
    }
}

/// Softmax of one row into `probs`; returns `lse(row) − row[target]`.
fn ce_row(row: &[f32], target: usize, probs: &mut [f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for (p, &z) in probs.iter_mut().zip(row) {
        let e = libm::expf(z - max);
        *p = e;
        sum += e as f64;
    }
    for p in probs.iter_mut() {
        *p = (*p as f64 / sum) as f32;
    }
    let lse = max as f64 + libm::log(sum);
    lse - row[target] as f64
}

/// `dlogits = scale · (probs − onehot(target)) / rows`, `rows = targets.len()`.
///
/// # Panics
/// If `classes == 0`, `probs.len() != rows*classes`,
/// `dlogits.len() != probs.len()` or a target is `>= classes`.
pub fn cross_entropy_backward(probs: &[f32], classes: usize, targets: &[u32], scale: f32, dlogits: &mut [f32]) {
    assert!(classes > 0, "cross_entropy_backward: classes == 0");
    let rows = targets.len();
    assert_eq!(probs.len(), rows * classes, "cross_entropy_backward: probs.len() != rows*classes");
    assert_eq!(dlogits.len(), probs.len(), "cross_entropy_backward: dlogits.len() != probs.len()");
    check_targets(targets, classes);
    let k = (scale as f64 / rows as f64) as f32;
    par_rows_mut(dlogits, classes, |r0, d| {
        for (i, drow) in d.chunks_exact_mut(classes).enumerate() {
            let r = r0 + i;
            let prow = &probs[r * classes..(r + 1) * classes];
            for (d, &p) in drow.iter_mut().zip(prow) {
                *d = k * p;
            }
            let t = targets[r] as usize;
            drow[t] = k * (prow[t] - 1.0);
        }
    });
}
