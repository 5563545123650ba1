//! Live migration across real processes over QUIC: the seed scenario
//! (worker 1 of 3 told mid-step it dies), first- and last-stage
//! preemption, 3 -> 2 -> 1, and a leaving worker SIGKILLed when its grace
//! runs out after it shipped, and a grace too short for the segments (the
//! recompute fallback). Every run must give weights bit-identical to an
//! uninterrupted one-process run, within golden tolerance of PyTorch, with
//! nothing lost and nothing recomputed unless the fallback says so.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_engine::ParamStore;
use baton_models::io;
use common::{assert_params_close, bit_identical, run_with_watchdog, Golden};
use serde_json::Value;

struct Run {
    params: ParamStore,
    report: Value,
}

fn train(golden: &Golden, dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let (out, report) = (dir.join(format!("{name}.safetensors")), dir.join(format!("{name}.json")));
    let mut all = golden.train_args(&out);
    all.extend(["--report", report.to_str().unwrap()].map(String::from));
    all.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = common::baton();
    cmd.args(&all);
    cmd.envs(env.iter().copied());
    let output = run_with_watchdog(&mut cmd, Duration::from_secs(300));
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    let report = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    Run { params: io::load_tensors(&out, "").unwrap(), report }
}

fn check(golden: &Golden, run: &Run, reference: &ParamStore, what: &str, migrations: usize) {
    assert!(bit_identical(&run.params, reference), "{what}: weights differ from the uninterrupted run");
    assert_params_close(what, &run.params, &golden.final_params(), |_| golden.final_tolerance);
    let c = &run.report["counters"];
    let executions = (golden.model.layers.len() * golden.steps * golden.micro_batches) as u64;
    assert_eq!(c["forward_layer_executions"], executions, "{what}: forward executions");
    assert_eq!(c["backward_layer_executions"], executions, "{what}: backward executions");
    assert_eq!(c["recomputed_forward_layers"], 0, "{what}");
    assert_eq!(c["lost_microbatches"], 0, "{what}");
    assert_eq!(run.report["migrations"].as_array().unwrap().len(), migrations, "{what}: migrations");
}

fn stages(report: &Value, generation: usize) -> Vec<(u64, u64, u64)> {
    let stage =
        |s: &Value| (s["worker"].as_u64().unwrap(), s["layers"][0].as_u64().unwrap(), s["layers"][1].as_u64().unwrap());
    report["partitions"][generation]["stages"].as_array().unwrap().iter().map(stage).collect()
}

#[test]
fn seed_scenario_worker_1_of_3_preempted_mid_step() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]).params;
    let run = train(&golden, dir.path(), "seed", &["--workers", "3", "--preempt", "1@2:5,grace=120s"], &[]);
    check(&golden, &run, &reference, "seed scenario", 1);
    assert_eq!(stages(&run.report, 0), vec![(0, 0, 3), (1, 4, 7), (2, 8, 11)]);
    assert_eq!(stages(&run.report, 1), vec![(0, 0, 5), (2, 6, 11)]);
    let m = &run.report["migrations"][0];
    assert_eq!(m["workers"], serde_json::json!([1]));
    for kind in ["parameters", "optimizer_state", "gradients", "segments"] {
        assert!(m["bytes"][kind].as_u64().unwrap() > 0, "no {kind} moved: {m}");
    }
    assert!(m["resumed_after_ms"].as_f64().unwrap() >= m["ship_ms"].as_f64().unwrap());
    assert!(m["deadline_ms"].as_f64().unwrap() > m["notice_ms"].as_f64().unwrap() + 119_000.0);
}

#[test]
fn first_and_last_stage_preemption() {
    let golden = Golden::load("resmlp12_ce", 1e-3);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]).params;
    for (preempt, schedule) in [("0@1:3", "gpipe"), ("2@3:7", "1f1b"), ("0@0:0", "1f1b")] {
        let args = ["--workers", "3", "--schedule", schedule, "--preempt", preempt];
        let run = train(&golden, dir.path(), "edge", &args, &[]);
        check(&golden, &run, &reference, &format!("resmlp --preempt {preempt} {schedule}"), 1);
    }
}

#[test]
fn three_to_two_to_one() {
    let golden = Golden::load("mlp12_adam", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]).params;
    let args = ["--workers", "3", "--preempt", "1@1:2", "--preempt", "0@3:4"];
    let run = train(&golden, dir.path(), "shrink", &args, &[]);
    check(&golden, &run, &reference, "3 -> 2 -> 1", 2);
    assert_eq!(stages(&run.report, 2), vec![(2, 0, 11)]);
}

#[test]
fn a_leaving_worker_killed_at_its_deadline_after_shipping() {
    // Worker 1 ships, then hangs instead of exiting; its 100 ms grace ends
    // while the other two still train (300 steps), and the launcher kills it.
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str], fault: Option<&str>| {
        let out = dir.path().join(format!("{name}.safetensors"));
        let mut args = vec!["train", "--model", "mlp12", "--steps", "300", "--optimizer", "sgd:lr=0.05"];
        args.extend_from_slice(extra);
        args.extend(["--save", out.to_str().unwrap()]);
        let mut cmd = common::baton();
        cmd.args(&args);
        if let Some(fault) = fault {
            cmd.env("BATON_FAULT", fault);
        }
        let output = run_with_watchdog(&mut cmd, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{name}: {stderr}");
        (io::load_tensors(&out, "").unwrap(), stderr)
    };
    let (reference, _) = run("plain", &["--workers", "1"], None);
    let args = ["--workers", "3", "--preempt", "1@2:5,grace=100ms"];
    let (params, stderr) = run("killed", &args, Some("hang-after-ship:worker=1"));
    assert!(bit_identical(&params, &reference), "weights differ after the SIGKILL");
    assert!(stderr.contains("hanging after shipping"), "the fault did not fire:\n{stderr}");
    assert!(stderr.contains("grace period ran out: killing"), "the deadline kill did not happen:\n{stderr}");
}

#[test]
fn a_grace_too_short_for_the_segments_falls_back_to_recompute() {
    // 2 s of grace at a (pretended) 20 kB/s leaves a budget of about 20 kB:
    // parameters and optimizer state go (they always do), segments stay
    // behind and the new owners recompute their forwards from the
    // activations worker 0 kept.
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]).params;
    let args = ["--workers", "3", "--preempt", "1@2:5,grace=2s"];
    let run = train(&golden, dir.path(), "tight", &args, &[("BATON_SHIP_BANDWIDTH", "20000")]);
    assert!(bit_identical(&run.params, &reference), "weights differ after recomputing");
    let c = &run.report["counters"];
    let executions = (golden.model.layers.len() * golden.steps * golden.micro_batches) as u64;
    assert_eq!(c["forward_layer_executions"], executions);
    assert_eq!(c["backward_layer_executions"], executions);
    assert_eq!(c["lost_microbatches"], 0);
    let recomputed = c["recomputed_forward_layers"].as_u64().unwrap();
    // Worker 1 holds 4 layers; every micro-batch it left out is recomputed through all 4.
    assert!(recomputed > 0 && recomputed.is_multiple_of(4), "recomputed {recomputed} layers");
    let m = &run.report["migrations"][0];
    assert!(m["bytes"]["unshipped_segments"].as_u64().unwrap() > 0, "{m}");
    assert!(m["action"].as_str().unwrap().contains("fallback"), "{m}");
    assert!(m["bytes"]["parameters"].as_u64().unwrap() > 0, "{m}");
}

#[test]
fn a_worker_joins_and_the_pipeline_grows() {
    let golden = Golden::load("mlp12_adam", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]).params;
    let args = ["--workers", "2", "--preempt", "1@1:3", "--join", "3:2"];
    let run = train(&golden, dir.path(), "regrow", &args, &[]);
    check(&golden, &run, &reference, "2 -> 1 -> 2", 2);
    assert_eq!(stages(&run.report, 1), vec![(0, 0, 11)]);
    assert_eq!(stages(&run.report, 2), vec![(0, 0, 5), (2, 6, 11)]);
    assert_eq!(run.report["migrations"][1]["joined"], serde_json::json!([2]));
}

#[test]
fn bf16_shipping_halves_segment_bytes_and_says_it_is_not_bit_identical() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let f32_run = train(&golden, dir.path(), "f32", &["--workers", "3", "--preempt", "1@2:5"], &[]);
    let args = ["--workers", "3", "--preempt", "1@2:5", "--ship-dtype", "bf16"];
    let bf16_run = train(&golden, dir.path(), "bf16", &args, &[]);
    let segments = |r: &Run| r.report["migrations"][0]["bytes"]["segments"].as_u64().unwrap();
    assert_eq!(segments(&bf16_run) * 2, segments(&f32_run));
    assert_eq!(bf16_run.report["bit_identical_to_uninterrupted"], false);
    assert_eq!(f32_run.report["bit_identical_to_uninterrupted"], true);
    assert!(!bit_identical(&bf16_run.params, &f32_run.params), "bf16 shipping should change the last bits");
    assert_params_close("bf16 shipping", &bf16_run.params, &golden.final_params(), |_| 1e-3);
}
