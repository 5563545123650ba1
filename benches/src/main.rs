//! `baton-bench`: baton's benchmarks, each printing a table (`--json FILE`
//! for the same as JSON). `cargo run --release -p baton-benches -- --help`
//! lists them; `baton bench ...` runs this binary when it sits next to
//! `baton`. Errors print as one line and exit with status 1.

use std::process::ExitCode;

use baton_benches::{BenchCommand, RestartArgs};
use clap::{Parser, Subcommand};

/// Large blocks on huge pages, as in `baton` (see [`baton_models::alloc`]).
#[global_allocator]
static ALLOC: baton_models::alloc::HugePages = baton_models::alloc::HugePages;

/// baton's benchmarks: training step, transport, pipeline overhead, migration.
#[derive(Debug, Parser)]
#[command(name = "baton-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Bench(BenchCommand),
    /// Restore layers from a checkpoint and recompute their in-flight
    /// forwards, then exit (the restarted worker of `migrate`, started by it).
    #[command(hide = true)]
    Restart(RestartArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = baton_kernels::isa::init().map_err(|e| anyhow::anyhow!("BATON_KERNEL_ISA: {e}")).and_then(|_isa| {
        match cli.command {
            Command::Bench(cmd) => baton_benches::run(cmd),
            Command::Restart(args) => baton_benches::restart(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_restarted_worker_is_a_hidden_subcommand() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["baton-bench", "restart", "c.safetensors", "--connect", "127.0.0.1:1"]);
        assert!(cli.is_err(), "--connect requires --cluster-dir");
        let cli = Cli::try_parse_from(["baton-bench", "restart", "c.safetensors"]).unwrap();
        assert!(matches!(cli.command, Command::Restart(_)));
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("\n  migrate ") && !help.contains("\n  restart "), "{help}");
    }
}
