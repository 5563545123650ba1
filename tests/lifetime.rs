//! A job's lifetime and membership, across real processes:
//! - the ephemeral CA of `baton train --workers W` never reaches the disk
//!   (no key file under TMPDIR, even after a SIGKILL of the coordinator),
//!   and its workers exit when their coordinator is gone;
//! - SIGINT / SIGTERM stop `baton train` and `baton coordinator` with a
//!   message and status 128 + signal, and the workers exit;
//! - a second `baton worker` claiming a member's id is refused, an admin
//!   connection cannot drive a worker, and the job finishes bit-identical;
//! - a worker started by hand with a fresh id joins a running job and takes
//!   layers.
//!
//! Every process is started here and killed by its own handle on failure;
//! every wait has a deadline. Unix only (signals, /proc).
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_engine::pipeline::protocol::{self, Message};
use baton_models::{cluster, io};
use baton_transport::{Event, Identity, Lane, Node};
use common::{baton, bit_identical, run_baton_ok, Proc};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);

/// A `baton` process whose stderr this test reads; waits at most [`LIMIT`].
fn start(cmd: &mut Command) -> Proc {
    Proc::start(cmd, LIMIT)
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (and has not reaped, so
    // the pid cannot have been reused); no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// The pids whose parent is `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`: comm may hold spaces, so parse after ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// True while `pid` runs (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Asserts that every pid of `pids` exits within `limit`.
fn assert_exit_within(pids: &[i32], limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            let left: Vec<_> = pids.iter().filter(|&&p| alive(p)).collect();
            for &&p in &left {
                // SAFETY: as in `signal`; these are the workers of our job.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            panic!("{what}: workers {left:?} still ran {limit:?} after their coordinator was gone");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` (recursively) whose contents hold a private key.
fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY")) {
                found.push(path);
            }
        }
    }
    found
}

/// `baton train --workers 3` on a long synthetic run, with TMPDIR at `tmp`,
/// once its training runs.
fn local_job(dir: &Path, tmp: &Path) -> (Proc, Vec<i32>) {
    let mut job = start(
        baton()
            .args(["train", "--workers", "3", "--threads", "1", "--steps", "5000", "--save"])
            .arg(dir.join("out.safetensors"))
            .env("TMPDIR", tmp),
    );
    job.wait_for_line("step 3/");
    let workers = children_of(job.pid());
    assert_eq!(workers.len(), 3, "expected 3 worker processes, found {workers:?}");
    (job, workers)
}

#[test]
fn a_sigkilled_local_job_leaves_no_private_key_and_its_workers_exit() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (mut job, workers) = local_job(dir.path(), &tmp);
    assert_eq!(key_files(&tmp), Vec::<PathBuf>::new(), "a running job wrote keys under TMPDIR");
    let killed = Instant::now();
    job.kill();
    assert_exit_within(&workers, Duration::from_secs(2), "SIGKILL");
    eprintln!("workers gone {:?} after the coordinator's SIGKILL", killed.elapsed());
    assert_eq!(key_files(&tmp), Vec::<PathBuf>::new(), "a private key outlived the job");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the job left files under TMPDIR: {left:?}");
}

#[test]
fn sigint_stops_a_local_job_with_a_message_and_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (mut job, workers) = local_job(dir.path(), &tmp);
    signal(job.pid(), libc::SIGINT);
    let (status, stderr) = job.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT") && stderr.contains("checkpoint"), "unclear message:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_exit_within(&workers, Duration::from_secs(2), "SIGINT");
    assert!(!dir.path().join("out.safetensors").exists(), "an interrupted job saved weights as if it finished");
}

/// `baton cluster init` (with certificates for `certs` workers) and `baton
/// coordinator --workers W` training `steps` steps; returns it and its address.
fn coordinator(dir: &Path, workers: usize, certs: usize, steps: usize) -> (Proc, String) {
    let cluster = dir.join("cluster");
    run_baton_ok(&["cluster", "init", cluster.to_str().unwrap(), "--workers", &certs.to_string()]);
    let mut coordinator = start(
        baton()
            .args(["coordinator", "--listen", "127.0.0.1:0", "--workers", &workers.to_string(), "--model", "mlp12"])
            .args(["--steps", &steps.to_string(), "--optimizer", "sgd:lr=0.05,momentum=0.9", "--cluster-dir"])
            .arg(&cluster)
            .arg("--save")
            .arg(dir.join("out.safetensors"))
            .arg("--report")
            .arg(dir.join("report.json")),
    );
    let line = coordinator.wait_for_line("coordinator listening on ");
    let addr = line.trim_start_matches("coordinator listening on ").split(';').next().unwrap().to_string();
    (coordinator, addr)
}

/// A hand-started `baton worker --id id` of the cluster in `dir`, once it
/// listens, and the address it listens on.
fn worker_at(dir: &Path, addr: &str, id: u32) -> (Proc, String) {
    let mut worker = start(
        baton()
            .args(["worker", "--coordinator", addr, "--id", &id.to_string(), "--threads", "1", "--cluster-dir"])
            .arg(dir.join("cluster")),
    );
    let line = worker.wait_for_line("listening on ");
    let listen = line.rsplit("listening on ").next().unwrap().split_whitespace().next().unwrap().to_string();
    (worker, listen)
}

fn worker(dir: &Path, addr: &str, id: u32) -> Proc {
    worker_at(dir, addr, id).0
}

/// The same training in one process (the undisturbed reference).
fn single_process(dir: &Path, steps: usize) -> baton_engine::ParamStore {
    let single = dir.join("single.safetensors");
    let steps = steps.to_string();
    run_baton_ok(&[
        "train",
        "--workers",
        "1",
        "--model",
        "mlp12",
        "--steps",
        &steps,
        "--optimizer",
        "sgd:lr=0.05,momentum=0.9",
        "--save",
        single.to_str().unwrap(),
    ]);
    io::load_tensors(&single, "").unwrap()
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn sigterm_stops_a_coordinator_and_its_hand_started_workers_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coordinator, addr) = coordinator(dir.path(), 2, 2, 5000);
    let mut workers: Vec<Proc> = (0..2).map(|id| worker(dir.path(), &addr, id)).collect();
    coordinator.wait_for_line("step 3/");
    signal(coordinator.pid(), libc::SIGTERM);
    let stopped = Instant::now();
    let (status, stderr) = coordinator.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "unclear message:\n{stderr}");
    let pids: Vec<i32> = workers.iter().map(Proc::pid).collect();
    assert_exit_within(&pids, Duration::from_secs(3), "SIGTERM on the coordinator");
    eprintln!("workers gone {:?} after the coordinator's SIGTERM", stopped.elapsed());
    for (id, w) in workers.iter_mut().enumerate() {
        let (status, log) = w.wait_exit(Duration::from_secs(1));
        assert!(!status.success(), "worker {id} exited successfully from an abandoned job:\n{log}");
        assert!(log.contains("coordinator"), "worker {id} does not say its coordinator is gone:\n{log}");
        eprintln!("worker {id}: {}", log.lines().last().unwrap_or_default());
    }
}

/// A second `baton worker --id 1` (the cluster's own certificate) during
/// the run is refused naming the duplicate; an admin connection that sends
/// worker 0 control frames is disconnected; the job finishes bit-identical
/// to an undisturbed run.
#[test]
fn a_duplicate_worker_and_an_admin_cannot_disturb_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the job still runs when the late process connects.
    let steps = 3000;
    let (mut coordinator, addr) = coordinator(dir.path(), 2, 2, steps);
    let (first, worker0) = worker_at(dir.path(), &addr, 0);
    let mut workers = [first, worker(dir.path(), &addr, 1)];
    coordinator.wait_for_line("step 3/");

    let mut twin = worker(dir.path(), &addr, 1);
    let (status, log) = twin.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "a second worker 1 was accepted:\n{log}");
    assert!(log.contains("duplicate identity") && log.contains("`worker-1` is already connected"), "{log}");
    eprintln!("the second worker 1: {}", log.lines().last().unwrap_or_default());

    // The admin sends worker 0 an abort and a finish: dropped, disconnected.
    let admin = Identity::load(&dir.path().join("cluster"), cluster::ADMIN_NAME).unwrap();
    let node = Node::start("127.0.0.1:0".parse().unwrap(), admin, cluster::net_config()).unwrap();
    let (peer, _) = node.connect(worker0.parse().unwrap()).unwrap();
    for message in [Message::Abort { reason: "an admin says stop".into() }, Message::Finish] {
        let frame = protocol::encode(&message).unwrap();
        node.send(peer, Lane::Control, bytes::Bytes::from(frame.into_vec())).ok();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match node.events().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Disconnected { .. }) => break,
            Ok(Event::Message { bytes, .. }) => panic!("the admin got an answer: {:?}", protocol::decode(&bytes)),
            Ok(Event::Connected { .. }) => {}
            Err(e) => panic!("the admin was not disconnected by worker 0 ({e})"),
        }
    }
    drop(node);

    let log = coordinator.finish();
    for (id, w) in workers.iter_mut().enumerate() {
        let wlog = w.finish();
        if id == 0 {
            assert!(wlog.contains("disconnected it"), "worker 0 does not say it dropped the admin:\n{wlog}");
        }
    }
    assert_eq!(report(dir.path())["migrations"], serde_json::json!([]), "{log}");
    let got = io::load_tensors(&dir.path().join("out.safetensors"), "").unwrap();
    assert!(bit_identical(&got, &single_process(dir.path(), steps)), "weights differ from the undisturbed run");
}

/// `baton coordinator --workers 2` with two hand-started workers; once it
/// trains, a third `baton worker --id 2` (a certificate of the cluster, no
/// `--join` anywhere) is started: it is admitted at the next safe point,
/// takes layers, and the weights are bit-identical to an undisturbed run.
#[test]
fn a_hand_started_worker_joins_a_running_job_and_takes_layers() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the job still runs when the late process connects.
    let steps = 3000;
    let (mut coordinator, addr) = coordinator(dir.path(), 2, 3, steps);
    let mut workers: Vec<Proc> = (0..2).map(|id| worker(dir.path(), &addr, id)).collect();
    coordinator.wait_for_line("step 3/");
    workers.push(worker(dir.path(), &addr, 2));
    let joined = coordinator.wait_for_line("migration to generation 1");
    assert!(joined.contains("worker(s) [2] joined"), "{joined}");
    let log = coordinator.finish();
    for (id, w) in workers.iter_mut().enumerate() {
        let wlog = w.finish();
        assert!(!wlog.contains("error"), "worker {id}:\n{wlog}");
    }
    let report = report(dir.path());
    let migrations = report["migrations"].as_array().unwrap();
    assert_eq!(migrations.len(), 1, "{log}");
    assert_eq!(migrations[0]["joined"], serde_json::json!([2]), "{}", migrations[0]);
    let last = report["partitions"].as_array().unwrap().last().unwrap().clone();
    let stages = last["stages"].as_array().unwrap();
    let holders: Vec<u64> = stages.iter().map(|s| s["worker"].as_u64().unwrap()).collect();
    assert_eq!(holders, vec![0, 1, 2], "the joiner holds no layers: {last}");
    assert_eq!(report["counters"]["lost_microbatches"], 0);
    let got = io::load_tensors(&dir.path().join("out.safetensors"), "").unwrap();
    assert!(bit_identical(&got, &single_process(dir.path(), steps)), "weights differ from the undisturbed run");
}

/// A `baton coordinator` killed without a word (SIGKILL): its hand-started
/// workers have no pipe to it, so they learn it from QUIC's idle timeout
/// (5 s in `cluster::net_config`) and exit non-zero saying so (the one
/// that notices first; the other may see that one go first).
#[test]
fn the_workers_of_a_sigkilled_coordinator_exit_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coordinator, addr) = coordinator(dir.path(), 2, 2, 5000);
    let mut workers: Vec<Proc> = (0..2).map(|id| worker(dir.path(), &addr, id)).collect();
    coordinator.wait_for_line("step 3/");
    coordinator.kill();
    let killed = Instant::now();
    let pids: Vec<i32> = workers.iter().map(Proc::pid).collect();
    assert_exit_within(&pids, Duration::from_secs(8), "SIGKILL of `baton coordinator`");
    eprintln!("workers gone {:?} after the coordinator's SIGKILL", killed.elapsed());
    for (id, w) in workers.iter_mut().enumerate() {
        let (status, log) = w.wait_exit(Duration::from_secs(1));
        assert!(!status.success(), "worker {id} exited successfully from an abandoned job:\n{log}");
        // The first to notice exits; the other may learn it from that one.
        assert!(log.contains("went away"), "worker {id}:\n{log}");
    }
}
