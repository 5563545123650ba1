//! `--checkpoint-dir`, `--checkpoint-every` and `--resume` of `baton train`
//! and `baton coordinator`: what a run checkpoints, and where a resumed
//! run starts (weights, optimizer state, step, data position), refusing a
//! checkpoint that does not fit the run, naming the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use baton_engine::pipeline::checkpoint::CheckpointPlan;
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::{Model, ParamStore};
use baton_models::checkpoint::{self, DiskStore, Loaded, RunSettings, TokenPosition};
use baton_models::data::DataPosition;

use super::TrainArgs;

/// The checkpoint a run resumes from.
pub struct Resumed {
    pub loaded: Loaded,
}

impl Resumed {
    /// The first step the resumed run trains.
    pub fn next_step(&self) -> u32 {
        self.loaded.manifest.next_step
    }

    /// The token sampler's position at the checkpoint, if the data is a token stream.
    pub fn tokens(&self) -> Option<DataPosition> {
        self.loaded.manifest.tokens.map(|t| DataPosition { seed: t.seed, windows: t.windows })
    }
}

/// Reads `--resume DIR`, refusing what cannot be combined with it.
pub fn load(args: &TrainArgs) -> anyhow::Result<Option<Resumed>> {
    let Some(dir) = &args.resume else { return Ok(None) };
    ensure!(args.init.is_none(), "--init with --resume: the weights come from the checkpoint; drop --init");
    let loaded = checkpoint::load(dir).context("--resume")?;
    eprintln!("resuming from {} (steps 0..{} done)", loaded.path.display(), loaded.manifest.next_step);
    Ok(Some(Resumed { loaded }))
}

/// `--preempt` and `--join` count steps of the whole run (from 0), so with
/// `--resume` each must name a step the resumed run runs: `first` on.
pub fn check_scripted(first: u32, notices: &[(u32, PlannedNotice)], joins: &[(u32, u32)]) -> anyhow::Result<()> {
    for (worker, n) in notices {
        ensure!(
            n.step >= first,
            "--preempt {worker}@{}: the run resumes at step {first} (steps count from 0 over the whole run)",
            n.step
        );
    }
    for (step, _) in joins {
        ensure!(
            *step >= first,
            "--join {step}: the run resumes at step {first} (steps count from 0 over the whole run)"
        );
    }
    Ok(())
}

/// The spec stored in the checkpoint resumed from (used when --model is not given).
pub fn spec_of(resumed: Option<&Resumed>) -> Option<String> {
    resumed.map(|r| r.loaded.manifest.run.spec.clone())
}

/// What a checkpoint of this run records about it.
pub fn settings(args: &TrainArgs, spec_text: &str, batch: usize, steps: usize) -> RunSettings {
    RunSettings {
        spec: spec_text.to_string(),
        optimizer: args.optimizer.to_string(),
        lr_schedule: args.lr_schedule.to_string(),
        microbatches: args.microbatches,
        batch,
        seed: args.seed,
        clip_grad_norm: args.clip_grad_norm,
        data: args.data.as_ref().map_or_else(|| "synthetic".to_string(), |p| p.display().to_string()),
        steps,
    }
}

/// Refuses a checkpoint written by a different run, naming the field.
pub fn check_fits(resumed: &Resumed, now: &RunSettings, model: &Model, total: usize) -> anyhow::Result<()> {
    let (was, dir) = (&resumed.loaded.manifest.run, resumed.loaded.path.display());
    let same_spec = match (
        serde_json::from_str::<serde_json::Value>(&was.spec),
        serde_json::from_str::<serde_json::Value>(&now.spec),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => was.spec == now.spec,
    };
    ensure!(same_spec, "--resume {dir}: the checkpoint's model spec differs from --model (field `spec`)");
    let fields: [(&str, String, String); 6] = [
        ("--optimizer", was.optimizer.clone(), now.optimizer.clone()),
        ("--lr-schedule", was.lr_schedule.clone(), now.lr_schedule.clone()),
        ("--microbatches", was.microbatches.to_string(), now.microbatches.to_string()),
        ("--batch", was.batch.to_string(), now.batch.to_string()),
        ("--seed", was.seed.to_string(), now.seed.to_string()),
        ("--clip-grad-norm", format!("{:?}", was.clip_grad_norm), format!("{:?}", now.clip_grad_norm)),
    ];
    for (flag, was, now) in fields {
        ensure!(was == now, "--resume {dir}: the checkpoint was written with {flag} {was}, this run has {now}");
    }
    // A constant rate does not depend on the run's length: such a run may be extended.
    let schedule_fixed = now.lr_schedule == "constant" || was.steps == now.steps;
    ensure!(
        schedule_fixed,
        "--resume {dir}: --lr-schedule {} depends on --steps, which was {} and is {} now",
        now.lr_schedule,
        was.steps,
        now.steps
    );
    let next = resumed.next_step() as usize;
    ensure!(
        next < total,
        "--resume {dir}: the checkpoint already holds {next} steps; --steps {total} leaves none to run"
    );
    check_params(&resumed.loaded.params, model, &resumed.loaded.path)
}

/// Every parameter of the model is in the checkpoint, with its shape.
fn check_params(params: &ParamStore, model: &Model, path: &Path) -> anyhow::Result<()> {
    for spec in model.param_specs() {
        let t = params
            .get(&spec.name)
            .map_err(|_| anyhow::anyhow!("--resume {}: parameter `{}` is in no part", path.display(), spec.name))?;
        if t.shape() != spec.shape.as_slice() {
            bail!("--resume {}: `{}` has shape {:?}, the model {:?}", path.display(), spec.name, t.shape(), spec.shape);
        }
    }
    Ok(())
}

/// The job's checkpoint plan: where, how often, and where it starts.
pub fn plan(args: &TrainArgs, resumed: Option<&Resumed>) -> anyhow::Result<CheckpointPlan> {
    let dir = match &args.checkpoint_dir {
        Some(dir) => Some(absolute(dir)?.display().to_string()),
        None => None,
    };
    ensure!(args.checkpoint_every != Some(0), "--checkpoint-every 0: give a number of steps >= 1");
    Ok(CheckpointPlan {
        dir,
        every: args.checkpoint_every.unwrap_or(0),
        first_step: resumed.map_or(0, Resumed::next_step),
        optim: resumed.map(|r| r.loaded.optim.clone()).unwrap_or_default(),
    })
}

/// `dir`, created, as an absolute path (workers get it in their assignment).
fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("--checkpoint-dir {}", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("--checkpoint-dir {}", dir.display()))
}

/// Where the coordinator commits checkpoints, if `--checkpoint-dir` is set.
pub fn store(
    args: &TrainArgs,
    settings: RunSettings,
    tokens: &BTreeMap<u32, DataPosition>,
) -> anyhow::Result<Option<DiskStore>> {
    let Some(dir) = &args.checkpoint_dir else { return Ok(None) };
    let tokens = tokens.iter().map(|(&s, p)| (s, TokenPosition { seed: p.seed, windows: p.windows })).collect();
    Ok(Some(DiskStore { dir: absolute(dir)?, run: settings, tokens }))
}
