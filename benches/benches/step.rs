//! One full training step (forward, backward, Adam) of a 12-layer MLP at
//! W=1024, B=256 and of mlp12 (W=64, B=32).

use baton_benches::{mlp_step_flops, mlp_trainer};
use baton_kernels::threads;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn bench_step(c: &mut Criterion) {
    // As `baton` does (freed buffers reused, not unmapped).
    baton_kernels::memory::keep_freed_memory();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    for &(width, batch) in &[(1024, 256), (64, 32)] {
        let (mut trainer, data) = mlp_trainer(width, 12, batch);
        group.throughput(Throughput::Elements(mlp_step_flops(width, 12, batch)));
        for t in [1, all] {
            threads::set_num_threads(t).expect("thread count");
            let mut step = 0u32;
            group.bench_function(format!("mlp12_w{width}_b{batch}/{t}thr"), |bench| {
                bench.iter(|| {
                    step += 1;
                    black_box(trainer.step(step, black_box(&data), 1).expect("step"))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
