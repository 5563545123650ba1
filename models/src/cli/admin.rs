//! `baton preempt`: tells the coordinator of a running job to preempt one
//! of its workers, as the cluster's `admin`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baton_models::cluster::{admin, ADMIN_NAME};
use baton_transport::Identity;
use clap::Args;

use super::preempt;

/// The worker, its grace, and which job to reach: a local job's admin
/// directory, or a coordinator and a cluster directory (clap enforces one).
#[derive(Debug, Args)]
pub struct PreemptArgs {
    /// The worker to preempt (its number in the job).
    #[arg(long, value_name = "N")]
    worker: u32,
    /// How long the worker has before it is killed: it stops at its next
    /// action boundary and ships its layers to the others meanwhile.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = preempt::duration)]
    grace: Duration,
    /// The directory `baton train --admin-dir DIR` wrote (the job's admin
    /// identity and `coordinator.addr`).
    #[arg(long, value_name = "DIR", required_unless_present = "coordinator", conflicts_with_all = ["coordinator", "cluster_dir"])]
    admin_dir: Option<PathBuf>,
    /// The coordinator's address (a job of `baton coordinator`); needs --cluster-dir.
    #[arg(long, value_name = "HOST:PORT", requires = "cluster_dir")]
    coordinator: Option<String>,
    /// Directory written by `baton cluster init`, holding the `admin` certificate.
    #[arg(long, value_name = "DIR", requires = "coordinator")]
    cluster_dir: Option<PathBuf>,
    /// How long to wait for the coordinator's answer (and to connect).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = preempt::duration)]
    timeout: Duration,
}

/// Sends the request and waits for the answer: Ok once the coordinator
/// accepted it, an error with its reason if it refused.
pub fn run(args: PreemptArgs) -> anyhow::Result<()> {
    let (identity, coordinator) = match (&args.admin_dir, &args.coordinator, &args.cluster_dir) {
        (Some(dir), _, _) => admin::read_admin_dir(dir).with_context(|| format!("--admin-dir {}", dir.display()))?,
        (None, Some(addr), Some(dir)) => {
            let identity = Identity::load(dir, ADMIN_NAME).with_context(|| {
                format!(
                    "--cluster-dir {}: the `{ADMIN_NAME}` certificate (written by `baton cluster init`)",
                    dir.display()
                )
            })?;
            (identity, admin::resolve(addr).context("--coordinator")?)
        }
        _ => anyhow::bail!("give --admin-dir DIR, or --coordinator HOST:PORT and --cluster-dir DIR"),
    };
    admin::request_preempt(identity, coordinator, (args.worker, args.grace), args.timeout)
        .with_context(|| format!("preempting worker {}", args.worker))?;
    println!("worker {} preempted with grace {:?}", args.worker, args.grace);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::Cli;

    #[test]
    fn preempt_accepts_either_way_to_reach_a_job() {
        let parse = |args: &[&str]| Cli::try_parse_from(["baton", "preempt"].iter().chain(args));
        assert!(parse(&["--admin-dir", "d", "--worker", "1", "--grace", "60s"]).is_ok());
        assert!(parse(&["--coordinator", "h:7070", "--cluster-dir", "d", "--worker", "2", "--timeout", "5s"]).is_ok());
        for bad in [
            &["--worker", "1"][..],
            &["--admin-dir", "d"],
            &["--admin-dir", "d", "--coordinator", "h:1", "--cluster-dir", "d", "--worker", "1"],
            &["--cluster-dir", "d", "--worker", "1"],
            &["--admin-dir", "d", "--worker", "1", "--grace", "0s"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
