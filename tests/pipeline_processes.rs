//! Invariant 3 across real processes: `baton train` with 1-4 worker
//! processes over QUIC (mutual TLS on loopback), GPipe and 1F1B, gives
//! final weights bit-identical to each other and within golden tolerance of
//! PyTorch; a worker that dies makes the run fail fast with a clear message.

mod common;

use std::time::{Duration, Instant};

use baton_engine::ParamStore;
use baton_models::io;
use common::{assert_params_close, bit_identical, run_baton, run_baton_ok_owned, Golden, GOLDEN_FILES};

fn train(golden: &Golden, dir: &std::path::Path, workers: usize, schedule: &str, extra: &[&str]) -> ParamStore {
    let out = dir.join(format!("w{workers}-{schedule}.safetensors"));
    let mut args = golden.train_args(&out);
    args.extend(["--workers", &workers.to_string(), "--schedule", schedule].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    run_baton_ok_owned(&args);
    io::load_tensors(&out, "").unwrap()
}

#[test]
fn worker_processes_are_bit_identical_to_one_process() {
    for (name, tol) in GOLDEN_FILES {
        let golden = Golden::load(name, tol);
        let dir = tempfile::tempdir().unwrap();
        let reference = train(&golden, dir.path(), 1, "1f1b", &[]);
        assert_params_close(name, &reference, &golden.final_params(), |_| tol);
        for workers in 1..=4 {
            for schedule in ["gpipe", "1f1b"] {
                // --timeline forces worker processes even for one worker.
                let trace = dir.path().join("trace.json");
                let params = train(&golden, dir.path(), workers, schedule, &["--timeline", trace.to_str().unwrap()]);
                assert!(bit_identical(&params, &reference), "{name}: {workers} workers {schedule} differ");
            }
        }
    }
}

#[test]
fn report_and_timeline_describe_the_pipeline() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let (report, trace) = (dir.path().join("r.json"), dir.path().join("t.json"));
    let (r, t) = (report.to_str().unwrap(), trace.to_str().unwrap());
    train(&golden, dir.path(), 3, "1f1b", &["--report", r, "--timeline", t]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let stages = &report["partitions"][0]["stages"];
    let layers: Vec<_> = stages.as_array().unwrap().iter().map(|s| s["layers"].clone()).collect();
    assert_eq!(serde_json::json!(layers), serde_json::json!([[0, 3], [4, 7], [8, 11]]));
    assert_eq!(report["counters"]["forward_layer_executions"], 12 * 6 * 4);
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    for category in ["forward", "backward", "optimizer", "send", "receive"] {
        assert!(events.iter().any(|e| e["cat"] == category), "no {category} span in the timeline");
    }
    let forwards = events.iter().filter(|e| e["cat"] == "forward").count();
    assert_eq!(forwards, 3 * 6 * 4, "one forward span per stage, step and micro-batch");
}

#[test]
fn a_worker_that_dies_without_replicas_fails_the_run_quickly_and_clearly() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let file = golden.path.to_str().unwrap();
    let started = Instant::now();
    let result = run_baton_with_env(
        &[
            "train",
            "--init",
            file,
            "--data",
            file,
            "--optimizer",
            "sgd:lr=0.05",
            "--workers",
            "3",
            "--replicas",
            "off",
            "--save",
            out.to_str().unwrap(),
        ],
        ("BATON_FAULT", "crash:worker=1,step=2,actions=3"),
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "the run survived a crashed worker without replicas:\n{stderr}");
    assert!(stderr.contains("worker 1"), "the message does not name worker 1:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?} to notice", started.elapsed());
    assert!(!out.exists(), "a failed run must not write weights");
}

fn run_baton_with_env(args: &[&str], (key, value): (&str, &str)) -> std::process::Output {
    common::run_with_watchdog(common::baton().args(args).env(key, value), Duration::from_secs(120))
}

#[test]
fn a_worker_without_certificates_says_what_is_missing() {
    let out = run_baton(&["worker", "--coordinator", "127.0.0.1:9", "--id", "0", "--cluster-dir", "/nonexistent/dir"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("/nonexistent/dir"), "{stderr}");
}
