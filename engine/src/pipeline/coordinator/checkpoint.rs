//! The coordinator's part of checkpoints: snapshots at step boundaries,
//! gathering the written parts, and a stop that waits for its checkpoint.

use std::collections::BTreeSet;

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
        if let Some(error) = error {
            return Err(Error::Usage(format!("worker {worker} could not write its checkpoint part: {error}")));
        }
        let (_, parts) = self.saving.get_mut(&step).ok_or_else(|| {
            Error::peer(format!("worker {worker}"), format!("it saved a checkpoint of step {step} nobody asked for"))
        })?;
        let part = part.ok_or_else(|| Error::peer(format!("worker {worker}"), "its `saved` holds no part"))?;
        parts.push(part);
        let effects = self.complete_checkpoints();
        if effects.is_empty() {
            return Ok(effects);
        }
        let mut effects = effects;
        match self.stopping.clone() {
            Some(reason) if self.saving.is_empty() && self.phase == Phase::Finishing => {
                effects.extend(self.fail(reason));
            }
            _ => effects.extend(self.maybe_done()),
        }
        Ok(effects)
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
