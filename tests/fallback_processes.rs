//! A lost replica pair across real processes over QUIC: two adjacent
//! workers (a worker and the holder of its replica) abort together at the
//! start of step 30 (`BATON_FAULT` with two crash specs) of a 40-step job
//! that checkpoints every 5 steps. No survivor holds their layers, so the
//! job falls back to the last committed checkpoint (each survivor's driver
//! reads its new range from the checkpoint directory) and redoes every step
//! from it: the saved weights are bit-identical to an uninterrupted
//! one-process run and the report shows the fallback. Also: a worker killed
//! while its checkpoint part is being written does not hang the job.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_engine::ParamStore;
use baton_models::io;
use common::{bit_identical, run_with_watchdog};
use serde_json::{json, Value};

const STEPS: u32 = 40;

/// `baton train` of seeded mlp12 for [`STEPS`] steps: weights, report, stderr.
fn train(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> (ParamStore, Value, String) {
    let (out, report) = (dir.join(format!("{name}.safetensors")), dir.join(format!("{name}.json")));
    let steps = STEPS.to_string();
    let mut all: Vec<String> =
        ["train", "--model", "mlp12", "--steps", &steps, "--microbatches", "4"].map(String::from).to_vec();
    all.extend(["--save", out.to_str().unwrap(), "--report", report.to_str().unwrap()].map(String::from));
    all.extend(args.iter().map(|a| a.to_string()));
    let output = run_with_watchdog(common::baton().args(&all).envs(env.iter().copied()), Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{name}: {stderr}");
    let report = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (io::load_tensors(&out, "").unwrap(), report, stderr)
}

#[test]
fn two_adjacent_workers_lost_together_fall_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (reference, _, _) = train(dir.path(), "plain", &["--workers", "1"], &[]);
    let fault = "crash:worker=1,step=30,actions=0;crash:worker=2,step=30,actions=0";
    for (workers, schedule) in [("4", "gpipe"), ("3", "1f1b")] {
        let what = format!("{workers} workers, {schedule}, workers 1 and 2 lost at the start of step 30");
        let ckpt = dir.path().join(format!("ckpt-{workers}"));
        let ckpt_text = ckpt.to_str().unwrap();
        let args =
            ["--workers", workers, "--schedule", schedule, "--checkpoint-dir", ckpt_text, "--checkpoint-every", "5"];
        let (params, report, stderr) = train(dir.path(), "pair", &args, &[("BATON_FAULT", fault)]);
        assert!(bit_identical(&params, &reference), "{what}: weights differ from one process\n{stderr}");
        let crashes = report["crashes"].as_array().unwrap();
        assert_eq!(crashes.len(), 1, "{what}: {crashes:?}");
        assert_eq!(crashes[0]["workers"], json!([1, 2]), "{what}");
        assert_eq!(crashes[0]["step"], 30, "{what}");
        // The last committed checkpoint: the one before step 30 if every
        // part was reported before the crash, else an earlier one.
        let from = crashes[0]["fell_back_to_checkpoint"].as_u64().unwrap_or_else(|| panic!("{what}: {}", crashes[0]));
        assert!(from % 5 == 0 && (5..=30).contains(&from), "{what}: fell back to {from}");
        eprintln!("{what}: fell back to the checkpoint before step {from}");
        let c = &report["counters"];
        assert_eq!(c["lost_microbatches"], 0, "{what}");
        assert_eq!(c["redone_steps"], 30 - from + 1, "{what}: steps {from}-30 redone");
        assert!(stderr.contains(&format!("fell back to the checkpoint before step {from}")), "{what}: {stderr}");
        let survivors = workers.parse::<usize>().unwrap() - 2;
        let last = report["partitions"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["stages"].as_array().map(Vec::len), Some(survivors), "{what}: {last}");
        // The final checkpoint, written after the fallback, holds the final weights.
        let loaded = baton_models::checkpoint::load(&ckpt).unwrap();
        assert_eq!(loaded.manifest.next_step, STEPS, "{what}");
        assert!(bit_identical(&loaded.params, &reference), "{what}: the final checkpoint");
    }
}

/// Worker 1 aborts as step 10's start reaches it, right after it
/// snapshotted the checkpoint before step 10 (written on a thread, often
/// not yet reported): the coordinator must not wait for that part forever.
/// It abandons that checkpoint (or commits it, if the part made it out),
/// the replica restores the layers, and later checkpoints commit.
#[test]
fn a_worker_killed_while_writing_its_checkpoint_part_does_not_hang_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (reference, _, _) = train(dir.path(), "plain", &["--workers", "1"], &[]);
    let ckpt = dir.path().join("ckpt");
    let args = ["--workers", "3", "--checkpoint-dir", ckpt.to_str().unwrap(), "--checkpoint-every", "1"];
    let fault = [("BATON_FAULT", "crash:worker=1,step=10,actions=0")];
    let (params, report, stderr) = train(dir.path(), "owed", &args, &fault);
    assert!(bit_identical(&params, &reference), "weights differ from one process\n{stderr}");
    assert_eq!(report["counters"]["redone_steps"], 1);
    assert_eq!(report["counters"]["lost_microbatches"], 0);
    assert_eq!(report["crashes"][0]["workers"], json!([1]));
    let abandoned = !stderr.contains("checkpoint: steps 0..10 saved");
    eprintln!("the checkpoint before step 10 was {}", if abandoned { "abandoned" } else { "committed" });
    let loaded = baton_models::checkpoint::load(&ckpt).unwrap();
    assert_eq!(loaded.manifest.next_step, STEPS);
    assert!(bit_identical(&loaded.params, &reference), "the final checkpoint");
}
