//! Launching a whole job on this machine: an ephemeral certificate
//! authority held in this process's memory only, the coordinator in this
//! process and one worker process per stage, all on loopback. Workers get
//! their identities through a pipe ([`super::handoff`]).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::{Context, Error, Result};
use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan, MigrationRecord};
use baton_engine::Device;
use baton_kernels::Isa;
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
    /// Called after every evaluation with (step, held-out loss).
    pub on_eval: Option<&'a mut dyn FnMut(u32, f32)>,
    /// Where to write an admin identity of the ephemeral CA and the
    /// coordinator's address, for `baton preempt --admin-dir` (see
    /// [`super::admin::write_admin_dir`]).
    pub admin_dir: Option<&'a Path>,
    /// The CPU kernel path of each worker (`BATON_KERNEL_ISA` in its
    /// environment), by worker number; one entry names every worker's, none
    /// leaves each the coordinator's. A mixed fleet on one machine.
    pub kernel_isas: Vec<Isa>,
    /// `--checkpoint-dir`: where the checkpoints the workers write are committed.
    pub checkpoints: Option<crate::checkpoint::DiskStore>,
}

/// Runs `job` with `job.plan.workers` worker processes and returns the outcome.
/// Worker processes are killed if anything fails. Workers compute on their
/// default device (the CPU).
pub fn launch_local(job: LocalJob<'_>) -> Result<JobOutcome> {
    launch_local_on(job, &[])
}

/// Like [`launch_local`], with worker `w` started with `--device
/// devices[w]`: one device names every worker's (joiners included), none
/// leaves each worker its default. The caller checks the count and that
/// the devices can be opened ([`launch_local`] cannot tell which failure
/// of a worker process was its device).
pub fn launch_local_on(job: LocalJob<'_>, devices: &[Device]) -> Result<JobOutcome> {
    // Before any worker starts: from here on a Ctrl-C stops the job in order.
    super::lifetime::install()?;
    // The CA lives in this process only: each worker gets its identity
    // through its stdin (see [`super::handoff`]), so no key is on disk.
    let ca = ClusterCa::generate("baton-local").what("creating an ephemeral certificate authority")?;
    let node =
        Node::start("127.0.0.1:0".parse().what("the loopback address")?, ca.issue(COORDINATOR_NAME)?, net_config())
            .what("starting the coordinator's endpoint")?;
    let coordinator = node.local_addr().to_string();
    if let Some(admin_dir) = job.admin_dir {
        super::admin::write_admin_dir(&ca, node.local_addr(), admin_dir)?;
        eprintln!(
            "admin identity written to {0}: preempt a worker with `baton preempt --admin-dir {0} --worker N [--grace 120s]`",
            admin_dir.display()
        );
    }
    let (exe, threads, isas) = (job.exe, job.threads_per_worker, job.kernel_isas.clone());
    let device_of = |w: u32| if devices.len() == 1 { devices.first() } else { devices.get(w as usize) };
    let isa_of = move |w: u32| if isas.len() == 1 { isas.first().copied() } else { isas.get(w as usize).copied() };
    let mut spawn = |w: u32| {
        let mut command = worker_command(exe, &coordinator, (w, device_of(w).copied()), threads);
        if let Some(isa) = isa_of(w) {
            command.env(KERNEL_ISA_ENV, isa.to_string());
        }
        spawn_worker(command, exe, &ca, w)
    };
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
        // Re-wrapped so the callback's lifetime shortens to this call's.
        on_eval: match job.on_eval {
            Some(on_eval) => Some(on_eval),
            None => None,
        },
        children: &mut children,
        spawn: Some(&mut spawn),
        checkpoints: job.checkpoints,
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

/// Starts worker `w` with `--identity-stdin` and writes its identity, issued
/// by `ca`, into the pipe (which stays open while the `Child` lives).
/// The variable that selects a process's CPU kernel path.
const KERNEL_ISA_ENV: &str = "BATON_KERNEL_ISA";

/// `exe worker ...` for worker `w`, reading its identity from stdin.
fn worker_command(exe: &Path, coordinator: &str, (w, device): (u32, Option<Device>), threads: usize) -> Command {
    let mut command = Command::new(exe);
    command.args(["worker", "--coordinator", coordinator, "--id", &w.to_string()]);
    if let Some(device) = device {
        command.args(["--device", &device.to_string()]);
    }
    // Its own process group: a Ctrl-C in the terminal reaches only the
    // coordinator, which stops the workers itself.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.arg("--identity-stdin").args(["--threads", &threads.to_string()]).stdin(Stdio::piped());
    command
}

/// Starts `command` (worker `w`) and hands it its identity on stdin.
fn spawn_worker(mut command: Command, exe: &Path, ca: &ClusterCa, w: u32) -> Result<Child> {
    let identity = ca.issue(&worker_name(w)).what_with(|| format!("issuing worker {w}'s certificate"))?;
    let mut child = command.spawn().what_with(|| format!("starting worker {w} ({})", exe.display()))?;
    if let Err(e) = super::handoff::send_identity(&mut child, &identity) {
        drop(child.kill());
        drop(child.wait());
        return Err(Error::Context { what: format!("worker {w}"), source: Box::new(e) });
    }
    Ok(child)
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
