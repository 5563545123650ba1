//! The coordinator's decisions as a state machine without I/O: membership,
//! the partition and its generations, step progression, migrations, and the
//! end of the run.
//!
//! Events come from the driver (messages, lost peers) with the time as an
//! argument; effects tell it what to send. So every deadline and every
//! preemption point can be tested in memory.

mod checkpoint;
mod clip;
mod clock;
mod eval;
mod fallback;
mod finish;
mod membership;
mod migration;
mod recovery;
mod replicas;
mod reports;
mod work;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::checkpoint::{CheckpointPlan, SavedPart};
use super::migrate::MovedBytes;
use super::plan::{split_step, StepLosses};
use super::protocol::{Assignment, Message, Placement, PlannedNotice, Span};
use super::{Layout, Partition, ScheduleKind};
use crate::train::{Batch, Counters};
use crate::{Error, LrSchedule, OptimizerConfig, ParamStore, Result, Tensor};

use clip::ClipState;
use membership::check_protocol;
use migration::Migration;
use recovery::is_of_abandoned_attempt;
pub use recovery::{CrashRecord, FaultTolerance};
use recovery::{Recovery, ReplicaBook};

/// Everything the coordinator needs to run a job.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub spec: String,
    pub optimizer: OptimizerConfig,
    /// The learning rate of each step (`--lr-schedule`).
    pub lr_schedule: LrSchedule,
    pub schedule: ScheduleKind,
    pub micro_batches: usize,
    pub workers: usize,
    /// Per-layer costs used to balance the partition.
    pub costs: Vec<f64>,
    pub params: ParamStore,
    pub batches: Vec<Batch>,
    /// How long workers may take to register and connect.
    pub join_timeout: Duration,
    /// Scripted preemption notices (`--preempt`), by worker.
    pub notices: Vec<(u32, PlannedNotice)>,
    /// Ship saved tensors as bf16 in migrations (`--ship-dtype bf16`).
    pub ship_bf16: bool,
    /// Workers that join the running job (`--join STEP[:LOSSES]`): once step
    /// `STEP` has reported `LOSSES` micro-batch losses. They get the numbers
    /// `workers`, `workers + 1`, ...
    pub joins: Vec<(u32, u32)>,
    /// `--clip-grad-norm`: the maximum total gradient norm of a step.
    pub clip_grad_norm: Option<f32>,
    /// The run's seed (keys dropout masks on every worker).
    pub seed: u64,
    /// `--eval-data`: held-out evaluations between steps, if any.
    pub eval: Option<crate::eval::EvalPlan>,
    /// `--checkpoint-dir`, `--checkpoint-every` and `--resume`: `batches`
    /// then holds the steps from `checkpoint.first_step` on.
    pub checkpoint: CheckpointPlan,
    /// Replicas and the peer timeout (crashes without notice).
    pub faults: FaultTolerance,
}

/// What the driver reports.
#[derive(Debug)]
pub enum CoordEvent {
    /// A message from worker `worker`.
    Message { worker: u32, message: Message },
    /// The connection to `worker` is gone.
    Lost { worker: u32, reason: String },
    /// The job must stop now (the coordinator process got SIGINT or
    /// SIGTERM): every worker is told to abort, and the job fails with `reason`.
    Stop { reason: String },
}

/// What the coordinator asks the driver to do.
#[derive(Debug, PartialEq)]
pub enum CoordEffect {
    Send {
        worker: u32,
        message: Message,
    },
    /// Start worker `worker` (a planned join); launchers that cannot start
    /// processes wait for it to be started by hand.
    Spawn {
        worker: u32,
    },
    /// Step `step` is complete with minibatch-mean `loss`.
    StepFinished {
        step: u32,
        loss: f32,
    },
    /// A migration finished (for progress output).
    Migrated(MigrationRecord),
    /// An evaluation finished (after the step it names).
    EvalFinished(crate::eval::EvalPoint),
    /// Every part of the checkpoint before `step` is written: the driver
    /// writes its manifest and makes it the current checkpoint.
    Checkpoint {
        step: u32,
        parts: Vec<SavedPart>,
    },
    /// A loss without notice was survived: the lost layers are restored
    /// and the abandoned step starts again (for progress output).
    Recovered(CrashRecord),
    /// The job finished.
    Done(Box<JobOutcome>),
    /// The job cannot go on.
    Failed(String),
}

/// One completed migration, for the run report.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationRecord {
    pub generation: u32,
    /// Workers that left.
    pub leaving: Vec<u32>,
    /// Workers that joined.
    pub joining: Vec<u32>,
    /// When the (first) notice reached the coordinator, since the job started.
    pub notice_at: Duration,
    /// When the first leaving worker must be gone.
    pub deadline: Duration,
    pub bytes: MovedBytes,
    /// Longest time a worker spent delivering its handovers.
    pub ship_time: Duration,
    /// From the notice until every survivor computed again.
    pub resumed_after: Duration,
    pub before: Partition,
    pub after: Partition,
}

/// The result of a finished job.
#[derive(Debug, PartialEq)]
pub struct JobOutcome {
    pub params: ParamStore,
    pub losses: Vec<f32>,
    pub counters: Counters,
    /// The layout of every generation, in order.
    pub partitions: Vec<Layout>,
    pub migrations: Vec<MigrationRecord>,
    pub spans: BTreeMap<u32, Vec<Span>>,
    /// Micro-batch losses counted (each exactly once; M x steps when nothing was lost).
    pub microbatch_losses: u64,
    /// With clipping: each step's total gradient norm (before clipping).
    pub grad_norms: Vec<f32>,
    /// Every evaluation, in step order.
    pub evals: Vec<crate::eval::EvalPoint>,
    /// Every loss without notice the job survived.
    pub crashes: Vec<CrashRecord>,
    /// Steps abandoned after a loss and run again from their start.
    pub redone_steps: u32,
    /// Checkpoints given up because a worker owing a part was lost, or by
    /// a fallback (their steps); the checkpoint before stays valid.
    pub abandoned_checkpoints: Vec<u32>,
}

#[derive(Debug, PartialEq)]
enum Phase {
    Registering,
    Connecting,
    /// `updated[l]`: layer l received its update for `step`.
    Running {
        step: u32,
        updated: Vec<bool>,
    },
    /// The evaluation after `step`: `losses[k]` of held-out batch k, once in.
    Evaluating {
        step: u32,
        losses: Vec<Option<f32>>,
    },
    /// At the boundary before `next`: waiting for every member's snapshot.
    Snapshotting {
        next: u32,
        acks: BTreeSet<u32>,
    },
    Finishing,
    Over,
}

/// What a worker reports at the end: parameters, counters, timeline.
type FinalState = (Vec<(String, Tensor)>, Counters, Vec<Span>);

/// The coordinator of one job.
#[derive(Debug)]
pub struct Coordinator {
    plan: JobPlan,
    partition: Partition,
    generation: u32,
    phase: Phase,
    started_at: Duration,
    /// The time of the event being handled.
    now: Duration,
    addresses: BTreeMap<u32, String>,
    /// Workers of the current generation, in stage order, with their layers.
    placements: Vec<Placement>,
    ready: BTreeSet<u32>,
    retired: BTreeSet<u32>,
    /// Notices not yet acted on: (worker, when, grace).
    notices: VecDeque<(u32, Duration, Duration)>,
    migration: Option<Migration>,
    /// Joiners connected to every member, waiting for their join point.
    joiners: BTreeSet<u32>,
    /// Joiners whose process start was asked for.
    spawned: BTreeSet<u32>,
    /// Workers that connected by themselves (not a planned `--join`) and
    /// are not members yet: admitted one at a time, at the next safe point.
    hand_joiners: BTreeSet<u32>,
    /// Hand joiners registered while another joined or a migration ran,
    /// in order: each gets its assignment once the job is idle again.
    waiting: VecDeque<(u32, String)>,
    /// Since when the end of a step waits for a due joiner.
    join_wait_since: Option<Duration>,
    /// Planned joins not yet done, in order.
    joins: VecDeque<(u32, u32)>,
    losses: Vec<f32>,
    step_losses: Option<StepLosses>,
    /// Micro-batch losses recorded over the whole run.
    microbatch_losses: u64,
    finals: BTreeMap<u32, FinalState>,
    partitions: Vec<Layout>,
    migrations: Vec<MigrationRecord>,
    /// Work reported by workers that sent no final state (leavers, lost ones).
    work: work::WorkBook,
    /// With clipping: the step in progress's per-layer gradient norms, and
    /// its clip scale once every layer reported.
    clip: ClipState,
    grad_norms: Vec<f32>,
    evals: Vec<crate::eval::EvalPoint>,
    /// Checkpoints being written: by step, the parts still due and those in.
    saving: BTreeMap<u32, (usize, Vec<SavedPart>)>,
    ledger: checkpoint::Ledger,
    /// A stop (signal) waiting for the step in progress to end and its
    /// checkpoint to be written: the reason the job then fails with.
    stopping: Option<String>,
    /// A loss without notice being recovered from.
    recovery: Option<Recovery>,
    /// Members lost without notice (their late frames are ignored).
    lost: BTreeSet<u32>,
    crashes: Vec<CrashRecord>,
    redone_steps: u32,
    /// When each worker was last heard from (for the peer timeout).
    last_heard: BTreeMap<u32, Duration>,
    /// The coordinator's own stalls, discounted from silences ([`Coordinator::observe`]).
    stalls: Vec<(Duration, Duration)>,
    /// Forward (and as many backward) layer passes of completed steps that a
    /// fallback to a checkpoint made the job run again: counted as redone.
    refallen_layer_passes: u64,
    /// Step starts sent to each worker (a rollback waits for them all).
    starts_sent: BTreeMap<u32, u64>,
    replica_book: ReplicaBook,
    /// Leavers of a migration in the step in progress, kept until it ends.
    lingering: BTreeSet<u32>,
}

impl Coordinator {
    /// A coordinator waiting for `plan.workers` workers, started at `now`.
    pub fn new(plan: JobPlan, now: Duration) -> Result<Coordinator> {
        let partition = Partition::balanced(&plan.costs, plan.workers)?;
        if plan.batches.is_empty() {
            return Err(Error::Data("a job needs at least one step of data".into()));
        }
        let joins = plan.joins.iter().copied().collect();
        Ok(Coordinator {
            partitions: vec![Layout::new(0, &partition, &(0..plan.workers as u32).collect::<Vec<_>>())],
            plan,
            partition,
            generation: 0,
            phase: Phase::Registering,
            started_at: now,
            now,
            addresses: BTreeMap::new(),
            placements: Vec::new(),
            ready: BTreeSet::new(),
            retired: BTreeSet::new(),
            notices: VecDeque::new(),
            migration: None,
            joiners: BTreeSet::new(),
            spawned: BTreeSet::new(),
            hand_joiners: BTreeSet::new(),
            waiting: VecDeque::new(),
            join_wait_since: None,
            joins,
            losses: Vec::new(),
            step_losses: None,
            microbatch_losses: 0,
            finals: BTreeMap::new(),
            migrations: Vec::new(),
            work: Default::default(),
            clip: ClipState::default(),
            grad_norms: Vec::new(),
            evals: Vec::new(),
            saving: BTreeMap::new(),
            ledger: Default::default(),
            stopping: None,
            recovery: None,
            lost: BTreeSet::new(),
            crashes: Vec::new(),
            redone_steps: 0,
            last_heard: BTreeMap::new(),
            stalls: Vec::new(),
            refallen_layer_passes: 0,
            starts_sent: BTreeMap::new(),
            replica_book: ReplicaBook::default(),
            lingering: BTreeSet::new(),
        })
    }

    /// Takes in one event at time `now` and returns what to do.
    pub fn handle(&mut self, event: CoordEvent, now: Duration) -> Vec<CoordEffect> {
        self.observe(now);
        if self.phase == Phase::Over {
            return Vec::new();
        }
        let sender = match &event {
            CoordEvent::Message { worker, .. } => Some(*worker),
            _ => None,
        };
        if let Some(worker) = sender {
            self.last_heard.insert(worker, now);
        }
        if let CoordEvent::Message { worker, message: Message::Reports { reports } } = &event {
            self.work.note(*worker, reports);
        }
        let result = match event {
            CoordEvent::Lost { worker, reason } if self.lingering.contains(&worker) => {
                let abandoned = self.abandon_owed_by(worker);
                self.lingerer_gone(worker, reason).map(|effects| abandoned.into_iter().chain(effects).collect())
            }
            // A worker that delivered its final state, or retired, may go
            // away (a checkpoint part it still owed is abandoned).
            CoordEvent::Lost { worker, .. } if self.may_go(worker) => Ok(self.abandon_owed_by(worker)),
            CoordEvent::Lost { worker, .. } if self.is_pending_hand_joiner(worker) => Ok(self.forget_joiner(worker)),
            CoordEvent::Lost { worker, reason } => {
                let abandoned = self.abandon_owed_by(worker);
                self.on_lost(worker, reason).map(|effects| abandoned.into_iter().chain(effects).collect())
            }
            // Frames a lost worker sent before it died.
            CoordEvent::Message { worker, .. } if self.lost.contains(&worker) => Ok(Vec::new()),
            CoordEvent::Message { message, .. } if self.recovering() && is_of_abandoned_attempt(&message) => {
                Ok(Vec::new())
            }
            CoordEvent::Message { worker, message } => self.on_message(worker, message, now),
            CoordEvent::Stop { reason } => return self.on_stop(reason),
        };
        match (result, sender) {
            (Ok(effects), _) => effects,
            // The job does not depend on a peer that holds nothing: drop it.
            (Err(e), Some(worker)) if e.is_peer() && self.may_drop(worker) => self.drop_peer(worker, &e),
            (Err(e), _) => self.fail(e.to_string()),
        }
    }

    /// A worker may disappear once its state is safe: after its final
    /// message, after it retired, or once it has shipped its layers while
    /// leaving (e.g. killed at the end of its grace before the retire came).
    fn may_go(&self, worker: u32) -> bool {
        self.finals.contains_key(&worker)
            || self.retired.contains(&worker)
            || self.migration.as_ref().is_some_and(|m| m.has_shipped_and_leaves(worker))
    }

    fn on_message(&mut self, worker: u32, message: Message, now: Duration) -> Result<Vec<CoordEffect>> {
        let known = self.plan.workers + self.plan.joins.len();
        let registering = matches!(message, Message::Register { .. });
        if worker as usize >= known && !registering && !self.addresses.contains_key(&worker) {
            return Err(Error::peer(
                format!("worker {worker}"),
                format!("it is not part of this job of {known} workers"),
            ));
        }
        match message {
            Message::Register { protocol, address, .. } if self.is_hand_joiner(worker) => {
                self.on_hand_register(worker, protocol, address)
            }
            Message::Register { protocol, address, .. } if worker as usize >= self.plan.workers => {
                self.on_join_register(worker, protocol, address)
            }
            Message::Register { protocol, address, .. } => self.on_register(worker, protocol, address),
            Message::Ready { .. } if self.hand_joiners.contains(&worker) => self.on_join_ready(worker),
            Message::Ready { .. } if worker as usize >= self.plan.workers => self.on_join_ready(worker),
            Message::Ready { .. } => self.on_ready(worker),
            Message::Loss { step, micro, value } => self.on_loss(worker, step, micro, value),
            Message::LayerUpdated { step, layer, replica } => {
                self.await_replica(layer, replica);
                self.on_layer_updated(worker, step, layer)
            }
            Message::Replicated { step, layers } => self.on_replicated(worker, step, &layers),
            Message::Heartbeat { .. } => Ok(Vec::new()),
            Message::RolledBack { generation, clean, replicas, .. } => {
                self.on_rolled_back(worker, generation, clean, replicas)
            }
            Message::Migrated { generation, bytes, farewell, .. } if self.recovering() => {
                self.on_restore_shipped(worker, generation, bytes, farewell)
            }
            Message::Resumed { generation, .. } if self.recovering() => self.on_restore_resumed(worker, generation),
            Message::LayerNorms { step, layer, norms } => self.on_layer_norms(worker, step, layer, norms),
            Message::EvalLoss { step, batch, value } => self.on_eval_loss(worker, step, batch, value),
            Message::Reports { reports } => self.on_reports(worker, reports),
            Message::Final { params, counters, spans, .. } => self.on_final(worker, params, counters, spans),
            Message::Notice { grace_ms, .. } => self.on_notice(worker, Duration::from_millis(grace_ms), now),
            Message::Paused { sent, .. } => self.on_paused(worker, sent),
            Message::Migrated { bytes, ship_us, farewell, .. } => {
                self.on_migrated(worker, bytes, ship_us, farewell, now)
            }
            Message::Resumed { .. } => self.on_resumed(worker, now),
            Message::Snapshotted { step, .. } => self.on_snapshotted(worker, step),
            Message::Saved { step, part, error, .. } => self.on_saved(worker, step, part, error),
            Message::Abort { reason } => Err(Error::Aborted { by: format!("worker {worker}"), reason }),
            other => {
                Err(Error::peer(format!("worker {worker}"), format!("it sent an unexpected {} message", other.kind())))
            }
        }
    }

    fn on_register(&mut self, worker: u32, protocol: u32, address: String) -> Result<Vec<CoordEffect>> {
        check_protocol(worker, protocol)?;
        if self.phase != Phase::Registering || self.addresses.insert(worker, address).is_some() {
            return Err(Error::peer(format!("worker {worker}"), "it registered twice"));
        }
        if self.addresses.len() < self.plan.workers {
            return Ok(Vec::new());
        }
        self.phase = Phase::Connecting;
        self.placements = self.placements_for(&self.partition, &(0..self.plan.workers as u32).collect::<Vec<_>>());
        (0..self.plan.workers as u32)
            .map(|w| Ok(CoordEffect::Send { worker: w, message: self.assignment(w) }))
            .collect()
    }

    fn assignment(&self, worker: u32) -> Message {
        // A joiner has no layers yet: its parameters come in handovers.
        let params = match self.placements.iter().find(|p| p.worker == worker) {
            Some(mine) => {
                (mine.first..mine.end).flat_map(|l| self.plan.params.with_prefix(&format!("layers.{l}."))).collect()
            }
            None => Vec::new(),
        };
        let notices = self.plan.notices.iter().filter(|(w, _)| *w == worker).map(|(_, n)| *n).collect();
        Message::Assign(Box::new(Assignment {
            generation: self.generation,
            spec: self.plan.spec.clone(),
            optimizer: self.plan.optimizer.to_string(),
            lr_schedule: self.plan.lr_schedule,
            schedule: self.plan.schedule.to_string(),
            placements: self.placements.clone(),
            params,
            notices,
            ship_bf16: self.plan.ship_bf16,
            clip_grad_norm: self.plan.clip_grad_norm,
            seed: self.plan.seed,
            optim: self.optim_of(self.placements.iter().find(|p| p.worker == worker)),
            checkpoint_dir: self.plan.checkpoint.dir.clone(),
            replicas: self.plan.faults.replicas,
            peer_timeout_ms: u64::try_from(self.plan.faults.peer_timeout.as_millis()).unwrap_or(u64::MAX),
            replica: self.initial_replica(worker),
        }))
    }

    fn on_ready(&mut self, worker: u32) -> Result<Vec<CoordEffect>> {
        if self.phase != Phase::Connecting || !self.ready.insert(worker) {
            return Err(Error::peer(format!("worker {worker}"), "it reported ready out of turn"));
        }
        if self.ready.len() == self.plan.workers {
            return self.start_step(self.plan.checkpoint.first_step);
        }
        Ok(Vec::new())
    }

    fn members(&self) -> Vec<u32> {
        self.placements.iter().map(|p| p.worker).collect()
    }

    fn start_step(&mut self, step: u32) -> Result<Vec<CoordEffect>> {
        let index = step.checked_sub(self.plan.checkpoint.first_step).map(|i| i as usize);
        let batch = index.and_then(|i| self.plan.batches.get(i));
        let batch = batch.ok_or_else(|| Error::Internal(format!("step {step} has no batch")))?;
        let split = split_step(batch, self.plan.micro_batches)?;
        self.step_losses = Some(StepLosses::new(split.rows.clone()));
        self.phase = Phase::Running { step, updated: vec![false; self.plan.costs.len()] };
        self.clip = ClipState::default();
        let mut spawn = self.spawn_due_joiner();
        spawn.extend(self.assign_waiting_joiner());
        let first = self.placements.first().map(|p| p.worker);
        let last = self.placements.last().map(|p| p.worker);
        for w in self.members() {
            *self.starts_sent.entry(w).or_default() += 1;
        }
        self.replica_book = ReplicaBook::default();
        let starts = self.members().into_iter().map(|w| {
            let inputs = if Some(w) == first { split.inputs.clone() } else { Vec::new() };
            let targets = if Some(w) == last { split.targets.clone() } else { Vec::new() };
            let message = Message::StepStart { step, rows: split.rows.clone(), inputs, targets };
            CoordEffect::Send { worker: w, message }
        });
        spawn.extend(starts);
        spawn.extend(self.start_migration()?);
        Ok(spawn)
    }

    fn on_loss(&mut self, worker: u32, step: u32, micro: u32, value: f32) -> Result<Vec<CoordEffect>> {
        let who = || format!("worker {worker}");
        match (&self.phase, self.step_losses.as_mut()) {
            (Phase::Running { step: current, .. }, Some(book)) if *current == step => {
                book.record(micro, value).map_err(|e| match e {
                    Error::Peer { detail, .. } => Error::peer(who(), detail),
                    other => other,
                })?
            }
            _ => return Err(Error::peer(who(), format!("its loss of step {step} arrived out of turn"))),
        }
        self.microbatch_losses += 1;
        self.note_resumed();
        let mut effects = self.spawn_due_joiner();
        effects.extend(self.start_migration()?);
        effects.extend(self.maybe_finish_step()?);
        Ok(effects)
    }

    /// Losses reported so far in the step in progress.
    fn losses_in_step(&self) -> (u32, u32) {
        match (&self.phase, &self.step_losses) {
            (Phase::Running { step, .. }, Some(book)) => (*step, book.recorded() as u32),
            _ => (u32::MAX, 0),
        }
    }

    fn on_layer_updated(&mut self, worker: u32, step: u32, layer: u32) -> Result<Vec<CoordEffect>> {
        let out_of_turn =
            || Error::peer(format!("worker {worker}"), format!("it updated layer {layer} for step {step} out of turn"));
        match &mut self.phase {
            Phase::Running { step: current, updated } if *current == step => {
                let slot = updated.get_mut(layer as usize).ok_or_else(out_of_turn)?;
                if std::mem::replace(slot, true) {
                    return Err(out_of_turn());
                }
            }
            _ => return Err(out_of_turn()),
        }
        self.maybe_finish_step()
    }

    /// A step ends when every layer received its update and every loss is
    /// in; the next begins unless a migration is under way (it then begins
    /// when the migration completes).
    fn maybe_finish_step(&mut self) -> Result<Vec<CoordEffect>> {
        let Phase::Running { step, updated } = &self.phase else {
            return Ok(Vec::new());
        };
        let loss = self.step_losses.as_ref().and_then(StepLosses::total);
        let (step, Some(loss)) = (*step, loss) else {
            return Ok(Vec::new());
        };
        // A due join holds the next step until the newcomer is connected
        // (tick() fails the job if it never comes).
        let held = self.migration.is_some() || self.recovering() || !self.replicas_current();
        if !updated.iter().all(|u| *u) || held || self.join_due() {
            if self.join_due() && self.join_wait_since.is_none() {
                self.join_wait_since = Some(self.now);
            }
            return Ok(Vec::new());
        }
        self.losses.push(loss);
        let mut effects = vec![CoordEffect::StepFinished { step, loss }];
        effects.extend(self.after_step(step)?);
        Ok(effects)
    }
}
