//! Crashes without notice, exhaustively, in memory: the coordinator and
//! worker state machines over a simulated network (seeded random delivery
//! order) on simulated time. For W = 2, 3, 4, GPipe and 1F1B, every worker
//! dies without a word after every possible number of completed actions of
//! a step (0 = when the step's start reaches it); the step in progress is
//! abandoned everywhere, the lost layers come back from their replicas, and
//! the step is redone: every run must give weights bit-identical to one
//! process, the same losses, one redone step and no lost micro-batch. A
//! worker lost together with the holder of its replica fails the job,
//! naming the layers lost; a worker that hangs is found by the peer timeout.

mod common;

use std::time::Duration;

use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan};
use baton_engine::pipeline::protocol::{PlannedNotice, WorkDone};
use baton_engine::pipeline::sim::{self, SimCrash};
use baton_engine::pipeline::ScheduleKind;
use baton_engine::train::Counters;
use baton_engine::{Optimizer, ParamStore, Trainer};
use baton_models::spec;
use common::{bit_identical, Golden};

const STEPS: usize = 3;

struct Case {
    golden: Golden,
    reference: ParamStore,
    losses: Vec<f32>,
    /// The uninterrupted one-process run's counters.
    counters: Counters,
}

impl Case {
    fn new(name: &str) -> Case {
        let mut golden = Golden::load(name, 1e-4);
        golden.data.truncate(STEPS);
        let model = spec::parse(&golden.spec).unwrap();
        let mut trainer = Trainer::new(model, golden.params.clone(), Optimizer::new(golden.optimizer)).unwrap();
        let losses = golden
            .data
            .iter()
            .enumerate()
            .map(|(s, b)| trainer.step(s as u32, b, golden.micro_batches).unwrap())
            .collect();
        Case { reference: trainer.params, losses, counters: trainer.counters, golden }
    }

    fn plan(&self, workers: usize, kind: ScheduleKind, notices: Vec<(u32, PlannedNotice)>) -> JobPlan {
        JobPlan { notices, ..self.golden.job_plan(workers, kind) }
    }

    /// Runs the job; when it finishes, checks the report's counters against
    /// what every worker actually computed (the simulation's oracle).
    fn run(&self, plan: JobPlan, crashes: &[SimCrash], seed: u64) -> baton_engine::Result<JobOutcome> {
        let (out, computed) = sim::run_job_traced(plan, &spec::factory, seed, crashes)?;
        self.check_work(&format!("seed {seed}, {crashes:?}"), &out, &computed);
        Ok(out)
    }

    /// The report counts what was computed, never more; a lost worker's
    /// forwards and backwards of the abandoned attempt after its last
    /// report are the only work it may miss.
    fn check_work(&self, what: &str, out: &JobOutcome, computed: &[(u32, WorkDone)]) {
        let c = &out.counters;
        let forwards = |c: &Counters| c.forward_layer_executions + c.recomputed_forward_layers;
        let backwards = |c: &Counters| c.backward_layer_executions + c.abandoned_backward_layers;
        let lost: Vec<(u32, u32)> = out.crashes.iter().flat_map(|r| r.lost.iter().map(|&w| (w, r.step))).collect();
        let unseen = |attempt: fn(&WorkDone) -> u64| -> u64 {
            let abandoned = |(w, d): &&(u32, WorkDone)| lost.iter().any(|&(l, s)| l == *w && s == d.step);
            computed.iter().filter(abandoned).map(|(_, d)| attempt(d)).sum()
        };
        let run_forwards: u64 = computed.iter().map(|(_, d)| forwards(&d.counters)).sum();
        let run_backwards: u64 = computed.iter().map(|(_, d)| backwards(&d.counters)).sum();
        assert!(forwards(c) <= run_forwards, "{what}: {c:?} counts more forwards than the {run_forwards} run");
        assert!(
            forwards(c) + unseen(|d| d.attempt_forwards) >= run_forwards,
            "{what}: {c:?} misses forwards of the {run_forwards} run"
        );
        assert!(backwards(c) <= run_backwards, "{what}: {c:?} counts more backwards than the {run_backwards} run");
        assert!(
            backwards(c) + unseen(|d| d.attempt_backwards) >= run_backwards,
            "{what}: {c:?} misses backwards of the {run_backwards} run"
        );
    }

    /// Bit-identical weights and losses, `redone` steps redone, nothing lost.
    fn check(&self, what: &str, out: &JobOutcome, redone: u32) {
        assert!(bit_identical(&out.params, &self.reference), "{what}: weights differ from one process");
        assert_eq!(out.losses, self.losses, "{what}: losses");
        assert_eq!(out.redone_steps, redone, "{what}: redone steps");
        assert_eq!(out.crashes.len(), redone as usize, "{what}: crash records");
        assert_eq!(out.microbatch_losses, (STEPS * self.golden.micro_batches) as u64, "{what}: lost micro-batches");
        for c in &out.crashes {
            assert!(c.resumed_after.is_some_and(|r| r >= c.restored_after), "{what}: {c:?}");
        }
        self.check_counters(what, out);
    }

    /// Every completed step's work counted once, as in one process; the
    /// abandoned attempts' as recomputed forwards and abandoned backwards.
    fn check_counters(&self, what: &str, out: &JobOutcome) {
        let (c, one) = (&out.counters, &self.counters);
        assert_eq!(c.forward_layer_executions, one.forward_layer_executions, "{what}: {c:?}");
        assert_eq!(c.backward_layer_executions, one.backward_layer_executions, "{what}: {c:?}");
        // A redone step re-ran forwards only if its attempt got that far.
        let per_step = one.forward_layer_executions / STEPS as u64;
        assert!(c.recomputed_forward_layers <= u64::from(out.redone_steps) * per_step, "{what}: {c:?}");
    }
}

fn crash(worker: u32, step: u32, actions: u32) -> SimCrash {
    SimCrash { worker, step, actions, ..SimCrash::default() }
}

#[test]
fn every_worker_crashed_at_every_action_count() {
    let case = Case::new("mlp12_adam");
    let max_actions = 2 * case.golden.micro_batches as u32;
    let mut runs = 0;
    for workers in 2..=4u32 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for worker in 0..workers {
                for actions in 0..=max_actions {
                    let seed = u64::from(workers * 1000 + worker * 100 + actions) + 3;
                    let what = format!("W={workers} {kind} worker {worker} crashed after {actions} actions of step 1");
                    let out = case
                        .run(case.plan(workers as usize, kind, Vec::new()), &[crash(worker, 1, actions)], seed)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    case.check(&what, &out, 1);
                    assert_eq!(out.crashes[0].lost, vec![worker], "{what}");
                    assert_eq!(out.crashes[0].step, 1, "{what}");
                    assert_eq!(out.partitions.last().unwrap().stages.len(), workers as usize - 1, "{what}");
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 2 * 9 * (2 + 3 + 4));
}

/// In the last step every layer's update runs out of place into its
/// snapshot's buffers, which are then swapped (no step-start copy): a crash
/// at every action count of that step must still roll every survivor back
/// to the exact step-start bits.
#[test]
fn a_crash_after_out_of_place_updates_rolls_back_to_the_exact_step_start() {
    let case = Case::new("mlp12_adam");
    let (step, workers) = (STEPS as u32 - 1, 3u32);
    for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
        for worker in 0..workers {
            for actions in 0..=2 * case.golden.micro_batches as u32 {
                let seed = u64::from(worker * 100 + actions) + 7;
                let what = format!("W={workers} {kind} worker {worker} crashed after {actions} actions of step {step}");
                let out = case
                    .run(case.plan(workers as usize, kind, Vec::new()), &[crash(worker, step, actions)], seed)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                case.check(&what, &out, 1);
                assert_eq!((out.crashes[0].lost.clone(), out.crashes[0].step), (vec![worker], step), "{what}");
            }
        }
    }
}

#[test]
fn a_crash_with_sgd_momentum_and_two_crashes_in_one_run() {
    let case = Case::new("mlp12_sgd");
    for seed in 0..6 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            let what = format!("W=4 {kind} seed {seed}: workers 1 and 3 crash in steps 0 and 2");
            let crashes = [crash(1, 0, 5), crash(3, 2, 2)];
            let out =
                case.run(case.plan(4, kind, Vec::new()), &crashes, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
            case.check(&what, &out, 2);
        }
    }
}

#[test]
fn a_worker_and_its_replica_holder_lost_together_fail_naming_the_layers() {
    let case = Case::new("mlp12_adam");
    // W=3: 0-3 / 4-7 / 8-11; worker 1's replica lives on worker 2.
    for seed in 0..4 {
        let crashes = [crash(1, 1, 0), crash(2, 1, 0)];
        let err = case.run(case.plan(3, ScheduleKind::OneFOneB, Vec::new()), &crashes, seed).unwrap_err().to_string();
        assert!(err.contains("layers 4-7 were lost with workers [1, 2]"), "seed {seed}: {err}");
        assert!(err.contains("no checkpoint to fall back to"), "{err}");
    }
}

#[test]
fn a_crash_during_a_migration() {
    let case = Case::new("mlp12_adam");
    for seed in 0..8 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            // Worker 1 is preempted after 2 actions of step 1; worker 2
            // crashes at its next actions, while the migration may be under way.
            let notices = vec![(1, PlannedNotice { step: 1, actions: 2, grace_ms: 120_000 })];
            let what = format!("W=4 {kind} seed {seed}: a crash while worker 1 leaves");
            let out = case
                .run(case.plan(4, kind, notices.clone()), &[crash(2, 1, 3)], seed)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            case.check(&what, &out, 1);
            // The leaving worker itself dies after its first handover frame left.
            let what = format!("W=4 {kind} seed {seed}: the leaving worker crashes mid-ship");
            let notices = vec![(1, PlannedNotice { step: 1, actions: 2, grace_ms: 120_000 })];
            let mid_ship = SimCrash { mid_ship: true, ..crash(1, 0, 0) };
            let out =
                case.run(case.plan(4, kind, notices), &[mid_ship], seed).unwrap_or_else(|e| panic!("{what}: {e}"));
            case.check(&what, &out, 1);
            assert_eq!(out.crashes[0].lost, vec![1], "{what}");
            assert_eq!(out.partitions.last().unwrap().stages.len(), 3, "{what}");
        }
    }
}

#[test]
fn a_hung_worker_is_lost_after_the_peer_timeout() {
    let case = Case::new("mlp12_adam");
    for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
        let mut plan = case.plan(3, kind, Vec::new());
        plan.faults.peer_timeout = Duration::from_secs(2);
        let hang = SimCrash { silent: true, ..crash(1, 1, 4) };
        let out = case.run(plan, &[hang], 5).unwrap_or_else(|e| panic!("{kind}: {e}"));
        case.check(&format!("{kind} hang"), &out, 1);
        let c = &out.crashes[0];
        assert!(c.reason.contains("silent for more than 2s"), "{}", c.reason);
        // Simulated time: found after the timeout, within one heartbeat more.
        assert!(c.detected_at > Duration::from_secs(2), "{c:?}");
    }
}

#[test]
fn without_replicas_a_crash_fails_the_job() {
    let case = Case::new("mlp12_adam");
    let mut plan = case.plan(3, ScheduleKind::OneFOneB, Vec::new());
    plan.faults.replicas = false;
    let err = case.run(plan, &[crash(1, 1, 3)], 1).unwrap_err().to_string();
    assert!(err.contains("worker 1 was lost"), "{err}");
}

#[test]
fn a_crash_in_the_first_step_before_any_seed_arrived() {
    let case = Case::new("mlp12_adam");
    let m = case.golden.micro_batches as u32;
    for workers in 2..=4u32 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            for worker in 0..workers {
                // 0: the step's start never reached it; 1: one forward; M: mid-step.
                for actions in [0, 1, m] {
                    let seed = u64::from(workers * 100 + worker * 10 + actions);
                    let what = format!("W={workers} {kind} worker {worker} crashed after {actions} actions of step 0");
                    let out = case
                        .run(case.plan(workers as usize, kind, Vec::new()), &[crash(worker, 0, actions)], seed)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    case.check(&what, &out, 1);
                    assert_eq!((out.crashes[0].lost.clone(), out.crashes[0].step), (vec![worker], 0), "{what}");
                }
            }
        }
    }
}

#[test]
fn a_restore_target_lost_while_layers_come_to_it() {
    let case = Case::new("mlp12_adam");
    // W=4: 0-2 / 3-5 / 6-8 / 9-11 (ring replicas: 0's on 1, 1's on 2, 2's
    // on 3, 3's on 0). Worker 1 dies; the restore over 0, 2, 3 hands
    // layers to worker 3, which dies as the first arrives. Every layer
    // still has a copy: 3's own on worker 0, what was handed to it at its
    // sender (kept until the step starts again), 1's replica on worker 2.
    for seed in 0..6 {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            let what = format!("W=4 {kind} seed {seed}: worker 3 lost during the restore after worker 1");
            let crashes = [crash(1, 1, 3), SimCrash { restore: true, ..crash(3, 0, 0) }];
            let out =
                case.run(case.plan(4, kind, Vec::new()), &crashes, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(bit_identical(&out.params, &case.reference), "{what}: weights");
            assert_eq!(out.losses, case.losses, "{what}");
            assert_eq!(out.crashes.len(), 1, "{what}: one recovery, restarted by the second loss");
            assert_eq!(out.crashes[0].lost, vec![1, 3], "{what}");
            assert_eq!(out.partitions.last().unwrap().stages.len(), 2, "{what}");
            case.check_counters(&what, &out);
        }
    }
}

#[test]
fn a_crash_after_a_migration_took_away_the_replica_holder() {
    let case = Case::new("mlp12_adam");
    let max_actions = 2 * case.golden.micro_batches as u32;
    // W=4: worker 0's replica lives on worker 1, which leaves with notice
    // after 2 actions of step 1; worker 0 dies later in the same step, at
    // every later action count (before, during or after the migration).
    for actions in 1..=max_actions {
        for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
            let seed = u64::from(actions) * 7 + 1;
            let what = format!("W=4 {kind}: worker 0 crashed after {actions} actions of step 1, worker 1 leaving");
            let notices = vec![(1, PlannedNotice { step: 1, actions: 2, grace_ms: 120_000 })];
            let out = case
                .run(case.plan(4, kind, notices), &[crash(0, 1, actions)], seed)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            case.check(&what, &out, 1);
            assert_eq!(out.crashes[0].lost, vec![0], "{what}");
            assert_eq!(out.partitions.last().unwrap().stages.len(), 2, "{what}");
        }
    }
}
