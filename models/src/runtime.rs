//! The runtime a user's own binary embeds, so that layers it defines in
//! Rust train across processes exactly like the built-ins.
//!
//! The binary is both coordinator and workers: it launches itself as the
//! worker processes (the way candle's `llama_multiprocess` re-runs itself
//! with `--rank`). A worker process is started as `<exe> worker --coordinator
//! ADDR --id I --cluster-dir DIR ...` (the flags of `baton worker`);
//! [`worker_if_requested`] recognises that and runs the worker with the
//! binary's own layer [`Registry`]. Everything else (the coordinator, local
//! launches, preemption, joins) is [`crate::cluster`] with
//! [`crate::cluster::LocalJob`] naming the binary itself as the executable.
//!
//! See `models/examples/custom_layer.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::error::ensure;
use crate::cluster::error::{refuse as bail, Context, Error, Result};
use baton_engine::{Backend, Device};
use baton_transport::{Identity, Node};
use clap::{Args, Parser};

use crate::cluster::notice::{self, NoticeConfig};
use crate::cluster::{self, worker_name, WorkerOptions};
use crate::spec::Registry;

/// If this process was started as a worker (`<exe> worker ...`), runs the
/// worker with `layers` and returns its result; otherwise returns None and
/// the caller goes on as the coordinator. Either way it first makes the
/// allocator keep freed buffers ([`baton_kernels::memory::keep_freed_memory`]),
/// as `baton` does: call it first thing in `main`.
pub fn worker_if_requested(layers: &Registry) -> Option<Result<()>> {
    baton_kernels::memory::keep_freed_memory();
    let mut args = std::env::args();
    let exe = args.next().unwrap_or_default();
    if args.next().as_deref() != Some("worker") {
        return None;
    }
    let parsed = WorkerCommand::try_parse_from(std::iter::once(exe).chain(args));
    Some(match parsed {
        Ok(command) => run_worker(command.args, layers.clone()),
        Err(e) => Err(Error::Config(e.to_string())),
    })
}

/// `<exe> worker` as [`worker_if_requested`] parses it.
#[derive(Debug, Parser)]
struct WorkerCommand {
    #[command(flatten)]
    args: WorkerArgs,
}

/// A duration like `120s`, `500ms` or `2m`.
pub fn duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let value: f64 = digits.parse().what_with(|| format!("`{text}` is not a duration like 120s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        other => bail!("`{text}`: unknown unit `{other}` (ms, s, m)"),
    };
    ensure!(seconds.is_finite() && seconds > 0.0, "`{text}`: a grace must be positive");
    Ok(Duration::from_secs_f64(seconds))
}

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
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = duration)]
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
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
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

/// Runs one worker until the coordinator finishes the job; the job's spec
/// may name `layers`' types as well as the built-ins.
pub fn run_worker(args: WorkerArgs, layers: Registry) -> Result<()> {
    // First of all: a worker that cannot compute should not join a job.
    Backend::open(args.device).what_with(|| format!("--device {}", args.device))?;
    if let Some(n) = args.threads {
        baton_kernels::threads::set_num_threads(n).what_with(|| format!("--threads {n}"))?;
    }
    // First, so that a SIGTERM while connecting is a notice, not an exit.
    let notices = notice::spawn_sources(&args.notices.config()).what("starting the preemption notice sources")?;
    let identity = worker_identity(&args)?;
    let node =
        Node::start(args.listen, identity, cluster::net_config()).what_with(|| format!("--listen {}", args.listen))?;
    if args.cluster_dir.is_some() {
        eprintln!("worker {} listening on {} for its peers", args.id, node.local_addr());
    }
    let options = WorkerOptions {
        id: args.id,
        coordinator: args.coordinator,
        advertise: args.advertise,
        notices: Some(notices),
        device: args.device,
        layers,
    };
    cluster::run_worker(&node, options).what_with(|| format!("worker {}", args.id))
}

/// The worker's identity: from --cluster-dir, or handed over on stdin.
fn worker_identity(args: &WorkerArgs) -> Result<Identity> {
    let name = worker_name(args.id);
    let identity = match &args.cluster_dir {
        Some(dir) => Identity::load(dir, &name)
            .what_with(|| format!("--cluster-dir {}: worker {}'s certificate", dir.display(), args.id))?,
        None => cluster::handoff::receive_identity(&format!("worker {}", args.id)).what("--identity-stdin")?,
    };
    if identity.name() != name {
        bail!("--identity-stdin: the identity is `{}`, not `{name}` (--id {})", identity.name(), args.id);
    }
    Ok(identity)
}
