//! Invariant 3 through the in-memory network: the pipeline runtime's state
//! machines, for 1..=6 workers, GPipe and 1F1B, and several delivery orders,
//! give final weights bit-identical to single-process training.

mod common;

use std::sync::Arc;

use std::time::Duration;

use baton_engine::pipeline::coordinator::JobPlan;
use baton_engine::pipeline::sim::{self, SimConfig};
use baton_engine::pipeline::ScheduleKind;
use baton_models::spec;
use common::{assert_params_close, bit_identical, Golden};

fn check_all_layouts(name: &str, tolerance: f32, seeds: &[u64]) {
    let golden = Golden::load(name, tolerance);
    let (reference, reference_losses) = golden.train_in_process();
    let model = Arc::new(spec::parse(&golden.spec).unwrap());
    for workers in 1..=6 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for &seed in seeds {
                let config = SimConfig { workers, micro_batches: golden.micro_batches, kind, seed };
                let out = sim::train(model.clone(), &golden.params, golden.optimizer, &golden.data, config).unwrap();
                let what = format!("{name} W={workers} {kind} seed {seed}");
                assert!(bit_identical(&out.params, &reference), "{what}: weights differ from one process");
                assert_eq!(out.losses, reference_losses, "{what}: losses");
                let executions = (golden.model.layers.len() * golden.steps * golden.micro_batches) as u64;
                assert_eq!(out.counters.forward_layer_executions, executions, "{what}");
                assert_eq!(out.counters.backward_layer_executions, executions, "{what}");
            }
        }
    }
    assert_params_close(name, &reference, &golden.final_params(), |_| tolerance);
}

#[test]
fn mlp12_adam_in_memory_pipelines_match_one_process() {
    check_all_layouts("mlp12_adam", 1e-4, &[1, 2, 3]);
}

#[test]
fn resmlp12_ce_in_memory_pipelines_match_one_process() {
    check_all_layouts("resmlp12_ce", 1e-3, &[7]);
}

/// Coordinator and workers exchanging encoded frames in random order.
#[test]
fn whole_jobs_in_memory_match_one_process() {
    for (name, tol) in [("mlp12_sgd", 1e-4), ("resmlp12_ce", 1e-3)] {
        let golden = Golden::load(name, tol);
        let (reference, reference_losses) = golden.train_in_process();
        for workers in [1, 2, 3, 4, 6] {
            for (kind, seed) in [(ScheduleKind::Gpipe, 11), (ScheduleKind::OneFOneB, 12)] {
                let plan = JobPlan { join_timeout: Duration::from_secs(30), ..golden.job_plan(workers, kind) };
                let out = sim::run_job(plan, &spec::factory, seed).unwrap();
                let what = format!("{name} W={workers} {kind}");
                assert!(bit_identical(&out.params, &reference), "{what}: weights differ from one process");
                assert_eq!(out.losses, reference_losses, "{what}");
                assert_eq!(out.partitions.len(), 1);
                assert_eq!(out.partitions[0].stages.len(), workers);
            }
        }
    }
}

#[test]
fn too_many_workers_is_a_clear_error() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let model = Arc::new(spec::parse(&golden.spec).unwrap());
    let config = SimConfig { workers: 13, micro_batches: 4, kind: ScheduleKind::OneFOneB, seed: 0 };
    let err = sim::train(model, &golden.params, golden.optimizer, &golden.data, config).unwrap_err();
    assert!(err.to_string().contains("cannot place 12 layers on 13 workers"), "{err}");
}
