//! Crashes without notice across real processes over QUIC: a worker that
//! aborts itself (`BATON_FAULT=crash`) at several points, a SIGKILL from
//! outside at a random moment of a longer run, a crash while another worker
//! is being preempted, and a worker that is SIGSTOPped (silent, not dead),
//! found by `--peer-timeout` (and a SIGSTOPped coordinator, whose own stall
//! must not read as its workers' silence). Every run must finish with weights
//! bit-identical to an uninterrupted one-process run, one redone step and
//! no lost micro-batch.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_engine::ParamStore;
use baton_models::io;
use common::{bit_identical, run_with_watchdog, Golden, Proc};
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
    let output = run_with_watchdog(common::baton().args(&all).envs(env.iter().copied()), Duration::from_secs(300));
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    read_run(&out, &report)
}

fn read_run(out: &Path, report: &Path) -> Run {
    let report = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    Run { params: io::load_tensors(out, "").unwrap(), report }
}

/// Bit-identical to the uninterrupted run `plain`, one step redone after
/// losing `lost`, nothing lost, and the completed steps' forwards and
/// backwards counted as in `plain` (the lost worker's too).
fn check(run: &Run, plain: &Run, what: &str, lost: u32) {
    assert!(bit_identical(&run.params, &plain.params), "{what}: weights differ from the uninterrupted run");
    let (c, one) = (&run.report["counters"], &plain.report["counters"]);
    for key in ["forward_layer_executions", "backward_layer_executions"] {
        assert_eq!(c[key], one[key], "{what}: {key}: {c} vs {one}");
    }
    assert_eq!(c["lost_microbatches"], 0, "{what}");
    assert_eq!(c["redone_steps"], 1, "{what}");
    let crash = &run.report["crashes"][0];
    assert_eq!(crash["workers"], serde_json::json!([lost]), "{what}: {crash}");
    let (restore, resumed) = (crash["restore_ms"].as_f64().unwrap(), crash["resumed_after_ms"].as_f64().unwrap());
    assert!(resumed >= restore, "{what}: {crash}");
}

#[test]
fn a_worker_that_aborts_at_several_points_costs_one_redone_step() {
    let golden = Golden::load("mlp12_adam", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]);
    for (fault, schedule, lost) in [
        ("crash:worker=1,step=2,actions=3", "1f1b", 1),
        ("crash:worker=0,step=1,actions=0", "gpipe", 0),
        // In the first step, before any replica seed could have arrived.
        ("crash:worker=1,step=0,actions=0", "1f1b", 1),
        ("crash:worker=2,step=3,actions=8", "1f1b", 2),
    ] {
        let args = ["--workers", "3", "--schedule", schedule];
        let run = train(&golden, dir.path(), "crash", &args, &[("BATON_FAULT", fault)]);
        check(&run, &reference, fault, lost);
        assert_eq!(run.report["partitions"].as_array().unwrap().len(), 2, "{fault}");
    }
}

#[test]
fn a_crash_while_another_worker_is_preempted() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = train(&golden, dir.path(), "plain", &["--workers", "1"], &[]);
    let args = ["--workers", "4", "--preempt", "1@2:3,grace=120s"];
    let run = train(&golden, dir.path(), "both", &args, &[("BATON_FAULT", "crash:worker=2,step=2,actions=4")]);
    check(&run, &reference, "a crash during a preemption", 2);
    // Worker 0's replica holder is worker 1, which leaves in that step;
    // worker 0 dies later in the same step.
    let run = train(&golden, dir.path(), "orphan", &args, &[("BATON_FAULT", "crash:worker=0,step=2,actions=7")]);
    check(&run, &reference, "a crash after the replica holder left", 0);
}

/// The pids of `parent`'s children whose command line holds `--id N`.
fn worker_pid(parent: i32, id: u32) -> Option<i32> {
    let id = format!("\0--id\0{id}\0");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(&id) {
            return Some(pid);
        }
    }
    None
}

fn signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A longer seeded run (no files): 3 workers, `steps` steps.
fn long_args(out: &Path, report: &Path, steps: u32, workers: u32) -> Vec<String> {
    let steps = steps.to_string();
    let workers = workers.to_string();
    let args = ["train", "--model", "mlp12", "--steps", &steps, "--microbatches", "4", "--workers", &workers];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.extend(["--save", out.to_str().unwrap(), "--report", report.to_str().unwrap()].map(String::from));
    args
}

fn one_process(dir: &Path, steps: u32) -> Run {
    let (out, report) = (dir.join("one.safetensors"), dir.join("one.json"));
    let output = run_with_watchdog(common::baton().args(long_args(&out, &report, steps, 1)), Duration::from_secs(300));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    read_run(&out, &report)
}

#[test]
fn a_sigkill_from_outside_at_a_random_moment() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 400;
    let reference = one_process(dir.path(), steps);
    let (out, report) = (dir.path().join("k.safetensors"), dir.path().join("k.json"));
    let mut train = Proc::start(common::baton().args(long_args(&out, &report, steps, 3)), Duration::from_secs(240));
    // A moment drawn from the clock (printed, so a failure can be replayed).
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let nanos = clock.as_nanos() as u64 / 1000;
    let (victim, after_step, delay_ms) = (nanos % 3, 2 + nanos % 100, nanos % 40);
    eprintln!("killing worker {victim} {delay_ms} ms after step {after_step}");
    train.wait_for_prefix(&format!("step {after_step}/"));
    std::thread::sleep(Duration::from_millis(delay_ms));
    let pid = worker_pid(train.pid(), victim as u32).expect("the worker's pid");
    signal(pid, "-KILL");
    let stderr = train.finish();
    assert!(stderr.contains(&format!("lost worker(s) [{victim}]")), "{stderr}");
    let run = read_run(&out, &report);
    check(&run, &reference, "SIGKILL", victim as u32);
}

#[test]
fn a_stopped_worker_is_lost_after_the_peer_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 400;
    let reference = one_process(dir.path(), steps);
    let (out, report) = (dir.path().join("s.safetensors"), dir.path().join("s.json"));
    let mut args = long_args(&out, &report, steps, 3);
    args.extend(["--peer-timeout", "1s"].map(String::from));
    let mut train = Proc::start(common::baton().args(args), Duration::from_secs(240));
    train.wait_for_prefix("step 3/");
    let pid = worker_pid(train.pid(), 1).expect("worker 1's pid");
    signal(pid, "-STOP");
    let line = train.wait_for_line("lost worker(s) [1]");
    assert!(line.contains("silent for more than 1s"), "{line}");
    signal(pid, "-KILL");
    train.finish();
    let run = read_run(&out, &report);
    check(&run, &reference, "SIGSTOP", 1);
    let detected = run.report["crashes"][0]["detected_ms"].as_f64().unwrap();
    assert!(detected > 1000.0, "detected at {detected} ms");
}

/// The coordinator itself stops (SIGSTOP, as an overloaded machine can
/// starve it) for longer than the peer timeout while its workers go on:
/// when it runs again, its own stall is not counted as their silence. No
/// worker is lost, nothing is redone, and the weights are the
/// uninterrupted run's.
#[test]
fn a_stalled_coordinator_does_not_count_its_stall_as_silence() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 300;
    let reference = one_process(dir.path(), steps);
    let (out, report) = (dir.path().join("c.safetensors"), dir.path().join("c.json"));
    let mut args = long_args(&out, &report, steps, 3);
    args.extend(["--peer-timeout", "1s"].map(String::from));
    let mut train = Proc::start(common::baton().args(args), Duration::from_secs(240));
    train.wait_for_prefix("step 3/");
    // 2.5 s: past the 1 s peer timeout, inside the transport's 5 s idle timeout.
    signal(train.pid(), "-STOP");
    std::thread::sleep(Duration::from_millis(2500));
    signal(train.pid(), "-CONT");
    let stderr = train.finish();
    assert!(!stderr.contains("lost worker"), "{stderr}");
    let run = read_run(&out, &report);
    assert!(bit_identical(&run.params, &reference.params), "weights differ from the uninterrupted run");
    assert_eq!(run.report["counters"]["redone_steps"], 0, "{}", run.report["counters"]);
    assert_eq!(run.report["crashes"].as_array().map_or(0, Vec::len), 0, "{}", run.report["crashes"]);
}
