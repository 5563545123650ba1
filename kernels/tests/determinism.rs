//! Bit-identical results for 1 vs 2 threads, in one process.
//!
//! One test function on purpose: the thread count is process-wide, so a
//! second test in this binary could flip it mid-comparison.

mod common;

use baton_kernels::{activation, elementwise, loss, matmul, norm, optim, threads, Trans};
use common::{bits, Rng};

/// Everything the kernels produce on inputs big enough to take every
/// parallel path, as bit patterns.
fn run_all() -> Vec<(&'static str, Vec<u32>)> {
    let mut rng = Rng::new(42);
    let mut out = Vec::new();
    out.push(("matmul", bits(&matmul_all(&mut rng))));

    let (rows, cols) = (300, 1000);
    let x = rng.vec(rows * cols, -3.0, 3.0);
    let mut s = rng.vec(cols, -1.0, 1.0);
    elementwise::sum_rows(&x, cols, &mut s, true);
    out.push(("sum_rows", bits(&s)));

    let dy = rng.vec(rows * cols, -1.0, 1.0);
    let y = layernorm_all(&mut rng, &x, &dy, cols, &mut out);
    let mut dx = vec![0.0; x.len()];
    let mut g = vec![0.0; x.len()];
    activation::gelu(&x, &mut g);
    activation::gelu_backward(&x, &dy, &mut dx);
    out.push(("gelu", bits(&g)));
    out.push(("gelu_bwd", bits(&dx)));

    let t = rng.vec(x.len(), -1.0, 1.0);
    out.push(("mse", bits(&[loss::mse(&x, &t)])));
    let targets: Vec<u32> = (0..rows).map(|r| (r * 7 % cols) as u32).collect();
    let mut probs = vec![0.0; x.len()];
    out.push(("ce", bits(&[loss::cross_entropy(&x, cols, &targets, &mut probs)])));
    out.push(("probs", bits(&probs)));

    let (mut p, mut m, mut v) = (y.clone(), vec![0.0; y.len()], vec![0.0; y.len()]);
    let cfg = optim::AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    for step in 1..=2 {
        optim::adam_step(&mut p, &dx, &mut m, &mut v, step, &cfg);
    }
    out.push(("adam", bits(&p)));

    let mut buf = vec![0.0; y.len()];
    let cfg = optim::SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: false };
    optim::sgd_step(&mut p, &dx, &mut buf, true, &cfg);
    optim::sgd_step(&mut p, &dy, &mut buf, false, &cfg);
    out.push(("sgd", bits(&p)));
    loss::cross_entropy_backward(&probs, cols, &targets, 0.5, &mut dx);
    out.push(("ce_bwd", bits(&dx)));
    out
}

/// LayerNorm forward and backward; pushes every output, returns y.
fn layernorm_all(
    rng: &mut Rng,
    x: &[f32],
    dy: &[f32],
    cols: usize,
    out: &mut Vec<(&'static str, Vec<u32>)>,
) -> Vec<f32> {
    let rows = x.len() / cols;
    let (gamma, beta) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
    let (mut y, mut stats) = (vec![0.0; rows * cols], vec![0.0; 2 * rows]);
    norm::layernorm(x, &gamma, &beta, cols, 1e-5, &mut y, &mut stats);
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
    norm::layernorm_backward(x, &gamma, &stats, dy, cols, &mut dx, &mut dg, &mut db, false);
    for (name, v) in [("ln_y", &y), ("ln_stats", &stats), ("ln_dx", &dx), ("ln_dg", &dg), ("ln_db", &db)] {
        out.push((name, bits(v)));
    }

    y
}

/// Products above the parallel threshold, every transpose combination,
/// including a K long enough to be split into several K-blocks.
fn matmul_all(rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::new();
    for (m, k, n) in [(256, 512, 384), (96, 1100, 200)] {
        let a = rng.vec(m * k, -1.0, 1.0);
        let b = rng.vec(k * n, -1.0, 1.0);
        for (ta, tb) in
            [(Trans::No, Trans::No), (Trans::Yes, Trans::No), (Trans::No, Trans::Yes), (Trans::Yes, Trans::Yes)]
        {
            let mut c = vec![0.5; m * n];
            matmul(&mut c, &a, ta, &b, tb, m, k, n, ta == Trans::Yes);
            out.extend_from_slice(&c);
        }
    }
    out
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    assert!(matches!(threads::set_num_threads(0), Err(baton_kernels::Error::InvalidThreadCount(0))));
    threads::set_num_threads(1).unwrap();
    assert_eq!(threads::num_threads(), 1);
    let one = run_all();
    threads::set_num_threads(2).unwrap();
    assert_eq!(threads::num_threads(), 2);
    let two = run_all();
    assert_eq!(threads::install(rayon::current_num_threads), 2);
    for ((name, a), (_, b)) in one.iter().zip(&two) {
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(diff, 0, "{name}: {diff} of {} values differ between 1 and 2 threads", a.len());
    }
}
