//! A worker's protocol logic without I/O: turns the coordinator's assignment
//! into a [`Stage`], feeds it messages, routes its effects to the owner of
//! each layer, and takes part in migrations. The driver moves the bytes and
//! runs the ready work one unit at a time (so it can time it and stop at
//! action boundaries).
//!
//! A migration, seen from one worker: `Pause` (stop at the next action
//! boundary, report how many data messages went to each peer) →
//! `Repartition` (wait until every data message of the old generation and
//! the start of the step in progress have arrived, then hand layers to
//! their new owners) → adopt the handovers addressed to it → `Resumed`.
//! Data messages carry their generation, so a message of the new generation
//! that overtakes the drain waits its turn.

mod checkpoint;
mod fallback;
mod migration;
mod recovery;
mod replicas;
mod reports;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::migrate::MovedBytes;
use super::protocol::{Assignment, Message, Placement, PlannedNotice, Report, Span};
use super::replica::Replicas;
use super::stage::Work;
use super::{Effect, ScheduleKind, Stage, StageEvent};
use crate::{Error, Model, Optimizer, ParamStore, Result};

/// Builds a model from its spec (JSON); the models crate provides it.
pub type ModelFactory = Box<dyn Fn(&str) -> Result<Model> + Send>;

/// Where a message goes, or where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Coordinator,
    Worker(u32),
}

/// What the worker asks the driver to do.
#[derive(Debug, PartialEq)]
pub enum Out {
    Send {
        to: Dest,
        message: Message,
    },
    /// Connect to these workers (the ones with a lower number; higher ones connect to us).
    Connect(Vec<Placement>),
    /// Deliver these messages (the parts of each handover, then any
    /// recompute requests of the deadline fallback), waiting until each is
    /// received; then tell the coordinator with `Migrated` how long it took
    /// ([`Worker::migrated`]).
    Ship {
        generation: u32,
        handovers: Vec<(u32, Message)>,
        bytes: MovedBytes,
    },
    /// Write this snapshot of the worker's layers into the checkpoint
    /// directory `dir` (on a thread: training goes on), then send the
    /// coordinator [`Worker::saved`]'s message.
    Save {
        dir: String,
        spec: String,
        optimizer: String,
        snapshot: Box<super::checkpoint::Snapshot>,
    },
    /// Read the state of `layers` at the boundary before `step` from these
    /// parts of the committed checkpoint in `dir` (a fallback after a
    /// crash), then hand it to [`Worker::loaded`] with `generation`.
    Load {
        generation: u32,
        dir: String,
        /// The optimizer (its text: how the parts store its state).
        optimizer: String,
        step: u32,
        layers: std::ops::Range<u32>,
        parts: Vec<super::checkpoint::SavedPart>,
    },
    /// This worker's part is over: the driver sends nothing more and exits.
    Exit,
}

/// Where the worker is in a migration.
#[derive(Debug)]
enum Mode {
    Running,
    /// Stopped at an action boundary (after a notice or a `Pause`).
    Paused,
    /// Waiting for the old generation's data messages and for the start of
    /// `step` (the coordinator's step in progress), then ships.
    Draining {
        generation: u32,
        step: u32,
        placements: Vec<Placement>,
        expected: BTreeMap<u32, u64>,
    },
    /// Shipped; waiting for handovers from these workers (with how many
    /// parts of each are still due, once the first says how many).
    Adopting {
        generation: u32,
        from: BTreeSet<u32>,
        parts_due: BTreeMap<u32, u32>,
    },
    /// Not part of the new generation: everything shipped, waiting for `Retire`.
    Leaving,
    /// A member was lost: step `step` is rolled back; waiting until
    /// `starts` step starts have arrived (a late one of the abandoned
    /// attempt is dropped), then reports.
    Recovering {
        generation: u32,
        step: u32,
        starts: u64,
    },
    /// Reported the rollback; waiting for the coordinator's `Restore`.
    RolledBack,
    /// Falling back to the checkpoint before `step`: waiting for the
    /// driver to load this worker's layers.
    Loading {
        generation: u32,
        step: u32,
    },
}

/// What a worker needs to build a stage (kept for a joiner, whose stage is
/// built when it receives layers).
struct Setup {
    model: Arc<Model>,
    kind: ScheduleKind,
    optimizer: crate::OptimizerConfig,
    clipping: bool,
    lr_schedule: crate::LrSchedule,
    /// The assignment's spec (JSON), stored with checkpoint parts.
    spec: String,
    checkpoint_dir: Option<String>,
    replicate: bool,
}

impl Setup {
    fn stage(&self, layers: std::ops::Range<u32>, at: (u32, u32), params: ParamStore) -> Result<Stage> {
        self.stage_with(layers, at, params, self.new_optimizer())
    }

    fn stage_with(
        &self,
        layers: std::ops::Range<u32>,
        at: (u32, u32),
        params: ParamStore,
        optimizer: Optimizer,
    ) -> Result<Stage> {
        let stage = Stage::new(self.model.clone(), layers, at, self.kind, params, optimizer)?;
        Ok(stage.with_clipping(self.clipping).with_replicas(self.replicate))
    }

    fn new_optimizer(&self) -> Optimizer {
        Optimizer::new(self.optimizer).with_lr_schedule(self.lr_schedule)
    }
}

/// One worker process's state.
pub struct Worker {
    pub id: u32,
    factory: ModelFactory,
    setup: Option<Setup>,
    stage: Option<Stage>,
    placements: Vec<Placement>,
    generation: u32,
    mode: Mode,
    /// Data messages sent to / received from each worker in this generation.
    sent: BTreeMap<u32, u64>,
    received: BTreeMap<u32, u64>,
    /// Messages of the next generation that arrived during a migration.
    early: Vec<(u32, Message)>,
    notices: Vec<PlannedNotice>,
    /// True once this worker was told it will be preempted.
    noticed: bool,
    /// Ship saved tensors as bf16.
    ship_bf16: bool,
    /// Bytes this worker can still ship before its deadline (set by the
    /// driver from measured bandwidth once noticed); None: no limit.
    ship_budget: Option<u64>,
    /// Compute actions completed in the step in progress (for scripted notices).
    actions_in_step: (u32, u32),
    /// Reports for the coordinator not yet sent (see `reports.rs`).
    outbox: Vec<Report>,
    /// Step gradients for replica holders not yet sent, one message per
    /// (holder, generation, step) (see `reports.rs`).
    replica_outbox: Vec<(u32, Message)>,
    pub spans: Vec<Span>,
    /// Replicas of a neighbour's layers (None when the job keeps none).
    replicas: Option<Replicas>,
    /// Where the replica of each own layer lives (as of the step's start).
    holders: BTreeMap<u32, u32>,
    /// Own layers whose holder was given in a migration: seeded again at
    /// the next step start.
    provisional: BTreeSet<u32>,
    /// Messages between workers sent before the last rollback's generation
    /// belong to an abandoned attempt and are dropped.
    floor: u32,
    /// Step starts received (the coordinator's `Rollback` says how many to wait for).
    step_starts: u64,
    /// Heartbeats to the coordinator: the interval, and when the next is due.
    heartbeat: Option<(Duration, Duration)>,
    /// Layers this worker handed to others in a restore, as of the start of
    /// the step named: kept until a later step starts, so a loss of their
    /// receiver before it is protected finds them here.
    restore_sent: Option<(u32, Vec<super::migrate::LayerState>)>,
    /// Work reports sent (orders them at the coordinator).
    work_seq: u64,
    /// The work done, once the stage is gone (finished).
    final_work: Option<super::protocol::WorkDone>,
}

impl Worker {
    pub fn new(id: u32, factory: ModelFactory) -> Worker {
        Worker {
            id,
            factory,
            setup: None,
            stage: None,
            placements: Vec::new(),
            generation: 0,
            mode: Mode::Running,
            sent: BTreeMap::new(),
            received: BTreeMap::new(),
            early: Vec::new(),
            notices: Vec::new(),
            noticed: false,
            ship_bf16: false,
            ship_budget: None,
            actions_in_step: (0, 0),
            outbox: Vec::new(),
            replica_outbox: Vec::new(),
            spans: Vec::new(),
            replicas: None,
            holders: BTreeMap::new(),
            provisional: BTreeSet::new(),
            floor: 0,
            step_starts: 0,
            heartbeat: None,
            restore_sent: None,
            work_seq: 0,
            final_work: None,
        }
    }

    /// True once this worker handed all its layers away and was told to go.
    pub fn retired(&self) -> bool {
        matches!(self.mode, Mode::Leaving)
    }

    /// True once the coordinator's assignment arrived.
    pub fn assigned(&self) -> bool {
        self.setup.is_some()
    }

    /// Workers this one must be connected to before it is ready (all others).
    pub fn peers(&self) -> Vec<u32> {
        self.placements.iter().map(|p| p.worker).filter(|&w| w != self.id).collect()
    }

    /// The message (to the coordinator) that says every peer is connected.
    pub fn ready_message(&self) -> Message {
        Message::Ready { worker: self.id }
    }

    /// The step in progress, once the stage has one.
    pub fn current_step(&self) -> Option<u32> {
        self.stage.as_ref().and_then(Stage::current_step)
    }

    /// The next ready unit of work, if any (none while a migration is under
    /// way). A noticed worker still finishes the evaluation in progress: the
    /// coordinator acts on its notice once the evaluation is over.
    pub fn ready(&self) -> Option<Work> {
        match self.mode {
            Mode::Running => self.stage.as_ref().and_then(Stage::ready),
            Mode::Paused => self.stage.as_ref().and_then(Stage::eval_ready),
            _ => None,
        }
    }

    /// A preemption notice from outside (SIGTERM, a cloud poller, the
    /// coordinator): stops at this action boundary and tells the coordinator.
    /// A notice during someone else's migration is sent at once too (the
    /// coordinator queues it); this worker finishes its part of that
    /// migration first. Only the first notice counts.
    pub fn notice(&mut self, grace_ms: u64) -> Vec<Out> {
        if std::mem::replace(&mut self.noticed, true) {
            return Vec::new();
        }
        if let Mode::Running = self.mode {
            self.mode = Mode::Paused;
        }
        let notice = Out::Send { to: Dest::Coordinator, message: Message::Notice { worker: self.id, grace_ms } };
        self.settle(vec![notice])
    }

    /// Takes in a message from the coordinator or a peer. Only the
    /// coordinator may send control messages (everything but the data and
    /// handovers workers exchange): from a worker they are refused.
    pub fn handle(&mut self, from: Dest, message: Message) -> Result<Vec<Out>> {
        let outs = self.take_in(from, message)?;
        Ok(self.settle(outs))
    }

    fn take_in(&mut self, from: Dest, message: Message) -> Result<Vec<Out>> {
        if let (Dest::Worker(w), false) = (from, message.is_between_workers()) {
            let detail = format!(
                "it sent worker {} a `{}` message, which only the coordinator may send",
                self.id,
                message.kind()
            );
            return Err(Error::peer(format!("worker {w}"), detail));
        }
        match message {
            Message::Assign(assignment) => self.assign(*assignment),
            Message::StepStart { step, rows, inputs, targets } => {
                self.step_starts += 1;
                if let Mode::Recovering { .. } = self.mode {
                    // The start of the abandoned attempt, overtaken by the rollback.
                    return self.try_report();
                }
                self.stage_mut()?.handle(StageEvent::StepStart { step, rows, inputs, targets })?;
                self.restore_sent = self.restore_sent.take().filter(|(s, _)| *s >= step);
                let mut outs = self.start_replicas(step)?;
                outs.extend(self.due_notice(step, 0));
                outs.extend(self.try_ship()?);
                Ok(outs)
            }
            Message::Replica { .. } | Message::ReplicaSeed { .. } => self.on_replica(from, message),
            Message::Rollback { generation, step, starts } => self.rollback(generation, step, starts),
            Message::Restore { generation, step, placements, sources } => {
                self.restore(generation, step, placements, sources)
            }
            Message::Fallback { generation, step, placements, parts } => {
                self.fall_back(generation, step, placements, parts)
            }
            Message::Activation { generation, .. }
            | Message::Gradient { generation, .. }
            | Message::Replay { generation, .. } => self.on_data(from, generation, message),
            Message::Recompute { generation, step, micro, layer, stop } => {
                self.on_recompute(from, generation, (step, micro, layer, stop))
            }
            Message::Preempt { grace_ms, .. } => Ok(self.notice(grace_ms)),
            Message::EvalStart { step, inputs, targets } => {
                self.stage_mut()?.handle(StageEvent::EvalStart { step, inputs, targets })?;
                Ok(Vec::new())
            }
            Message::EvalActivation { step, batch, layer, tensor } => {
                self.stage_mut()?.handle(StageEvent::EvalActivation { step, batch, layer, tensor })?;
                Ok(Vec::new())
            }
            Message::ClipScale { step, scale } => {
                if let Some(stage) = self.stage.as_mut() {
                    stage.handle(StageEvent::ClipScale { step, scale })?;
                }
                Ok(Vec::new())
            }
            // A migration cancelled by a rollback whose messages came late.
            Message::Pause { generation } | Message::Repartition { generation, .. } if generation < self.floor => {
                Ok(Vec::new())
            }
            Message::Pause { .. } => self.pause(),
            Message::Repartition { generation, step, placements, expected } => {
                self.mode = Mode::Draining { generation, step, placements, expected: expected.into_iter().collect() };
                self.try_ship()
            }
            Message::Handover { generation, handover } => self.on_handover(from, generation, handover),
            Message::Retire => Ok(vec![Out::Exit]),
            Message::Snapshot { step } => self.snapshot(step),
            Message::Finish => self.finish(),
            Message::Abort { reason } => Err(Error::Aborted { by: "the coordinator".into(), reason }),
            other => Err(Error::peer(
                describe(from),
                format!("worker {} got an unexpected {} message", self.id, other.kind()),
            )),
        }
    }

    fn stage_mut(&mut self) -> Result<&mut Stage> {
        self.stage.as_mut().ok_or_else(|| Error::peer(COORDINATOR, "a step message arrived before the assignment"))
    }

    /// Builds the stage of an assignment; a worker that joins a running job
    /// is assigned no layers yet: it connects to every member and gets its
    /// layers in the next migration.
    fn assign(&mut self, a: Assignment) -> Result<Vec<Out>> {
        if let Some(max) = a.clip_grad_norm {
            crate::clip::check_max_norm(max)?;
        }
        let setup = Setup {
            model: Arc::new((self.factory)(&a.spec)?.with_seed(a.seed)),
            kind: a.schedule.parse()?,
            optimizer: a.optimizer.parse()?,
            clipping: a.clip_grad_norm.is_some(),
            lr_schedule: a.lr_schedule,
            spec: a.spec.clone(),
            checkpoint_dir: a.checkpoint_dir.clone(),
            replicate: a.replicas,
        };
        setup.lr_schedule.check(setup.optimizer.lr())?;
        self.replicas = a.replicas.then(|| Replicas::new(setup.new_optimizer()));
        let interval = Duration::from_millis(a.peer_timeout_ms / 4).max(Duration::from_millis(1));
        self.heartbeat = Some((interval, Duration::ZERO));
        self.generation = a.generation;
        self.notices = a.notices;
        self.ship_bf16 = a.ship_bf16;
        let Some(position) = a.placements.iter().position(|p| p.worker == self.id) else {
            (self.setup, self.placements) = (Some(setup), a.placements.clone());
            return Ok(vec![Out::Connect(a.placements)]);
        };
        let place = &a.placements[position];
        let params: ParamStore = a.params.into_iter().collect();
        let at = (position as u32, a.placements.len() as u32);
        let mut optimizer = Optimizer::new(setup.optimizer).with_lr_schedule(setup.lr_schedule);
        for (name, state) in a.optim {
            optimizer.insert_state(name, state);
        }
        self.stage = Some(setup.stage_with(place.first..place.end, at, params, optimizer)?);
        self.setup = Some(setup);
        let lower = a.placements.iter().filter(|p| p.worker < self.id).cloned().collect();
        self.placements = a.placements;
        self.take_initial_replica(a.replica)?;
        Ok(vec![Out::Connect(lower)])
    }

    /// Runs the next ready unit of work and routes its effects; data for
    /// this worker's own layers (a replay it passes to itself) is taken in
    /// at once.
    pub fn run_next(&mut self) -> Result<Vec<Out>> {
        let work = self.ready();
        let effects = self.stage_mut()?.run_next()?;
        let mut outs = Vec::new();
        for effect in effects {
            match self.route(effect)? {
                Some(Out::Send { to: Dest::Worker(to), message }) if to == self.id => {
                    outs.extend(self.handle(Dest::Worker(to), message)?)
                }
                Some(out) => outs.push(out),
                None => {}
            }
        }
        if let Some(Work::Compute(_)) = work {
            outs.extend(self.count_action());
        }
        Ok(self.settle(outs))
    }

    /// Counts compute actions per step and raises a scripted notice when due.
    fn count_action(&mut self) -> Vec<Out> {
        let step = self.current_step().unwrap_or(0);
        let (counted, done) = self.actions_in_step;
        self.actions_in_step = if counted == step { (step, done + 1) } else { (step, 1) };
        self.due_notice(step, self.actions_in_step.1)
    }

    /// Raises the scripted notice for (`step`, `actions`), if there is one.
    fn due_notice(&mut self, step: u32, actions: u32) -> Vec<Out> {
        match self.notices.iter().position(|n| n.step == step && n.actions == actions) {
            Some(i) => {
                let notice = self.notices.remove(i);
                self.notice(notice.grace_ms)
            }
            None => Vec::new(),
        }
    }

    fn owner(&self, layer: u32) -> Result<u32> {
        owner_in(&self.placements, layer)
    }

    /// The message an effect asks for; reports to the coordinator are held
    /// (None) and sent together by [`Worker::settle`].
    fn route(&mut self, effect: Effect) -> Result<Option<Out>> {
        let generation = self.generation;
        let (to, message) = match effect {
            Effect::SendActivation { step, micro, layer, tensor } => {
                (self.data_to(layer)?, Message::Activation { generation, step, micro, layer, tensor })
            }
            Effect::SendGradient { step, micro, layer, tensor } => {
                (self.data_to(layer)?, Message::Gradient { generation, step, micro, layer, tensor })
            }
            Effect::SendReplay { step, micro, layer, stop, tensor } => {
                (self.data_to(layer)?, Message::Replay { generation, step, micro, layer, stop, tensor })
            }
            Effect::Loss { step, micro, value } => {
                self.hold(Report::Loss { step, micro, value });
                return Ok(None);
            }
            Effect::LayerUpdated { step, layer } => {
                self.hold(Report::LayerUpdated { step, layer, replica: self.replica_target(layer) });
                return Ok(None);
            }
            Effect::Replica { step, layer, grads } => {
                // No replica to keep current (a job of one worker, or a
                // holder that left): the update goes nowhere.
                if let Some(holder) = self.replica_target(layer) {
                    self.hold_replica(holder, step, layer, grads);
                }
                return Ok(None);
            }
            Effect::LayerNorms { step, layer, norms } => {
                self.hold(Report::LayerNorms { step, layer, norms });
                return Ok(None);
            }
            // Not counted as data: no migration drains an evaluation.
            Effect::SendEvalActivation { step, batch, layer, tensor } => {
                (Dest::Worker(self.owner(layer)?), Message::EvalActivation { step, batch, layer, tensor })
            }
            Effect::EvalLoss { step, batch, value } => (Dest::Coordinator, Message::EvalLoss { step, batch, value }),
        };
        Ok(Some(Out::Send { to, message }))
    }

    /// The owner of `layer`, counting the data message sent to it.
    fn data_to(&mut self, layer: u32) -> Result<Dest> {
        let owner = self.owner(layer)?;
        *self.sent.entry(owner).or_default() += 1;
        Ok(Dest::Worker(owner))
    }

    fn finish(&mut self) -> Result<Vec<Out>> {
        self.final_work = self.progress();
        let stage = self.stage.take().ok_or_else(|| Error::peer(COORDINATOR, "finish before any assignment"))?;
        if !stage.idle() {
            return Err(Error::peer(COORDINATOR, "finish arrived in the middle of a step"));
        }
        let mut counters = stage.counters;
        let moved = stage.model.backend().transfers();
        counters.device_h2d_bytes = moved.h2d_bytes;
        counters.device_h2d_copies = moved.h2d_copies;
        counters.device_d2h_bytes = moved.d2h_bytes;
        counters.device_d2h_copies = moved.d2h_copies;
        let message = Message::Final {
            worker: self.id,
            params: stage.params.into_iter().collect(),
            counters,
            spans: std::mem::take(&mut self.spans),
        };
        Ok(vec![Out::Send { to: Dest::Coordinator, message }, Out::Exit])
    }
}

impl Worker {
    /// A one-line summary of where this worker is, for diagnostics.
    pub fn describe(&self) -> String {
        let Some(stage) = &self.stage else { return format!("worker {} ({:?}, no stage)", self.id, self.mode) };
        format!("worker {} (generation {}, {:?}): {}", self.id, self.generation, self.mode, stage.describe())
    }

    /// The report after shipping; a leaving worker hands over its counters
    /// and timeline, since it will send no final message.
    pub fn migrated(&mut self, generation: u32, bytes: MovedBytes, ship_us: u64) -> Message {
        let farewell = match (&self.mode, self.progress()) {
            (Mode::Leaving, Some(work)) => Some((work, std::mem::take(&mut self.spans))),
            _ => None,
        };
        Message::Migrated { worker: self.id, generation, bytes, ship_us, farewell }
    }
}

/// How errors name the coordinator.
pub(crate) const COORDINATOR: &str = "the coordinator";

/// A message's sender, for errors.
pub(crate) fn describe(from: Dest) -> String {
    match from {
        Dest::Coordinator => COORDINATOR.into(),
        Dest::Worker(w) => format!("worker {w}"),
    }
}

/// The worker that holds `layer` in `placements`.
pub(crate) fn owner_in(placements: &[Placement], layer: u32) -> Result<u32> {
    placements
        .iter()
        .find(|p| (p.first..p.end).contains(&layer))
        .map(|p| p.worker)
        .ok_or_else(|| Error::peer(COORDINATOR, format!("its placements give layer {layer} to no worker")))
}
