//! Central finite differences against every backward kernel.
//!
//! For a forward `y = f(x)` and a random cotangent `w`, the scalar
//! `L(x) = Σ w·f(x)` (summed in f64) has gradient `backward(x, dy = w)`.
//! Inputs are f32, so the step is 1e-2 and the tolerances allow for f32
//! rounding of the forward (~1e-7·|L| / 2h) plus O(h²) truncation.

mod common;

use baton_kernels::{activation, loss, norm};
use common::{assert_close, Rng};

const H: f32 = 1e-2;

/// dL/dx_i by central differences of `l` around `x`.
fn numeric_grad(x: &[f32], l: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + H;
            let up = l(&xp);
            xp[i] = x[i] - H;
            let down = l(&xp);
            xp[i] = x[i];
            // The step actually taken after f32 rounding.
            let h2 = ((x[i] + H) as f64) - ((x[i] - H) as f64);
            (up - down) / h2
        })
        .collect()
}

fn dot(w: &[f32], y: &[f32]) -> f64 {
    w.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

type Fwd = fn(&[f32], &mut [f32]);
type Bwd = fn(&[f32], &[f32], &mut [f32]);

/// Checks an activation whose backward takes the forward input (`saves_input`)
/// or output.
fn check_activation(name: &str, fwd: Fwd, bwd: Bwd, saves_input: bool, x: &[f32]) {
    let w = Rng::new(7).vec(x.len(), -1.0, 1.0);
    let l = |x: &[f32]| {
        let mut y = vec![0.0; x.len()];
        fwd(x, &mut y);
        dot(&w, &y)
    };
    let mut y = vec![0.0; x.len()];
    fwd(x, &mut y);
    let mut dx = vec![0.0; x.len()];
    bwd(if saves_input { x } else { &y }, &w, &mut dx);
    assert_close(name, &dx, &numeric_grad(x, l), 2e-4, 2e-3);
}

#[test]
fn relu_grad() {
    // Keep away from the kink at 0, where the difference quotient is wrong.
    let x: Vec<f32> = Rng::new(1).vec(64, -2.0, 2.0).into_iter().filter(|v| v.abs() > 0.05).collect();
    assert!(x.iter().any(|&v| v < 0.0) && x.iter().any(|&v| v > 0.0));
    check_activation("relu", activation::relu, activation::relu_backward, false, &x);
}

#[test]
fn gelu_grad() {
    let x = Rng::new(2).vec(64, -4.0, 4.0);
    check_activation("gelu", activation::gelu, activation::gelu_backward, true, &x);
}

#[test]
fn tanh_grad() {
    let x = Rng::new(3).vec(64, -3.0, 3.0);
    check_activation("tanh", activation::tanh, activation::tanh_backward, false, &x);
}

#[test]
fn gelu_matches_reference_values() {
    // torch.nn.functional.gelu(torch.tensor([-3., -1., -0.5, 0., 0.5, 1., 3.]))
    let x = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0];
    let want = [-0.004049696, -0.15865526, -0.15426877, 0.0, 0.34573123, 0.8413447, 2.9959502];
    let mut y = [0.0; 7];
    activation::gelu(&x, &mut y);
    assert_close("gelu", &y, &want, 1e-6, 1e-6);
}

struct Ln {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    w: Vec<f32>,
    cols: usize,
}

impl Ln {
    fn new(rows: usize, cols: usize) -> Self {
        let mut rng = Rng::new(4);
        Ln {
            x: rng.vec(rows * cols, -2.0, 2.0),
            gamma: rng.vec(cols, 0.5, 1.5),
            beta: rng.vec(cols, -0.5, 0.5),
            w: rng.vec(rows * cols, -1.0, 1.0),
            cols,
        }
    }

    fn loss(&self, x: &[f32], gamma: &[f32], beta: &[f32]) -> f64 {
        let mut y = vec![0.0; x.len()];
        let mut stats = vec![0.0; 2 * x.len() / self.cols];
        norm::layernorm(x, gamma, beta, self.cols, 1e-5, &mut y, &mut stats);
        dot(&self.w, &y)
    }
}

#[test]
fn layernorm_grads() {
    let t = Ln::new(3, 8);
    let rows = 3;
    let mut y = vec![0.0; t.x.len()];
    let mut stats = vec![0.0; 2 * rows];
    norm::layernorm(&t.x, &t.gamma, &t.beta, t.cols, 1e-5, &mut y, &mut stats);
    let mut dx = vec![0.0; t.x.len()];
    // Pre-filled to check accumulate adds onto existing values.
    let (mut dg, mut db) = (vec![1.0; t.cols], vec![-1.0; t.cols]);
    norm::layernorm_backward(&t.x, &t.gamma, &stats, &t.w, t.cols, &mut dx, &mut dg, &mut db, true);

    let want_dx = numeric_grad(&t.x, |x| t.loss(x, &t.gamma, &t.beta));
    let want_dg: Vec<f64> = numeric_grad(&t.gamma, |g| t.loss(&t.x, g, &t.beta)).iter().map(|v| v + 1.0).collect();
    let want_db: Vec<f64> = numeric_grad(&t.beta, |b| t.loss(&t.x, &t.gamma, b)).iter().map(|v| v - 1.0).collect();
    assert_close("ln dx", &dx, &want_dx, 5e-4, 3e-3);
    assert_close("ln dgamma", &dg, &want_dg, 5e-4, 3e-3);
    assert_close("ln dbeta", &db, &want_db, 5e-4, 3e-3);

    norm::layernorm_backward(&t.x, &t.gamma, &stats, &t.w, t.cols, &mut dx, &mut dg, &mut db, false);
    let want_db: Vec<f64> = want_db.iter().map(|v| v + 1.0).collect();
    assert_close("ln dbeta (overwrite)", &db, &want_db, 5e-4, 3e-3);
}

#[test]
fn layernorm_forward_normalises() {
    let t = Ln::new(4, 16);
    let ones = vec![1.0; 16];
    let zeros = vec![0.0; 16];
    let (mut y, mut stats) = (vec![0.0; 64], vec![0.0; 8]);
    norm::layernorm(&t.x, &ones, &zeros, 16, 1e-5, &mut y, &mut stats);
    for (r, row) in y.chunks(16).enumerate() {
        let mean: f64 = row.iter().map(|&v| v as f64).sum::<f64>() / 16.0;
        let var: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 16.0;
        assert!(mean.abs() < 1e-6, "row {r} mean {mean}");
        assert!((var - 1.0).abs() < 1e-4, "row {r} var {var}");
        let xr = &t.x[r * 16..(r + 1) * 16];
        let xm: f64 = xr.iter().map(|&v| v as f64).sum::<f64>() / 16.0;
        let xv: f64 = xr.iter().map(|&v| (v as f64 - xm).powi(2)).sum::<f64>() / 16.0;
        assert!((stats[r] as f64 - xm).abs() < 1e-6);
        assert!((stats[4 + r] as f64 - 1.0 / (xv + 1e-5).sqrt()).abs() < 1e-5);
    }
}

#[test]
fn mse_value_and_grad() {
    let mut rng = Rng::new(5);
    let (p, t) = (rng.vec(10, -1.0, 1.0), rng.vec(10, -1.0, 1.0));
    let want: f64 = p.iter().zip(&t).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / 10.0;
    assert!((loss::mse(&p, &t) as f64 - want).abs() < 1e-7);
    let mut d = vec![0.0; 10];
    loss::mse_backward(&p, &t, 3.0, &mut d);
    let num: Vec<f64> = numeric_grad(&p, |p| 3.0 * loss::mse(p, &t) as f64);
    assert_close("mse", &d, &num, 1e-4, 1e-3);
}

#[test]
fn cross_entropy_value_and_grad() {
    let (rows, classes) = (4, 5);
    let logits = Rng::new(6).vec(rows * classes, -3.0, 3.0);
    let targets = [0u32, 4, 2, 2];
    let mut probs = vec![0.0; rows * classes];
    let got = loss::cross_entropy(&logits, classes, &targets, &mut probs);

    let mut want = 0.0f64;
    for (r, &t) in targets.iter().enumerate() {
        let row = &logits[r * classes..(r + 1) * classes];
        let lse = row.iter().map(|&z| (z as f64).exp()).sum::<f64>().ln();
        want += lse - row[t as usize] as f64;
        for c in 0..classes {
            let p = (row[c] as f64 - lse).exp();
            assert!((probs[r * classes + c] as f64 - p).abs() < 1e-6);
        }
    }
    assert!((got as f64 - want / rows as f64).abs() < 1e-6, "{got} vs {}", want / 4.0);

    let mut d = vec![0.0; rows * classes];
    loss::cross_entropy_backward(&probs, classes, &targets, 0.5, &mut d);
    let num = numeric_grad(&logits, |z| {
        let mut p = vec![0.0; z.len()];
        0.5 * loss::cross_entropy(z, classes, &targets, &mut p) as f64
    });
    assert_close("ce", &d, &num, 1e-4, 2e-3);
}

#[test]
fn cross_entropy_is_stable_for_huge_logits() {
    let logits = [1000.0f32, 0.0, -1000.0];
    let mut probs = [0.0; 3];
    let l = loss::cross_entropy(&logits, 3, &[1], &mut probs);
    assert_eq!(l, 1000.0);
    assert_eq!(probs, [1.0, 0.0, 0.0]);
}

#[test]
#[should_panic(expected = "targets[1] = 3 >= classes = 3")]
fn cross_entropy_rejects_bad_target() {
    let mut probs = [0.0; 6];
    loss::cross_entropy(&[0.0; 6], 3, &[0, 3], &mut probs);
}
