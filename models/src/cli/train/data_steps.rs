//! The training data of a run: a safetensors file, a token stream
//! (`text:FILE`, `tokens:FILE`) or seeded synthetic batches, from the first
//! step to run (a resumed run's) on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use baton_engine::{Batch, Model, Targets, Tensor};
use baton_models::data::{self, DataSource, TokenDtype};
use baton_models::io;

use super::TrainArgs;

/// Batches from --data, else synthetic ones from --batch and --seed.
/// `--data` as a data source: a token stream (`text:FILE`,
/// `tokens:FILE[,dtype=..]`), or else a safetensors file.
fn data_source(path: &Path) -> anyhow::Result<DataSource> {
    let text = path.to_str().with_context(|| format!("--data {}: not valid UTF-8", path.display()))?;
    text.parse::<DataSource>().context("--data")
}

/// The file `--data` reads, whatever its form.
pub(super) fn data_file(path: &Path) -> PathBuf {
    match data_source(path) {
        Ok(DataSource::Tokens { path, .. }) | Ok(DataSource::Safetensors(path)) => path,
        Err(_) => path.to_path_buf(),
    }
}

/// `--steps` batches of `--batch` windows of T + 1 tokens from a token
/// stream, at positions from `--seed` ([`data::WindowSampler`]).
/// Starts at `from` (a checkpoint's step and position); returns the
/// sampler's position before each later step too.
fn token_batches(
    args: &TrainArgs,
    model: &Model,
    (path, dtype): (&Path, TokenDtype),
    from: (u32, Option<data::DataPosition>),
) -> anyhow::Result<(Vec<Batch>, BTreeMap<u32, data::DataPosition>)> {
    let Some(seq) = model.seq else {
        bail!(
            "--data {}: a token stream needs a token model (\"input\": {{\"tokens\": V, \"seq\": T}})",
            path.display()
        );
    };
    let batch = args.batch.unwrap_or(32);
    ensure!(batch >= 1, "--batch 0: a batch needs at least one row");
    let vocab = u32::try_from(model.input).context("the model's vocabulary")?;
    let file = data::TokenFile::open(path, dtype).context("--data")?;
    let start = from.1.unwrap_or(data::DataPosition { seed: args.seed, windows: 0 });
    ensure!(
        start.seed == args.seed,
        "--resume: the checkpoint's data stream has seed {}, not --seed {}",
        start.seed,
        args.seed
    );
    let mut sampler = data::WindowSampler::resume(file, seq, batch, vocab, start).context("--data")?;
    let mut positions = BTreeMap::new();
    let batches = (from.0..args.steps.unwrap_or(10) as u32)
        .map(|step| {
            let windows = sampler.next_batch().with_context(|| format!("--data: step {step}"))?;
            positions.insert(step + 1, sampler.position());
            let x = Tensor::from_ids(vec![batch, seq], windows.x)?;
            let y = Tensor::from_ids(vec![batch, seq], windows.y)?;
            Ok(Batch::new(x, Targets::Classes(y))?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(!batches.is_empty(), "--steps {}: the checkpoint already holds {} steps", args.steps.unwrap_or(10), from.0);
    Ok((batches, positions))
}

/// From step `from.0` on (a resumed run's; token data from the
/// checkpoint's position `from.1`); with token data, the position before
/// each step.
pub(super) fn training_data(
    args: &TrainArgs,
    model: &Model,
    from: (u32, Option<data::DataPosition>),
) -> anyhow::Result<(Vec<Batch>, BTreeMap<u32, data::DataPosition>)> {
    ensure!(args.steps != Some(0), "--steps 0: train at least one step");
    let stream = match &args.data {
        Some(path) => match data_source(path)? {
            DataSource::Tokens { path, dtype } => Some(token_batches(args, model, (&path, dtype), from)?),
            DataSource::Safetensors(_) => None,
        },
        None => None,
    };
    if let Some(stream) = stream {
        return Ok(stream);
    }
    let mut batches = all_batches(args, model)?;
    let first = from.0 as usize;
    ensure!(first < batches.len(), "--steps {}: the checkpoint already holds {first} steps", batches.len());
    batches.drain(..first);
    Ok((batches, BTreeMap::new()))
}

/// Every step's batch of a safetensors or synthetic data source.
fn all_batches(args: &TrainArgs, model: &Model) -> anyhow::Result<Vec<Batch>> {
    let batches = match &args.data {
        Some(path) => {
            let steps = match args.steps {
                Some(n) => n,
                None => io::data_steps(path).context("--data")?,
            };
            io::load_data(path, model, steps).context("--data")?
        }
        None => {
            let batch = args.batch.unwrap_or(32);
            ensure!(batch >= 1, "--batch 0: a batch needs at least one row");
            io::synthetic_data(model, args.steps.unwrap_or(10), batch, args.seed)
        }
    };
    let rows = batches.first().map_or(0, Batch::rows);
    ensure!(rows > 0, "the training data holds no steps");
    if let (Some(batch), Some(path)) = (args.batch, &args.data) {
        ensure!(
            batch == rows,
            "--batch {batch} disagrees with --data {}, whose batches hold {rows} rows",
            path.display()
        );
    }
    Ok(batches)
}
