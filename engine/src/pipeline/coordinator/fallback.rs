//! The coordinator's side of a fallback to the last checkpoint: when a
//! worker and the holder of its replica are lost together, no survivor
//! holds some layer, so the whole job goes back to the newest committed
//! checkpoint (step c) instead of failing.
//!
//! Rollback (as for any loss) → the restore plan finds a layer without a
//! source → `Fallback { step: c, placements, parts }` to every survivor:
//! each drops all its layers and replicas, reports `Migrated` (nothing
//! shipped), its driver loads its new range from the checkpoint's parts
//! (shared storage) and it reports `Resumed` → the coordinator forgets
//! what it recorded of steps c.. and starts step c; replicas are seeded
//! again at that step's start, as after any restore.

use super::{CoordEffect, Coordinator};
use crate::pipeline::plan::split_step;
use crate::pipeline::protocol::{Message, Placement};
use crate::pipeline::Partition;
use crate::{Error, Result};

impl Coordinator {
    /// No survivor holds `missing` (or a fallback was already under way):
    /// falls back to the newest committed checkpoint, giving up the ones
    /// still being written (a commit while the survivors load would prune
    /// the generation they read). With none committed yet it waits for the
    /// one still being written, if any (see `Recovery::awaiting_checkpoint`);
    /// without a checkpoint the job fails.
    pub(super) fn plan_fallback(
        &mut self,
        partition: Partition,
        placements: Vec<Placement>,
        missing: &[u32],
    ) -> Result<Vec<CoordEffect>> {
        // Before its first own checkpoint, a resumed run falls back to the
        // one it started from, if that is in its checkpoint directory (no
        // parts named: the workers read that generation's manifest).
        let first = self.plan.checkpoint.first_step;
        let resumed = (first > 0 && self.plan.checkpoint.dir.is_some()).then(|| (first, Vec::new()));
        let Some((step, parts)) = self.ledger.committed.clone().or(resumed) else {
            if self.saving.is_empty() {
                return Ok(self.no_replica(missing));
            }
            // Only survivors still owe parts of what is being written (the
            // lost workers' were abandoned): plan again once it commits.
            let r = self.recovery.as_mut().ok_or_else(|| Error::Internal("a fallback outside a recovery".into()))?;
            r.awaiting_checkpoint = true;
            return Ok(Vec::new());
        };
        self.abandon_all();
        let r = self.recovery.as_mut().ok_or_else(|| Error::Internal("a fallback outside a recovery".into()))?;
        r.fallback = Some(step);
        let generation = r.generation;
        let effects = r
            .survivors()
            .into_iter()
            .map(|w| {
                let (placements, parts) = (placements.clone(), parts.clone());
                CoordEffect::Send { worker: w, message: Message::Fallback { generation, step, placements, parts } }
            })
            .collect();
        r.planned = Some((partition, placements));
        Ok(effects)
    }

    /// Forgets what was recorded of steps `from..step` (they run again
    /// after a fallback to the checkpoint before `from`; step `step`'s own
    /// records were dropped by its rollback): losses, gradient norms,
    /// evaluations and micro-batch counts, so the report holds each step
    /// once, as an uninterrupted run's; the layer passes of those completed
    /// steps move to the redone counts in the outcome. Returns the step to
    /// start.
    pub(super) fn forget_from(&mut self, from: u32, step: u32) -> Result<u32> {
        let first = self.plan.checkpoint.first_step;
        let kept = from.checked_sub(first).ok_or_else(|| {
            Error::Internal(format!("a fallback to step {from}, before this run's first step {first}"))
        })? as usize;
        self.losses.truncate(kept);
        self.grad_norms.truncate(kept);
        self.evals.retain(|e| e.step < from);
        for redone in from..step {
            let batch = self.plan.batches.get((redone - first) as usize);
            let batch = batch.ok_or_else(|| Error::Internal(format!("step {redone} has no batch")))?;
            let rows = split_step(batch, self.plan.micro_batches)?.rows.len() as u64;
            self.microbatch_losses = self.microbatch_losses.saturating_sub(rows);
            self.refallen_layer_passes += rows * self.plan.costs.len() as u64;
        }
        Ok(from)
    }
}
