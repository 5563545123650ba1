//! The coordinator's side of a loss without notice (a process exit, a lost
//! connection, a worker silent past the peer timeout): the step in
//! progress is abandoned everywhere, the lost layers are restored on the
//! survivors from their replicas, and the step is redone from its start.
//!
//! Rollback → every survivor reports which layers it holds at the step's
//! start (`clean`) and which valid replicas → the coordinator plans the
//! partition over the survivors and names a source for every layer →
//! `Restore` (the sources hand the layers to their new owners, through
//! the same handovers as a migration) → `Resumed` from every member →
//! the step starts again. A migration under way is cancelled: its leaving
//! workers act as sources and then retire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{CoordEffect, Coordinator, Phase};
use crate::pipeline::migrate::MovedBytes;
use crate::pipeline::protocol::{Message, Placement, Span, WorkDone};
use crate::pipeline::worker::owner_in;
use crate::pipeline::{Layout, Partition};
use crate::{Error, Result};

/// How the job survives crashes without notice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultTolerance {
    /// Keep in-memory replicas of a neighbour's layers (`--replicas on`).
    pub replicas: bool,
    /// A worker silent this long counts as lost (`--peer-timeout`).
    pub peer_timeout: Duration,
}

impl Default for FaultTolerance {
    fn default() -> Self {
        FaultTolerance { replicas: true, peer_timeout: Duration::from_secs(5) }
    }
}

/// One loss survived, for the run report.
#[derive(Clone, Debug, PartialEq)]
pub struct CrashRecord {
    /// The generation the restore began.
    pub generation: u32,
    pub lost: Vec<u32>,
    /// The step abandoned and redone.
    pub step: u32,
    pub reason: String,
    /// When the coordinator noticed the loss, since the job started.
    pub detected_at: Duration,
    /// From the detection until every lost layer was restored on a survivor.
    pub restored_after: Duration,
    /// From the detection until the redone step's first loss came in.
    pub resumed_after: Option<Duration>,
    /// Parameters and optimizer state moved to restore.
    pub bytes: MovedBytes,
    pub before: Partition,
    pub after: Partition,
    /// When no survivor held some lost layer: the job fell back to the
    /// checkpoint before this step, and redid every step from it.
    pub checkpoint: Option<u32>,
}

/// A recovery under way.
#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) generation: u32,
    step: u32,
    lost: BTreeSet<u32>,
    reason: String,
    detected_at: Duration,
    survivors: Vec<u32>,
    /// Each survivor's rollback report: (clean layers, valid replicas).
    rolled: BTreeMap<u32, (Vec<u32>, Vec<u32>)>,
    /// Once planned: the new partition and placements.
    pub(super) planned: Option<(Partition, Vec<Placement>)>,
    migrated: BTreeMap<u32, MovedBytes>,
    resumed: BTreeSet<u32>,
    /// Once a fallback is planned: the checkpoint's step. A loss during a
    /// fallback falls back again (the survivors' layers are then a mix).
    pub(super) fallback: Option<u32>,
    /// A fallback is due, nothing is committed yet, and a checkpoint is
    /// still being written whose missing parts only survivors owe (the lost
    /// workers' debts were abandoned): the plan waits for its commit. Each
    /// survivor's write either reports its part, fails the job with its
    /// error, or ends with the survivor's loss, which starts a new recovery.
    pub(super) awaiting_checkpoint: bool,
}

impl Recovery {
    /// Workers taking part in the recovery.
    pub(super) fn survivors(&self) -> Vec<u32> {
        self.survivors.clone()
    }
}

impl Coordinator {
    /// A member is gone without notice: with replicas, the step in progress
    /// is rolled back everywhere (again, if a recovery was under way);
    /// without, or outside training, the job fails.
    pub(super) fn on_lost(&mut self, worker: u32, reason: String) -> Result<Vec<CoordEffect>> {
        let Phase::Running { step, .. } = self.phase else { return Err(Error::Lost { worker, reason }) };
        if !self.plan.faults.replicas {
            return Err(Error::Lost { worker, reason });
        }
        if self.lost.contains(&worker) {
            return Ok(Vec::new());
        }
        let in_migration = self.migration.as_ref().is_some_and(|m| m.involves(worker));
        let in_recovery = self.recovery.as_ref().is_some_and(|r| r.survivors.contains(&worker));
        self.lingering.remove(&worker);
        if !self.members().contains(&worker) && !in_migration && !in_recovery {
            return Err(Error::Lost { worker, reason });
        }
        self.lost.insert(worker);
        let previous = self.recovery.take();
        // Leavers still waiting for the step to end hold copies too.
        let mut survivors: BTreeSet<u32> = match &previous {
            Some(r) => r.survivors.iter().copied().collect(),
            None => self.members().into_iter().chain(self.lingering.iter().copied()).collect(),
        };
        let mut generation = self.generation.max(previous.as_ref().map_or(0, |r| r.generation));
        if let Some(m) = self.migration.take() {
            let (g, notices, joining) = m.cancel();
            generation = generation.max(g);
            survivors.extend(joining);
            self.notices.extend(notices.into_iter().filter(|n| !self.lost.contains(&n.0)));
        }
        survivors.retain(|w| !self.lost.contains(w));
        if survivors.is_empty() {
            return Err(Error::Lost { worker, reason: format!("{reason}, and no worker is left") });
        }
        self.restart_step(step);
        let generation = generation + 1;
        self.work.rolled_back(generation, step);
        let survivors: Vec<u32> = survivors.into_iter().collect();
        let effects = survivors
            .iter()
            .map(|&w| {
                let starts = self.starts_sent.get(&w).copied().unwrap_or(0);
                CoordEffect::Send { worker: w, message: Message::Rollback { generation, step, starts } }
            })
            .collect();
        let lost = self.lost.clone();
        let reason = match &previous {
            Some(r) => format!("{}; then worker {worker}: {reason}", r.reason),
            None => format!("worker {worker}: {reason}"),
        };
        let fallback = previous.as_ref().and_then(|r| r.fallback);
        let detected_at = previous.map_or(self.now, |r| r.detected_at);
        self.recovery = Some(Recovery {
            generation,
            step,
            lost,
            reason,
            detected_at,
            survivors,
            rolled: BTreeMap::new(),
            planned: None,
            migrated: BTreeMap::new(),
            resumed: BTreeSet::new(),
            fallback,
            awaiting_checkpoint: false,
        });
        Ok(effects)
    }

    /// Forgets everything the coordinator counted of the abandoned attempt.
    fn restart_step(&mut self, step: u32) {
        let recorded = self.step_losses.as_ref().map_or(0, |b| b.recorded() as u64);
        self.microbatch_losses -= recorded;
        if let Some(book) = self.step_losses.as_mut() {
            *book = super::StepLosses::new(book.rows().to_vec());
        }
        self.phase = Phase::Running { step, updated: vec![false; self.plan.costs.len()] };
        self.clip = Default::default();
        self.replica_book = Default::default();
    }

    /// True while a recovery runs: messages of the abandoned attempt are ignored.
    pub(super) fn recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// A survivor rolled back; once all did, the restore is planned.
    pub(super) fn on_rolled_back(
        &mut self,
        worker: u32,
        generation: u32,
        clean: Vec<u32>,
        replicas: Vec<u32>,
    ) -> Result<Vec<CoordEffect>> {
        let Some(r) = self.recovery.as_mut().filter(|r| r.generation == generation) else { return Ok(Vec::new()) };
        r.rolled.insert(worker, (clean, replicas));
        if r.survivors.iter().any(|w| !r.rolled.contains_key(w)) {
            return Ok(Vec::new());
        }
        self.plan_restore()
    }

    /// The partition over the survivors (not those leaving with a notice)
    /// and a source for every layer with parameters: a survivor that holds
    /// it at the step's start, else one with its replica.
    pub(super) fn plan_restore(&mut self) -> Result<Vec<CoordEffect>> {
        let r = self.recovery.as_ref().expect("called during a recovery");
        let leaving: BTreeSet<u32> = self.notices.iter().map(|n| n.0).chain(self.lingering.iter().copied()).collect();
        let members: Vec<u32> = r.survivors.iter().copied().filter(|w| !leaving.contains(w)).collect();
        if members.is_empty() {
            return Err(Error::Usage(format!("{}: every surviving worker is leaving", r.reason)));
        }
        let partition = Partition::balanced(&self.plan.costs, members.len())?;
        let placements = self.placements_for(&partition, &members);
        let (mut sources, mut missing) = (Vec::new(), Vec::new());
        for layer in 0..self.plan.costs.len() as u32 {
            if self.plan.params.with_prefix(&format!("layers.{layer}.")).is_empty() {
                continue;
            }
            let owner = owner_in(&placements, layer)?;
            match pick_source(&r.rolled, layer, owner) {
                Some(source) => sources.push((layer, source)),
                None => missing.push(layer),
            }
        }
        if !missing.is_empty() || r.fallback.is_some() {
            return self.plan_fallback(partition, placements, &missing);
        }
        let (generation, step) = (r.generation, r.step);
        let effects = r
            .survivors
            .iter()
            .map(|&w| CoordEffect::Send {
                worker: w,
                message: Message::Restore {
                    generation,
                    step,
                    placements: placements.clone(),
                    sources: sources.clone(),
                },
            })
            .collect();
        self.recovery.as_mut().expect("checked above").planned = Some((partition, placements));
        Ok(effects)
    }

    /// No survivor holds these layers, neither as its own nor as a replica
    /// (a worker and the holder of its replica were lost together), and no
    /// checkpoint was committed to fall back to: the job fails, naming
    /// what was lost.
    pub(super) fn no_replica(&mut self, layers: &[u32]) -> Vec<CoordEffect> {
        let r = self.recovery.as_ref().expect("called during a recovery");
        let lost: Vec<u32> = r.lost.iter().copied().collect();
        let abandoned = match &self.ledger.abandoned[..] {
            [] => String::new(),
            steps => format!(" (abandoned, a lost worker owing its part: the checkpoints before steps {steps:?})"),
        };
        self.fail(format!(
            "layers {} were lost with workers {lost:?} ({}): no surviving worker holds them or a replica of them, \
             and there is no checkpoint to fall back to{abandoned}",
            layer_list(layers),
            r.reason
        ))
    }

    /// A source delivered its layers during a recovery.
    pub(super) fn on_restore_shipped(
        &mut self,
        worker: u32,
        generation: u32,
        bytes: MovedBytes,
        farewell: Option<(WorkDone, Vec<Span>)>,
    ) -> Result<Vec<CoordEffect>> {
        let Some(r) = self.recovery.as_mut().filter(|r| r.generation == generation) else { return Ok(Vec::new()) };
        r.migrated.insert(worker, bytes);
        if let Some(farewell) = farewell {
            self.work.farewells.insert(worker, farewell);
        }
        self.maybe_restored()
    }

    /// A member holds every layer of its new range.
    pub(super) fn on_restore_resumed(&mut self, worker: u32, generation: u32) -> Result<Vec<CoordEffect>> {
        let Some(r) = self.recovery.as_mut().filter(|r| r.generation == generation) else { return Ok(Vec::new()) };
        r.resumed.insert(worker);
        self.maybe_restored()
    }

    /// Once every survivor shipped and every member resumed: the new
    /// generation is in force, workers left out retire, and the abandoned
    /// step starts again.
    fn maybe_restored(&mut self) -> Result<Vec<CoordEffect>> {
        let Some(r) = &self.recovery else { return Ok(Vec::new()) };
        let Some((_, placements)) = &r.planned else { return Ok(Vec::new()) };
        let shipped = r.survivors.iter().all(|w| r.migrated.contains_key(w));
        if !shipped || placements.iter().any(|p| !r.resumed.contains(&p.worker)) {
            return Ok(Vec::new());
        }
        let r = self.recovery.take().expect("checked above");
        let (partition, placements) = r.planned.expect("checked above");
        let mut bytes = MovedBytes::default();
        r.migrated.values().for_each(|b| bytes.add(b));
        self.crashes.push(super::recovery::CrashRecord {
            generation: r.generation,
            lost: r.lost.iter().copied().collect(),
            step: r.step,
            reason: r.reason,
            detected_at: r.detected_at,
            restored_after: self.now.saturating_sub(r.detected_at),
            resumed_after: None,
            bytes,
            before: self.partition.clone(),
            after: partition.clone(),
            checkpoint: r.fallback,
        });
        (self.generation, self.partition, self.placements) = (r.generation, partition, placements);
        let members = self.members();
        self.partitions.push(Layout::new(self.generation, &self.partition, &members));
        let gone: Vec<u32> = r.survivors.iter().copied().filter(|w| !members.contains(w)).collect();
        self.retired.extend(gone.iter().copied());
        self.lingering.retain(|w| !gone.contains(w));
        self.notices.retain(|n| members.contains(&n.0));
        let restart = match r.fallback {
            Some(from) => self.forget_from(from, r.step)?,
            None => r.step,
        };
        self.redone_steps += r.step - restart + 1;
        let mut effects: Vec<CoordEffect> =
            gone.iter().map(|&w| CoordEffect::Send { worker: w, message: Message::Retire }).collect();
        effects.push(CoordEffect::Recovered(self.crashes.last().expect("pushed above").clone()));
        effects.extend(self.start_step(restart)?);
        Ok(effects)
    }

    /// The first loss of a redone step: training runs again.
    pub(super) fn note_resumed(&mut self) {
        let now = self.now;
        if let Some(c) = self.crashes.last_mut().filter(|c| c.resumed_after.is_none()) {
            c.resumed_after = Some(now.saturating_sub(c.detected_at));
        }
    }
}

/// Who sends `layer`'s step-start state: its new owner if it holds it,
/// else another survivor that holds it, else a replica (its new owner's first).
fn pick_source(rolled: &BTreeMap<u32, (Vec<u32>, Vec<u32>)>, layer: u32, owner: u32) -> Option<u32> {
    let clean = |w: &u32| rolled.get(w).is_some_and(|(c, _)| c.contains(&layer));
    let replica = |w: &u32| rolled.get(w).is_some_and(|(_, r)| r.contains(&layer));
    let workers: Vec<u32> = rolled.keys().copied().collect();
    [clean(&owner).then_some(owner), workers.iter().copied().find(clean)]
        .into_iter()
        .chain([replica(&owner).then_some(owner), workers.iter().copied().find(replica)])
        .flatten()
        .next()
}

/// `[4, 5, 6, 9]` as "4-6, 9".
fn layer_list(layers: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &l in layers {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == l => *end = l,
            _ => runs.push((l, l)),
        }
    }
    let show = |(a, b): &(u32, u32)| if a == b { a.to_string() } else { format!("{a}-{b}") };
    runs.iter().map(show).collect::<Vec<_>>().join(", ")
}

/// Replica confirmations of the step in progress.
#[derive(Debug, Default)]
pub(super) struct ReplicaBook {
    /// Layers updated whose gradient went to a replica holder: the holder.
    pub(super) awaiting: BTreeMap<u32, u32>,
    /// (layer, holder) confirmed.
    confirmed: BTreeSet<(u32, u32)>,
    /// Layers whose replica holder changed in a migration of this step.
    pub(super) moved: BTreeSet<u32>,
    /// The leaver passing those replicas died: they are not waited for.
    released: bool,
}

impl ReplicaBook {
    /// Stops waiting for the replicas that moved in this step.
    pub(super) fn forget_moved(&mut self) {
        self.released = true;
    }
}

impl Coordinator {
    /// A one-line summary of where the coordinator is, for diagnostics.
    pub fn describe(&self) -> String {
        format!(
            "coordinator ({:?}, generation {}, migration {}, recovery {}, replicas awaited {:?}, confirmed {:?})",
            self.phase,
            self.generation,
            self.migration.is_some(),
            self.recovery.is_some(),
            self.replica_book.awaiting,
            self.replica_book.confirmed
        )
    }

    /// A layer was updated; its replica holder (if any) must confirm (a
    /// holder that left, or that owns the layer now, hands the replica on:
    /// see [`Coordinator::repoint_replicas`]).
    pub(super) fn await_replica(&mut self, layer: u32, holder: Option<u32>) {
        if let Some(holder) = holder {
            self.replica_book.awaiting.insert(layer, holder);
            self.repoint_replicas();
        }
    }

    /// Holder `worker` confirmed the gradients of `step` of `layers`.
    pub(super) fn on_replicated(&mut self, worker: u32, step: u32, layers: &[u32]) -> Result<Vec<CoordEffect>> {
        match self.phase {
            Phase::Running { step: current, .. } if current == step => {
                self.replica_book.confirmed.extend(layers.iter().map(|&layer| (layer, worker)));
                self.maybe_finish_step()
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Every replica holder that is still a member confirmed its layers'
    /// gradients, so the step's updates survive the loss of any one worker.
    pub(super) fn replicas_current(&self) -> bool {
        let members = self.members();
        let book = &self.replica_book;
        let released = |l: &u32| book.released && book.moved.contains(l);
        book.awaiting.iter().all(|(l, h)| book.confirmed.contains(&(*l, *h)) || !members.contains(h) || released(l))
    }
}

/// Messages that, during a recovery, can only come from the abandoned
/// attempt (sent before the sender's rollback): ignored.
pub(super) fn is_of_abandoned_attempt(message: &Message) -> bool {
    matches!(
        message,
        Message::Loss { .. }
            | Message::LayerUpdated { .. }
            | Message::LayerNorms { .. }
            | Message::Reports { .. }
            | Message::Replicated { .. }
            | Message::Paused { .. }
    )
}
