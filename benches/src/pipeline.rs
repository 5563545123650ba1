//! `baton-bench pipeline`: what a training step costs on 3 worker processes
//! against one process, for mlp12 and a 12-layer MLP of width 1024.
//!
//! Cost is total CPU time (user + system) of `baton train` (the `baton`
//! binary next to `baton-bench`, see [`crate::sibling_exe`]) run as a child of
//! this process: `getrusage(RUSAGE_CHILDREN)` before and after waiting for
//! it. That counts the coordinator and the worker processes it reaps, and
//! compares fairly on a machine with fewer cores than processes, where wall
//! time does not. Each configuration trains N and 3N steps and the table
//! shows `(cost(3N) - cost(N)) / 2N`: process start-up, certificates,
//! connection set-up, initialisation, reading the data file and saving the
//! weights cost the same in both runs and cancel. Every process runs one
//! kernel thread (`--threads 1`), so both sides do the same arithmetic on
//! the same number of threads. The four runs are repeated for several
//! rounds; the table shows medians and the range of the per-round ratios,
//! because on a shared machine one round can be 20% off.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use baton_engine::init::SplitMix64;
use baton_engine::{ParamStore, Tensor};
use baton_models::{io, spec};
use clap::Args;
use serde::Serialize;

use super::{median, write_json};

/// Worker processes of the pipelined side.
const WORKERS: usize = 3;
const MICROBATCHES: usize = 4;
const OPTIMIZER: &str = "adam:lr=1e-4";
/// mlp12 steps cost ~1/500 of a W=1024 step: it trains this many times as many.
const SMALL_FACTOR: usize = 50;
/// Issue 12's targets for total CPU of the pipelined run over one process:
/// mlp12's steps are small, so its messages weigh more than W=1024's.
const SMALL_TARGET: f64 = 1.5;
const BIG_TARGET: f64 = 1.05;

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// N: every configuration of the W=1024 model trains N and then 3N steps
    /// (mlp12 50x as many); the difference is divided by 2N.
    #[arg(long, value_name = "N", default_value_t = 8)]
    steps: usize,
    /// How many times to repeat the four runs of each model.
    #[arg(long, value_name = "R", default_value_t = 3)]
    rounds: usize,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// One benchmarked model: `spec::mlp_json(width, layers)` (input and output
/// width too, relu, mse) trained on batches of `batch` rows.
#[derive(Clone, Debug, Serialize)]
struct Case {
    name: &'static str,
    width: usize,
    layers: usize,
    batch: usize,
    /// N: the short run; the long run trains 3N.
    steps: usize,
    /// The target for total CPU on the workers over one process.
    target_cpu_ratio: f64,
}

/// CPU and wall seconds of one run, or of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
struct Cost {
    cpu_s: f64,
    wall_s: f64,
}

impl Cost {
    /// Cost per step of the `extra` steps `long` trained beyond `short`:
    /// whatever both runs paid regardless of their length cancels.
    fn per_step(short: Cost, long: Cost, extra: usize) -> Cost {
        let n = extra.max(1) as f64;
        Cost { cpu_s: (long.cpu_s - short.cpu_s) / n, wall_s: (long.wall_s - short.wall_s) / n }
    }
}

/// One side (one process, or the workers) of a row: both runs and the per-step cost.
#[derive(Debug, Serialize)]
struct Side {
    workers: usize,
    short: Cost,
    long: Cost,
    per_step: Cost,
}

/// Both sides of one model trained N and 3N steps, close together in time.
#[derive(Debug, Serialize)]
struct Round {
    single: Side,
    pipelined: Side,
    /// Pipelined CPU per step over single-process CPU per step.
    cpu_ratio: f64,
    /// The workers again with `--replicas off` (no replica of a
    /// neighbour's layers), run in the same round.
    unreplicated: Side,
    /// Wall time per step with replicas over without.
    replica_wall_ratio: f64,
}

impl Round {
    /// A round from its runs in the order [`measure_case`] makes them:
    /// (N, 1 process), (N, workers), (3N, 1 process), (3N, workers), then
    /// (N, workers) and (3N, workers) without replicas.
    fn of(runs: [Cost; 6], steps: usize) -> Round {
        let side = |workers, short: Cost, long: Cost| Side {
            workers,
            short,
            long,
            per_step: Cost::per_step(short, long, steps * 2),
        };
        let single = side(1, runs[0], runs[2]);
        let pipelined = side(WORKERS, runs[1], runs[3]);
        let unreplicated = side(WORKERS, runs[4], runs[5]);
        Round {
            cpu_ratio: pipelined.per_step.cpu_s / single.per_step.cpu_s,
            replica_wall_ratio: pipelined.per_step.wall_s / unreplicated.per_step.wall_s,
            single,
            pipelined,
            unreplicated,
        }
    }
}

/// One model: medians over its rounds.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    case: Case,
    /// Median per-step cost on one process (CPU and wall each the median).
    single: Cost,
    /// Median per-step cost on the workers.
    pipelined: Cost,
    /// Median of the rounds' CPU ratios, and the smallest and largest.
    cpu_ratio: f64,
    cpu_ratio_min: f64,
    cpu_ratio_max: f64,
    /// Median per-step cost on the workers without replicas.
    unreplicated: Cost,
    /// Median of the rounds' wall ratios, replicas on over off.
    replica_wall_ratio: f64,
    rounds: Vec<Round>,
}

impl Row {
    fn of(case: Case, rounds: Vec<Round>) -> Row {
        let mid = |f: &dyn Fn(&Round) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
        let single = Cost { cpu_s: mid(&|r| r.single.per_step.cpu_s), wall_s: mid(&|r| r.single.per_step.wall_s) };
        let pipelined =
            Cost { cpu_s: mid(&|r| r.pipelined.per_step.cpu_s), wall_s: mid(&|r| r.pipelined.per_step.wall_s) };
        let ratios = rounds.iter().map(|r| r.cpu_ratio);
        Row {
            case,
            single,
            pipelined,
            cpu_ratio: mid(&|r| r.cpu_ratio),
            cpu_ratio_min: ratios.clone().fold(f64::INFINITY, f64::min),
            cpu_ratio_max: ratios.fold(f64::NEG_INFINITY, f64::max),
            unreplicated: Cost {
                cpu_s: mid(&|r| r.unreplicated.per_step.cpu_s),
                wall_s: mid(&|r| r.unreplicated.per_step.wall_s),
            },
            replica_wall_ratio: mid(&|r| r.replica_wall_ratio),
            rounds,
        }
    }
}

/// The whole result, as written by --json.
#[derive(Debug, Serialize)]
struct Table {
    cores: usize,
    rounds: usize,
    microbatches: usize,
    optimizer: &'static str,
    kernel_threads_per_process: usize,
    rows: Vec<Row>,
}

/// Runs `baton-bench pipeline`.
pub fn run(args: PipelineArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        bail!("--steps 0: the short run needs at least one step");
    }
    if args.rounds == 0 {
        bail!("--rounds 0: measure at least one round");
    }
    let exe = super::sibling_exe("baton")?;
    let dir = tempfile::Builder::new().prefix("baton-bench-").tempdir().context("creating a scratch directory")?;
    let rows = cases(args.steps)
        .into_iter()
        .map(|case| measure_case(&exe, dir.path(), case, args.rounds))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let table = Table {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds: args.rounds,
        microbatches: MICROBATCHES,
        optimizer: OPTIMIZER,
        kernel_threads_per_process: 1,
        rows,
    };
    print_table(&table);
    if let Some(path) = &args.json {
        write_json(path, &table)?;
    }
    Ok(())
}

/// mlp12 (W=64, B=32) and the 12-layer W=1024 MLP (B=256).
fn cases(steps: usize) -> [Case; 2] {
    [
        Case {
            name: "mlp12 W=64 B=32",
            width: 64,
            layers: 12,
            batch: 32,
            steps: steps.saturating_mul(SMALL_FACTOR),
            target_cpu_ratio: SMALL_TARGET,
        },
        Case { name: "mlp W=1024 B=256", width: 1024, layers: 12, batch: 256, steps, target_cpu_ratio: BIG_TARGET },
    ]
}

/// Trains `case` for N and 3N steps on one process and on `WORKERS`,
/// `rounds` times.
fn measure_case(exe: &Path, dir: &Path, case: Case, rounds: usize) -> anyhow::Result<Row> {
    let (short, long) = (case.steps, case.steps.saturating_mul(3));
    let data = dir.join(format!("data-{}.safetensors", case.width));
    write_data(&data, &case, long)?;
    let save = dir.join("out.safetensors");
    let mut measured = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        eprintln!("{}: round {round}/{rounds}: {short} and {long} steps, 1 and {WORKERS} workers...", case.name);
        let mut runs = [Cost { cpu_s: 0.0, wall_s: 0.0 }; 6];
        let plan = [(short, 1, "on"), (short, WORKERS, "on"), (long, 1, "on"), (long, WORKERS, "on")]
            .into_iter()
            .chain([(short, WORKERS, "off"), (long, WORKERS, "off")]);
        for (i, (steps, workers, replicas)) in plan.enumerate() {
            let mut args = train_args(&case, &data, &save, steps, workers);
            args.extend(["--replicas".into(), replicas.into()]);
            runs[i] = run_child(exe, &args)?;
        }
        measured.push(Round::of(runs, case.steps));
    }
    Ok(Row::of(case, measured))
}

/// Uniform random inputs and targets for `steps` steps of `case`. A file
/// rather than `baton train`'s synthetic data, whose targets cost a scalar
/// B·W² product per step in the trainer's process and would count as training.
fn write_data(path: &Path, case: &Case, steps: usize) -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(0xBE_4C4);
    let shape = vec![steps, case.batch, case.width];
    let mut uniform = |scale: f32| {
        let data = (0..steps * case.batch * case.width).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
        Tensor::new(shape.clone(), data).expect("steps x batch x width values")
    };
    let mut tensors = ParamStore::new();
    tensors.insert(io::DATA_X, uniform(1.0));
    tensors.insert(io::DATA_Y, uniform(0.5));
    io::save_params(path, &tensors, None).context("writing the benchmark data")
}

/// The `baton train` command line of one run (`--threads 1` on both sides:
/// in-process it is the trainer's, with workers every worker's).
fn train_args(case: &Case, data: &Path, save: &Path, steps: usize, workers: usize) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["train", "--model"].map(OsString::from).to_vec();
    args.push(spec::mlp_json(case.width, case.layers).into());
    args.extend(["--data".into(), data.as_os_str().to_owned()]);
    for (flag, value) in [
        ("--steps", steps.to_string()),
        ("--batch", case.batch.to_string()),
        ("--microbatches", MICROBATCHES.to_string()),
        ("--optimizer", OPTIMIZER.to_string()),
        ("--workers", workers.to_string()),
        ("--threads", "1".to_string()),
    ] {
        args.extend([flag.into(), value.into()]);
    }
    args.extend(["--save".into(), save.as_os_str().to_owned()]);
    args
}

/// Runs `exe args` to completion; its CPU (and its reaped children's) and wall time.
fn run_child(exe: &Path, args: &[OsString]) -> anyhow::Result<Cost> {
    let cpu_before = children_cpu_seconds()?;
    let start = Instant::now();
    let output = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_s = children_cpu_seconds()? - cpu_before;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!("`baton train` failed ({}): {}", output.status, tail.into_iter().rev().collect::<Vec<_>>().join(" / "));
    }
    Ok(Cost { cpu_s, wall_s })
}

/// User plus system CPU seconds of every child this process has waited for,
/// including the descendants each of them waited for.
#[cfg(unix)]
fn children_cpu_seconds() -> anyhow::Result<f64> {
    // SAFETY: `rusage` is a struct of integers, for which all-zero bytes are
    // a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to `usage`, a live, exclusively borrowed
    // `rusage`; getrusage writes exactly one `rusage` through it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_CHILDREN)");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

#[cfg(not(unix))]
fn children_cpu_seconds() -> anyhow::Result<f64> {
    bail!("`baton-bench pipeline` reads child CPU time with getrusage, which needs Unix")
}

const HEADER: [&str; 8] = ["model", "steps", "cpu 1p", "cpu 3w", "cpu 3w/1p", "range", "wall 1p", "wall 3w"];

fn format_header() -> String {
    let [model, steps, cpu1, cpu3, ratio, range, wall1, wall3] = HEADER;
    format!("{model:<18} {steps:>11} {cpu1:>9} {cpu3:>9} {ratio:>9} {range:>11} {wall1:>9} {wall3:>9}")
}

fn format_row(row: &Row) -> String {
    let ms = |s: f64| s * 1e3;
    format!(
        "{:<18} {:>11} {:>9.3} {:>9.3} {:>9.2} {:>11} {:>9.3} {:>9.3}",
        row.case.name,
        format!("{}/{}", row.case.steps, row.case.steps * 3),
        ms(row.single.cpu_s),
        ms(row.pipelined.cpu_s),
        row.cpu_ratio,
        format!("{:.2}-{:.2}", row.cpu_ratio_min, row.cpu_ratio_max),
        ms(row.single.wall_s),
        ms(row.pipelined.wall_s),
    )
}

/// Whether `row` meets the target, in words.
fn verdict(row: &Row) -> String {
    let target = row.case.target_cpu_ratio;
    let met = if row.cpu_ratio <= target { "met" } else { "NOT met" };
    format!(
        "{}: {:.2}x total CPU (median of {} rounds), target <= {target:.2}x {met}",
        row.case.name,
        row.cpu_ratio,
        row.rounds.len()
    )
}

fn print_table(table: &Table) {
    println!(
        "training step cost, one process vs {WORKERS} worker processes, same run: \
         {OPTIMIZER}, M={}, 1F1B, {} kernel thread per process (--threads 1)",
        table.microbatches, table.kernel_threads_per_process
    );
    println!(
        "ms per step = (run of 3N steps - run of N steps) / 2N, median of {} rounds (range: the rounds' \
         smallest and largest ratio); cpu = user+sys of `baton train` and its worker processes \
         (getrusage RUSAGE_CHILDREN)",
        table.rounds
    );
    println!(
        "1p: --workers 1 (in-process); 3w: --workers {WORKERS} (coordinator + {WORKERS} \
         worker processes, QUIC on loopback); this machine has {} cores",
        table.cores
    );
    println!("{}", format_header());
    for row in &table.rows {
        println!("{}", format_row(row));
    }
    for row in &table.rows {
        println!("{}", verdict(row));
    }
    println!("replicas of a neighbour's layers (crashes without notice), on vs off, {WORKERS} workers, same rounds:");
    for row in &table.rows {
        let ms = |s: f64| s * 1e3;
        let met = if row.replica_wall_ratio <= REPLICA_TARGET { "met" } else { "NOT met" };
        println!(
            "{:<18} wall {:.3} vs {:.3} ms/step ({:.3}x), cpu {:.3} vs {:.3} ms/step; target <= {REPLICA_TARGET:.2}x {met}",
            row.case.name,
            ms(row.pipelined.wall_s),
            ms(row.unreplicated.wall_s),
            row.replica_wall_ratio,
            ms(row.pipelined.cpu_s),
            ms(row.unreplicated.cpu_s),
        );
    }
}

/// The target for wall time with replicas over without (W=1024).
const REPLICA_TARGET: f64 = 1.05;

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(cpu_s: f64, wall_s: f64) -> Cost {
        Cost { cpu_s, wall_s }
    }

    /// A row of one round whose runs cost `single` and `pipelined` per step and nothing else.
    fn row(single: Cost, pipelined: Cost) -> Row {
        let [_, big] = cases(10);
        let thrice = |c: Cost| cost(c.cpu_s * 30.0, c.wall_s * 30.0);
        let once = |c: Cost| cost(c.cpu_s * 10.0, c.wall_s * 10.0);
        let runs =
            [once(single), once(pipelined), thrice(single), thrice(pipelined), once(pipelined), thrice(pipelined)];
        Row::of(big, vec![Round::of(runs, 10)])
    }

    #[test]
    fn fixed_costs_cancel_in_the_per_step_difference() {
        // 1.5 s of start-up in both runs, 0.25 s CPU and 0.1 s wall per step.
        let short = cost(1.5 + 10.0 * 0.25, 2.0 + 10.0 * 0.1);
        let long = cost(1.5 + 30.0 * 0.25, 2.0 + 30.0 * 0.1);
        let per = Cost::per_step(short, long, 20);
        assert!((per.cpu_s - 0.25).abs() < 1e-12, "{per:?}");
        assert!((per.wall_s - 0.1).abs() < 1e-12, "{per:?}");
    }

    #[test]
    fn rows_print_milliseconds_under_the_header() {
        let r = row(cost(0.3, 0.31), cost(0.36, 0.2));
        let line = format_row(&r);
        assert_eq!(
            line,
            "mlp W=1024 B=256         10/30   300.000   360.000      1.20   1.20-1.20   310.000   200.000"
        );
        assert_eq!(line.len(), format_header().len());
        assert!(verdict(&r).ends_with("1.20x total CPU (median of 1 rounds), target <= 1.05x NOT met"));
        let ok = row(cost(0.3, 0.3), cost(0.315, 0.2));
        assert!(verdict(&ok).ends_with("target <= 1.05x met"), "{}", verdict(&ok));
        let [small, _] = cases(1);
        assert_eq!(small.target_cpu_ratio, 1.5, "issue 12: mlp12 <= 1.5x");
    }

    #[test]
    fn rounds_summarise_by_median_and_range() {
        let [small, _] = cases(1);
        let round = |ratio: f64| {
            let single =
                [cost(1.0, 1.0), cost(0.0, 0.0), cost(3.0, 2.0), cost(0.0, 0.0), cost(0.0, 0.0), cost(1.0, 1.0)];
            let mut runs = single;
            runs[3] = cost(2.0 * ratio, 0.5);
            Round::of(runs, 1)
        };
        let r = Row::of(small, vec![round(1.3), round(0.9), round(1.1)]);
        assert!((r.cpu_ratio - 1.1).abs() < 1e-12, "{r:?}");
        assert!((r.cpu_ratio_min - 0.9).abs() < 1e-12 && (r.cpu_ratio_max - 1.3).abs() < 1e-12, "{r:?}");
        assert!((r.single.cpu_s - 1.0).abs() < 1e-12 && (r.single.wall_s - 0.5).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn both_sides_train_with_one_kernel_thread_per_process() {
        let [small, big] = cases(2);
        assert_eq!((small.steps, big.steps), (100, 2));
        let args = train_args(&big, Path::new("d"), Path::new("o"), 6, WORKERS);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].clone()
        };
        assert_eq!(args[0], "train");
        assert_eq!(after("--model"), spec::mlp_json(1024, 12));
        assert_eq!(after("--steps"), "6");
        assert_eq!(after("--batch"), "256");
        assert_eq!(after("--workers"), "3");
        assert_eq!(after("--threads"), "1");
        assert_eq!(after("--data"), "d");
        assert_eq!(after("--save"), "o");
    }
}
