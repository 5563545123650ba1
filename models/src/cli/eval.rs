//! `baton train --eval-data SOURCE --eval-every N [--eval-batches K]` and
//! `--plot FILE.svg`: held-out loss during training, and the loss curve.
//!
//! Invariants:
//! - the held-out batches are drawn once, before training, with a fixed
//!   seed ([`EVAL_SEED`], not `--seed`), so every evaluation of a run, and
//!   of runs with other seeds, measures the same K batches;
//! - an evaluation follows step s when `(s + 1) % N == 0` (and, without
//!   `--eval-every`, once after the last step); it reads the weights after
//!   step s's update and changes no training bit.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use baton_engine::eval::{EvalPlan, EvalPoint};
use baton_engine::{Batch, Model, ParamStore, Targets, Tensor};
use baton_models::data::{self, DataSource, TokenDtype};
use baton_models::io;
use clap::Args;

/// The seed of the held-out windows: fixed, so that evaluations compare.
pub const EVAL_SEED: u64 = 0x00e7_a15e_ed00_0001;

/// Evaluation and plot flags of `baton train`.
#[derive(Debug, Default, Args)]
pub struct EvalArgs {
    /// Held-out data: `text:FILE`, `tokens:FILE[,dtype=u16|u32]` or a
    /// safetensors file like --data. Its loss is computed forward only,
    /// through the pipeline, and reported as `eval` in the report.
    #[arg(long, value_name = "SOURCE")]
    pub eval_data: Option<String>,
    /// Evaluate after step s (from 0) when (s + 1) % N == 0. Default: once,
    /// after the last step.
    #[arg(long, value_name = "N", requires = "eval_data", value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_every: Option<u32>,
    /// Held-out batches per evaluation (each of --batch rows), the same at every evaluation.
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_batches: u32,
    /// Write the loss curve (training loss per step, evaluation points) as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

impl EvalArgs {
    /// The file `--eval-data` reads, for the collision checks.
    pub fn input_file(&self) -> Option<PathBuf> {
        let text = self.eval_data.as_deref()?;
        Some(match text.parse::<DataSource>() {
            Ok(DataSource::Tokens { path, .. }) | Ok(DataSource::Safetensors(path)) => path,
            Err(_) => PathBuf::from(text),
        })
    }

    /// The evaluation plan over a run of `steps` steps of `rows` rows
    /// (read and checked before training), or None without --eval-data.
    pub fn plan(&self, model: &Model, steps: usize, rows: usize) -> anyhow::Result<Option<EvalPlan>> {
        let Some(text) = &self.eval_data else { return Ok(None) };
        let source: DataSource = text.parse().context("--eval-data")?;
        let k = self.eval_batches as usize;
        let batches = match source {
            DataSource::Tokens { path, dtype } => stream_batches(model, &path, dtype, k, rows)?,
            DataSource::Safetensors(path) => file_batches(model, &path, k)?,
        };
        let every = match self.eval_every {
            Some(n) => n,
            None => u32::try_from(steps).context("too many steps")?,
        };
        Ok(Some(EvalPlan::new(every, batches).context("--eval-every")?))
    }
}

/// K batches of `rows` windows of T + 1 tokens from a token stream, from [`EVAL_SEED`].
fn stream_batches(model: &Model, path: &Path, dtype: TokenDtype, k: usize, rows: usize) -> anyhow::Result<Vec<Batch>> {
    let Some(seq) = model.seq else {
        bail!(
            "--eval-data {}: a token stream needs a token model (\"input\": {{\"tokens\": V, \"seq\": T}})",
            path.display()
        );
    };
    let vocab = u32::try_from(model.input).context("the model's vocabulary")?;
    let file = data::TokenFile::open(path, dtype).context("--eval-data")?;
    let mut sampler = data::WindowSampler::new(file, seq, rows, vocab, EVAL_SEED).context("--eval-data")?;
    (0..k)
        .map(|i| {
            let windows = sampler.next_batch().with_context(|| format!("--eval-data: held-out batch {i}"))?;
            let x = Tensor::from_ids(vec![rows, seq], windows.x)?;
            let y = Tensor::from_ids(vec![rows, seq], windows.y)?;
            Ok(Batch::new(x, Targets::Classes(y))?)
        })
        .collect()
}

/// The first K steps of a safetensors data file as held-out batches.
fn file_batches(model: &Model, path: &Path, k: usize) -> anyhow::Result<Vec<Batch>> {
    let steps = io::data_steps(path).context("--eval-data")?;
    ensure!(steps >= k, "--eval-data {}: holds {steps} batches, --eval-batches asks for {k}", path.display());
    io::load_data(path, model, k).context("--eval-data")
}

/// The held-out loss in one process after step `step`, when one is due.
pub fn in_process(
    plan: Option<&EvalPlan>,
    model: &Model,
    params: &ParamStore,
    step: u32,
) -> anyhow::Result<Option<EvalPoint>> {
    let Some(plan) = plan.filter(|p| p.due_after(step)) else { return Ok(None) };
    let loss = baton_engine::eval::eval_loss(model, params, step, &plan.batches)
        .with_context(|| format!("evaluating after step {step}"))?;
    Ok(Some(EvalPoint { step, loss }))
}
