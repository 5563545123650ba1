//! Launching a whole job on this machine: an ephemeral certificate
//! authority, the coordinator in this process and one worker process per
//! stage, all on loopback.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan, MigrationRecord};
use baton_transport::{ClusterCa, Node};

use super::{net_config, run_coordinator, worker_name, CoordinatorOptions, COORDINATOR_NAME};

/// A job to run on this machine.
pub struct LocalJob<'a> {
    pub plan: JobPlan,
    /// The `baton` binary to start workers with.
    pub exe: &'a Path,
    /// Kernel threads per worker process.
    pub threads_per_worker: usize,
    pub on_step: &'a mut dyn FnMut(u32, f32),
    pub on_migration: &'a mut dyn FnMut(&MigrationRecord),
}

/// Runs `job` with `job.plan.workers` worker processes and returns the outcome.
/// Worker processes are killed if anything fails.
pub fn launch_local(job: LocalJob<'_>) -> anyhow::Result<JobOutcome> {
    let dir = tempfile::Builder::new().prefix("baton-cluster-").tempdir().context("creating the cluster directory")?;
    let ca = ClusterCa::generate("baton-local").context("creating an ephemeral certificate authority")?;
    ca.save(dir.path())?;
    for w in 0..(job.plan.workers + job.plan.joins.len()) as u32 {
        ca.issue(&worker_name(w))?.save(dir.path())?;
    }
    let node = Node::start("127.0.0.1:0".parse()?, ca.issue(COORDINATOR_NAME)?, net_config())
        .context("starting the coordinator's endpoint")?;
    let coordinator = node.local_addr().to_string();
    let (exe, threads) = (job.exe, job.threads_per_worker);
    let mut spawn = |w: u32| spawn_worker(exe, dir.path(), &coordinator, w, threads);
    let mut children = Vec::new();
    for w in 0..job.plan.workers as u32 {
        match spawn(w) {
            Ok(child) => children.push(child),
            Err(e) => {
                children.iter_mut().for_each(|c| drop(c.kill()));
                return Err(e);
            }
        }
    }
    let options = CoordinatorOptions {
        on_step: job.on_step,
        on_migration: job.on_migration,
        children: &mut children,
        spawn: Some(&mut spawn),
    };
    let result = run_coordinator(&node, job.plan, options);
    // Closing our endpoint tells the lingering workers that every final
    // message was read; they exit on that.
    node.shutdown();
    match &result {
        Ok(_) => reap(&mut children, Duration::from_secs(10)),
        Err(_) => children.iter_mut().for_each(|c| drop(c.kill())),
    }
    reap(&mut children, Duration::from_secs(2));
    result
}

fn spawn_worker(exe: &Path, dir: &Path, coordinator: &str, w: u32, threads: usize) -> anyhow::Result<Child> {
    Command::new(exe)
        .args(["worker", "--coordinator", coordinator, "--id", &w.to_string()])
        .arg("--cluster-dir")
        .arg(dir)
        .args(["--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting worker {w} ({})", exe.display()))
}

/// Waits up to `patience` for the workers to exit, then kills the rest.
fn reap(children: &mut [Child], patience: Duration) {
    let deadline = Instant::now() + patience;
    for child in children.iter_mut() {
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            drop(child.kill());
            drop(child.wait());
        }
    }
}
