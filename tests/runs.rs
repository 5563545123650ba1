//! Optimizers and learning-rate schedules through `baton train`:
//! hyper-parameters PyTorch refuses are refused before training, naming the
//! option; `--lr-schedule` is refused when it cannot run, and a scheduled
//! run stays bit-identical for any worker count, with a preemption too.

mod common;

use baton_engine::pipeline::coordinator::JobPlan;
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::{sim, ScheduleKind};
use baton_engine::{LrSchedule, Optimizer, OptimizerConfig, ParamStore, Trainer};
use baton_models::{io, spec};
use common::{bit_identical, run_baton, run_baton_ok_owned, Golden};

/// Runs `baton args`, expecting failure with exit `code`, `expected` in
/// stderr, no panic, and no file written at `save`.
fn refused(args: &[&str], code: i32, expected: &str, save: &std::path::Path) {
    let out = run_baton(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "baton {args:?}:\n{stderr}");
    assert!(stderr.contains(expected), "baton {args:?}: expected `{expected}` in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "baton {args:?} panicked:\n{stderr}");
    assert!(!save.exists(), "baton {args:?} trained anyway");
}

#[test]
fn hyper_parameters_pytorch_refuses_are_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    for (optimizer, expected) in [
        ("adam:beta1=1", "adam `beta1`=1 must be in [0, 1)"),
        ("adam:beta2=1.5", "`beta2`=1.5 must be in [0, 1)"),
        ("adamw:beta1=-0.1", "adamw `beta1`=-0.1"),
        ("adam:lr=-1e-3", "adam `lr`=-0.001 must be >= 0"),
        ("adam:eps=0", "adam `eps`=0 must be > 0"),
        ("adamw:eps=-1e-8", "adamw `eps`"),
        ("adam:weight_decay=-0.1", "`weight_decay`=-0.1 must be >= 0"),
        ("adamw:weight_decay=-1", "adamw `weight_decay`=-1"),
        ("sgd:lr=-0.1", "sgd `lr`=-0.1 must be >= 0"),
        ("sgd:lr=0.1,momentum=-0.9", "sgd `momentum`=-0.9 must be >= 0"),
        ("sgd:lr=0.1,weight_decay=-1", "sgd `weight_decay`=-1"),
        ("sgd:lr=0.1,nesterov=true", "`nesterov` needs momentum > 0 and dampening = 0"),
        ("sgd:lr=0.1,momentum=0.9,dampening=0.5,nesterov=true", "dampening=0.5"),
        ("adam:lr=inf", "`lr` must be finite"),
        ("adam:beta1=nan", "`beta1` must be finite"),
    ] {
        let args = ["train", "--steps", "1", "--optimizer", optimizer, "--save", save.to_str().unwrap()];
        // A malformed flag value: clap's usage error, exit 2, naming --optimizer.
        refused(&args, 2, expected, &save);
        refused(&args, 2, "--optimizer", &save);
    }
}

#[test]
fn impossible_lr_schedules_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let s = save.to_str().unwrap();
    let base = ["train", "--steps", "10", "--optimizer", "adamw:lr=1e-3", "--save", s, "--lr-schedule"];
    for (schedule, code, expected) in [
        ("cosine:warmup=11,min=0", 1, "--lr-schedule: bad optimizer: lr schedule `cosine:warmup=11,min=0`: warmup=11 is longer than the run (10 steps)"),
        ("linear:warmup=20", 1, "warmup=20 is longer than the run (10 steps)"),
        ("cosine:warmup=2,min=0.01", 1, "min=0.01 is above the optimizer's lr=0.001"),
        ("cosine:min=-1", 2, "min must be a finite number >= 0"),
        ("exponential", 2, "use constant, cosine:warmup=W,min=LR or linear:warmup=W"),
        ("linear:warmup=two", 2, "warmup must be a whole number"),
    ] {
        let mut args = base.to_vec();
        args.push(schedule);
        refused(&args, code, expected, &save);
    }
}

fn train(dir: &std::path::Path, name: &str, extra: &[&str]) -> ParamStore {
    let out = dir.join(format!("{name}.safetensors"));
    let mut args: Vec<String> = ["train", "--steps", "6", "--batch", "8", "--microbatches", "2", "--seed", "3"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--save", out.to_str().unwrap()].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    run_baton_ok_owned(&args);
    io::load_tensors(&out, "").unwrap()
}

/// Every worker that updates a layer in step s uses step s's learning rate:
/// one process, 3 worker processes, and 3 with worker 1 preempted mid-step
/// (its layers move, and keep their schedule) give the same bits; and the
/// schedule changes the result (it is applied at all).
#[test]
fn scheduled_runs_are_bit_identical_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let trace = trace.to_str().unwrap();
    for (optimizer, schedule) in [
        ("adamw:lr=3e-3,weight_decay=0.1", "cosine:warmup=2,min=1e-4"),
        ("sgd:lr=0.05,momentum=0.9", "linear:warmup=3"),
    ] {
        let common = ["--optimizer", optimizer, "--lr-schedule", schedule];
        let one = train(dir.path(), "one", &common);
        let mut three = common.to_vec();
        three.extend(["--workers", "3", "--timeline", trace]);
        assert!(bit_identical(&one, &train(dir.path(), "three", &three)), "{optimizer} {schedule}: 3 workers differ");
        three.extend(["--preempt", "1@3:2"]);
        assert!(
            bit_identical(&one, &train(dir.path(), "pre", &three)),
            "{optimizer} {schedule}: preempted run differs"
        );
        let constant = train(dir.path(), "constant", &["--optimizer", optimizer]);
        assert!(!bit_identical(&one, &constant), "{optimizer}: --lr-schedule {schedule} changed nothing");
    }
}

/// In memory, exhaustively: AdamW with a cosine schedule on 3 workers, each
/// worker preempted after every possible action count of step 2 (the first
/// after the warmup), both schedules: bit-identical to one process with the
/// same schedule.
#[test]
fn scheduled_steps_survive_every_preemption_point_in_memory() {
    let mut golden = Golden::load("mlp12_adam", 1e-4);
    golden.data.truncate(4);
    let optimizer: OptimizerConfig = "adamw:lr=3e-3,weight_decay=0.1".parse().unwrap();
    let schedule = LrSchedule::new("cosine:warmup=2,min=1e-4".parse().unwrap(), 4, optimizer.lr()).unwrap();
    let mut trainer = Trainer::new(
        spec::parse(&golden.spec).unwrap(),
        golden.params.clone(),
        Optimizer::new(optimizer).with_lr_schedule(schedule),
    )
    .unwrap();
    for (step, batch) in golden.data.iter().enumerate() {
        trainer.step(step as u32, batch, golden.micro_batches).unwrap();
    }
    let max_actions = 2 * golden.micro_batches as u32;
    for kind in [ScheduleKind::Gpipe, ScheduleKind::OneFOneB] {
        for worker in 0..3u32 {
            for actions in 0..=max_actions {
                let notices = vec![(worker, PlannedNotice { step: 2, actions, grace_ms: 120_000 })];
                let plan = JobPlan { optimizer, lr_schedule: schedule, notices, ..golden.job_plan(3, kind) };
                let seed = u64::from(worker * 100 + actions);
                let out = sim::run_job(plan, &spec::factory, seed).unwrap();
                let what = format!("{kind} worker {worker} after {actions} actions");
                assert_eq!(out.migrations.len(), 1, "{what}");
                assert!(bit_identical(&out.params, &trainer.params), "{what}: weights differ from one process");
            }
        }
    }
}
