//! Checkpoints and resume in memory: the coordinator and worker state
//! machines over the simulated network write real checkpoints (the same
//! format code the processes use, into a temporary directory); a job
//! resumed from one on another worker count must end with the bits of an
//! uninterrupted one-process run. SGD with momentum, Adam, and the golden
//! GPT (AdamW, clipping), for 1 -> 3, 3 -> 2 and 2 -> 1 workers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use baton_engine::pipeline::checkpoint::CheckpointPlan;
use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan};
use baton_engine::pipeline::sim;
use baton_engine::pipeline::ScheduleKind;
use baton_engine::{Optimizer, ParamStore, Trainer};
use baton_models::checkpoint::{self, DiskStore, RunSettings};
use baton_models::{io, spec};
use common::{bit_identical, Golden};

/// Worker counts before and after the resume.
const MOVES: [(usize, usize); 3] = [(1, 3), (3, 2), (2, 1)];

/// A golden run, with its clip (the GPT golden clips).
struct Run {
    golden: Golden,
    clip: Option<f32>,
}

impl Run {
    fn load(name: &str, tolerance: f32) -> Run {
        let golden = Golden::load(name, tolerance);
        let meta = io::read_metadata(&golden.path).unwrap();
        let optimizer: serde_json::Value = serde_json::from_str(&meta["optimizer"]).unwrap();
        let clip = optimizer["clip_grad_norm"].as_f64().map(|c| c as f32);
        Run { golden, clip }
    }

    /// The uninterrupted one-process run: final weights and losses.
    fn reference(&self) -> (ParamStore, Vec<f32>) {
        let g = &self.golden;
        let model = spec::parse(&g.spec).unwrap();
        let mut trainer = Trainer::new(model, g.params.clone(), Optimizer::new(g.optimizer))
            .unwrap()
            .with_clip_grad_norm(self.clip)
            .unwrap();
        let losses =
            g.data.iter().enumerate().map(|(s, b)| trainer.step(s as u32, b, g.micro_batches).unwrap()).collect();
        (trainer.params, losses)
    }

    /// A job of `steps` steps from `checkpoint.first_step` on `workers`.
    fn plan(&self, workers: usize, params: ParamStore, checkpoint: CheckpointPlan, steps: usize) -> JobPlan {
        let first = checkpoint.first_step as usize;
        JobPlan {
            params,
            batches: self.golden.data[first..steps].to_vec(),
            clip_grad_norm: self.clip,
            checkpoint,
            ..self.golden.job_plan(workers, ScheduleKind::OneFOneB)
        }
    }

    fn store(&self, dir: &Path) -> DiskStore {
        let g = &self.golden;
        let run = RunSettings {
            spec: g.spec.clone(),
            optimizer: g.optimizer.to_string(),
            lr_schedule: "constant".into(),
            microbatches: g.micro_batches,
            batch: g.data[0].rows(),
            seed: 0,
            clip_grad_norm: self.clip,
            data: g.path.display().to_string(),
            steps: g.steps,
        };
        DiskStore { dir: dir.to_path_buf(), run, tokens: BTreeMap::new() }
    }

    /// Trains `stop` steps on `before` workers with a checkpoint at the
    /// end, then resumes from the directory on `after` workers to the end.
    fn checkpoint_and_resume(&self, before: usize, after: usize, stop: usize, seed: u64) -> JobOutcome {
        let dir = tempfile::tempdir().unwrap();
        let dir_text = Some(dir.path().display().to_string());
        let first = CheckpointPlan { dir: dir_text.clone(), ..Default::default() };
        let plan = self.plan(before, self.golden.params.clone(), first, stop);
        let mut store = self.store(dir.path());
        sim::run_job_with_checkpoints(plan, &spec::factory, seed, &mut store).unwrap();
        let loaded = checkpoint::load(dir.path()).unwrap();
        assert_eq!(loaded.manifest.next_step as usize, stop);
        assert_eq!(loaded.manifest.parts.len(), before, "one part per stage");
        let resume = CheckpointPlan { dir: dir_text, every: 0, first_step: stop as u32, optim: loaded.optim };
        let plan = self.plan(after, loaded.params, resume, self.golden.steps);
        sim::run_job_with_checkpoints(plan, &spec::factory, seed + 1, &mut store).unwrap()
    }

    fn check_moves(&self, name: &str, stop: usize) {
        let (reference, losses) = self.reference();
        for (i, (before, after)) in MOVES.into_iter().enumerate() {
            let out = self.checkpoint_and_resume(before, after, stop, 40 + i as u64);
            let what = format!("{name}: checkpoint at step {stop} on {before} workers, resumed on {after}");
            assert!(bit_identical(&out.params, &reference), "{what}: weights differ from one uninterrupted process");
            assert_eq!(out.losses, losses[stop..], "{what}: losses of the resumed steps");
        }
    }
}

#[test]
fn sgd_momentum_resumes_bit_identically_across_worker_counts() {
    let run = Run::load("mlp12_sgd", 1e-4);
    assert!(run.golden.steps > 3, "the golden run must outlast the checkpoint");
    run.check_moves("mlp12_sgd", 3);
}

#[test]
fn adam_resumes_bit_identically_across_worker_counts() {
    Run::load("mlp12_adam", 1e-4).check_moves("mlp12_adam", 3);
}

#[test]
fn the_golden_gpt_resumes_bit_identically_across_worker_counts() {
    let run = Run::load("gpt12_adamw", 1e-3);
    assert!(run.clip.is_some(), "the GPT golden clips");
    run.check_moves("gpt12_adamw", run.golden.steps / 2);
}

/// Checkpoints every step: each generation replaces the one before, and the
/// parts' optimizer state is the per-parameter state (names as PyTorch's).
#[test]
fn every_step_checkpoints_keep_one_complete_generation() {
    let run = Run::load("mlp12_adam", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let plan = CheckpointPlan { dir: Some(dir.path().display().to_string()), every: 1, ..Default::default() };
    let steps = run.golden.steps;
    let mut store = run.store(dir.path());
    let out = sim::run_job_with_checkpoints(
        run.plan(3, run.golden.params.clone(), plan, steps),
        &spec::factory,
        5,
        &mut store,
    )
    .unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        vec![checkpoint::generation_name(steps as u32), "latest".to_string()],
        "older generations pruned"
    );
    let loaded = checkpoint::load(dir.path()).unwrap();
    assert!(bit_identical(&loaded.params, &out.params), "the last checkpoint holds the final weights");
    let part = dir.path().join(checkpoint::generation_name(steps as u32)).join(&loaded.manifest.parts[0].file);
    let state = io::load_tensors(&part, "optim.").unwrap();
    for name in ["exp_avg.layers.0.weight", "exp_avg_sq.layers.0.weight"] {
        let buffer = state.get(name).unwrap_or_else(|_| panic!("{name} missing from {}", part.display()));
        assert_eq!(buffer.shape(), out.params.get("layers.0.weight").unwrap().shape(), "{name}");
    }
    let steps_done = loaded.optim.iter().find(|(n, _)| n == "layers.0.weight").unwrap().1.step;
    assert_eq!(steps_done, steps as u64, "Adam's step count of layers.0.weight");
}
