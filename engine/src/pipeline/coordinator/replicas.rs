//! Keeping every layer protected by a replica from the first step on, and
//! across migrations (crashes without notice, DESIGN.md "Failures without
//! notice").
//!
//! Invariant: from the start of the job's first step, every layer with
//! parameters has a copy of its step-start state on a worker other than
//! its owner, or the coordinator knows it has none (and a loss of it fails
//! naming it). The first replicas come with the assignments (the
//! coordinator knows the initial values), so no seed has to arrive before
//! a crash in the first step can be survived.

use std::collections::BTreeSet;

use super::{CoordEffect, Coordinator, Phase};
use crate::pipeline::protocol::{InitialReplica, Message, Placement, ReplicaLayer};
use crate::pipeline::worker::owner_in;
use crate::Result;

impl Coordinator {
    /// The replica `worker` starts with: the layers of the stage before it
    /// in ring order (whose owner sends its step gradients here), as they
    /// are at the start of the first step. None without replicas, in a job
    /// of one worker, or for a worker that holds no layers yet (a joiner).
    pub(super) fn initial_replica(&self, worker: u32) -> Option<InitialReplica> {
        let n = self.placements.len();
        if !self.plan.faults.replicas || n < 2 || self.phase != Phase::Connecting {
            return None;
        }
        let at = self.placements.iter().position(|p| p.worker == worker)?;
        let owner = &self.placements[(at + n - 1) % n];
        let optim = self.optim_of(Some(owner));
        let layers = (owner.first..owner.end)
            .map(|layer| {
                let prefix = format!("layers.{layer}.");
                let params: Vec<_> = self.plan.params.with_prefix(&prefix).into_iter().collect();
                let optimizer = optim.iter().filter(|(n, _)| n.starts_with(&prefix)).cloned().collect();
                ReplicaLayer { layer, params, optimizer }
            })
            .filter(|r| !r.params.is_empty())
            .collect();
        Some(InitialReplica { step: self.plan.checkpoint.first_step, layers })
    }
}

impl Coordinator {
    /// Leavers of a completed migration stay until the step in progress
    /// ends: until then the replicas they held (of the layers before theirs
    /// in the ring) and the step-start copies of the layers they shipped
    /// may be the only copies of some layers' step-start state, while the
    /// new holders' seeds travel. Returns the retirements due now (none
    /// outside training).
    pub(super) fn linger(&mut self, leaving: &BTreeSet<u32>, before: &[Placement]) -> Vec<CoordEffect> {
        self.repoint_replicas();
        let layers = self.plan.costs.len() as u32;
        let moved = (0..layers).filter(|&l| ring_holder(before, l) != ring_holder(&self.placements, l));
        self.replica_book.moved.extend(moved);
        match self.plan.faults.replicas && matches!(self.phase, Phase::Running { .. }) {
            true => {
                self.lingering.extend(leaving.iter().copied());
                Vec::new()
            }
            false => leaving.iter().map(|&w| CoordEffect::Send { worker: w, message: Message::Retire }).collect(),
        }
    }

    /// The step ended: every layer's replica is confirmed on a member, so
    /// the leavers may go.
    pub(super) fn release_lingering(&mut self) -> Vec<CoordEffect> {
        let gone = std::mem::take(&mut self.lingering);
        gone.into_iter().map(|w| CoordEffect::Send { worker: w, message: Message::Retire }).collect()
    }

    /// A lingering leaver is gone before the step ended (killed at its
    /// deadline, or crashed). If a recovery counted on it, that is a second
    /// loss. Otherwise the job goes on; a replica it was still to pass on
    /// may have died with it, so the step no longer waits for the layers
    /// whose replica moved (their owners seed them again when the next
    /// step starts; until then such a layer may have no copy, and its loss
    /// would fail the run naming it).
    pub(super) fn lingerer_gone(&mut self, worker: u32, reason: String) -> Result<Vec<CoordEffect>> {
        if self.recovery.as_ref().is_some_and(|r| r.survivors().contains(&worker)) {
            return self.on_lost(worker, reason);
        }
        self.lingering.remove(&worker);
        self.replica_book.forget_moved();
        self.maybe_finish_step()
    }

    /// Awaited replica confirmations whose holder is no longer a member, or
    /// now owns the layer itself, go to the holder the owner hands the
    /// replica to: the next stage's worker in ring order (see
    /// `Worker::rehome_replicas`, which computes the same).
    pub(super) fn repoint_replicas(&mut self) {
        let members = self.members();
        let ring = |owner: u32| {
            let at = members.iter().position(|&w| w == owner)?;
            let next = members[(at + 1) % members.len()];
            (next != owner).then_some(next)
        };
        let awaiting = std::mem::take(&mut self.replica_book.awaiting);
        for (layer, holder) in awaiting {
            let Ok(owner) = owner_in(&self.placements, layer) else { continue };
            let holder = match holder == owner || !members.contains(&holder) {
                true => ring(owner),
                false => Some(holder),
            };
            if let Some(holder) = holder {
                self.replica_book.awaiting.insert(layer, holder);
            }
        }
    }
}

/// The holder of `layer`'s replica in `placements`: the next stage's
/// worker after its owner, in ring order.
fn ring_holder(placements: &[Placement], layer: u32) -> Option<u32> {
    let at = placements.iter().position(|p| (p.first..p.end).contains(&layer))?;
    let next = placements[(at + 1) % placements.len()].worker;
    (next != placements[at].worker).then_some(next)
}
