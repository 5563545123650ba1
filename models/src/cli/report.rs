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
    /// Forwards run again: deadline-fallback replays, and the forwards of
    /// attempts abandoned after a crash (redone from the step's start).
    pub recomputed_forward_layers: u64,
    /// Backwards of attempts abandoned after a crash.
    pub abandoned_backward_layers: u64,
    pub lost_microbatches: u64,
    /// Host<->device copies of every worker's device, summed (all 0 on CPUs).
    pub device_transfers: DeviceTransfers,
    /// Steps abandoned after a worker was lost without notice and run
    /// again from their start (their forwards are in `recomputed_forward_layers`).
    pub redone_steps: u32,
}

/// Host<->device copies over the run: bytes and copies each way, until each
/// worker finished (its final parameters' download excepted).
#[derive(Debug, Serialize)]
pub struct DeviceTransfers {
    pub h2d_bytes: u64,
    pub h2d_copies: u64,
    pub d2h_bytes: u64,
    pub d2h_copies: u64,
}

impl Counters {
    /// The report's counters from the engine's, with `losses` micro-batch
    /// losses counted out of `expected` (M x steps).
    pub fn new(counters: &baton_engine::train::Counters, losses: u64, expected: u64) -> Counters {
        Counters {
            forward_layer_executions: counters.forward_layer_executions,
            backward_layer_executions: counters.backward_layer_executions,
            recomputed_forward_layers: counters.recomputed_forward_layers,
            abandoned_backward_layers: counters.abandoned_backward_layers,
            lost_microbatches: expected.saturating_sub(losses),
            device_transfers: DeviceTransfers {
                h2d_bytes: counters.device_h2d_bytes,
                h2d_copies: counters.device_h2d_copies,
                d2h_bytes: counters.device_d2h_bytes,
                d2h_copies: counters.device_d2h_copies,
            },
            redone_steps: 0,
        }
    }
}

/// Bytes moved in a migration, by kind.
#[derive(Debug, Serialize)]
pub struct Bytes {
    pub parameters: u64,
    pub optimizer_state: u64,
    pub gradients: u64,
    pub segments: u64,
    pub queued_messages: u64,
    /// Activations kept upstream for recomputation, moving with their layer.
    pub kept_activations: u64,
    pub total: u64,
    /// Saved tensors left out because they would not fit before the
    /// deadline (not in `total`): their forwards were recomputed.
    pub unshipped_segments: u64,
}

/// A migration of layers off preempted workers.
#[derive(Debug, Serialize)]
pub struct Migration {
    pub generation: u32,
    /// Workers that left (preempted).
    pub workers: Vec<u32>,
    /// Workers that joined.
    pub joined: Vec<u32>,
    /// When the notice (or the join) reached the coordinator, ms since the job started.
    pub notice_ms: f64,
    /// When the leaving worker must be gone, ms since the job started (none for a join).
    pub deadline_ms: Option<f64>,
    pub bytes: Bytes,
    pub ship_ms: f64,
    /// From the notice until every survivor computed again.
    pub resumed_after_ms: f64,
    /// What happened: a preempted worker shipped its segments, left some
    /// out to be recomputed (the deadline fallback), or the pipeline grew.
    pub action: String,
}

impl From<&baton_engine::pipeline::coordinator::MigrationRecord> for Migration {
    fn from(m: &baton_engine::pipeline::coordinator::MigrationRecord) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let b = &m.bytes;
        Migration {
            generation: m.generation,
            workers: m.leaving.clone(),
            joined: m.joining.clone(),
            notice_ms: ms(m.notice_at),
            deadline_ms: (!m.leaving.is_empty()).then(|| ms(m.deadline)),
            bytes: Bytes {
                parameters: b.parameters,
                optimizer_state: b.optimizer_state,
                gradients: b.gradients,
                segments: b.segments,
                queued_messages: b.queued_messages,
                kept_activations: b.kept_activations,
                total: b.total(),
                unshipped_segments: b.unshipped_segments,
            },
            ship_ms: ms(m.ship_time),
            resumed_after_ms: ms(m.resumed_after),
            action: action(m).into(),
        }
    }
}

fn action(m: &baton_engine::pipeline::coordinator::MigrationRecord) -> &'static str {
    match (m.leaving.is_empty(), m.bytes.unshipped_segments) {
        (true, _) => "grew: layers moved to the new worker",
        (false, 0) => "shipped segments",
        (false, _) => "deadline fallback: shipped state first, left segments out and recomputed their forwards",
    }
}

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
    /// `--lr-schedule` (`constant` by default).
    pub lr_schedule: String,
    pub workers: usize,
    pub schedule: String,
    /// Precision saved tensors were shipped in (`--ship-dtype`).
    pub ship_dtype: String,
    /// The CPU kernels' code path of the process that wrote the report
    /// (`BATON_KERNEL_ISA`; local workers inherit it). Every path gives the
    /// same bits.
    pub kernel_isa: String,
    /// False when bf16 shipping made the run differ from an uninterrupted one.
    pub bit_identical_to_uninterrupted: bool,
    /// Minibatch-mean loss of every step, in step order.
    pub losses: Vec<f32>,
    pub partitions: Vec<Partition>,
    pub migrations: Vec<Migration>,
    /// Every worker lost without notice that the run survived.
    pub crashes: Vec<Crash>,
    pub counters: Counters,
    /// With `--clip-grad-norm`: each step's total gradient norm before clipping.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grad_norms: Vec<f32>,
    /// With `--eval-data`: the held-out loss after each evaluated step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<Eval>,
    pub wall_seconds: f64,
    /// Peak resident memory of this (the coordinator's) process in KiB
    /// (`VmHWM`), where the system tells it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

/// This process's peak resident memory in KiB (`VmHWM` of /proc/self/status).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One evaluation: the mean held-out loss after training step `step` (from 0).
#[derive(Debug, Serialize)]
pub struct Eval {
    pub step: u32,
    pub loss: f32,
}

impl Report {
    /// The partition of every generation with the worker of each stage.
    pub fn partitions(layouts: &[baton_engine::pipeline::Layout]) -> Vec<Partition> {
        let stage = |(worker, range): &(u32, std::ops::Range<u32>)| Stage {
            worker: *worker as usize,
            layers: [range.start as usize, range.end as usize - 1],
        };
        layouts
            .iter()
            .map(|l| Partition { generation: u64::from(l.generation), stages: l.stages.iter().map(stage).collect() })
            .collect()
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("encoding the run report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("--report {}: cannot write", path.display()))
    }
}

/// A worker lost without notice (SIGKILL, a lost connection, silent past
/// `--peer-timeout`) that the run survived by redoing the step.
#[derive(Debug, Serialize)]
pub struct Crash {
    pub workers: Vec<u32>,
    /// The step abandoned and redone.
    pub step: u32,
    pub reason: String,
    /// When the coordinator noticed the loss, ms since the job started.
    pub detected_ms: f64,
    /// From the detection until the lost layers were restored on survivors.
    pub restore_ms: f64,
    /// From the detection until the redone step's first loss came in.
    pub resumed_after_ms: Option<f64>,
    /// Parameters and optimizer state moved to restore the layers.
    pub restored_bytes: u64,
    pub generation: u32,
    /// A worker and the holder of its replica were lost together: the run
    /// fell back to the checkpoint before this step and redid every step
    /// from it (absent when the layers came back from replicas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fell_back_to_checkpoint: Option<u32>,
}

impl From<&baton_engine::pipeline::coordinator::CrashRecord> for Crash {
    fn from(c: &baton_engine::pipeline::coordinator::CrashRecord) -> Crash {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Crash {
            workers: c.lost.clone(),
            step: c.step,
            reason: c.reason.clone(),
            detected_ms: ms(c.detected_at),
            restore_ms: ms(c.restored_after),
            resumed_after_ms: c.resumed_after.map(ms),
            restored_bytes: c.bytes.total(),
            generation: c.generation,
            fell_back_to_checkpoint: c.checkpoint,
        }
    }
}
