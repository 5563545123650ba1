//! The across-machines path on loopback: `baton cluster init`, a
//! `baton coordinator` and `baton worker`s started by hand. Also what it
//! must refuse: a worker whose certificate comes from another CA, and
//! garbage frames from an authenticated peer.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_models::{cluster, io};
use baton_transport::{Event, Identity, Lane, Node};
use common::{baton, bit_identical, run_baton_ok, run_with_watchdog};

/// A running `baton coordinator` and the address it listens on.
struct Coordinator {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn start_coordinator(dir: &Path, save: &Path, workers: &str) -> Coordinator {
    let mut child = baton()
        .args(["coordinator", "--listen", "127.0.0.1:0", "--workers", workers, "--model", "mlp12"])
        .args(["--steps", "3", "--optimizer", "sgd:lr=0.05,momentum=0.9", "--cluster-dir"])
        .arg(dir)
        .arg("--save")
        .arg(save)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("coordinator announces its address");
        if let Some(rest) = line.strip_prefix("coordinator listening on ") {
            break rest.split(';').next().unwrap().to_string();
        }
    };
    Coordinator { child, addr, stderr: rx }
}

fn worker(dir: &Path, addr: &str, id: u32) -> Command {
    let mut cmd = baton();
    cmd.args(["worker", "--coordinator", addr, "--id", &id.to_string(), "--threads", "1", "--cluster-dir"]).arg(dir);
    cmd
}

/// Waits for the coordinator to exit; returns its status and stderr.
fn finish(mut c: Coordinator, limit: Duration) -> (bool, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = c.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the coordinator did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    while let Ok(line) = c.stderr.recv_timeout(Duration::from_secs(2)) {
        text.push_str(&line);
        text.push('\n');
    }
    (status.success(), text)
}

#[test]
fn coordinator_and_hand_started_workers_train_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    run_baton_ok(&["cluster", "init", dir.to_str().unwrap(), "--workers", "2"]);
    let save = tmp.path().join("two.safetensors");
    let coordinator = start_coordinator(&dir, &save, "2");
    let workers: Vec<_> = (0..2).map(|id| worker(&dir, &coordinator.addr, id).spawn().unwrap()).collect();
    let (ok, stderr) = finish(coordinator, Duration::from_secs(120));
    assert!(ok, "coordinator failed:\n{stderr}");
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    let single = tmp.path().join("one.safetensors");
    run_baton_ok(&[
        "train",
        "--model",
        "mlp12",
        "--steps",
        "3",
        "--optimizer",
        "sgd:lr=0.05,momentum=0.9",
        "--save",
        single.to_str().unwrap(),
    ]);
    assert!(bit_identical(&io::load_tensors(&save, "").unwrap(), &io::load_tensors(&single, "").unwrap()));

    let again = run_with_watchdog(baton().args(["cluster", "init"]).arg(&dir), Duration::from_secs(30));
    assert!(!again.status.success(), "cluster init overwrote an existing CA");
}

#[test]
fn a_worker_from_another_cluster_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    run_baton_ok(&["cluster", "init", ours.to_str().unwrap(), "--workers", "1"]);
    run_baton_ok(&["cluster", "init", theirs.to_str().unwrap(), "--workers", "1"]);
    let coordinator = start_coordinator(&ours, &tmp.path().join("o.safetensors"), "1");
    let out = run_with_watchdog(&mut worker(&theirs, &coordinator.addr, 0), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a foreign worker was accepted:\n{stderr}");
    assert!(stderr.contains("certificate") && stderr.contains("CA"), "unclear refusal:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn garbage_from_an_authenticated_peer_stops_the_run_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    run_baton_ok(&["cluster", "init", dir.to_str().unwrap(), "--workers", "1"]);
    let save = tmp.path().join("o.safetensors");
    let coordinator = start_coordinator(&dir, &save, "1");
    let identity = Identity::load(&dir, &cluster::worker_name(0)).unwrap();
    let node = Node::start("127.0.0.1:0".parse().unwrap(), identity, cluster::net_config()).unwrap();
    let (peer, _) = node.connect(coordinator.addr.parse().unwrap()).unwrap();
    node.send(peer, Lane::Control, bytes::Bytes::from_static(&[0xAB; 100])).unwrap();
    let (ok, stderr) = finish(coordinator, Duration::from_secs(30));
    assert!(!ok, "the coordinator accepted garbage");
    assert!(stderr.contains("invalid frame"), "unclear error:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!save.exists(), "a failed run wrote weights");
    // The coordinator closed the connection rather than hanging.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match node.events().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Disconnected { .. }) => break,
            Ok(_) => continue,
            Err(e) => panic!("no disconnect after the coordinator stopped: {e}"),
        }
    }
}
