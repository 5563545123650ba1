//! Invariants 3 and 4 under preemption, exhaustively, in memory: the
//! coordinator and worker state machines over a simulated network that
//! delivers frames in a seeded random order. For W = 2, 3, 4, GPipe and
//! 1F1B, every worker is preempted after every possible number of completed
//! actions of a step; every run must give weights bit-identical to one
//! process, the same losses, and exactly M x layers x steps forward and
//! backward layer executions (nothing recomputed, nothing lost). With no
//! grace to ship in, the same points take the recompute fallback: still
//! bit-identical, with the left-out segments rebuilt by replayed forwards.

mod common;

use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan};
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::sim;
use baton_engine::pipeline::ScheduleKind;
use baton_engine::ParamStore;
use baton_models::spec;
use common::{bit_identical, Golden};

const STEPS: usize = 3;

struct Case {
    golden: Golden,
    reference: ParamStore,
    losses: Vec<f32>,
}

impl Case {
    fn new(name: &str, tolerance: f32) -> Case {
        let mut golden = Golden::load(name, tolerance);
        golden.data.truncate(STEPS);
        let (reference, losses) = golden.train_in_process();
        Case { golden, reference, losses }
    }

    fn run(&self, workers: usize, kind: ScheduleKind, notices: Vec<(u32, PlannedNotice)>, seed: u64) -> JobOutcome {
        self.run_with_joins(workers, kind, notices, Vec::new(), seed)
    }

    fn run_with_joins(
        &self,
        workers: usize,
        kind: ScheduleKind,
        notices: Vec<(u32, PlannedNotice)>,
        joins: Vec<(u32, u32)>,
        seed: u64,
    ) -> JobOutcome {
        let plan = self.plan(workers, kind, notices.clone(), joins);
        sim::run_job(plan, &spec::factory, seed)
            .unwrap_or_else(|e| panic!("W={workers} {kind} notices {notices:?} seed {seed}: {e}"))
    }

    fn plan(
        &self,
        workers: usize,
        kind: ScheduleKind,
        notices: Vec<(u32, PlannedNotice)>,
        joins: Vec<(u32, u32)>,
    ) -> JobPlan {
        JobPlan { notices, joins, ..self.golden.job_plan(workers, kind) }
    }

    /// Bit-identical weights and losses, one migration per notice, nothing redone or lost.
    fn check(&self, what: &str, out: &JobOutcome, migrations: usize) {
        assert!(bit_identical(&out.params, &self.reference), "{what}: weights differ from one process");
        assert_eq!(out.losses, self.losses, "{what}: losses");
        let executions = (self.golden.model.layers.len() * STEPS * self.golden.micro_batches) as u64;
        assert_eq!(out.counters.forward_layer_executions, executions, "{what}: forward executions");
        assert_eq!(out.counters.backward_layer_executions, executions, "{what}: backward executions");
        assert_eq!(out.migrations.len(), migrations, "{what}: migrations");
        assert_eq!(out.partitions.len(), migrations + 1, "{what}: generations");
    }
}

fn notice(worker: u32, step: u32, actions: u32) -> (u32, PlannedNotice) {
    (worker, PlannedNotice { step, actions, grace_ms: 120_000 })
}

/// A notice with no time to ship: every segment that can be recomputed is left out.
fn tight_notice(worker: u32, step: u32, actions: u32) -> (u32, PlannedNotice) {
    (worker, PlannedNotice { step, actions, grace_ms: 0 })
}

/// Recomputed forwards happen exactly when a migration left segments out.
fn check_fallback(what: &str, out: &JobOutcome) -> bool {
    let unshipped: u64 = out.migrations.iter().map(|m| m.bytes.unshipped_segments).sum();
    let recomputed = out.counters.recomputed_forward_layers;
    assert_eq!(unshipped > 0, recomputed > 0, "{what}: {unshipped} bytes left out, {recomputed} layers recomputed");
    recomputed > 0
}

#[test]
fn every_worker_at_every_action_boundary() {
    let case = Case::new("mlp12_adam", 1e-4);
    let max_actions = 2 * case.golden.micro_batches as u32;
    let mut runs = 0;
    for workers in 2..=4u32 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for worker in 0..workers {
                for actions in 0..=max_actions {
                    let seed = u64::from(workers * 1000 + worker * 100 + actions);
                    let out = case.run(workers as usize, kind, vec![notice(worker, 1, actions)], seed);
                    let what = format!("W={workers} {kind} worker {worker} after {actions} actions of step 1");
                    case.check(&what, &out, 1);
                    assert_eq!(out.migrations[0].leaving, vec![worker], "{what}");
                    assert_eq!(out.partitions[1].stages.len(), workers as usize - 1, "{what}");
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 2 * 9 * (2 + 3 + 4));
}

#[test]
fn every_worker_at_every_action_boundary_without_time_to_ship() {
    let case = Case::new("mlp12_sgd", 1e-4);
    let max_actions = 2 * case.golden.micro_batches as u32;
    let (mut runs, mut fallbacks) = (0, 0);
    for workers in 2..=4u32 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for worker in 0..workers {
                for actions in 0..=max_actions {
                    let seed = u64::from(workers * 1000 + worker * 100 + actions) + 7;
                    let out = case.run(workers as usize, kind, vec![tight_notice(worker, 1, actions)], seed);
                    let what = format!("W={workers} {kind} worker {worker} after {actions} actions, grace 0");
                    case.check(&what, &out, 1);
                    fallbacks += usize::from(check_fallback(&what, &out));
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 2 * 9 * (2 + 3 + 4));
    // Every point with a micro-batch between its forward and backward on the
    // leaving worker falls back; the rest (nothing in flight there) need not.
    assert!(fallbacks > runs / 2, "only {fallbacks} of {runs} runs recomputed anything");
}

#[test]
fn the_fallback_under_repeated_and_simultaneous_notices() {
    let case = Case::new("mlp12_adam", 1e-4);
    for seed in 0..10 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            let out = case.run(4, kind, vec![tight_notice(1, 1, 3), tight_notice(2, 1, 3)], seed);
            let what = format!("4 -> 2 with grace 0, {kind}, seed {seed}");
            assert!(bit_identical(&out.params, &case.reference), "{what}");
            assert_eq!(out.losses, case.losses, "{what}");
            assert!(check_fallback(&what, &out), "{what}: nothing was recomputed");
            // The survivor that took the left-out layers leaves before replaying them.
            let notices = vec![tight_notice(1, 1, 4), tight_notice(0, 1, 5)];
            let out = case.run(3, kind, notices, seed);
            let what = format!("3 -> 2 -> 1 with grace 0 in one step, {kind}, seed {seed}");
            case.check(&what, &out, 2);
            check_fallback(&what, &out);
        }
    }
}

#[test]
fn residual_layers_with_layernorm_migrate_too() {
    let case = Case::new("resmlp12_ce", 1e-3);
    for (worker, actions) in [(0, 1), (1, 5), (2, 12)] {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            let out = case.run(3, kind, vec![notice(worker, 1, actions)], 7 + u64::from(actions));
            case.check(&format!("resmlp W=3 {kind} worker {worker} after {actions}"), &out, 1);
            let out = case.run(3, kind, vec![tight_notice(worker, 1, actions)], 8 + u64::from(actions));
            let what = format!("resmlp W=3 {kind} worker {worker} after {actions}, grace 0");
            case.check(&what, &out, 1);
            check_fallback(&what, &out);
        }
    }
}

#[test]
fn two_notices_at_once_and_notices_during_a_migration() {
    let case = Case::new("mlp12_sgd", 1e-4);
    // Same point: the notices land together or one during the other's migration, depending on the order.
    for seed in 0..12 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            let out = case.run(4, kind, vec![notice(1, 1, 3), notice(2, 1, 3)], seed);
            let what = format!("4 -> 2, {kind}, seed {seed}");
            assert!(bit_identical(&out.params, &case.reference), "{what}");
            assert_eq!(out.losses, case.losses, "{what}");
            let left: Vec<u32> = out.migrations.iter().flat_map(|m| m.leaving.clone()).collect();
            assert_eq!(left.len(), 2, "{what}: {left:?}");
            assert_eq!(out.partitions.last().unwrap().stages.len(), 2, "{what}");
        }
    }
}

#[test]
fn three_to_two_to_one() {
    let case = Case::new("mlp12_adam", 1e-4);
    for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
        let out = case.run(3, kind, vec![notice(1, 0, 4), notice(0, 2, 2)], 5);
        case.check(&format!("3 -> 2 -> 1 {kind}"), &out, 2);
        let last = out.partitions.last().unwrap();
        assert_eq!(last.stages, vec![(2, 0..12)], "worker 2 ends with every layer");
    }
}

#[test]
fn every_worker_preempted_is_a_clear_failure() {
    let case = Case::new("mlp12_sgd", 1e-4);
    let g = &case.golden;
    let notices = vec![notice(0, 0, 1), notice(1, 0, 1)];
    let plan = JobPlan { notices, ..g.job_plan(2, ScheduleKind::OneFOneB) };
    let mut failures = 0;
    for seed in 0..8 {
        match sim::run_job(plan.clone(), &spec::factory, seed) {
            Err(e) => {
                assert!(e.to_string().contains("nothing is left to take over"), "{e}");
                failures += 1;
            }
            // The second notice may come after the first migration: then one worker holds
            // everything and its own notice leaves nobody — also a failure. Success is a bug.
            Ok(_) => panic!("seed {seed}: a run whose every worker was preempted succeeded"),
        }
    }
    assert_eq!(failures, 8);
}

#[test]
fn joins_at_every_safe_point() {
    let case = Case::new("mlp12_adam", 1e-4);
    let micro = case.golden.micro_batches as u32;
    for workers in 1..=3usize {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for losses in 0..=micro {
                let seed = (workers as u64) * 100 + u64::from(losses);
                let out = case.run_with_joins(workers, kind, Vec::new(), vec![(1, losses)], seed);
                let what = format!("W={workers} {kind} join after {losses} losses of step 1");
                case.check(&what, &out, 1);
                assert_eq!(out.migrations[0].joining, vec![workers as u32], "{what}");
                assert_eq!(out.partitions[1].stages.len(), workers + 1, "{what}");
            }
        }
    }
}

#[test]
fn shrink_then_grow_again() {
    let case = Case::new("mlp12_sgd", 1e-4);
    for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
        let out = case.run_with_joins(3, kind, vec![notice(1, 0, 3)], vec![(2, 2)], 3);
        case.check(&format!("3 -> 2 -> 3 {kind}"), &out, 2);
        assert_eq!(out.partitions.last().unwrap().stages.len(), 3);
    }
}

/// A preemption at a step boundary: an admin's preempt sent as the next
/// step starts (it may reach the worker before or after that step's start,
/// even after its own last update of the step before, a point no scripted
/// notice reaches), and a scripted notice on the step start itself. The
/// `StepStart` of the next step may still be on its way to some worker when
/// the `Repartition` reaches it (a bulk frame; the control lane overtakes
/// it): that worker must wait for it before it ships or adopts, or it hands
/// over layers of the wrong step and the late start fails with "step 1
/// started before the previous one finished". One seed per point (as in
/// [`every_worker_at_every_action_boundary`]) rarely draws that order;
/// these seeds include ones that did before the fix.
#[test]
fn preempts_at_a_step_boundary() {
    let case = Case::new("mlp12_adam", 1e-4);
    for workers in 2..=4u32 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for worker in 0..workers {
                for seed in 0..12u64 {
                    let what = format!("W={workers} {kind} worker {worker} seed {seed}");
                    let plan = case.plan(workers as usize, kind, Vec::new(), Vec::new());
                    let preempt = sim::AdminPreempt { after_step: 0, worker, grace_ms: 60_000 };
                    let out = sim::run_job_with_preempts(plan, &spec::factory, seed, &[preempt])
                        .unwrap_or_else(|e| panic!("{what}, admin preempt after step 0: {e}"));
                    case.check(&format!("{what}, admin preempt after step 0"), &out, 1);
                    assert_eq!(out.migrations[0].leaving, vec![worker], "{what}");
                    let out = case.run(workers as usize, kind, vec![notice(worker, 1, 0)], seed);
                    case.check(&format!("{what}, notice at the start of step 1"), &out, 1);
                }
            }
        }
    }
}
