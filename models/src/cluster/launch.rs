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
    for w in 0..job.plan.workers as u32 {
        ca.issue(&worker_name(w))?.save(dir.path())?;
    }
    let node = Node::start("127.0.0.1:0".parse()?, ca.issue(COORDINATOR_NAME)?, net_config())
        .context("starting the coordinator's endpoint")?;
    let mut children = spawn_workers(&job, dir.path(), &node)?;
    let options = CoordinatorOptions { on_step: job.on_step, on_migration: job.on_migration, children: &mut children };
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

fn spawn_workers(job: &LocalJob<'_>, dir: &Path, node: &Node) -> anyhow::Result<Vec<Child>> {
    let coordinator = node.local_addr().to_string();
    let mut children = Vec::new();
    for w in 0..job.plan.workers {
        let child = Command::new(job.exe)
            .args(["worker", "--coordinator", &coordinator, "--id", &w.to_string()])
            .arg("--cluster-dir")
            .arg(dir)
            .args(["--threads", &job.threads_per_worker.to_string()])
            .stdin(Stdio::null())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                children.iter_mut().for_each(|c| drop(c.kill()));
                return Err(e).with_context(|| format!("starting worker {w} ({})", job.exe.display()));
            }
        }
    }
    Ok(children)
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
