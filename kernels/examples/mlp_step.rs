//! One training step of a 12-layer MLP (W=1024, B=256, relu, mse, Adam) on
//! the kernels alone: `cargo run --release -p baton-kernels --example mlp_step [threads]`.
//!
//! Reports GFLOP/s counting the three matmuls per layer (2·B·W² flops each),
//! the figure PyTorch reaches at ~73 GFLOP/s on one thread on the dev box.

use std::time::Instant;

use baton_kernels::optim::{adam_step, AdamConfig};
use baton_kernels::{activation, elementwise, loss, matmul, threads, Trans};

const W: usize = 1024;
const B: usize = 256;
const L: usize = 12;

struct Layer {
    w: Vec<f32>,
    b: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    m: [Vec<f32>; 2],
    v: [Vec<f32>; 2],
}

fn step(layers: &mut [Layer], x: &[f32], target: &[f32], acts: &mut [Vec<f32>], t: u64) -> f32 {
    acts[0].copy_from_slice(x);
    for (i, l) in layers.iter().enumerate() {
        let (prev, next) = acts.split_at_mut(i + 1);
        let (input, out) = (&prev[i], &mut next[0]);
        matmul(out, input, Trans::No, &l.w, Trans::Yes, B, W, W, false);
        elementwise::add_bias_rows(out, &l.b);
        if i + 1 < L {
            let pre = out.clone();
            activation::relu(&pre, out);
        }
    }
    let lossv = loss::mse(&acts[L], target);
    let mut dy = vec![0.0f32; B * W];
    loss::mse_backward(&acts[L], target, 1.0, &mut dy);
    let mut dx = vec![0.0f32; B * W];
    for i in (0..L).rev() {
        let l = &mut layers[i];
        if i + 1 < L {
            let g = dy.clone();
            activation::relu_backward(&acts[i + 1], &g, &mut dy);
        }
        matmul(&mut l.dw, &dy, Trans::Yes, &acts[i], Trans::No, W, B, W, false);
        elementwise::sum_rows(&dy, W, &mut l.db, false);
        matmul(&mut dx, &dy, Trans::No, &l.w, Trans::No, B, W, W, false);
        std::mem::swap(&mut dx, &mut dy);
    }
    let cfg = AdamConfig { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    for l in layers.iter_mut() {
        let [mw, mb] = &mut l.m;
        let [vw, vb] = &mut l.v;
        adam_step(&mut l.w, &l.dw, mw, vw, t, &cfg);
        adam_step(&mut l.b, &l.db, mb, vb, t, &cfg);
    }
    lossv
}

fn main() {
    if let Some(n) = std::env::args().nth(1).and_then(|s| s.parse().ok()) {
        threads::set_num_threads(n).expect("thread count");
    }
    let init = |n: usize, s: f32| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * s).collect::<Vec<f32>>();
    let mut layers: Vec<Layer> = (0..L)
        .map(|_| Layer {
            w: init(W * W, 0.15),
            b: vec![0.0; W],
            dw: vec![0.0; W * W],
            db: vec![0.0; W],
            m: [vec![0.0; W * W], vec![0.0; W]],
            v: [vec![0.0; W * W], vec![0.0; W]],
        })
        .collect();
    let (x, y) = (init(B * W, 1.0), init(B * W, 0.5));
    let mut acts = vec![vec![0.0f32; B * W]; L + 1];
    let flops = 3.0 * 2.0 * (B * W * W) as f64 * L as f64;
    let mut times = Vec::new();
    for t in 1..=6 {
        let start = Instant::now();
        let l = step(&mut layers, &x, &y, &mut acts, t);
        let s = start.elapsed().as_secs_f64();
        times.push(s);
        println!("step {t}: loss {l:.5}, {:.1} ms, {:.1} GFLOP/s", s * 1e3, flops / s / 1e9);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "threads {}: median {:.1} GFLOP/s, best {:.1} GFLOP/s",
        threads::num_threads(),
        flops / times[3] / 1e9,
        flops / times[0] / 1e9
    );
}
