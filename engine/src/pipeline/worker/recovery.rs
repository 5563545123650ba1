//! The worker's side of surviving a crash without notice: keeping the
//! replicas of a neighbour's layers current, rolling back the step in
//! progress, restoring lost layers, and the heartbeat that lets the
//! coordinator tell a silent worker from a busy one.
//!
//! The replica of a stage's layers lives on the next stage's worker (ring
//! order). At each step start an owner seeds the replica of every layer
//! whose holder changed (the first step, after a migration or a restore);
//! after each update it sends the layer's step gradient there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{owner_in, Dest, Mode, Out, Worker, COORDINATOR};
use crate::pipeline::migrate::{Handover, LayerState, MovedBytes};
use crate::pipeline::protocol::{InitialReplica, Message, Placement};
use crate::{Error, Result};

impl Worker {
    /// The worker that should hold the replica of this worker's layers
    /// now: the next stage's, in ring order; none in a job of one.
    pub(super) fn ring_holder(&self) -> Option<u32> {
        let at = self.placements.iter().position(|p| p.worker == self.id)?;
        let next = self.placements.get((at + 1) % self.placements.len())?.worker;
        (next != self.id).then_some(next)
    }

    /// Where `layer`'s step gradient goes: the holder of its replica as of
    /// the step's start, if that worker is still a member.
    pub(super) fn replica_target(&self, layer: u32) -> Option<u32> {
        let holder = *self.holders.get(&layer)?;
        self.placements.iter().any(|p| p.worker == holder && holder != self.id).then_some(holder)
    }

    /// The replica this worker starts with (the previous stage's layers at
    /// the first step's start); this worker's own layers start replicated
    /// on the next stage's worker the same way, so the first step start
    /// seeds nothing.
    pub(super) fn take_initial_replica(&mut self, initial: Option<InitialReplica>) -> Result<()> {
        let (Some(initial), Some(replicas)) = (initial, self.replicas.as_mut()) else { return Ok(()) };
        for r in initial.layers {
            replicas.seed(initial.step, r.layer, r.params, r.optimizer)?;
        }
        if let (Some(holder), Some(stage)) = (self.ring_holder(), self.stage.as_ref()) {
            self.holders.extend(stage.held_layers().into_iter().map(|l| (l, holder)));
        }
        Ok(())
    }

    /// A step starts: replicas held here take the previous step's updates,
    /// and every own layer whose replica holder changed is seeded there.
    pub(super) fn start_replicas(&mut self, step: u32) -> Result<Vec<Out>> {
        let Some(replicas) = self.replicas.as_mut() else { return Ok(Vec::new()) };
        let mut outs = confirmations(replicas.advance(step)?);
        let Some(holder) = self.ring_holder() else {
            self.holders.clear();
            return Ok(outs);
        };
        let Some(stage) = self.stage.as_ref() else { return Ok(outs) };
        let generation = self.generation;
        for layer in stage.held_layers() {
            // A holder given in a migration got the replica from the leaver,
            // which may have died before passing all of it: seeded again.
            let provisional = self.provisional.remove(&layer);
            if self.holders.insert(layer, holder) == Some(holder) && !provisional {
                continue;
            }
            let params: Vec<_> = stage.params.with_prefix(&format!("layers.{layer}.")).into_iter().collect();
            let optimizer =
                params.iter().filter_map(|(n, _)| stage.optimizer.state(n).map(|s| (n.clone(), s.clone()))).collect();
            let message = Message::ReplicaSeed { generation, step, layer, params, optimizer };
            outs.push(Out::Send { to: Dest::Worker(holder), message });
        }
        Ok(outs)
    }

    /// After a migration: an own layer whose replica is held here (it moved
    /// to its replica holder) would die with this worker, so the replica
    /// goes on to the next stage's worker as a seed; an own layer whose
    /// holder left gets the next stage's worker as its holder, which the
    /// leaver passed its replica to (`Worker::pass_replicas`). Until that
    /// holder confirms the layer's gradient of this step, the step cannot
    /// complete and the leaver stays (its replica still counts).
    pub(super) fn rehome_replicas(&mut self) -> Result<Vec<Out>> {
        let outs = self.rehome_own_replicas()?;
        self.repoint_orphans();
        Ok(outs)
    }

    /// Own layers whose replica holder is no longer a member: held by the
    /// next stage's worker from now on.
    fn repoint_orphans(&mut self) {
        let (Some(stage), Some(next)) = (self.stage.as_ref(), self.ring_holder()) else { return };
        let member = |h: &u32| self.placements.iter().any(|p| p.worker == *h);
        for layer in stage.held_layers() {
            if self.holders.get(&layer).is_some_and(|h| !member(h)) {
                self.holders.insert(layer, next);
                self.provisional.insert(layer);
            }
        }
    }

    fn rehome_own_replicas(&mut self) -> Result<Vec<Out>> {
        let (Some(stage), Some(replicas)) = (self.stage.as_ref(), self.replicas.as_ref()) else {
            return Ok(Vec::new());
        };
        let Some(step) = stage.current_step() else { return Ok(Vec::new()) };
        let (me, next, generation) = (self.id, self.ring_holder(), self.generation);
        let valid = replicas.valid(step);
        let mut outs = Vec::new();
        for layer in stage.held_layers() {
            match (self.holders.get(&layer).copied(), next) {
                (Some(h), Some(next)) if h == me && valid.contains(&layer) => {
                    let state = replicas.layer_state(layer)?;
                    let (params, optimizer) = (state.params, state.optimizer);
                    let message = Message::ReplicaSeed { generation, step, layer, params, optimizer };
                    outs.push(Out::Send { to: Dest::Worker(next), message });
                    // Its update of this step, if its former owner applied it already.
                    if let Some(grads) = replicas.pending(step, layer) {
                        let message = Message::Replica { generation, step, layers: vec![(layer, grads)] };
                        outs.push(Out::Send { to: Dest::Worker(next), message });
                    }
                    self.holders.insert(layer, next);
                }
                (Some(h), _) if h == me => {
                    self.holders.remove(&layer);
                }
                _ => {}
            }
        }
        Ok(outs)
    }

    /// A replica's seed or gradient from its owner: kept, and confirmed to
    /// the coordinator once it can be applied. Messages of an abandoned
    /// attempt are dropped; those of a generation this worker has not
    /// reached yet wait for it.
    pub(super) fn on_replica(&mut self, from: Dest, message: Message) -> Result<Vec<Out>> {
        let Dest::Worker(sender) = from else {
            return Err(Error::peer(COORDINATOR, "it sent a replica, which only workers send"));
        };
        let generation = message.generation().unwrap_or(0);
        if generation < self.floor {
            return Ok(Vec::new());
        }
        if generation > self.generation {
            self.early.push((sender, message));
            return Ok(Vec::new());
        }
        let mut outs = self.pass_on(&message);
        let Some(replicas) = self.replicas.as_mut() else {
            return Err(Error::peer(format!("worker {sender}"), "it sent a replica to a job that keeps none"));
        };
        let due = match message {
            Message::Replica { step, layers, .. } => {
                let mut due = Vec::new();
                let mut onward: BTreeMap<u32, Vec<_>> = BTreeMap::new();
                for (layer, grads) in layers {
                    // A layer that moved here after its update: its replica
                    // went on to the next stage's worker, and so does this.
                    if let Some(&next) = self.holders.get(&layer).filter(|&&h| h != self.id) {
                        onward.entry(next).or_default().push((layer, grads.clone()));
                    }
                    due.extend(replicas.gradient(step, layer, grads)?);
                }
                let generation = self.generation;
                outs.extend(onward.into_iter().map(|(next, layers)| Out::Send {
                    to: Dest::Worker(next),
                    message: Message::Replica { generation, step, layers },
                }));
                due
            }
            Message::ReplicaSeed { step, layer, params, optimizer, .. } => {
                replicas.seed(step, layer, params, optimizer)?
            }
            other => return Err(Error::Internal(format!("{} is not a replica message", other.kind()))),
        };
        outs.extend(confirmations(due));
        Ok(outs)
    }

    /// A member was lost: abandons step `step` here (the stage rolls its
    /// own layers back, replicas drop the step's gradients), enters
    /// `generation` (messages of earlier ones are dropped from now on), and
    /// reports once the abandoned attempt's step start is in.
    pub(super) fn rollback(&mut self, generation: u32, step: u32, starts: u64) -> Result<Vec<Out>> {
        if generation < self.floor {
            return Ok(Vec::new()); // overtaken by a later rollback
        }
        (self.generation, self.floor) = (generation, generation);
        self.sent.clear();
        self.received.clear();
        // Held reports belong to the abandoned attempt.
        self.outbox.clear();
        self.replica_outbox.clear();
        self.early.retain(|(_, m)| m.generation().is_some_and(|g| g >= generation));
        if let Some(replicas) = self.replicas.as_mut() {
            replicas.rollback(step)?;
        }
        if let Some(stage) = self.stage.as_mut() {
            stage.rollback(step);
            // What this worker handed out in a restore of this step is still
            // its step-start state; its receiver may be the one lost.
            if let Some((_, sent)) = self.restore_sent.take().filter(|(s, _)| *s == step) {
                sent.into_iter().for_each(|state| stage.reinstate(state));
            }
        }
        self.holders.clear();
        self.provisional.clear();
        self.actions_in_step = (step, 0);
        self.mode = Mode::Recovering { generation, step, starts };
        self.try_report()
    }

    /// Reports the rollback once every step start the coordinator sent arrived.
    pub(super) fn try_report(&mut self) -> Result<Vec<Out>> {
        let Mode::Recovering { generation, step, starts } = self.mode else { return Ok(Vec::new()) };
        if self.step_starts < starts {
            return Ok(Vec::new());
        }
        self.mode = Mode::RolledBack;
        let clean = self.stage.as_ref().map(|s| s.held_layers()).unwrap_or_default();
        let replicas = self.replicas.as_ref().map(|r| r.valid(step)).unwrap_or_default();
        let message = Message::RolledBack { worker: self.id, generation, clean, replicas };
        // The rollback moved the attempt's work to the redone counts: said
        // first, in case this worker is lost before it reports again.
        let mut outs: Vec<Out> = self.work_report().into_iter().collect();
        outs.push(Out::Send { to: Dest::Coordinator, message });
        Ok(outs)
    }

    /// The layout after a loss: sends the step-start state of every layer
    /// this worker is the source of to its new owner (from its own layers
    /// or from a replica), takes the range it now holds, and waits for the
    /// layers coming to it. Resumes (or leaves) like after a migration.
    pub(super) fn restore(
        &mut self,
        generation: u32,
        step: u32,
        placements: Vec<Placement>,
        sources: Vec<(u32, u32)>,
    ) -> Result<Vec<Out>> {
        if generation < self.floor {
            // Overtaken by a later rollback (a member lost during this
            // restore): that generation is abandoned.
            return Ok(Vec::new());
        }
        if !matches!(self.mode, Mode::RolledBack) || generation != self.generation {
            let detail = format!("a restore of generation {generation} came out of turn ({:?})", self.mode);
            return Err(Error::peer(COORDINATOR, detail));
        }
        let me = self.id;
        let (mut outgoing, mut incoming) = (BTreeMap::<u32, Vec<LayerState>>::new(), BTreeSet::new());
        let mut local = Vec::new();
        for &(layer, source) in &sources {
            let owner = owner_in(&placements, layer)?;
            if source != me {
                if owner == me {
                    incoming.insert(source);
                }
                continue;
            }
            let state = self.step_start_state(layer)?;
            match owner == me {
                true => local.push(state),
                false => outgoing.entry(owner).or_default().push(state),
            }
        }
        let sent = outgoing.values().flatten().cloned().collect();
        self.restore_sent = Some((step, sent));
        self.take_range(&placements, step)?;
        if let Some(stage) = self.stage.as_mut() {
            let handover = Handover { layers: local, ..Handover::default() };
            stage.adopt(handover)?;
        }
        let handovers: Vec<(u32, Handover)> =
            outgoing.into_iter().map(|(owner, layers)| (owner, Handover { layers, ..Handover::default() })).collect();
        let mut bytes = MovedBytes::default();
        handovers.iter().for_each(|(_, h)| bytes.add(&h.bytes()));
        let messages = super::migration::ship_messages(generation, &placements, handovers.into_iter(), Vec::new())?;
        let mut outs = vec![Out::Ship { generation, handovers: messages, bytes }];
        self.placements = placements;
        match self.placements.iter().any(|p| p.worker == me) {
            true => self.mode = Mode::Adopting { generation, from: incoming, parts_due: BTreeMap::new() },
            false => self.mode = Mode::Leaving,
        }
        outs.extend(self.adopt_waiting()?);
        Ok(outs)
    }

    /// `layer` as it was at the start of the rolled-back step: the own copy
    /// if it is here, else the replica.
    fn step_start_state(&mut self, layer: u32) -> Result<LayerState> {
        if let Some(stage) = self.stage.as_mut().filter(|s| s.held_layers().contains(&layer)) {
            return Ok(stage.take_layer_state(layer));
        }
        match self.replicas.as_ref() {
            Some(replicas) => replicas.layer_state(layer),
            None => Err(Error::peer(COORDINATOR, format!("it named this worker the source of layer {layer}"))),
        }
    }

    /// Takes this worker's range in `placements` (dropping every other
    /// layer still held), building the stage if it had none.
    fn take_range(&mut self, placements: &[Placement], _step: u32) -> Result<()> {
        let Some(position) = placements.iter().position(|p| p.worker == self.id) else {
            if let Some(stage) = self.stage.as_mut() {
                stage.held_layers().into_iter().for_each(|l| stage.drop_layer(l));
            }
            return Ok(());
        };
        let place = &placements[position];
        let at = (position as u32, placements.len() as u32);
        match (&mut self.stage, &self.setup) {
            (Some(stage), _) => {
                let foreign: Vec<u32> =
                    stage.held_layers().into_iter().filter(|l| !(place.first..place.end).contains(l)).collect();
                foreign.into_iter().for_each(|l| stage.drop_layer(l));
                stage.reassign(place.first..place.end, at)
            }
            (None, Some(setup)) => {
                self.stage = Some(setup.stage(place.first..place.end, at, Default::default())?);
                Ok(())
            }
            (None, None) => Err(Error::peer(COORDINATOR, "a restore arrived before the assignment")),
        }
    }

    /// When the driver must call [`Worker::handle_timeout`] next (the next
    /// heartbeat), once assigned.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.heartbeat.map(|(_, next)| next)
    }

    /// The time is `now`: sends a heartbeat when one is due.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<Out> {
        let Some((interval, next)) = self.heartbeat else { return Vec::new() };
        if now < next {
            return Vec::new();
        }
        self.heartbeat = Some((interval, now + interval));
        vec![Out::Send { to: Dest::Coordinator, message: Message::Heartbeat { worker: self.id } }]
    }

    /// True when the job keeps replicas: a peer lost mid-transfer is then
    /// the coordinator's to recover from, not this worker's failure.
    pub fn survives_losses(&self) -> bool {
        self.replicas.is_some()
    }

    /// Bytes of parameters and optimizer state this worker holds in replicas.
    pub fn replica_bytes(&self) -> u64 {
        self.replicas.as_ref().map_or(0, |r| r.bytes())
    }

    /// Compute actions completed in the step in progress: (step, count).
    pub fn actions_done(&self) -> (u32, u32) {
        self.actions_in_step
    }
}

/// Confirmations to the coordinator that replicas hold these (step,
/// layer) gradients: one message per step.
fn confirmations(due: Vec<(u32, u32)>) -> Vec<Out> {
    let mut by_step: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    due.into_iter().for_each(|(step, layer)| by_step.entry(step).or_default().push(layer));
    by_step
        .into_iter()
        .map(|(step, layers)| Out::Send { to: Dest::Coordinator, message: Message::Replicated { step, layers } })
        .collect()
}
