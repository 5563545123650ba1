//! `baton bench`: measurements printed as tables (and optionally JSON).
//!
//! - `step`: one training step of two MLPs and two GPTs, next to PyTorch when available.
//! - `transport`: QUIC bulk throughput on loopback next to plain TCP.
//! - `pipeline`: total CPU per training step on 3 worker processes against
//!   one process, by differencing runs of the `baton` binary itself.
//! - `migrate`: notice to resumed training when a worker's layers move:
//!   segment shipping vs recompute vs checkpoint-restart vs raw transfers.
//! - `crash`: a worker SIGKILLed without notice: recovery from replicas vs
//!   a restart from the last checkpoint, and what replicas cost in memory.

mod crash;
mod migrate;
mod pipeline;
mod step;
mod transport;

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

pub use migrate::{restart, RestartArgs};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training-step time of MLPs and GPTs (forward, backward, Adam; M=1), vs PyTorch if available.
    Step(step::StepArgs),
    /// Loopback MB/s of one QUIC bulk frame (the cluster's settings) vs plain TCP.
    Transport(transport::TransportArgs),
    /// Total CPU per training step on 3 worker processes vs one process.
    Pipeline(pipeline::PipelineArgs),
    /// Notice to resumed training when 4 layers move: segments vs recompute vs checkpoint-restart vs raw QUIC/TCP.
    Migrate(migrate::MigrateArgs),
    /// A worker SIGKILLed mid-run: detection, restore and resume from replicas vs a restart from the last checkpoint.
    Crash(crash::CrashArgs),
}

/// Runs a bench subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Step(args) => step::run(args),
        BenchCommand::Transport(args) => transport::run(args),
        BenchCommand::Pipeline(args) => pipeline::run(args),
        BenchCommand::Migrate(args) => migrate::run(args),
        BenchCommand::Crash(args) => crash::run(args),
    }
}

/// The middle value after sorting (the upper one of an even count); NaN when empty.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Writes `value` as pretty JSON to the file given with `--json`.
fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("--json {}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `BenchCommand` as the `baton bench` subcommand sees it.
    #[derive(Debug, Parser)]
    struct Bench {
        #[command(subcommand)]
        command: BenchCommand,
    }

    #[test]
    fn median_takes_the_middle_and_tolerates_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0]), 4.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn every_subcommand_accepts_its_flags() {
        for argv in [
            &["bench", "step", "--steps", "2", "--threads-list", "1,2"][..],
            &["bench", "transport", "--sizes", "1,16", "--json", "t.json"],
            &["bench", "pipeline", "--steps", "3", "--json", "p.json"],
            &["bench", "migrate", "--widths", "64,256", "--in-flight", "1,4", "--repeats", "2", "--json", "m.json"],
            &["bench", "migrate", "--rows", "8", "--dir", "/tmp"],
            &["bench", "crash", "--width", "64", "--steps", "60", "--kill-after", "30", "--json", "c.json"],
        ] {
            let parsed = Bench::try_parse_from(argv);
            assert!(parsed.is_ok(), "{argv:?}: {}", parsed.unwrap_err());
        }
    }
}
