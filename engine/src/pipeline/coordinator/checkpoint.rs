//! The coordinator's part of checkpoints: snapshots at step boundaries,
//! gathering the written parts, and a stop that waits for its checkpoint.
//!
//! A checkpoint generation whose part is owed by a worker that is lost (a
//! crash, or a preempted worker killed after handing off its layers but
//! before its write was reported) is abandoned, never waited for: the
//! part cannot be written by anyone else, since the snapshot died with the
//! worker and the layers' new holders have moved past that boundary (they
//! may have applied later updates). The previous checkpoint stays valid:
//! nothing of the abandoned generation was committed, and a generation is
//! pruned only by a newer commit. Later generations still commit, in step
//! order.

use std::collections::{BTreeMap, BTreeSet};

use super::{CoordEffect, Coordinator, Phase};
use crate::optim::OptState;
use crate::pipeline::checkpoint::SavedPart;
use crate::pipeline::protocol::{Message, Placement};
use crate::{Error, Result};

impl Coordinator {
    /// Every step before `next` is complete: snapshot when a checkpoint is
    /// due (or a stop waits for one), else go on.
    pub(super) fn at_boundary(&mut self, next: u32) -> Result<Vec<CoordEffect>> {
        if self.plan.checkpoint.due(next, self.total_steps()) || self.stopping.is_some() {
            return Ok(self.snapshot(next));
        }
        self.advance(next)
    }

    /// Starts step `next`, or ends the run after the last step.
    pub(super) fn advance(&mut self, next: u32) -> Result<Vec<CoordEffect>> {
        if next < self.total_steps() {
            return self.start_step(next);
        }
        self.phase = Phase::Finishing;
        let mut effects: Vec<CoordEffect> =
            self.members().into_iter().map(|w| CoordEffect::Send { worker: w, message: Message::Finish }).collect();
        effects.extend(self.turn_away_joiners());
        Ok(effects)
    }

    /// The run's last step + 1 (its `--steps`).
    pub(super) fn total_steps(&self) -> u32 {
        self.plan.checkpoint.first_step + self.plan.batches.len() as u32
    }

    /// The job is done once every final state and every checkpoint part is in.
    pub(super) fn maybe_done(&mut self) -> Vec<CoordEffect> {
        if self.phase != Phase::Finishing || self.finals.len() < self.placements.len() || !self.saving.is_empty() {
            return Vec::new();
        }
        self.phase = Phase::Over;
        vec![CoordEffect::Done(Box::new(self.outcome()))]
    }

    /// Asks every member to snapshot its layers at the boundary before
    /// `next`; step `next` starts once all have answered.
    pub(super) fn snapshot(&mut self, next: u32) -> Vec<CoordEffect> {
        self.phase = Phase::Snapshotting { next, acks: BTreeSet::new() };
        self.saving.insert(next, (self.placements.len(), Vec::new()));
        let owed = self.placements.iter().map(|p| (p.worker, (p.first, p.end))).collect();
        self.ledger.owed.insert(next, owed);
        let ask = |w| CoordEffect::Send { worker: w, message: Message::Snapshot { step: next } };
        self.members().into_iter().map(ask).collect()
    }

    pub(super) fn on_snapshotted(&mut self, worker: u32, step: u32) -> Result<Vec<CoordEffect>> {
        let members = self.members();
        let Phase::Snapshotting { next, acks } = &mut self.phase else {
            return Err(Error::peer(
                format!("worker {worker}"),
                format!("its snapshot of step {step} came out of turn"),
            ));
        };
        if *next != step || !members.contains(&worker) || !acks.insert(worker) {
            return Err(Error::peer(
                format!("worker {worker}"),
                format!("its snapshot of step {step} came out of turn"),
            ));
        }
        if acks.len() < members.len() {
            return Ok(Vec::new());
        }
        let next = *next;
        match self.stopping.clone() {
            // Stopped: no further step; the job fails once the parts are written.
            Some(_) => {
                self.phase = Phase::Finishing;
                Ok(Vec::new())
            }
            None => self.advance(next),
        }
    }

    pub(super) fn on_saved(
        &mut self,
        worker: u32,
        step: u32,
        part: Option<SavedPart>,
        error: Option<String>,
    ) -> Result<Vec<CoordEffect>> {
        if self.ledger.is_stale(worker, step, part.as_ref()) {
            return Ok(Vec::new()); // a part of an abandoned generation
        }
        if let Some(error) = error {
            return Err(Error::Usage(format!("worker {worker} could not write its checkpoint part: {error}")));
        }
        let (_, parts) = self.saving.get_mut(&step).ok_or_else(|| {
            Error::peer(format!("worker {worker}"), format!("it saved a checkpoint of step {step} nobody asked for"))
        })?;
        let part = part.ok_or_else(|| Error::peer(format!("worker {worker}"), "its `saved` holds no part"))?;
        parts.push(part);
        if let Some(owed) = self.ledger.owed.get_mut(&step) {
            owed.remove(&worker);
        }
        let mut effects = self.after_saving();
        // A fallback that waited for this commit is planned now.
        let awaited = self.recovery.as_mut().filter(|r| r.awaiting_checkpoint && self.ledger.committed.is_some());
        if let Some(r) = awaited {
            r.awaiting_checkpoint = false;
            effects.extend(self.plan_restore()?);
        }
        Ok(effects)
    }

    /// Commits what is complete; a stop waiting for its checkpoint then
    /// fails the job, a finished job is done.
    fn after_saving(&mut self) -> Vec<CoordEffect> {
        let mut effects = self.complete_checkpoints();
        match self.stopping.clone() {
            Some(reason) if self.saving.is_empty() && self.phase == Phase::Finishing => {
                effects.extend(self.fail(reason));
            }
            _ => effects.extend(self.maybe_done()),
        }
        effects
    }

    /// `worker` is gone: every checkpoint it still owes a part of is
    /// abandoned (see the module's doc), so none is waited for forever.
    pub(super) fn abandon_owed_by(&mut self, worker: u32) -> Vec<CoordEffect> {
        let owed = self.ledger.owed.iter().filter(|(_, o)| o.contains_key(&worker));
        let steps: Vec<u32> = owed.map(|(s, _)| *s).collect();
        if steps.is_empty() {
            return Vec::new();
        }
        steps.into_iter().for_each(|s| self.abandon(s));
        self.after_saving()
    }

    /// Gives up every checkpoint still being written (a fallback: a commit
    /// while the survivors load would prune the generation they read).
    pub(super) fn abandon_all(&mut self) {
        let steps: Vec<u32> = self.saving.keys().copied().collect();
        steps.into_iter().for_each(|s| self.abandon(s));
    }

    fn abandon(&mut self, step: u32) {
        self.saving.remove(&step);
        self.ledger.owed.remove(&step);
        self.ledger.abandoned.push(step);
    }

    /// Every checkpoint whose parts are all in, oldest first, up to the
    /// first one still being written: checkpoints are committed in step
    /// order (a newer one prunes the older ones), whatever order the
    /// workers' writes finish in.
    fn complete_checkpoints(&mut self) -> Vec<CoordEffect> {
        let mut effects = Vec::new();
        while let Some(entry) = self.saving.first_entry() {
            let (due, parts) = entry.get();
            if parts.len() < *due {
                break;
            }
            let (step, (_, mut parts)) = entry.remove_entry();
            parts.sort_by_key(|p| p.first);
            self.ledger.owed.remove(&step);
            self.ledger.committed = Some((step, parts.clone()));
            effects.push(CoordEffect::Checkpoint { step, parts });
        }
        effects
    }

    /// A stop (SIGINT, SIGTERM): with checkpoints, the step in progress
    /// ends, its checkpoint is written, and then the job fails with
    /// `reason`; without (or before training), it fails at once.
    pub(super) fn on_stop(&mut self, reason: String) -> Vec<CoordEffect> {
        if !self.stops_with_checkpoint() || self.stopping.is_some() {
            return self.fail(reason);
        }
        self.stopping = Some(reason);
        Vec::new()
    }

    /// True when a stop now would first end the step and write a checkpoint
    /// (checkpoints are on and training runs); else it fails the job at once.
    pub fn stops_with_checkpoint(&self) -> bool {
        let running =
            matches!(self.phase, Phase::Running { .. } | Phase::Evaluating { .. } | Phase::Snapshotting { .. });
        self.plan.checkpoint.dir.is_some() && running
    }

    /// True while a stop waits for its checkpoint.
    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The optimizer state of `placement`'s layers, from the checkpoint resumed from.
    pub(super) fn optim_of(&self, placement: Option<&Placement>) -> Vec<(String, OptState)> {
        let Some(p) = placement else { return Vec::new() };
        let prefixes: Vec<String> = (p.first..p.end).map(|l| format!("layers.{l}.")).collect();
        let mine = |name: &str| prefixes.iter().any(|prefix| name.starts_with(prefix.as_str()));
        self.plan.checkpoint.optim.iter().filter(|(name, _)| mine(name)).cloned().collect()
    }
}

/// What the coordinator knows of checkpoints besides the parts coming in.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// The newest checkpoint handed to the driver to commit (step, parts):
    /// what a fallback after a crash loads.
    pub(super) committed: Option<(u32, Vec<SavedPart>)>,
    /// Per checkpoint being written: the workers whose part is still due,
    /// with the layer range each snapshotted.
    pub(super) owed: BTreeMap<u32, BTreeMap<u32, (u32, u32)>>,
    /// Checkpoints given up, in order (their steps).
    pub(super) abandoned: Vec<u32>,
}

impl Ledger {
    /// True for a `Saved` of an abandoned generation: the step was
    /// abandoned and this worker owes no part of that range now (a part of
    /// the same range written again is the same bytes, so it counts).
    fn is_stale(&self, worker: u32, step: u32, part: Option<&SavedPart>) -> bool {
        let owes = self.owed.get(&step).and_then(|o| o.get(&worker));
        let fits = owes.is_some_and(|r| part.is_none_or(|p| (p.first, p.end) == *r));
        self.abandoned.contains(&step) && !fits
    }
}
