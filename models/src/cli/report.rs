//! The `--report` JSON of a training run (DESIGN.md, "CLI").
//!
//! Single-process runs have one generation with one stage and no
//! migrations; the fields are the ones multi-process runs will fill in.

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
    /// The single generation of a one-process run: worker 0 holds every layer.
    pub fn single_partition(layers: usize) -> Vec<Partition> {
        let stage = Stage {
            worker: 0,
            layers: [0, layers.saturating_sub(1)],
        };
        vec![Partition {
            generation: 0,
            stages: vec![stage],
        }]
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("encoding the run report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("--report {}: cannot write", path.display()))
    }
}
