//! A user's own layer type across processes: this test binary is the user's
//! binary of `models/examples/custom_layer.rs` (included below). It runs
//! without the libtest harness because it launches itself as the workers
//! (`<exe> worker ...`), as a user's binary does.

#[path = "../models/examples/custom_layer.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use baton_models::runtime;

fn main() {
    if let Some(worker) = runtime::worker_if_requested(&example::registry()) {
        if let Err(e) = worker {
            eprintln!("worker failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let run = example::run().expect("the job runs");
    let outcome = &run.outcome;
    assert!(example::same_bits(&outcome.params, &run.reference), "custom layers: 3 workers with a preemption differ");
    assert_eq!(outcome.migrations.len(), 1, "worker 1 was preempted once");
    assert_eq!(outcome.migrations[0].leaving, vec![1]);
    assert!(outcome.migrations[0].bytes.segments > 0, "unfinished segments of the custom layers moved");
    let layers = 6 * 4 * 4;
    assert_eq!(outcome.counters.forward_layer_executions, layers, "nothing recomputed");
    assert_eq!(outcome.microbatch_losses, 16, "nothing lost");
    println!("custom_layer: 1 passed, 0 failed");
}
