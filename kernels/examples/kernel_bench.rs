//! Quick kernel timings: `cargo run --release -p baton-kernels --example kernel_bench`.
//!
//! Prints GFLOP/s of `matmul` for the shapes of an MLP step and the cost per
//! call of small kernels, at 1 thread and at the machine's thread count.

use std::hint::black_box;
use std::time::Instant;

use baton_kernels::{activation, elementwise, loss, matmul, norm, optim, threads, Trans};

/// Median seconds per call of `f` over enough calls to fill ~0.3 s.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-9);
    let reps = ((0.06 / once) as usize).clamp(1, 100_000);
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn bench_matmul(m: usize, k: usize, n: usize, ta: Trans, tb: Trans) {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let s = time(|| matmul(black_box(&mut c), black_box(&a), ta, black_box(&b), tb, m, k, n, false));
    let gflops = 2.0 * (m * n * k) as f64 / s / 1e9;
    println!("  matmul {m:>4}x{k:>4}x{n:>4} {ta:?}/{tb:?}: {gflops:7.1} GFLOP/s ({:.1} us)", s * 1e6);
}

fn bench_small() {
    let (b, w) = (32, 64);
    let x = vec![0.5f32; b * w];
    let mut y = vec![0.0f32; b * w];
    let bias = vec![0.1f32; w];
    let s = time(|| activation::relu(black_box(&x), black_box(&mut y)));
    println!("  relu 32x64: {:.0} ns", s * 1e9);
    let s = time(|| elementwise::add_bias_rows(black_box(&mut y), black_box(&bias)));
    println!("  add_bias_rows 32x64: {:.0} ns", s * 1e9);
    let mut out = vec![0.0f32; w];
    let s = time(|| elementwise::sum_rows(black_box(&x), w, black_box(&mut out), false));
    println!("  sum_rows 32x64: {:.0} ns", s * 1e9);
}

fn bench_big() {
    let (b, w) = (256, 1024);
    let x: Vec<f32> = (0..b * w).map(|i| (i % 97) as f32 * 0.03 - 1.4).collect();
    let mut y = vec![0.0f32; b * w];
    let mut dx = vec![0.0f32; b * w];
    let g = vec![1.0f32; w];
    let mut dg = vec![0.0f32; w];
    let mut db = vec![0.0f32; w];
    let mut stats = vec![0.0f32; 2 * b];
    let us = |s: f64| s * 1e6;
    println!("  relu 256x1024: {:.0} us", us(time(|| activation::relu(&x, &mut y))));
    println!("  gelu 256x1024: {:.0} us", us(time(|| activation::gelu(&x, &mut y))));
    println!("  gelu_bwd 256x1024: {:.0} us", us(time(|| activation::gelu_backward(&x, &x, &mut dx))));
    println!("  add_bias_rows 256x1024: {:.0} us", us(time(|| elementwise::add_bias_rows(&mut y, &g))));
    println!("  sum_rows 256x1024: {:.0} us", us(time(|| elementwise::sum_rows(&x, w, &mut dg, false))));
    println!("  layernorm 256x1024: {:.0} us", us(time(|| norm::layernorm(&x, &g, &g, w, 1e-5, &mut y, &mut stats))));
    let lnb = || norm::layernorm_backward(&x, &g, &stats, &x, w, &mut dx, &mut dg, &mut db, false);
    println!("  layernorm_bwd 256x1024: {:.0} us", us(time(lnb)));
    let t = vec![0.5f32; b * w];
    println!(
        "  mse 256x1024: {:.0} us",
        us(time(|| {
            black_box(loss::mse(&x, &t));
        }))
    );
    let cfg = optim::AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let (mut p, mut m, mut v) = (vec![0.1f32; w * w], vec![0.0f32; w * w], vec![0.0f32; w * w]);
    let gr = vec![0.01f32; w * w];
    println!("  adam 1024x1024: {:.0} us", us(time(|| optim::adam_step(&mut p, &gr, &mut m, &mut v, 3, &cfg))));
}

fn main() {
    let all = threads::num_threads();
    for t in [1, all] {
        threads::set_num_threads(t).expect("thread pool");
        println!("threads = {t}");
        bench_matmul(1024, 1024, 1024, Trans::No, Trans::No);
        // MLP step at B=256, W=1024: forward x·Wᵀ, dX = dY·W, dW = dYᵀ·X.
        bench_matmul(256, 1024, 1024, Trans::No, Trans::Yes);
        bench_matmul(256, 1024, 1024, Trans::No, Trans::No);
        bench_matmul(1024, 256, 1024, Trans::Yes, Trans::No);
        // Small MLP, B=32, W=64, as 4 micro-batches of 8.
        bench_matmul(8, 64, 64, Trans::No, Trans::Yes);
        bench_matmul(8, 64, 64, Trans::No, Trans::No);
        bench_matmul(64, 8, 64, Trans::Yes, Trans::No);
        bench_matmul(32, 64, 64, Trans::No, Trans::Yes);
        bench_matmul(32, 64, 64, Trans::No, Trans::No);
        bench_matmul(64, 32, 64, Trans::Yes, Trans::No);
        bench_small();
        bench_big();
    }
}
