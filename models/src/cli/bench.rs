//! `baton bench ...`: a thin entry point to the bench harness, which lives
//! in `benches/` (the `baton-bench` binary of the baton-benches crate; it
//! depends on this crate, so this binary cannot link it). Runs the
//! `baton-bench` found next to this executable with the same arguments, or
//! fails saying how to build it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

/// The harness binary's name.
const BENCH_EXE: &str = "baton-bench";

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// The bench and its flags, passed to `baton-bench` (`baton bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "BENCH [FLAGS]")]
    args: Vec<OsString>,
}

/// `baton-bench` in `dir`, or an error naming where it was looked for and
/// the command that builds it.
fn bench_exe(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{BENCH_EXE}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "`baton bench` runs {}, which is not built: build it with `cargo build --release -p baton-benches` \
             (or run `cargo run --release -p baton-benches -- BENCH ...` directly)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `baton-bench ARGS` in place of this process (on Unix; elsewhere as
/// a child whose exit status becomes this one's).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("locating the baton binary")?;
    let exe = bench_exe(me.parent().unwrap_or(Path::new(".")))?;
    let mut command = Command::new(&exe);
    command.args(&args.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        Err(error).with_context(|| format!("running {}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command.status().with_context(|| format!("running {}", exe.display()))?;
        std::process::exit(status.code().unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_harness_names_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        let text = bench_exe(dir.path()).unwrap_err().to_string();
        assert!(text.contains("baton-bench") && text.contains("cargo build --release -p baton-benches"), "{text}");
        let exe = dir.path().join(format!("{BENCH_EXE}{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&exe, b"").unwrap();
        assert_eq!(bench_exe(dir.path()).unwrap(), exe);
    }
}
