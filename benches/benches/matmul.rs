//! Matmul throughput in the three shapes a linear layer uses, at 1 thread
//! and at all threads.

use baton_kernels::{matmul, threads, Trans};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

fn bench_matmul(c: &mut Criterion) {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("matmul");
    for &(m, k, n) in &[(256, 1024, 1024), (32, 64, 64), (1024, 1024, 1024)] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        for t in [1, all] {
            threads::set_num_threads(t).expect("thread count");
            let id = BenchmarkId::new(format!("{m}x{k}x{n}/xWT"), format!("{t}thr"));
            group.bench_function(id, |bench| {
                bench.iter(|| matmul(&mut out, black_box(&a), Trans::No, black_box(&b), Trans::Yes, m, k, n, false))
            });
            let id = BenchmarkId::new(format!("{m}x{k}x{n}/dyT_x"), format!("{t}thr"));
            let mut dw = vec![0.0f32; k * n];
            group.bench_function(id, |bench| {
                bench.iter(|| matmul(&mut dw, black_box(&a), Trans::Yes, black_box(&out), Trans::No, k, m, n, false))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
