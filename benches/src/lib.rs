//! baton's bench harness: the `baton-bench` binary's subcommands, each
//! printing a table (and optionally JSON), and the set-up the criterion
//! benches in `benches/benches/` share with them.
//!
//! - `step`: one training step of two MLPs and two GPTs, next to PyTorch when available.
//! - `transport`: QUIC bulk throughput on loopback next to plain TCP.
//! - `pipeline`: total CPU per training step on 3 worker processes against
//!   one process, by differencing runs of the `baton` binary (found next to
//!   `baton-bench`, see [`sibling_exe`]).
//! - `migrate`: notice to resumed training when a worker's layers move:
//!   segment shipping vs recompute vs checkpoint-restart vs raw transfers.
//! - `crash`: a worker SIGKILLed without notice: recovery from replicas vs
//!   a restart from the last checkpoint, and what replicas cost in memory.
//!
//! Child processes a bench needs (the restarted worker of `migrate`) are
//! hidden subcommands of `baton-bench` itself, started through
//! [`std::env::current_exe`]; nothing of the harness ships in `baton`.

mod crash;
pub mod migrate;
mod pipeline;
mod step;
mod transport;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

pub use migrate::{restart, RestartArgs};
pub use transport::{quic_throughput, tcp_throughput};

use baton_engine::{Batch, Optimizer, Trainer};
use baton_models::{io, spec};

/// The benches, as `baton-bench` (and `baton bench`, which runs it) names them.
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

/// The executable `name` in the directory of the running one (where cargo
/// puts every binary of the workspace), or an error saying how to build it.
pub fn sibling_exe(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let path = exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        anyhow::bail!(
            "no `{name}` binary next to {}: build it first, in the same profile \
             (`cargo build --release -p baton-models` for a release build)",
            exe.display()
        );
    }
    Ok(path)
}

/// A trainer for a plain `depth`-layer MLP of `width` with Adam, and one
/// synthetic batch of `batch` rows (the criterion step bench).
pub fn mlp_trainer(width: usize, depth: usize, batch: usize) -> (Trainer, Batch) {
    let model = spec::mlp(width, depth);
    let params = baton_engine::init::init_params(&model.param_specs(), 0);
    let data = io::synthetic_data(&model, 1, batch, 0).remove(0);
    let optimizer = Optimizer::new("adam:lr=1e-4".parse().expect("valid optimizer"));
    (Trainer::new(model, params, optimizer).expect("parameters fit the model"), data)
}

/// Multiply-adds of one forward+backward of a plain MLP, times two (flops).
pub fn mlp_step_flops(width: usize, depth: usize, batch: usize) -> u64 {
    6 * (batch * width * width * depth) as u64
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

    /// `BenchCommand` as a subcommand, as `baton-bench` sees it.
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
    fn a_missing_sibling_names_itself_and_the_build_command() {
        let text = sibling_exe("no-such-baton-binary").unwrap_err().to_string();
        assert!(text.contains("no `no-such-baton-binary` binary next to"), "{text}");
        assert!(text.contains("cargo build --release -p baton-models"), "{text}");
        let me = std::env::current_exe().unwrap();
        let name = me.file_stem().unwrap().to_str().unwrap();
        assert_eq!(sibling_exe(name).unwrap(), me, "the running test binary is its own sibling");
    }

    #[test]
    fn every_subcommand_accepts_its_flags() {
        for argv in [
            &["bench", "step", "--steps", "2", "--threads-list", "1,2", "--rounds", "2", "--only", "W=1024"][..],
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
