//! The worker's side of a migration: pause, drain, ship, adopt, resume.

use std::collections::{BTreeMap, BTreeSet};

use super::{owner_in, Dest, Mode, Out, Worker, COORDINATOR};
use crate::pipeline::migrate::{Handover, MovedBytes};
use crate::pipeline::protocol::{Message, Placement};
use crate::pipeline::recompute::{keeper_of, leave_out_segments, LeftOut};
use crate::pipeline::StageEvent;
use crate::segment::Segment;
use crate::{Error, Result};

impl Worker {
    /// Stops at this action boundary and reports the data messages sent.
    pub(super) fn pause(&mut self) -> Result<Vec<Out>> {
        if let Mode::Running = self.mode {
            self.mode = Mode::Paused;
        }
        let sent = self.sent.iter().map(|(w, n)| (*w, *n)).collect();
        Ok(vec![Out::Send { to: Dest::Coordinator, message: Message::Paused { worker: self.id, sent } }])
    }

    /// An activation or gradient from a peer: counted and handed to the
    /// stage, or kept for later when it belongs to the next generation.
    pub(super) fn on_data(&mut self, from: Dest, generation: u32, message: Message) -> Result<Vec<Out>> {
        let Dest::Worker(sender) = from else {
            return Err(Error::peer(
                COORDINATOR,
                format!("it sent a {} message, which only workers send", message.kind()),
            ));
        };
        if generation > self.generation {
            self.early.push((sender, message));
            return Ok(Vec::new());
        }
        if generation < self.floor {
            // Sent in an attempt abandoned after a loss.
            return Ok(Vec::new());
        }
        if generation < self.generation {
            return Err(Error::peer(
                format!("worker {sender}"),
                format!(
                    "it sent a {} of generation {generation} after generation {} began",
                    message.kind(),
                    self.generation
                ),
            ));
        }
        *self.received.entry(sender).or_default() += 1;
        self.feed(message)?;
        self.try_ship()
    }

    fn feed(&mut self, message: Message) -> Result<()> {
        let event = match message {
            Message::Activation { step, micro, layer, tensor, .. } => {
                StageEvent::Activation { step, micro, layer, tensor }
            }
            Message::Gradient { step, micro, layer, tensor, .. } => StageEvent::Gradient { step, micro, layer, tensor },
            Message::Replay { step, micro, layer, stop, tensor, .. } => {
                StageEvent::Replay { step, micro, layer, stop, tensor }
            }
            other => return Err(Error::Internal(format!("{} is not a data message", other.kind()))),
        };
        self.stage_mut()?.handle(event)
    }

    /// Once every data message of the old generation is in, and the start
    /// of the step in progress: hands layers to their new owners and starts
    /// waiting for the layers coming here. A `StepStart` travels on the bulk
    /// lane, so the `Repartition` may overtake it; shipping before it
    /// arrives would hand over (or adopt) layers of a step this worker has
    /// not begun, and the late start would then find that step unfinished.
    pub(super) fn try_ship(&mut self) -> Result<Vec<Out>> {
        let Mode::Draining { generation, step, placements, expected } = &self.mode else { return Ok(Vec::new()) };
        if expected.iter().any(|(w, n)| self.received.get(w).copied().unwrap_or(0) < *n) {
            return Ok(Vec::new());
        }
        // A joiner has no stage and is sent no step start: its step comes in handovers.
        if self.stage.as_ref().is_some_and(|s| s.current_step() != Some(*step)) {
            return Ok(Vec::new());
        }
        let (generation, new) = (*generation, placements.clone());
        let old = std::mem::replace(&mut self.placements, new.clone());
        let (handovers, bytes) = self.release_moving(generation, &new)?;
        let mut outs = vec![Out::Ship { generation, handovers, bytes }];
        let Some(position) = new.iter().position(|p| p.worker == self.id) else {
            self.mode = Mode::Leaving;
            // Before the handovers: shipping may take until the deadline.
            let mut passed = self.pass_replicas()?;
            passed.extend(outs);
            return Ok(passed);
        };
        let place = &new[position];
        let from: BTreeSet<u32> = (place.first..place.end)
            .map(|l| owner_in(&old, l))
            .collect::<Result<BTreeSet<u32>>>()?
            .into_iter()
            .filter(|&w| w != self.id)
            .collect();
        let at = (position as u32, new.len() as u32);
        match (&mut self.stage, &self.setup) {
            (Some(stage), _) => stage.reassign(place.first..place.end, at)?,
            // A joiner builds its stage now; parameters arrive in handovers.
            (None, Some(setup)) => self.stage = Some(setup.stage(place.first..place.end, at, Default::default())?),
            (None, None) => return Err(Error::peer(COORDINATOR, "a repartition arrived before the assignment")),
        }
        self.mode = Mode::Adopting { generation, from, parts_due: BTreeMap::new() };
        outs.extend(self.adopt_waiting()?);
        Ok(outs)
    }

    /// Releases every layer whose owner changes, one handover per new
    /// owner. A leaving worker with a ship budget leaves out what does not
    /// fit and asks the keepers of the inputs for replays (the recompute
    /// fallback): those `Recompute` messages follow the handovers.
    fn release_moving(&mut self, generation: u32, new: &[Placement]) -> Result<(Vec<(u32, Message)>, MovedBytes)> {
        let (me, bf16) = (self.id, self.ship_bf16);
        let budget = self.ship_budget.filter(|_| !new.iter().any(|p| p.worker == me));
        let Some(stage) = self.stage.as_mut() else { return Ok((Vec::new(), MovedBytes::default())) };
        let mut by_owner: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for layer in stage.layers() {
            let owner = owner_in(new, layer)?;
            if owner != me {
                by_owner.entry(owner).or_default().push(layer);
            }
        }
        let mut owners = Vec::new();
        let mut handovers = Vec::new();
        for (owner, layers) in by_owner {
            let mut handover = stage.release(&layers)?;
            for layer in &mut handover.layers {
                layer.replica = self.holders.remove(&layer.layer);
            }
            if bf16 {
                handover.layers.iter_mut().flat_map(|l| &mut l.segments).for_each(Segment::compact_bf16);
            }
            owners.push(owner);
            handovers.push(handover);
        }
        let left_out = budget.map(|b| leave_out_segments(&mut handovers, b)).unwrap_or_default();
        let mut bytes = MovedBytes::default();
        handovers.iter().for_each(|h| bytes.add(&h.bytes()));
        bytes.unshipped_segments = left_out.iter().map(|l| l.bytes).sum();
        Ok((ship_messages(generation, new, owners.into_iter().zip(handovers), left_out)?, bytes))
    }

    /// A request to send a kept activation again: queued in the stage
    /// (it runs as work once this worker computes in that generation), or
    /// passed on when the keeping layer has moved since.
    pub(super) fn on_recompute(
        &mut self,
        from: Dest,
        generation: u32,
        (step, micro, layer, stop): (u32, u32, u32, u32),
    ) -> Result<Vec<Out>> {
        let request = Message::Recompute { generation, step, micro, layer, stop };
        if generation > self.generation {
            let Dest::Worker(sender) = from else {
                return Err(Error::peer(COORDINATOR, "it sent a recompute request, which only workers send"));
            };
            self.early.push((sender, request));
            return Ok(Vec::new());
        }
        let keeper = owner_in(&self.placements, keeper_of(layer))?;
        if keeper != self.id {
            let generation = self.generation;
            let message = Message::Recompute { generation, step, micro, layer, stop };
            return Ok(vec![Out::Send { to: Dest::Worker(keeper), message }]);
        }
        self.stage_mut()?.handle(StageEvent::Recompute { step, micro, layer, stop })?;
        Ok(Vec::new())
    }

    /// How many bytes this worker can still ship before its deadline (the
    /// driver's estimate from measured bandwidth); None lifts the limit.
    pub fn set_ship_budget(&mut self, bytes: Option<u64>) {
        self.ship_budget = bytes;
    }

    /// A handover for this worker: adopted now, or kept until this worker
    /// has shipped its own (its layer range changes only then).
    pub(super) fn on_handover(&mut self, from: Dest, generation: u32, handover: Handover) -> Result<Vec<Out>> {
        let Dest::Worker(sender) = from else {
            return Err(Error::peer(COORDINATOR, "it sent a handover, which only workers send"));
        };
        if generation < self.floor {
            return Ok(Vec::new());
        }
        self.early.push((sender, Message::Handover { generation, handover }));
        self.adopt_waiting()
    }

    /// Adopts the handovers that arrived, and resumes once all are in.
    pub(super) fn adopt_waiting(&mut self) -> Result<Vec<Out>> {
        let Mode::Adopting { generation, .. } = self.mode else { return Ok(Vec::new()) };
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|(_, m)| matches!(m, Message::Handover { generation: g, .. } if *g == generation));
        self.early = rest;
        for (sender, message) in ready {
            let Message::Handover { handover, .. } = message else { unreachable!("partitioned on handovers") };
            let parts = handover.parts.max(1);
            for layer in &handover.layers {
                if let Some(holder) = layer.replica {
                    self.holders.insert(layer.layer, holder);
                }
            }
            self.stage_mut()?.adopt(handover)?;
            if let Mode::Adopting { from, parts_due, .. } = &mut self.mode {
                let due = parts_due.entry(sender).or_insert(parts);
                *due -= 1;
                if *due == 0 {
                    from.remove(&sender);
                }
            }
        }
        match &self.mode {
            Mode::Adopting { from, .. } if from.is_empty() => self.resume(generation),
            _ => Ok(Vec::new()),
        }
    }

    /// Every handover is in: the new generation begins here.
    fn resume(&mut self, generation: u32) -> Result<Vec<Out>> {
        self.stage_mut()?.resume();
        // A worker noticed meanwhile stays paused: its own migration follows.
        let mode = if self.noticed { Mode::Paused } else { Mode::Running };
        (self.generation, self.mode) = (generation, mode);
        self.sent.clear();
        self.received.clear();
        let mut outs = self.rehome_replicas()?;
        outs.push(Out::Send { to: Dest::Coordinator, message: Message::Resumed { worker: self.id, generation } });
        for (sender, message) in std::mem::take(&mut self.early) {
            outs.extend(self.handle(Dest::Worker(sender), message)?);
        }
        Ok(outs)
    }
}

/// What a migration ships: each handover as one part per layer, then a
/// recompute request to the keeper of the input of each left-out micro-batch.
pub(super) fn ship_messages(
    generation: u32,
    new: &[Placement],
    handovers: impl Iterator<Item = (u32, Handover)>,
    left_out: Vec<LeftOut>,
) -> Result<Vec<(u32, Message)>> {
    let mut messages = Vec::new();
    for (owner, handover) in handovers {
        let parts = handover.into_parts().into_iter();
        messages.extend(parts.map(|handover| (owner, Message::Handover { generation, handover })));
    }
    for l in left_out {
        let keeper = owner_in(new, l.keeper_layer())?;
        let (step, micro, layer, stop) = (l.step, l.micro, l.first, l.stop);
        messages.push((keeper, Message::Recompute { generation, step, micro, layer, stop }));
    }
    Ok(messages)
}
