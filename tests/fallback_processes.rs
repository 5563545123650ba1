//! A lost replica pair across real processes over QUIC: two adjacent
//! workers (a worker and the holder of its replica) abort together at the
//! start of step 3 (`BATON_FAULT` with two crash specs) in a job that
//! checkpoints every 2 steps. No survivor holds their layers, so the job
//! falls back to the checkpoint before step 2 (each survivor's driver
//! reads its new range from the checkpoint directory) and redoes steps 2
//! and 3: the saved weights are bit-identical to an uninterrupted
//! one-process run and the report shows the fallback.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_engine::ParamStore;
use baton_models::io;
use common::{bit_identical, run_with_watchdog, Golden};
use serde_json::{json, Value};

fn train(golden: &Golden, dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> (ParamStore, Value, String) {
    let (out, report) = (dir.join(format!("{name}.safetensors")), dir.join(format!("{name}.json")));
    let mut all = golden.train_args(&out);
    all.extend(["--report", report.to_str().unwrap()].map(String::from));
    all.extend(args.iter().map(|a| a.to_string()));
    let output = run_with_watchdog(common::baton().args(&all).envs(env.iter().copied()), Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{name}: {stderr}");
    let report = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (io::load_tensors(&out, "").unwrap(), report, stderr)
}

#[test]
fn two_adjacent_workers_lost_together_fall_back_to_the_checkpoint() {
    let golden = Golden::load("mlp12_adam", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let (reference, _, _) = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]);
    let fault = "crash:worker=1,step=3,actions=0;crash:worker=2,step=3,actions=0";
    for (workers, schedule) in [("4", "gpipe"), ("3", "1f1b")] {
        let what = format!("{workers} workers, {schedule}, workers 1 and 2 lost at the start of step 3");
        let ckpt = dir.path().join(format!("ckpt-{workers}"));
        let args = [
            "--workers",
            workers,
            "--schedule",
            schedule,
            "--checkpoint-dir",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "2",
        ];
        let (params, report, stderr) = train(&golden, dir.path(), "pair", &args, &[("BATON_FAULT", fault)]);
        assert!(bit_identical(&params, &reference), "{what}: weights differ from one process\n{stderr}");
        let c = &report["counters"];
        assert_eq!(c["lost_microbatches"], 0, "{what}");
        assert_eq!(c["redone_steps"], 2, "{what}: steps 2 and 3 redone");
        let crashes = report["crashes"].as_array().unwrap();
        assert_eq!(crashes.len(), 1, "{what}: {crashes:?}");
        assert_eq!(crashes[0]["workers"], json!([1, 2]), "{what}");
        assert_eq!(crashes[0]["step"], 3, "{what}");
        assert_eq!(crashes[0]["fell_back_to_checkpoint"], 2, "{what}: {}", crashes[0]);
        assert!(stderr.contains("fell back to the checkpoint before step 2"), "{what}: {stderr}");
        let survivors = workers.parse::<usize>().unwrap() - 2;
        let last = report["partitions"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["stages"].as_array().map(Vec::len), Some(survivors), "{what}: {last}");
        // The final checkpoint, written after the fallback, holds the final weights.
        let loaded = baton_models::checkpoint::load(&ckpt).unwrap();
        assert!(bit_identical(&loaded.params, &reference), "{what}: the final checkpoint");
    }
}
