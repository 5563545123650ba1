//! The whole pipeline runtime on a small GPT, in memory: coordinator and
//! workers over a simulated network delivering frames in a seeded random
//! order. Gradient clipping (combined across stages) and dropout (masks
//! keyed by tensor ids) are on, so both are checked to give the same bits
//! for every layout, schedule and preemption point as one process:
//! every worker preempted after every possible number of actions of a
//! step, for W = 2..4 and both schedules, with time to ship and without
//! (the recompute fallback, which must redraw the same dropout masks).

mod common;

use std::time::Duration;

use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan};
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::sim;
use baton_engine::pipeline::ScheduleKind;
use baton_engine::{init, Batch, Model, Optimizer, OptimizerConfig, ParamStore, Trainer};
use baton_models::{io, spec};
use common::bit_identical;

const STEPS: usize = 3;
const MICRO: usize = 4;
const CLIP: f32 = 0.5;
const SEED: u64 = 5;

/// A 6-layer GPT: embedding, 3 blocks, layernorm, head.
fn gpt_spec(dropout: f32) -> String {
    let block = format!(r#"{{"type": "transformer_block", "heads": 2, "hidden": 32, "dropout": {dropout}}}"#);
    format!(
        r#"{{"input": {{"tokens": 17, "seq": 8}}, "layers": [{{"type": "embedding", "dim": 16}}, {block}, {block}, {block},
            {{"type": "layernorm"}}, {{"type": "linear", "out": 17}}], "loss": "cross_entropy"}}"#
    )
}

struct Case {
    spec: String,
    model: Model,
    params: ParamStore,
    data: Vec<Batch>,
    optimizer: OptimizerConfig,
    reference: ParamStore,
    losses: Vec<f32>,
}

impl Case {
    fn new(dropout: f32) -> Case {
        let spec = gpt_spec(dropout);
        let model = spec::parse(&spec).unwrap();
        let params = init::init_params(&model.param_specs(), 3);
        let data = io::synthetic_data(&model, STEPS, 8, 4);
        let optimizer: OptimizerConfig = "adam:lr=3e-3".parse().unwrap();
        let one = spec::parse(&spec).unwrap().with_seed(SEED);
        let mut trainer = Trainer::new(one, params.clone(), Optimizer::new(optimizer))
            .unwrap()
            .with_clip_grad_norm(Some(CLIP))
            .unwrap();
        let losses = data.iter().enumerate().map(|(s, b)| trainer.step(s as u32, b, MICRO).unwrap()).collect();
        assert!(trainer.grad_norms.iter().any(|&n| n > CLIP), "clipping never acted: {:?}", trainer.grad_norms);
        Case { spec, model, params, data, optimizer, reference: trainer.params, losses }
    }

    fn run(&self, workers: usize, kind: ScheduleKind, notices: Vec<(u32, PlannedNotice)>, seed: u64) -> JobOutcome {
        let plan = JobPlan {
            spec: self.spec.clone(),
            optimizer: self.optimizer,
            schedule: kind,
            micro_batches: MICRO,
            workers,
            costs: self.model.layers.iter().map(|l| l.cost()).collect(),
            params: self.params.clone(),
            batches: self.data.clone(),
            join_timeout: Duration::from_secs(60),
            notices: notices.clone(),
            joins: Vec::new(),
            ship_bf16: false,
            clip_grad_norm: Some(CLIP),
            lr_schedule: Default::default(),
            seed: SEED,
            eval: None,
            checkpoint: Default::default(),
            faults: Default::default(),
        };
        sim::run_job(plan, &spec::factory, seed)
            .unwrap_or_else(|e| panic!("W={workers} {kind} notices {notices:?} seed {seed}: {e}"))
    }

    fn check(&self, what: &str, out: &JobOutcome) {
        assert!(bit_identical(&out.params, &self.reference), "{what}: weights differ from one process");
        assert_eq!(out.losses, self.losses, "{what}: losses");
        assert_eq!(out.grad_norms.len(), STEPS, "{what}: one total norm per step");
        let executions = (self.model.layers.len() * STEPS * MICRO) as u64;
        assert_eq!(out.counters.forward_layer_executions, executions, "{what}: forward executions");
        assert_eq!(out.counters.backward_layer_executions, executions, "{what}: backward executions");
    }
}

#[test]
fn gpt_pipelines_match_one_process_for_every_layout() {
    for dropout in [0.0, 0.1] {
        let case = Case::new(dropout);
        for workers in 1..=4 {
            for (kind, seed) in [(ScheduleKind::Gpipe, 11), (ScheduleKind::OneFOneB, 12)] {
                let out = case.run(workers, kind, Vec::new(), seed + workers as u64);
                case.check(&format!("dropout {dropout} W={workers} {kind}"), &out);
            }
        }
    }
}

#[test]
fn dropout_changes_the_run_but_not_across_layouts() {
    let (plain, dropped) = (Case::new(0.0), Case::new(0.1));
    assert!(!bit_identical(&plain.reference, &dropped.reference), "dropout 0.1 gave the weights of no dropout");
}

#[test]
fn gpt_every_worker_at_every_action_boundary_with_and_without_time_to_ship() {
    let case = Case::new(0.1);
    let max_actions = 2 * MICRO as u32;
    let (mut runs, mut fallbacks) = (0, 0);
    for workers in 2..=4u32 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for worker in 0..workers {
                for actions in 0..=max_actions {
                    for grace_ms in [120_000, 0] {
                        let seed = u64::from(workers * 1000 + worker * 100 + actions) + grace_ms;
                        let notice = (worker, PlannedNotice { step: 1, actions, grace_ms });
                        let out = case.run(workers as usize, kind, vec![notice], seed);
                        let what =
                            format!("W={workers} {kind} worker {worker} after {actions} actions, grace {grace_ms} ms");
                        case.check(&what, &out);
                        assert_eq!(out.migrations.len(), 1, "{what}");
                        let recomputed = out.counters.recomputed_forward_layers;
                        if grace_ms > 0 {
                            assert_eq!(recomputed, 0, "{what}: with time to ship, nothing is recomputed");
                        }
                        fallbacks += usize::from(recomputed > 0);
                        runs += 1;
                    }
                }
            }
        }
    }
    assert_eq!(runs, 2 * 2 * 9 * (2 + 3 + 4));
    assert!(fallbacks > runs / 4, "only {fallbacks} of {runs} runs recomputed anything");
}
