//! `baton worker`, `baton coordinator` and `baton cluster init`: the
//! pieces of a job that runs across machines.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use baton_models::cluster::{self, worker_name, ADMIN_NAME, COORDINATOR_NAME};
pub use baton_models::runtime::WorkerArgs;
use baton_transport::{Identity, Node};
use clap::{Args, Subcommand};

use super::train::{self, TrainArgs};

/// Runs `baton worker`: the built-in layer types only.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    Ok(baton_models::runtime::run_worker(args, baton_models::spec::Registry::new())?)
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
