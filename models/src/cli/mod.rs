//! Command-line front end. Each subcommand lives in its own module and
//! returns `anyhow::Result`; [`main`] turns an error into a message and a
//! non-zero exit status.

mod admin;
mod bench;
mod cluster;
mod demo;
mod device;
mod eval;
mod plot;
mod preempt;
mod preflight;
mod progress;
mod report;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// baton: pipeline-parallel training whose tape can move between machines.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about = "baton: pipeline-parallel training whose tape can move between machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (one process for now) and save its final weights.
    Train(train::TrainArgs),
    /// Run the seed scenario with embedded defaults: train mlp12 briefly,
    /// then move the tape of layers 4-7 and check backward there is bit-identical.
    Demo(demo::DemoArgs),
    /// Benchmarks (step, transport, pipeline, migrate): runs `baton-bench`, built by `cargo build -p baton-benches`.
    Bench(bench::BenchArgs),
    /// Run one worker of a job (started by `baton train`, or by hand against `baton coordinator`).
    Worker(cluster::WorkerArgs),
    /// Coordinate a job whose workers run on other machines (`baton worker`).
    Coordinator(cluster::CoordinatorArgs),
    /// Preempt a worker of a running job: it ships its layers to the others
    /// and leaves (as the cluster's `admin`).
    Preempt(admin::PreemptArgs),
    /// Cluster set-up: certificates for coordinator, workers and admin.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Parses the command line, runs the command, and maps errors to exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // Before any kernel thread exists: freed buffers are reused, not unmapped.
    baton_kernels::memory::keep_freed_memory();
    // BATON_KERNEL_ISA: an unknown path, or one this CPU lacks, is an error
    // before any work (kernels would otherwise panic on first use).
    if let Err(e) = baton_kernels::isa::init() {
        eprintln!("error: BATON_KERNEL_ISA: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Worker(args) => cluster::run_worker(args),
        Command::Coordinator(args) => cluster::run_coordinator(args),
        Command::Cluster(cmd) => cluster::run_cluster(cmd),
        Command::Preempt(args) => admin::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            // A coordinator stopped by a signal exits as 128 + its number.
            let interrupted = e.chain().find_map(|c| {
                c.downcast_ref::<baton_models::cluster::lifetime::Interrupted>()
                    .or_else(|| c.downcast_ref::<baton_models::cluster::Error>().and_then(|e| e.interrupted()))
            });
            interrupted.map_or(ExitCode::FAILURE, |i| ExitCode::from(i.exit_code()))
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text
/// the message before it already contains (library errors that print their
/// source would otherwise repeat it).
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut last = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !last.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        last = message;
    }
    text
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings only).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

/// Sets the kernel thread count from `--threads`, else from `BATON_THREADS`
/// when it is set and not empty: a value that is not a positive number is an
/// error either way (the kernels alone would ignore a bad `BATON_THREADS`).
fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    use anyhow::Context;
    use baton_kernels::threads::{set_num_threads, THREADS_ENV};
    if let Some(n) = threads {
        return set_num_threads(n).with_context(|| format!("--threads {n}"));
    }
    let value = match std::env::var(THREADS_ENV) {
        Ok(value) if !value.trim().is_empty() => value,
        // Unset, or set to nothing (`BATON_THREADS= baton ...`): the default.
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(()),
        Err(std::env::VarError::NotUnicode(v)) => anyhow::bail!("{THREADS_ENV}={v:?}: not a number of threads"),
    };
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{THREADS_ENV}={value:?}: expected a positive whole number of kernel threads"))?;
    set_num_threads(n).with_context(|| format!("{THREADS_ENV}={value}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn train_accepts_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "baton",
            "train",
            "--model",
            "mlp12",
            "--init",
            "w.safetensors",
            "--data",
            "d.safetensors",
            "--steps",
            "6",
            "--microbatches",
            "4",
            "--optimizer",
            "sgd:lr=0.05,momentum=0.9",
            "--workers",
            "3",
            "--schedule",
            "gpipe",
            "--preempt",
            "1@2:5,grace=120s",
            "--preempt",
            "2@3:1",
            "--join",
            "3:4",
            "--save",
            "out.safetensors",
            "--report",
            "r.json",
        ]);
        assert!(cli.is_ok(), "{}", cli.unwrap_err());
    }

    #[test]
    fn unknown_optimizer_names_the_flag() {
        let err = Cli::try_parse_from(["baton", "train", "--optimizer", "rmsprop:lr=1", "--save", "o"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--optimizer") && text.contains("rmsprop"), "{text}");
    }
}
