//! `baton-bench step`: median time of one training step (forward, backward
//! and Adam, M=1) of two MLPs and two GPTs at several thread counts, next to
//! the same step in PyTorch when `python3 -c "import torch"` works.
//!
//! `BATON_PYTHON` names the Python interpreter (default `python3`).
//!
//! `--rounds R` (default 3) times every row R times, alternating sides row
//! by row (baton's row, PyTorch's same row, the next row, ...; then the
//! next round), so both sides of a row meet the same machine state; a row
//! reports each side's median over the rounds and the median and range of
//! the per-round ratios (PyTorch's time varies far more between runs than
//! baton's on a shared machine, so one pair of runs settles little).
//!
//! `--device cuda[:N]` times the GPT rows (d=64 T=32, d=512 T=128 and
//! d=1024 T=256, batch 8) with baton's tensors resident on that GPU, next
//! to PyTorch on the same GPU in the same run (`torch.cuda.synchronize()`
//! around each timed step on its side, a stream synchronisation on ours;
//! f32 with TF32 off on both sides, so both do the same math). Without a
//! usable GPU it fails at once, naming `--device` and CUDA.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use baton_engine::{init, Backend, Device, Optimizer, OptimizerConfig, Trainer};
use baton_models::{io, spec};
use clap::Args;
use serde::Serialize;

use super::{median, write_json};

mod arch;
mod torch;

use arch::{configs, gpu_configs, Config};
use torch::Torch;

#[derive(Debug, Args)]
pub struct StepArgs {
    /// Thread counts to measure, comma-separated (default: 1 and all cores).
    #[arg(long, value_delimiter = ',', value_name = "T,T,..")]
    threads_list: Vec<usize>,
    /// Timed steps per row of the large models (the small ones run 20x as many).
    #[arg(long, value_name = "N", default_value_t = 5)]
    steps: usize,
    /// Rounds: each times every row once in baton and once in PyTorch,
    /// alternating row by row; the table gives medians over the rounds.
    #[arg(long, value_name = "R", default_value_t = 3)]
    rounds: usize,
    /// Only the rows whose model name contains TEXT (as `W=1024`).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where baton computes: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    device: Device,
}

/// One row of the table. Each round times the row's median step in baton,
/// then in PyTorch; the row's figures are medians over the rounds (the
/// upper middle one of an even count).
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    config: Config,
    /// Median over the rounds of baton's median step.
    baton_ms: f64,
    baton_gflops: f64,
    /// Median over the rounds of PyTorch's median step.
    torch_ms: Option<f64>,
    torch_gflops: Option<f64>,
    /// Median over the rounds of that round's baton time / PyTorch time
    /// (above 1: baton is slower).
    baton_over_torch: Option<f64>,
    /// The smallest and largest per-round ratio, `[min, max]`.
    baton_over_torch_range: Option<[f64; 2]>,
    /// Baton's median step of each round, in round order.
    baton_ms_rounds: Vec<f64>,
    /// PyTorch's median step of each round, in round order.
    torch_ms_rounds: Option<Vec<f64>>,
}

/// The whole result, as written by --json.
#[derive(Debug, Serialize)]
struct Table {
    /// Where baton ran (`cpu`, or `cuda:N (GPU name)`).
    device: String,
    torch: Option<String>,
    note: Option<String>,
    /// Rounds each row was timed on each side.
    rounds: usize,
    rows: Vec<Row>,
}

/// Runs `baton-bench step`.
pub fn run(args: StepArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        bail!("--steps 0: time at least one step");
    }
    if args.rounds == 0 {
        bail!("--rounds 0: time at least one round");
    }
    let backend = Backend::open(args.device).with_context(|| format!("--device {}", args.device))?;
    let mut configs = match args.device {
        Device::Cuda(_) => gpu_configs(args.steps),
        Device::Cpu | Device::Simulated => configs(&thread_list(&args.threads_list)?, args.steps),
    };
    if let Some(only) = &args.only {
        configs.retain(|c| c.name.contains(only.as_str()));
        if configs.is_empty() {
            bail!("--only {only}: no model name contains it");
        }
    }
    let (mut torch, mut note) = start_torch(args.device);
    let times = measure(&configs, &backend, args.rounds, &mut torch, &mut note)?;
    let version = torch.take().map(|t| t.version.clone());
    let rows = configs.into_iter().zip(times).map(|(config, t)| row(config, t)).collect();
    let table = Table { device: backend.describe(), torch: version, note, rounds: args.rounds, rows };
    print_table(&table);
    if let Some(path) = &args.json {
        write_json(path, &table)?;
    }
    Ok(())
}

/// The requested thread counts, or 1 and all cores.
fn thread_list(requested: &[usize]) -> anyhow::Result<Vec<usize>> {
    if requested.contains(&0) {
        bail!("--threads-list: thread counts must be at least 1");
    }
    if !requested.is_empty() {
        return Ok(requested.to_vec());
    }
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(if all > 1 { vec![1, all] } else { vec![1] })
}

/// Why a simulated-device run has no PyTorch column.
const SIM_NOTE: &str = "no PyTorch comparison: the simulated device is host memory (a test device)";

/// The PyTorch child for `device`, or why there is no comparison.
fn start_torch(device: Device) -> (Option<Torch>, Option<String>) {
    let started = match device {
        Device::Cpu => Torch::start("cpu"),
        Device::Cuda(n) => Torch::start(&format!("cuda:{n}")),
        Device::Simulated => Err(SIM_NOTE.to_string()),
    };
    match started {
        Ok(torch) => (Some(torch), None),
        Err(reason) => (None, Some(reason)),
    }
}

/// One row's median step of each round, per side (PyTorch's empty when
/// there is no comparison; else as long as baton's).
#[derive(Debug, Default)]
struct Timings {
    baton: Vec<f64>,
    torch: Vec<f64>,
}

/// Times every config `rounds` times: round by round, row by row, baton's
/// step then PyTorch's, so both sides of a row meet the same machine state.
/// A PyTorch failure ends the comparison: `torch` becomes None, `note`
/// says why, and every row's PyTorch timings are dropped.
fn measure(
    configs: &[Config],
    backend: &Backend,
    rounds: usize,
    torch: &mut Option<Torch>,
    note: &mut Option<String>,
) -> anyhow::Result<Vec<Timings>> {
    let mut times: Vec<Timings> = configs.iter().map(|_| Timings::default()).collect();
    for round in 1..=rounds {
        let sides = if torch.is_some() { " and PyTorch, alternating" } else { "" };
        eprintln!(
            "round {round}/{rounds}: {} configurations in baton on {}{sides}...",
            configs.len(),
            backend.describe()
        );
        for (config, t) in configs.iter().zip(&mut times) {
            t.baton.push(time_baton(config, backend)?);
            if let Some(child) = torch.as_mut() {
                match child.time(config) {
                    Ok(ms) => t.torch.push(ms),
                    Err(reason) => {
                        *note = Some(reason);
                        *torch = None;
                    }
                }
            }
        }
    }
    if torch.is_none() {
        times.iter_mut().for_each(|t| t.torch.clear());
    }
    Ok(times)
}

/// Median milliseconds of one baton training step on `backend` after warm-up.
fn time_baton(config: &Config, backend: &Backend) -> anyhow::Result<f64> {
    baton_kernels::threads::set_num_threads(config.threads)?;
    let model =
        spec::parse(&config.arch.spec_json()).context("building the benchmark model")?.with_backend(backend.clone());
    let params = init::init_params(&model.param_specs(), 0);
    let batch = io::synthetic_data(&model, 1, config.batch, 0).remove(0);
    let adam: OptimizerConfig = "adam:lr=1e-3".parse()?;
    let mut trainer = Trainer::new(model, params, Optimizer::new(adam))?;
    let mut times = Vec::with_capacity(config.steps);
    for i in 0..config.warmup + config.steps {
        let start = Instant::now();
        trainer.step(i as u32, &batch, 1)?;
        backend.synchronize()?;
        if i >= config.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&mut times))
}

/// The row of `config` from its per-round timings.
fn row(config: Config, t: Timings) -> Row {
    let gflops = |ms: f64| config.flops() / (ms * 1e-3) / 1e9;
    let compared = !t.torch.is_empty() && t.torch.len() == t.baton.len();
    let mut ratios: Vec<f64> = t.baton.iter().zip(&t.torch).map(|(b, p)| b / p).collect();
    let range = ratios.iter().fold([f64::INFINITY, f64::NEG_INFINITY], |[lo, hi], &r| [lo.min(r), hi.max(r)]);
    let baton_ms = median(&mut t.baton.clone());
    let torch_ms = compared.then(|| median(&mut t.torch.clone()));
    Row {
        baton_gflops: gflops(baton_ms),
        torch_gflops: torch_ms.map(gflops),
        baton_over_torch: compared.then(|| median(&mut ratios)),
        baton_over_torch_range: compared.then_some(range),
        baton_ms,
        torch_ms,
        baton_ms_rounds: t.baton,
        torch_ms_rounds: compared.then_some(t.torch),
        config,
    }
}

fn print_table(table: &Table) {
    let torch = table.torch.as_deref().map_or(String::new(), |v| format!(" (PyTorch {v})"));
    println!("training step on {}: forward + backward + Adam, M=1{torch}", table.device);
    println!(
        "medians over {} rounds of each round's median step (baton and PyTorch alternating row by row)",
        table.rounds
    );
    println!(
        "{:<19} {:>7} {:>10} {:>8} {:>10} {:>8} {:>12} {:>11}",
        "model", "threads", "baton ms", "GFLOP/s", "torch ms", "GFLOP/s", "baton/torch", "range"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in &table.rows {
        let range = r.baton_over_torch_range.map_or("-".to_string(), |[lo, hi]| format!("{lo:.2}-{hi:.2}"));
        println!(
            "{:<19} {:>7} {:>10.3} {:>8.1} {:>10} {:>8} {:>12} {:>11}",
            r.config.name,
            r.config.threads,
            r.baton_ms,
            r.baton_gflops,
            opt(r.torch_ms, 3),
            opt(r.torch_gflops, 1),
            opt(r.baton_over_torch, 2),
            range
        );
    }
    if let Some(note) = &table.note {
        println!("{note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_takes_medians_of_each_side_and_of_the_per_round_ratios() {
        let config = configs(&[1], 1).remove(0);
        let t = Timings { baton: vec![100.0, 90.0, 120.0], torch: vec![200.0, 100.0, 150.0] };
        let r = row(config.clone(), t);
        assert_eq!((r.baton_ms, r.torch_ms), (100.0, Some(150.0)));
        // Per round 0.5, 0.9, 0.8: the median of the ratios, not 100 / 150.
        assert_eq!(r.baton_over_torch, Some(0.8));
        assert_eq!(r.baton_over_torch_range, Some([0.5, 0.9]));
        assert_eq!(r.torch_ms_rounds.as_deref(), Some(&[200.0, 100.0, 150.0][..]));
        let alone = row(config, Timings { baton: vec![3.0, 1.0], torch: Vec::new() });
        assert_eq!((alone.baton_ms, alone.torch_ms, alone.baton_over_torch_range), (3.0, None, None));
        assert!(alone.torch_ms_rounds.is_none());
    }
}
