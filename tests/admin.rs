//! `baton preempt` against running jobs: a local `baton train --admin-dir`
//! job whose worker 1 is preempted by an admin (the layers move and the
//! weights stay bit-identical to an uninterrupted run), a preempt of a
//! worker that does not exist (refused, the job goes on), and clients
//! without the cluster's `admin` certificate (refused: nothing happens)
//! against a `baton coordinator` with hand-started workers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_engine::pipeline::protocol::{self, Message};
use baton_engine::{ParamStore, Tensor};
use baton_models::cluster::{self, admin::COORDINATOR_ADDR_FILE};
use baton_models::io;
use baton_transport::{ClusterCa, Event, Lane, Node};
use common::{baton, bit_identical, run_baton_ok, run_baton_ok_owned, run_with_watchdog, Golden, Proc};
use serde_json::Value;

/// How often the golden data is repeated: 6 x 200 = 1200 steps, several
/// seconds of training, so a preempt sent at step 3 lands mid-job.
const REPEATS: usize = 200;
const LIMIT: Duration = Duration::from_secs(120);

/// A `baton` process whose stderr this test reads; waits at most [`LIMIT`].
fn start(cmd: &mut Command) -> Proc {
    Proc::start(cmd, LIMIT)
}

/// Runs `baton preempt` with `args` (watchdog 60 s).
fn preempt(args: &[&str]) -> Output {
    run_with_watchdog(baton().arg("preempt").args(args), Duration::from_secs(60))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The golden run mlp12_sgd with its data repeated [`REPEATS`] times.
struct LongGolden {
    golden: Golden,
    data: PathBuf,
    steps: usize,
}

impl LongGolden {
    fn new(dir: &Path) -> LongGolden {
        let golden = Golden::load("mlp12_sgd", 1e-4);
        let mut data = ParamStore::new();
        for (name, t) in io::load_tensors(&golden.path, "data.").unwrap().iter() {
            let mut shape = t.shape().to_vec();
            shape[0] *= REPEATS;
            let long = match t.ids() {
                Ok(ids) => Tensor::from_ids(shape, ids.repeat(REPEATS)).unwrap(),
                Err(_) => Tensor::new(shape, t.values().unwrap().repeat(REPEATS)).unwrap(),
            };
            data.insert(format!("data.{name}"), long);
        }
        let path = dir.join("long-data.safetensors");
        io::save_params(&path, &data, None).unwrap();
        let steps = golden.steps * REPEATS;
        LongGolden { golden, data: path, steps }
    }

    /// `baton train` arguments for this run, saving to `save`.
    fn train_args(&self, save: &Path) -> Vec<String> {
        let mut args = self.golden.train_args(save);
        let mut set = |flag: &str, value: String| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1] = value;
        };
        set("--data", self.data.to_str().unwrap().to_string());
        set("--steps", self.steps.to_string());
        args
    }

    /// A 3-worker job with `--admin-dir admin` and a report, running.
    fn start(&self, dir: &Path, admin: &Path) -> Proc {
        let mut args = self.train_args(&dir.join("out.safetensors"));
        args.extend(["--workers", "3", "--threads", "1", "--admin-dir", admin.to_str().unwrap()].map(String::from));
        args.extend(["--report".into(), dir.join("report.json").to_str().unwrap().into()]);
        let mut job = start(baton().args(&args));
        let line = job.wait_for_prefix("admin identity written to ");
        assert!(line.contains("baton preempt --admin-dir"), "the line does not say how to preempt: {line}");
        assert!(admin.join(COORDINATOR_ADDR_FILE).exists(), "{line}");
        // Preempts are for running training: wait until it runs.
        job.wait_for_prefix("step 3/");
        job
    }
}

/// Hand-started worker processes, killed if the test fails.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn an_admin_preempts_a_worker_of_a_local_job() {
    let dir = tempfile::tempdir().unwrap();
    let (run, admin) = (LongGolden::new(dir.path()), dir.path().join("admin"));
    let mut job = run.start(dir.path(), &admin);
    let out = preempt(&["--admin-dir", admin.to_str().unwrap(), "--worker", "1", "--grace", "60s"]);
    // A refusal because training already finished fails here, naming why.
    assert!(out.status.success(), "baton preempt failed:\n{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("worker 1 preempted with grace 60s"), "{}", text(&out.stdout));
    let stderr = job.finish();
    assert!(stderr.contains("admin: preempting worker 1 with grace 60s"), "{stderr}");

    let report = report(dir.path());
    let migrations = report["migrations"].as_array().unwrap();
    assert_eq!(migrations.len(), 1, "{stderr}");
    assert_eq!(migrations[0]["workers"], serde_json::json!([1]), "{}", migrations[0]);
    let announced = migrations[0]["deadline_ms"].as_f64().unwrap() - migrations[0]["notice_ms"].as_f64().unwrap();
    assert!((59_990.0..=60_010.0).contains(&announced), "grace {announced} ms, expected 60 s");
    assert_eq!(report["counters"]["lost_microbatches"], 0);

    let single = dir.path().join("single.safetensors");
    let mut args = run.train_args(&single);
    args.extend(["--workers", "1"].map(String::from));
    run_baton_ok_owned(&args);
    let (got, want) =
        (io::load_tensors(&dir.path().join("out.safetensors"), "").unwrap(), io::load_tensors(&single, "").unwrap());
    assert!(bit_identical(&got, &want), "weights differ from the uninterrupted run");
}

#[test]
fn preempting_a_worker_that_does_not_exist_is_refused_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (run, admin) = (LongGolden::new(dir.path()), dir.path().join("admin"));
    let mut job = run.start(dir.path(), &admin);
    let out = preempt(&["--admin-dir", admin.to_str().unwrap(), "--worker", "7"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a preempt of worker 7 was accepted:\n{stderr}");
    assert!(stderr.contains("worker 7") && stderr.contains("not a member"), "unclear refusal:\n{stderr}");
    let log = job.finish();
    assert!(log.contains("admin: request refused"), "{log}");
    assert_eq!(report(dir.path())["migrations"], serde_json::json!([]), "{log}");
}

#[test]
fn preempt_flags_and_a_missing_admin_dir_are_errors() {
    let out = preempt(&["--worker", "1"]);
    assert_eq!(out.status.code(), Some(2), "no job named:\n{}", text(&out.stderr));
    let out = preempt(&["--worker", "1", "--coordinator", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2), "--coordinator without --cluster-dir:\n{}", text(&out.stderr));
    let out = preempt(&["--worker", "1", "--grace", "soon", "--admin-dir", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "--grace soon:\n{}", text(&out.stderr));
    let out = preempt(&["--worker", "1", "--admin-dir", "/nonexistent/admin"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(COORDINATOR_ADDR_FILE) && !stderr.contains("panicked"), "unclear error:\n{stderr}");
}

/// `baton cluster init`, `baton coordinator --workers 2` and two `baton
/// worker`s; returns the coordinator (as a [`Proc`]), its address and the workers.
fn start_cluster(dir: &Path, cluster: &Path) -> (Proc, String, Workers) {
    run_baton_ok(&["cluster", "init", cluster.to_str().unwrap(), "--workers", "2"]);
    assert!(cluster.join("admin.pem").exists(), "cluster init wrote no admin certificate");
    let mut coordinator = start(
        baton()
            .args(["coordinator", "--listen", "127.0.0.1:0", "--workers", "2", "--model", "mlp12"])
            .args(["--steps", "1200", "--optimizer", "sgd:lr=0.05", "--cluster-dir"])
            .arg(cluster)
            .arg("--save")
            .arg(dir.join("out.safetensors"))
            .arg("--report")
            .arg(dir.join("report.json")),
    );
    let line = coordinator.wait_for_prefix("coordinator listening on ");
    let addr = line.trim_start_matches("coordinator listening on ").split(';').next().unwrap().to_string();
    let workers = (0..2)
        .map(|id| {
            baton()
                .args(["worker", "--coordinator", &addr, "--id", &id.to_string(), "--threads", "1", "--cluster-dir"])
                .arg(cluster)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let workers = Workers(workers);
    coordinator.wait_for_prefix("step 3/");
    (coordinator, addr, workers)
}

/// Connects as `name` (a certificate of the cluster's own CA) and sends a
/// preempt of worker 1: the coordinator must close the connection unanswered.
fn intruder_is_disconnected(cluster: &Path, coordinator: &str, name: &str) {
    let identity = ClusterCa::load(cluster).unwrap().issue(name).unwrap();
    let node = Node::start("127.0.0.1:0".parse().unwrap(), identity, cluster::net_config()).unwrap();
    let Ok((peer, _)) = node.connect(coordinator.parse().unwrap()) else { return };
    let frame = protocol::encode(&Message::Preempt { worker: 1, grace_ms: 33_000 }).unwrap();
    node.send(peer, Lane::Control, bytes::Bytes::from(frame.into_vec())).ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match node.events().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Disconnected { .. }) => return,
            Ok(Event::Message { bytes, .. }) => panic!("`{name}` got an answer: {:?}", protocol::decode(&bytes)),
            Ok(Event::Connected { .. }) => {}
            Err(e) => panic!("`{name}` was not disconnected ({e})"),
        }
    }
}

#[test]
fn clients_without_the_admin_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, foreign) = (dir.path().join("cluster"), dir.path().join("foreign"));
    let (mut coordinator, addr, mut workers) = start_cluster(dir.path(), &cluster);
    // An admin certificate of another CA: TLS refuses it.
    run_baton_ok(&["cluster", "init", foreign.to_str().unwrap(), "--workers", "1"]);
    let out = preempt(&["--coordinator", &addr, "--cluster-dir", foreign.to_str().unwrap(), "--worker", "1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a foreign admin was accepted:\n{stderr}");
    assert!(stderr.contains("certificate") && !stderr.contains("panicked"), "unclear refusal:\n{stderr}");
    // A certificate of our CA under another name: disconnected, unanswered.
    intruder_is_disconnected(&cluster, &addr, "intruder");
    // The cluster's admin, last: had an intruder's preempt (33 s) landed,
    // this one would be refused (worker 1 already leaving).
    let cluster_dir = cluster.to_str().unwrap();
    let out = preempt(&["--coordinator", &addr, "--cluster-dir", cluster_dir, "--worker", "1", "--grace", "77s"]);
    assert!(out.status.success(), "the cluster's admin was refused:\n{}", text(&out.stderr));
    let log = coordinator.finish();
    for worker in &mut workers.0 {
        assert!(worker.wait().unwrap().success(), "a worker failed:\n{log}");
    }
    let migrations = report(dir.path())["migrations"].as_array().unwrap().clone();
    assert_eq!(migrations.len(), 1, "{log}");
    let announced = migrations[0]["deadline_ms"].as_f64().unwrap() - migrations[0]["notice_ms"].as_f64().unwrap();
    assert!((76_990.0..=77_010.0).contains(&announced), "grace {announced} ms: not the admin's 77 s");
}
