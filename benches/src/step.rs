//! `baton-bench step`: median time of one training step (forward, backward
//! and Adam, M=1) of two MLPs and two GPTs at several thread counts, next to
//! the same step in PyTorch when `python3 -c "import torch"` works.
//!
//! `BATON_PYTHON` names the Python interpreter (default `python3`).
//!
//! `--device cuda[:N]` times the GPT rows (d=64 T=32, d=512 T=128 and
//! d=1024 T=256, batch 8) with baton's tensors resident on that GPU, next
//! to PyTorch on the same GPU in the same run (`torch.cuda.synchronize()`
//! around each timed step on its side, a stream synchronisation on ours;
//! f32 with TF32 off on both sides, so both do the same math). Without a
//! usable GPU it fails at once, naming `--device` and CUDA.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use baton_engine::{init, Backend, Device, Optimizer, OptimizerConfig, Trainer};
use baton_models::{io, spec};
use clap::Args;
use serde::Serialize;

use super::{median, write_json};

/// The PyTorch side of the comparison.
const TORCH_SCRIPT: &str = include_str!("bench_torch.py");
/// Environment variable naming the Python interpreter.
const PYTHON_ENV: &str = "BATON_PYTHON";

#[derive(Debug, Args)]
pub struct StepArgs {
    /// Thread counts to measure, comma-separated (default: 1 and all cores).
    #[arg(long, value_delimiter = ',', value_name = "T,T,..")]
    threads_list: Vec<usize>,
    /// Timed steps per row of the large models (the small ones run 20x as many).
    #[arg(long, value_name = "N", default_value_t = 5)]
    steps: usize,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where baton computes: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    device: Device,
}

/// The benchmarked network; bench_torch.py builds the same one from this
/// JSON (`"kind"` and the variant's fields).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Arch {
    /// `layers` linear layers `input → width → .. → width`, relu on all but
    /// the last, mse.
    Mlp { input: usize, width: usize, layers: usize },
    /// Token + position embedding, `blocks` pre-LN GPT-2 blocks (`heads`
    /// contiguous heads, causal, exact-GELU MLP of `hidden`), layernorm and a
    /// linear head to `vocab`; cross-entropy over every token.
    Gpt { vocab: usize, seq: usize, dim: usize, heads: usize, hidden: usize, blocks: usize },
}

impl Arch {
    /// Floating-point operations of forward + backward for `batch` rows.
    ///
    /// Counted: every matmul, as 2 flops per multiply-add, forward once and
    /// backward twice (dx and dW, or both operands of attention's products),
    /// so 3x the forward. Left out: norms, softmax, activations, embedding,
    /// loss and the Adam update (elementwise, a few % at these shapes).
    /// So 6 · matmul parameters · tokens (B rows of an MLP, B·T for a GPT;
    /// 6·B·W²·L for these MLPs), plus for a GPT attention's two [T, T] x d
    /// products per block, 3 · 2 · 2 · T² · d · B · blocks, the causal mask's
    /// zero half included (both sides compute it).
    fn flops(&self, batch: usize) -> f64 {
        let (tokens, attention) = match *self {
            Arch::Mlp { .. } => (batch, 0),
            Arch::Gpt { seq, dim, blocks, .. } => (batch * seq, 12 * seq * seq * dim * batch * blocks),
        };
        6.0 * (self.matmul_params() * tokens) as f64 + attention as f64
    }

    /// Weights that multiply activations (not biases, norms or the
    /// embedding lookup): the per-token multiply-adds of a forward pass.
    fn matmul_params(&self) -> usize {
        match *self {
            Arch::Mlp { input, width, layers } => input * width + (layers - 1) * width * width,
            Arch::Gpt { vocab, dim, hidden, blocks, .. } => blocks * (4 * dim * dim + 2 * dim * hidden) + dim * vocab,
        }
    }

    /// The baton model spec (../shared/DESIGN.md, "Model spec").
    fn spec_json(&self) -> String {
        match *self {
            Arch::Mlp { input, width, layers } => {
                let layer = |act: &str| format!(r#"{{"type": "linear", "out": {width}, "activation": "{act}"}}"#);
                let mut all = vec![layer("relu"); layers - 1];
                all.push(layer("none"));
                format!(r#"{{"input": {input}, "layers": [{}], "loss": "mse"}}"#, all.join(", "))
            }
            Arch::Gpt { vocab, seq, dim, heads, hidden, blocks } => {
                let block = format!(r#"{{"type": "transformer_block", "heads": {heads}, "hidden": {hidden}}}"#);
                format!(
                    r#"{{"input": {{"tokens": {vocab}, "seq": {seq}}}, "layers": [{{"type": "embedding", "dim": {dim}}},
                        {}, {{"type": "layernorm"}}, {{"type": "linear", "out": {vocab}}}], "loss": "cross_entropy"}}"#,
                    vec![block; blocks].join(", ")
                )
            }
        }
    }
}

/// One benchmarked configuration: a network, a batch (rows; sequences for
/// a GPT) and a thread count.
#[derive(Clone, Debug, Serialize)]
struct Config {
    name: String,
    #[serde(flatten)]
    arch: Arch,
    batch: usize,
    threads: usize,
    warmup: usize,
    steps: usize,
}

impl Config {
    fn flops(&self) -> f64 {
        self.arch.flops(self.batch)
    }
}

/// One row of the table.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    config: Config,
    baton_ms: f64,
    baton_gflops: f64,
    torch_ms: Option<f64>,
    torch_gflops: Option<f64>,
    /// baton time / PyTorch time (above 1: baton is slower).
    baton_over_torch: Option<f64>,
}

/// The whole result, as written by --json.
#[derive(Debug, Serialize)]
struct Table {
    /// Where baton ran (`cpu`, or `cuda:N (GPU name)`).
    device: String,
    torch: Option<String>,
    note: Option<String>,
    rows: Vec<Row>,
}

/// Runs `baton-bench step`.
pub fn run(args: StepArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        bail!("--steps 0: time at least one step");
    }
    let backend = Backend::open(args.device).with_context(|| format!("--device {}", args.device))?;
    let configs = match args.device {
        Device::Cuda(_) => gpu_configs(args.steps),
        Device::Cpu | Device::Simulated => configs(&thread_list(&args.threads_list)?, args.steps),
    };
    eprintln!("timing {} configurations in baton on {}...", configs.len(), backend.describe());
    let baton: Vec<f64> = configs.iter().map(|c| time_baton(c, &backend)).collect::<anyhow::Result<_>>()?;
    let compare = match args.device {
        Device::Cpu => time_torch(&configs, "cpu"),
        Device::Cuda(n) => time_torch(&configs, &format!("cuda:{n}")),
        Device::Simulated => Err(SIM_NOTE.to_string()),
    };
    let (torch, note) = match compare {
        Ok((version, ms)) => (Some((version, ms)), None),
        Err(reason) => (None, Some(reason)),
    };
    let rows = configs
        .into_iter()
        .zip(baton)
        .enumerate()
        .map(|(i, (config, ms))| row(config, ms, torch.as_ref().map(|(_, t)| t[i])))
        .collect();
    let table = Table { device: backend.describe(), torch: torch.map(|(v, _)| v), note, rows };
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

/// Per network, at every thread count: the 12-layer MLP W=1024 B=256,
/// mlp12 (W=64 B=32), the golden GPT (d=64, 4 heads, T=32, B=8) and a wide
/// one (d=512, 8 heads, T=128, B=8); all of 12 layers (a GPT's are the
/// embedding, 9 blocks, layernorm and head). The small ones time 20x the steps.
fn configs(threads: &[usize], steps: usize) -> Vec<Config> {
    let gpt = |dim, heads, seq| Arch::Gpt { vocab: 65, seq, dim, heads, hidden: 4 * dim, blocks: 9 };
    let nets = [
        ("mlp W=1024 B=256", Arch::Mlp { input: 1024, width: 1024, layers: 12 }, 256, 1),
        ("mlp12 W=64 B=32", Arch::Mlp { input: 64, width: 64, layers: 12 }, 32, 20),
        ("gpt d=64 T=32 B=8", gpt(64, 4, 32), 8, 20),
        ("gpt d=512 T=128 B=8", gpt(512, 8, 128), 8, 1),
    ];
    let config = |(name, arch, batch, times): &(&str, Arch, usize, usize), threads| Config {
        name: name.to_string(),
        arch: arch.clone(),
        batch: *batch,
        threads,
        warmup: 2 * times,
        steps: steps * times,
    };
    nets.iter().flat_map(|net| threads.iter().map(move |&t| config(net, t))).collect()
}

/// Why a simulated-device run has no PyTorch column.
const SIM_NOTE: &str = "no PyTorch comparison: the simulated device is host memory (a test device)";

/// The GPT rows timed on a GPU (one thread count: the host only queues work).
fn gpu_configs(steps: usize) -> Vec<Config> {
    let gpt = |dim, heads, seq| Arch::Gpt { vocab: 65, seq, dim, heads, hidden: 4 * dim, blocks: 9 };
    let nets = [
        ("gpt d=64 T=32 B=8", gpt(64, 4, 32), 20),
        ("gpt d=512 T=128 B=8", gpt(512, 8, 128), 2),
        ("gpt d=1024 T=256 B=8", gpt(1024, 16, 256), 1),
    ];
    let config = |(name, arch, times): &(&str, Arch, usize)| Config {
        name: name.to_string(),
        arch: arch.clone(),
        batch: 8,
        threads: 1,
        warmup: 2 * times,
        steps: steps * times,
    };
    nets.iter().map(config).collect()
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

/// PyTorch's version and median ms per config on `device` (`cpu` or
/// `cuda:N`), or why there is no comparison.
fn time_torch(configs: &[Config], device: &str) -> Result<(String, Vec<f64>), String> {
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import torch"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !probe.is_ok_and(|s| s.success()) {
        return Err(format!("PyTorch not found ({python} -c 'import torch' failed): no comparison"));
    }
    eprintln!("timing the same steps in PyTorch ({python})...");
    let jobs = serde_json::to_string(configs).map_err(|e| e.to_string())?;
    let output = Command::new(&python)
        .args(["-c", TORCH_SCRIPT, &jobs, device])
        .output()
        .map_err(|e| format!("running {python} failed: {e}: no comparison"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("the PyTorch benchmark failed ({}): {}: no comparison", output.status, stderr.trim()));
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        torch: String,
        ms: Vec<f64>,
    }
    let reply: Reply = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("unreadable output of the PyTorch benchmark ({e}): no comparison"))?;
    if reply.ms.len() != configs.len() {
        return Err("the PyTorch benchmark returned the wrong number of timings: no comparison".into());
    }
    Ok((reply.torch, reply.ms))
}

fn row(config: Config, baton_ms: f64, torch_ms: Option<f64>) -> Row {
    let gflops = |ms: f64| config.flops() / (ms * 1e-3) / 1e9;
    Row {
        baton_gflops: gflops(baton_ms),
        torch_gflops: torch_ms.map(gflops),
        baton_over_torch: torch_ms.map(|t| baton_ms / t),
        baton_ms,
        torch_ms,
        config,
    }
}

fn print_table(table: &Table) {
    let torch = table.torch.as_deref().map_or(String::new(), |v| format!(" (PyTorch {v})"));
    println!("training step on {}: forward + backward + Adam, M=1, median of timed steps{torch}", table.device);
    println!(
        "{:<19} {:>7} {:>10} {:>8} {:>10} {:>8} {:>12}",
        "model", "threads", "baton ms", "GFLOP/s", "torch ms", "GFLOP/s", "baton/torch"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in &table.rows {
        println!(
            "{:<19} {:>7} {:>10.3} {:>8.1} {:>10} {:>8} {:>12}",
            r.config.name,
            r.config.threads,
            r.baton_ms,
            r.baton_gflops,
            opt(r.torch_ms, 3),
            opt(r.torch_gflops, 1),
            opt(r.baton_over_torch, 2)
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
    fn every_network_has_twelve_layers_and_counts_its_matmul_weights() {
        for config in configs(&[1], 1) {
            let model = spec::parse(&config.arch.spec_json()).unwrap();
            assert_eq!(model.layers.len(), 12, "{}", config.name);
            // 2-D weights outside the embedding (layer 0 of a GPT) multiply activations.
            let lookup = matches!(config.arch, Arch::Gpt { .. }).then_some("layers.0.");
            let counted: usize = model
                .param_specs()
                .iter()
                .filter(|p| p.shape.len() == 2 && lookup.is_none_or(|l| !p.name.starts_with(l)))
                .map(|p| p.shape.iter().product::<usize>())
                .sum();
            assert_eq!(counted, config.arch.matmul_params(), "{}", config.name);
        }
    }

    #[test]
    fn gpt_flops_add_attention_to_the_weights() {
        let arch = Arch::Gpt { vocab: 65, seq: 32, dim: 64, heads: 4, hidden: 256, blocks: 9 };
        // 446,528 matmul weights x 256 tokens x 6, plus 12 x 32² x 64 x 8 x 9.
        assert_eq!(arch.flops(8), 685_867_008.0 + 56_623_104.0);
    }
}
