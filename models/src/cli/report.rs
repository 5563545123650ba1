//! The `--report` JSON of a training run (DESIGN.md, "CLI").
//!
//! Runs without preemption have one generation and no migrations.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// One worker's contiguous range of layers, `[first, last]` inclusive.
#[derive(Debug, Serialize)]
pub struct Stage {
    pub worker: usize,
    pub layers: [usize; 2],
}

/// The partition in force during one generation.
#[derive(Debug, Serialize)]
pub struct Partition {
    pub generation: u64,
    pub stages: Vec<Stage>,
}

/// Work done (invariant 4: nothing lost, nothing redone).
#[derive(Debug, Serialize)]
pub struct Counters {
    pub forward_layer_executions: u64,
    pub backward_layer_executions: u64,
    pub recomputed_forward_layers: u64,
    pub lost_microbatches: u64,
}

/// A migration of layers off a preempted worker (none yet: single process).
#[derive(Debug, Serialize)]
pub struct Migration {}

/// The run report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The `--model` argument (or where the spec came from).
    pub model: String,
    pub layers: usize,
    pub steps: usize,
    pub microbatches: usize,
    pub batch: usize,
    pub optimizer: String,
    pub workers: usize,
    pub schedule: String,
    /// Minibatch-mean loss of every step, in step order.
    pub losses: Vec<f32>,
    pub partitions: Vec<Partition>,
    pub migrations: Vec<Migration>,
    pub counters: Counters,
    pub wall_seconds: f64,
}

impl Report {
    /// The partition of every generation, stage i on worker i.
    pub fn partitions(generations: &[(u32, baton_engine::pipeline::Partition)]) -> Vec<Partition> {
        let stage = |(worker, range): (usize, &std::ops::Range<u32>)| Stage {
            worker,
            layers: [range.start as usize, range.end as usize - 1],
        };
        generations
            .iter()
            .map(|(generation, p)| Partition {
                generation: u64::from(*generation),
                stages: p.stages.iter().enumerate().map(stage).collect(),
            })
            .collect()
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("encoding the run report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("--report {}: cannot write", path.display()))
    }
}
