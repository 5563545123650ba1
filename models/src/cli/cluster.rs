//! `baton worker`, `baton coordinator` and `baton cluster init`: the
//! pieces of a job that runs across machines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baton_engine::{Backend, Device};
use baton_models::cluster::notice::{self, NoticeConfig};
use baton_models::cluster::{self, worker_name, WorkerOptions, ADMIN_NAME, COORDINATOR_NAME};
use baton_transport::{Identity, Node};
use clap::{Args, Subcommand};

use super::preempt;
use super::train::{self, TrainArgs};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's address.
    #[arg(long, value_name = "ADDR")]
    coordinator: SocketAddr,
    /// This worker's number (0..W); its certificate is `worker-ID` in --cluster-dir.
    #[arg(long, value_name = "ID")]
    id: u32,
    /// Directory written by `baton cluster init` (the CA and node certificates).
    #[arg(long, value_name = "DIR", required_unless_present = "identity_stdin")]
    cluster_dir: Option<PathBuf>,
    /// Read this worker's identity (certificate, key, CA certificate) from
    /// stdin instead of a directory, and exit once stdin closes: how `baton
    /// train` hands identities to its local workers without writing keys.
    #[arg(long, hide = true, conflicts_with = "cluster_dir")]
    identity_stdin: bool,
    /// Address to listen on for peer workers.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address peers should dial, if not the listening one (e.g. behind NAT).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Kernel threads (default: BATON_THREADS or all cores).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Where this worker computes: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    /// Checked before anything else: no GPU here is an immediate error.
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    device: Device,
    #[command(flatten)]
    notices: NoticeArgs,
}

/// Where a worker learns it will be preempted. SIGTERM always counts.
#[derive(Debug, Args)]
pub struct NoticeArgs {
    /// Grace announced on SIGTERM: how long until the SIGKILL that follows it.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = preempt::duration)]
    grace: Duration,
    /// Poll AWS IMDSv2 for a spot interruption [URL default: http://169.254.169.254].
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = notice::AWS_METADATA)]
    aws_metadata: Option<String>,
    /// Poll the GCP metadata server for preemption [URL default: http://metadata.google.internal].
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = notice::GCP_METADATA)]
    gcp_metadata: Option<String>,
    /// Poll Azure Scheduled Events for a Preempt event [URL default: http://169.254.169.254].
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = notice::AZURE_METADATA)]
    azure_metadata: Option<String>,
    /// Time between two polls of a metadata service.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = preempt::duration)]
    metadata_poll: Duration,
}

impl NoticeArgs {
    fn config(&self) -> NoticeConfig {
        NoticeConfig {
            grace: self.grace,
            sigterm: true,
            aws: self.aws_metadata.clone(),
            gcp: self.gcp_metadata.clone(),
            azure: self.azure_metadata.clone(),
            poll_interval: self.metadata_poll,
        }
    }
}

/// Runs one worker until the coordinator finishes the job.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    // First of all: a worker that cannot compute should not join a job.
    Backend::open(args.device).with_context(|| format!("--device {}", args.device))?;
    super::set_threads(args.threads)?;
    // First, so that a SIGTERM while connecting is a notice, not an exit.
    let notices = notice::spawn_sources(&args.notices.config()).context("starting the preemption notice sources")?;
    let identity = worker_identity(&args)?;
    let node = Node::start(args.listen, identity, cluster::net_config())
        .with_context(|| format!("--listen {}", args.listen))?;
    if args.cluster_dir.is_some() {
        eprintln!("worker {} listening on {} for its peers", args.id, node.local_addr());
    }
    let options = WorkerOptions {
        id: args.id,
        coordinator: args.coordinator,
        advertise: args.advertise,
        notices: Some(notices),
        device: args.device,
    };
    cluster::run_worker(&node, options).with_context(|| format!("worker {}", args.id))
}

/// The worker's identity: from --cluster-dir, or handed over on stdin.
fn worker_identity(args: &WorkerArgs) -> anyhow::Result<Identity> {
    let name = worker_name(args.id);
    let identity = match &args.cluster_dir {
        Some(dir) => Identity::load(dir, &name)
            .with_context(|| format!("--cluster-dir {}: worker {}'s certificate", dir.display(), args.id))?,
        None => cluster::handoff::receive_identity(&format!("worker {}", args.id)).context("--identity-stdin")?,
    };
    if identity.name() != name {
        anyhow::bail!("--identity-stdin: the identity is `{}`, not `{name}` (--id {})", identity.name(), args.id);
    }
    Ok(identity)
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Address to listen on for workers.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// Directory written by `baton cluster init`.
    #[arg(long, value_name = "DIR")]
    cluster_dir: PathBuf,
}

/// Runs a job whose workers are started by hand (`baton worker`) elsewhere.
pub fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let identity = Identity::load(&args.cluster_dir, COORDINATOR_NAME)
        .with_context(|| format!("--cluster-dir {}: the coordinator's certificate", args.cluster_dir.display()))?;
    let node = Node::start(args.listen, identity, cluster::net_config())
        .with_context(|| format!("--listen {}", args.listen))?;
    eprintln!(
        "coordinator listening on {}; start each worker with: baton worker --coordinator {} --id I --cluster-dir DIR",
        node.local_addr(),
        node.local_addr()
    );
    eprintln!(
        "preempt a worker of this job with: baton preempt --coordinator {} --cluster-dir DIR --worker N",
        node.local_addr()
    );
    train::run_with(args.train, train::Launch::Remote(&node))
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Writes a certificate authority and certificates for the coordinator,
    /// `--workers` workers and `admin` (for `baton preempt`) into DIR (copy
    /// it to every machine; keep `admin.key.pem` where admins work).
    Init {
        dir: PathBuf,
        #[arg(long, value_name = "W", default_value_t = 3)]
        workers: u32,
    },
}

pub fn run_cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init { dir, workers } => {
            let names: Vec<String> = [COORDINATOR_NAME, ADMIN_NAME]
                .map(String::from)
                .into_iter()
                .chain((0..workers).map(worker_name))
                .collect();
            baton_transport::init_cluster(&dir, &names)
                .with_context(|| format!("baton cluster init {}", dir.display()))?;
            eprintln!(
                "wrote a certificate authority and certificates for the coordinator, {workers} workers and {ADMIN_NAME} to {}",
                dir.display()
            );
            Ok(())
        }
    }
}
