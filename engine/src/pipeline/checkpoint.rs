//! Checkpoints as data, without I/O: what a job plans to save, what a stage
//! snapshots at a step boundary, and what a written part reports.
//!
//! The protocol: at the boundary before step `s` (every layer updated for
//! `s - 1`, `s` not started), the coordinator sends every member
//! `Snapshot { step: s }` and holds step `s` back until each answered
//! `Snapshotted`: the worker copied its layers' parameters and optimizer
//! state in memory ([`Snapshot`]) and its driver writes them while training
//! goes on. Each worker then reports `Saved` with a [`SavedPart`]; once every
//! part of `s` is in, the coordinator's driver writes the manifest and
//! switches to the new generation ([`super::coordinator::CoordEffect::Checkpoint`]).
//! The file format lives with the drivers (baton-models' `checkpoint` module).

use crate::optim::OptState;
use crate::Tensor;

/// How a job checkpoints, and where a resumed job starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointPlan {
    /// Where workers write their parts (shared storage for remote workers);
    /// None: no checkpoints.
    pub dir: Option<String>,
    /// Snapshot after every `every` completed steps (0: only at the end, or
    /// when the coordinator is stopped).
    pub every: u32,
    /// The first step to run (0, or the `next_step` of the checkpoint resumed from).
    pub first_step: u32,
    /// Optimizer state per parameter name, from the checkpoint resumed from.
    pub optim: Vec<(String, OptState)>,
}

impl CheckpointPlan {
    /// True when a snapshot is due at the boundary before `next` (of a run
    /// of `total` steps): every `every` steps and after the last.
    pub fn due(&self, next: u32, total: u32) -> bool {
        self.dir.is_some()
            && next > self.first_step
            && (next == total || (self.every > 0 && next.is_multiple_of(self.every)))
    }
}

/// One stage's state at the boundary before `step`: the parameters of
/// layers `first..end` and their optimizer state. Invariant: taken after
/// every update of step `step - 1` and before any of step `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The next step to run (steps before it are complete).
    pub step: u32,
    pub first: u32,
    pub end: u32,
    /// Parameters by PyTorch name, in name order.
    pub params: Vec<(String, Tensor)>,
    /// Optimizer state of the parameters updated so far, in name order.
    pub optim: Vec<(String, OptState)>,
}

/// A written part of a checkpoint: the file (relative to the generation's
/// directory), the layers it holds, its SHA-256 (hex) and size.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SavedPart {
    pub file: String,
    pub first: u32,
    pub end: u32,
    pub sha256: String,
    pub bytes: u64,
}

/// The state of layers `first..end` at the boundary before `step`, read
/// back from a committed checkpoint for a fallback after a crash.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    pub step: u32,
    pub first: u32,
    pub end: u32,
    /// Parameters by PyTorch name (only those of `first..end`).
    pub params: Vec<(String, Tensor)>,
    /// Their optimizer state (only parameters updated before `step`).
    pub optim: Vec<(String, OptState)>,
}

/// Where an in-memory job ([`super::sim::run_job_with_checkpoints`]) puts
/// its checkpoints: the same calls the process drivers make.
pub trait CheckpointStore {
    /// Writes one worker's snapshot into the checkpoint directory `dir`.
    fn write_part(
        &mut self,
        dir: &str,
        spec: &str,
        optimizer: &str,
        snapshot: &Snapshot,
    ) -> std::result::Result<SavedPart, String>;

    /// Every part of the checkpoint before `step` is written: commit it.
    fn commit(&mut self, step: u32, parts: &[SavedPart]) -> crate::Result<()>;

    /// Reads the state of layers `first..end` from `parts` of the
    /// checkpoint before `step` in `dir` (a fallback after a crash).
    fn load(
        &mut self,
        dir: &str,
        optimizer: &str,
        step: u32,
        layers: std::ops::Range<u32>,
        parts: &[SavedPart],
    ) -> std::result::Result<Restored, String> {
        let _ = (dir, optimizer, parts);
        Err(format!("this store cannot read back layers {layers:?} of the checkpoint before step {step}"))
    }
}
