//! Held-out evaluation (`--eval-data`) through the in-memory pipeline: the
//! coordinator and workers over a simulated network in a seeded random
//! order, on a small GPT with dropout (which evaluation turns off).
//!
//! Oracles: the one-process trainer (weights and losses of a run without
//! evaluation), the one-process forward-only [`eval::eval_loss`] of the
//! same held-out batches on its weights after each evaluated step, and the
//! training forward (which records a tape) of the dropout-free model.

mod common;

use std::time::Duration;

use baton_engine::eval::{self, EvalPlan, EvalPoint};
use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan};
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::sim::{self, AdminPreempt};
use baton_engine::pipeline::ScheduleKind;
use baton_engine::{init, Batch, Model, Optimizer, OptimizerConfig, ParamStore, Trainer};
use baton_models::{io, spec};
use common::bit_identical;

const STEPS: usize = 5;
const MICRO: usize = 2;
const EVERY: u32 = 2;
const SEED: u64 = 7;

fn gpt_spec(dropout: f32) -> String {
    let block = format!(r#"{{"type": "transformer_block", "heads": 2, "hidden": 16, "dropout": {dropout}}}"#);
    format!(
        r#"{{"input": {{"tokens": 11, "seq": 6}}, "layers": [{{"type": "embedding", "dim": 8}}, {block}, {block},
            {{"type": "layernorm"}}, {{"type": "linear", "out": 11}}], "loss": "cross_entropy"}}"#
    )
}

struct Case {
    spec: String,
    model: Model,
    params: ParamStore,
    data: Vec<Batch>,
    held_out: Vec<Batch>,
    optimizer: OptimizerConfig,
    /// One process, no evaluation: final weights and losses.
    reference: ParamStore,
    losses: Vec<f32>,
    /// One process: the forward-only held-out loss after each evaluated step.
    evals: Vec<EvalPoint>,
}

impl Case {
    fn new() -> Case {
        let spec = gpt_spec(0.2);
        let model = spec::parse(&spec).unwrap();
        let params = init::init_params(&model.param_specs(), 3);
        let data = io::synthetic_data(&model, STEPS, 4, 4);
        let held_out = io::synthetic_data(&model, 3, 4, 99);
        let optimizer: OptimizerConfig = "adamw:lr=1e-2".parse().unwrap();
        let one = spec::parse(&spec).unwrap().with_seed(SEED);
        let mut trainer = Trainer::new(one, params.clone(), Optimizer::new(optimizer)).unwrap();
        let (mut losses, mut evals) = (Vec::new(), Vec::new());
        for (s, batch) in data.iter().enumerate() {
            losses.push(trainer.step(s as u32, batch, MICRO).unwrap());
            if (s as u32 + 1).is_multiple_of(EVERY) {
                let loss = eval::eval_loss(&trainer.model, &trainer.params, s as u32, &held_out).unwrap();
                evals.push(EvalPoint { step: s as u32, loss });
            }
        }
        let reference = trainer.params;
        Case { spec, model, params, data, held_out, optimizer, reference, losses, evals }
    }

    fn plan(&self, workers: usize, kind: ScheduleKind, eval: bool) -> JobPlan {
        JobPlan {
            spec: self.spec.clone(),
            optimizer: self.optimizer,
            schedule: kind,
            micro_batches: MICRO,
            workers,
            costs: self.model.layers.iter().map(|l| l.cost()).collect(),
            params: self.params.clone(),
            batches: self.data.clone(),
            join_timeout: Duration::from_secs(60),
            notices: Vec::new(),
            joins: Vec::new(),
            ship_bf16: false,
            clip_grad_norm: None,
            lr_schedule: Default::default(),
            seed: SEED,
            eval: eval.then(|| EvalPlan::new(EVERY, self.held_out.clone()).unwrap()),
            checkpoint: Default::default(),
            faults: Default::default(),
        }
    }

    fn check(&self, what: &str, out: &JobOutcome) {
        assert!(bit_identical(&out.params, &self.reference), "{what}: weights differ from one process without eval");
        assert_eq!(out.losses, self.losses, "{what}: losses");
        let bits = |e: &[EvalPoint]| e.iter().map(|p| (p.step, p.loss.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&out.evals), bits(&self.evals), "{what}: held-out losses");
        let executions = (self.model.layers.len() * STEPS * MICRO) as u64;
        assert_eq!(out.counters.forward_layer_executions, executions, "{what}: evaluation counts no training forward");
        assert_eq!(out.counters.backward_layer_executions, executions, "{what}: backward executions");
    }
}

fn run(plan: JobPlan, seed: u64, preempts: &[AdminPreempt]) -> JobOutcome {
    sim::run_job_with_preempts(plan, &spec::factory, seed, preempts).unwrap_or_else(|e| panic!("seed {seed}: {e}"))
}

#[test]
fn evaluations_come_at_every_nth_step_and_match_one_process() {
    let case = Case::new();
    assert_eq!(case.evals.iter().map(|e| e.step).collect::<Vec<_>>(), vec![1, 3], "(s + 1) % 2 == 0 for s < 5");
    for workers in 1..=3 {
        for (kind, seed) in [(ScheduleKind::Gpipe, 21), (ScheduleKind::OneFOneB, 22)] {
            let what = format!("W={workers} {kind}");
            case.check(&what, &run(case.plan(workers, kind, true), seed + workers as u64, &[]));
        }
    }
    // Without evaluation the pipeline gives the same training bits and no points.
    let plain = run(case.plan(3, ScheduleKind::OneFOneB, false), 5, &[]);
    assert!(bit_identical(&plain.params, &case.reference) && plain.evals.is_empty());
}

#[test]
fn evaluation_turns_dropout_off_and_equals_the_training_forward_without_it() {
    let case = Case::new();
    // The same weights in the dropout-free model: its recording (training)
    // forward gives the loss that evaluation of the dropout model must give.
    let plain = spec::parse(&gpt_spec(0.0)).unwrap();
    let mut trainer = Trainer::new(plain, case.reference.clone(), Optimizer::new(case.optimizer)).unwrap();
    let with_dropout = spec::parse(&case.spec).unwrap().with_seed(SEED);
    for (k, batch) in case.held_out.iter().enumerate() {
        let recorded = trainer.gradients(0, batch, 1).unwrap().0;
        let evaluated = eval::batch_loss(&with_dropout, &case.reference, 0, k as u32, batch).unwrap();
        assert_eq!(evaluated.to_bits(), recorded.to_bits(), "held-out batch {k}");
    }
    let mut train_mode = Trainer::new(with_dropout, case.reference.clone(), Optimizer::new(case.optimizer)).unwrap();
    let dropped = train_mode.gradients(0, &case.held_out[0], 1).unwrap().0;
    let evaluated = eval::batch_loss(&train_mode.model, &case.reference, 0, 0, &case.held_out[0]).unwrap();
    assert_ne!(dropped, evaluated, "dropout 0.2 is on in training, so the losses differ");
}

/// A notice that arrives while an evaluation runs waits for its end: the
/// evaluation finishes on the old layout, the migration happens at the
/// start of the next step, and every bit is still that of one process.
#[test]
fn a_notice_during_an_evaluation_waits_for_its_end() {
    let case = Case::new();
    for worker in 0..3u32 {
        for (kind, seed) in [(ScheduleKind::Gpipe, 31), (ScheduleKind::OneFOneB, 32)] {
            let what = format!("{kind} worker {worker} preempted during the evaluation after step 1");
            // The admin's preempt is sent when step 1 finishes: with the
            // evaluation's start, before step 2's.
            let preempt = AdminPreempt { after_step: 1, worker, grace_ms: 60_000 };
            let out = run(case.plan(3, kind, true), seed + u64::from(worker), &[preempt]);
            case.check(&what, &out);
            assert_eq!(out.migrations.len(), 1, "{what}");
            assert_eq!(out.migrations[0].leaving, vec![worker], "{what}");
            assert_eq!(out.partitions.len(), 2, "{what}");
        }
    }
    // A scripted notice in the step after an evaluation and a join at the
    // start of the step after one also keep every bit.
    let mut plan = case.plan(2, ScheduleKind::OneFOneB, true);
    plan.notices = vec![(1, PlannedNotice { step: 2, actions: 1, grace_ms: 60_000 })];
    plan.joins = vec![(4, 0)];
    let out = run(plan, 41, &[]);
    case.check("a notice in step 2 and a join at step 4", &out);
    assert_eq!(out.migrations.len(), 2);
}
