//! A whole job in memory: the coordinator and worker state machines
//! exchanging encoded frames over a simulated network, on simulated time,
//! with scripted notices, admin preempts and crashes.

use std::time::Duration;

use rkyv::util::AlignedVec;

use crate::init::SplitMix64;
use crate::pipeline::checkpoint::{CheckpointStore, Snapshot};
use crate::pipeline::coordinator::{CoordEffect, CoordEvent, Coordinator, JobOutcome, JobPlan};
use crate::pipeline::protocol::{decode, encode, Message, WorkDone, PROTOCOL_VERSION};
use crate::pipeline::worker::{Dest, ModelFactory, Out, Worker};
use crate::pipeline::Work;
use crate::{Error, Result};

/// The simulated network's bandwidth for ship budgets: a noticed worker may
/// ship `grace_ms x SIM_BYTES_PER_MS` bytes (so a grace of 0 forces the
/// recompute fallback for everything that can be recomputed).
pub const SIM_BYTES_PER_MS: u64 = 1000;

/// An admin's `baton preempt` in a simulated job: once step `after_step`
/// finishes (the next step's start is then in flight), worker `worker` is
/// preempted with `grace_ms`, through [`Coordinator::preempt`].
#[derive(Clone, Copy, Debug)]
pub struct AdminPreempt {
    pub after_step: u32,
    pub worker: u32,
    pub grace_ms: u64,
}

/// A crash without notice: worker `worker` stops dead once it completed
/// `actions` compute actions of `step` (0: when that step's start reaches
/// it). Its frames already sent may still arrive. A `silent` crash is a
/// hang (no process exit is seen): only the peer timeout can detect it.
/// With `mid_ship`, the point is instead the first time the worker ships
/// layers in a migration: it dies after its first handover frame left.
/// With `restore`, it is the first layer handed to the worker in a restore
/// after a loss: it dies as that handover arrives (a second loss, of a
/// restore target).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCrash {
    pub worker: u32,
    pub step: u32,
    pub actions: u32,
    pub silent: bool,
    pub mid_ship: bool,
    pub restore: bool,
}

/// Runs a whole job in memory: a [`Coordinator`] and one [`Worker`] per
/// stage exchanging encoded protocol frames, delivered in an order drawn
/// from `seed` (more adversarial than any real network: frames between the
/// same pair may overtake each other). Scripted notices in the plan trigger
/// migrations exactly as in real processes, with ship budgets from
/// [`SIM_BYTES_PER_MS`].
pub fn run_job(plan: JobPlan, factory: &dyn Fn() -> ModelFactory, seed: u64) -> Result<JobOutcome> {
    run_job_with_faults(plan, factory, seed, &[], &[])
}

/// [`run_job`] with admin preempts, which can land where scripted notices
/// cannot: between a worker's last update of a step and the next step's start.
pub fn run_job_with_preempts(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    preempts: &[AdminPreempt],
) -> Result<JobOutcome> {
    run_job_with_faults(plan, factory, seed, preempts, &[])
}

/// [`run_job`] with admin preempts and crashes. Time is simulated: each
/// delivered frame or unit of work takes a microsecond, and when nothing
/// is in flight and nothing is ready the clock jumps to the earliest
/// deadline of any state machine (heartbeats, the peer timeout).
pub fn run_job_with_faults(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    preempts: &[AdminPreempt],
    crashes: &[SimCrash],
) -> Result<JobOutcome> {
    run_job_full(Sim::new(plan, factory, crashes, None)?, factory, seed, preempts)
}

/// [`run_job_with_checkpoints`] with crashes: a worker and the holder of
/// its replica lost together fall back to the last checkpoint. Each pair
/// in `together` is (a, b): when a crash of `a` is due, `b` dies at the
/// same moment (one machine gone with two workers). Checkpoint writes take
/// time here: each is done at a moment drawn like a frame's delivery, and
/// a worker that crashes first never reports its part.
pub fn run_job_with_fallback(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    crashes: &[SimCrash],
    together: &[(u32, u32)],
    store: &mut dyn CheckpointStore,
) -> Result<JobOutcome> {
    let mut sim = Sim::new(plan, factory, crashes, Some(store))?;
    sim.together = together.to_vec();
    run_job_full(sim, factory, seed, &[])
}

/// [`run_job`] that writes the plan's checkpoints through `store` (the
/// coordinator's snapshots, every worker's part, the commit), as the
/// process drivers do.
pub fn run_job_with_checkpoints(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    store: &mut dyn CheckpointStore,
) -> Result<JobOutcome> {
    run_job_full(Sim::new(plan, factory, &[], Some(store))?, factory, seed, &[])
}

/// [`run_job_with_faults`] that also returns what every worker actually
/// computed (a crashed one: until it died), as an oracle for the report's
/// counters.
pub fn run_job_traced(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    crashes: &[SimCrash],
) -> Result<(JobOutcome, Vec<(u32, WorkDone)>)> {
    let mut sim = Sim::new(plan, factory, crashes, None)?;
    let outcome = drive(&mut sim, factory, seed, &[])?;
    Ok((outcome, sim.nodes.iter().filter_map(|n| n.progress().map(|w| (n.id, w))).collect()))
}

fn run_job_full(
    mut sim: Sim<'_>,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    preempts: &[AdminPreempt],
) -> Result<JobOutcome> {
    drive(&mut sim, factory, seed, preempts)
}

fn drive(
    sim: &mut Sim<'_>,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    preempts: &[AdminPreempt],
) -> Result<JobOutcome> {
    let mut rng = SplitMix64::new(seed);
    // Bounded: a job that neither finishes nor fails within this many
    // events is stalled (the largest tests take well under a million).
    for _ in 0..5_000_000u64 {
        sim.now += Duration::from_micros(1);
        if let Some(done) = sim.timeouts(factory, preempts)? {
            return done;
        }
        let ready: Vec<usize> =
            (0..sim.nodes.len()).filter(|&w| sim.alive(w) && sim.nodes[w].ready().is_some()).collect();
        let choices = ready.len() + sim.net.frames.len() + sim.losses.len() + sim.net.saves.len();
        if choices == 0 {
            sim.idle()?;
            continue;
        }
        let pick = (rng.next_u64() % choices as u64) as usize;
        let done = if pick < ready.len() {
            sim.work(ready[pick])?;
            None
        } else if pick >= ready.len() + sim.losses.len() + sim.net.frames.len() {
            let at = pick - ready.len() - sim.losses.len() - sim.net.frames.len();
            let save = sim.net.saves.swap_remove(at);
            sim.net.write(&sim.nodes[save.worker as usize], save)?;
            None
        } else if pick < ready.len() + sim.losses.len() {
            let worker = sim.losses.swap_remove(pick - ready.len());
            let reason = "its process exited (simulated crash)".to_string();
            sim.coordinate(CoordEvent::Lost { worker, reason }, factory, preempts)?
        } else {
            let (to, from, frame) = sim.net.frames.swap_remove(pick - ready.len() - sim.losses.len());
            sim.deliver(to, from, &frame, factory, preempts)?
        };
        if let Some(done) = done {
            return done;
        }
    }
    let mut states: Vec<String> = sim.nodes.iter().map(Worker::describe).collect();
    states.push(sim.coordinator.describe());
    Err(Error::Internal(format!("the simulated job ran past its event bound: {}", states.join("; "))))
}

/// What a finished simulation returns.
type Done = Result<JobOutcome>;

struct Sim<'a> {
    coordinator: Coordinator,
    nodes: Vec<Worker>,
    /// Exited (retired, finished) or crashed: frames to it are dropped.
    exited: Vec<bool>,
    net: Network<'a>,
    now: Duration,
    crashes: Vec<SimCrash>,
    /// Crashed workers whose exit the coordinator has yet to see.
    losses: Vec<u32>,
    /// Workers rolled back since their last step start: the generation.
    restoring: Vec<Option<u32>>,
    /// (a, b): b dies when a's crash is due.
    together: Vec<(u32, u32)>,
}

impl<'a> Sim<'a> {
    fn new(
        plan: JobPlan,
        factory: &dyn Fn() -> ModelFactory,
        crashes: &[SimCrash],
        store: Option<&'a mut dyn CheckpointStore>,
    ) -> Result<Sim<'a>> {
        let workers = plan.workers;
        let mut sim = Sim {
            coordinator: Coordinator::new(plan, Duration::ZERO)?,
            nodes: (0..workers as u32).map(|w| Worker::new(w, factory())).collect(),
            exited: vec![false; workers],
            net: Network { frames: Vec::new(), store, saves: Vec::new() },
            now: Duration::ZERO,
            crashes: crashes.to_vec(),
            losses: Vec::new(),
            restoring: vec![None; workers],
            together: Vec::new(),
        };
        for w in 0..workers as u32 {
            sim.register(w)?;
        }
        Ok(sim)
    }

    fn register(&mut self, worker: u32) -> Result<()> {
        let register = Message::Register { worker, protocol: PROTOCOL_VERSION, address: format!("sim:{worker}") };
        self.net.push(Dest::Coordinator, Dest::Worker(worker), &register)
    }

    fn alive(&self, w: usize) -> bool {
        !self.exited[w]
    }

    /// Every state machine whose deadline passed handles its timeout.
    fn timeouts(&mut self, factory: &dyn Fn() -> ModelFactory, preempts: &[AdminPreempt]) -> Result<Option<Done>> {
        for w in 0..self.nodes.len() {
            if self.alive(w) && self.nodes[w].poll_timeout().is_some_and(|t| t <= self.now) {
                let outs = self.nodes[w].handle_timeout(self.now);
                self.carry(w, outs)?;
            }
        }
        if self.coordinator.poll_timeout().is_some_and(|t| t <= self.now) {
            let effects = self.coordinator.handle_timeout(self.now);
            return self.apply(effects, factory, preempts);
        }
        Ok(None)
    }

    /// Nothing in flight, nothing ready: time passes until the next deadline.
    fn idle(&mut self) -> Result<()> {
        let workers = (0..self.nodes.len()).filter(|&w| self.alive(w)).filter_map(|w| self.nodes[w].poll_timeout());
        let next = workers.chain(self.coordinator.poll_timeout()).min();
        match next {
            Some(t) => {
                self.now = self.now.max(t);
                Ok(())
            }
            None => {
                let states: Vec<String> = self.nodes.iter().map(Worker::describe).collect();
                Err(Error::Internal(format!(
                    "the job stalled: no frame in flight, no work ready, no deadline; {}",
                    states.join("; ")
                )))
            }
        }
    }

    /// Worker `w` runs its next unit of work, and crashes if that was due.
    fn work(&mut self, w: usize) -> Result<()> {
        let work = self.nodes[w].ready();
        let outs = self.nodes[w].run_next()?;
        self.carry(w, outs)?;
        if let Some(Work::Compute(_)) = work {
            let (step, actions) = self.nodes[w].actions_done();
            self.crash_if_due(w as u32, step, actions);
        }
        Ok(())
    }

    /// Kills `worker` if a crash is planned at this point (once).
    fn crash_if_due(&mut self, worker: u32, step: u32, actions: u32) -> bool {
        let point =
            |c: &SimCrash| !c.mid_ship && !c.restore && (c.worker, c.step, c.actions) == (worker, step, actions);
        let due = self.crashes.iter().position(point);
        self.crash_at(worker, due)
    }

    /// Kills `worker` as `message` arrives if a crash is planned there: a
    /// step start (0 actions), or a handover of a restore (after a rollback).
    fn crash_on_arrival(&mut self, worker: u32, message: &Message) -> bool {
        let w = worker as usize;
        match message {
            Message::StepStart { step, .. } => {
                self.restoring[w] = None;
                self.crash_if_due(worker, *step, 0)
            }
            Message::Rollback { generation, .. } => {
                self.restoring[w] = Some(*generation);
                false
            }
            // Restore handovers come only after every survivor rolled back.
            Message::Handover { generation, .. } if self.restoring[w].is_some_and(|g| *generation >= g) => {
                let due = self.crashes.iter().position(|c| c.restore && c.worker == worker);
                self.crash_at(worker, due)
            }
            _ => false,
        }
    }

    /// Carries out a worker's outputs, unless it is due to die while shipping.
    fn carry(&mut self, w: usize, mut outs: Vec<Out>) -> Result<()> {
        let due = self.crashes.iter().position(|c| c.mid_ship && c.worker == w as u32);
        let ship = outs.iter().position(|o| matches!(o, Out::Ship { handovers, .. } if !handovers.is_empty()));
        if let (Some(_), Some(at)) = (due, ship) {
            outs.truncate(at + 1);
            if let Some(Out::Ship { handovers, .. }) = outs.pop() {
                let first = handovers.into_iter().next().expect("checked non-empty");
                self.net.push(Dest::Worker(first.0), Dest::Worker(w as u32), &first.1)?;
            }
            self.exited[w] |= self.net.carry_out(&mut self.nodes[w], outs)?;
            self.crash_at(w as u32, due);
            return Ok(());
        }
        self.exited[w] |= self.net.carry_out(&mut self.nodes[w], outs)?;
        Ok(())
    }

    fn crash_at(&mut self, worker: u32, due: Option<usize>) -> bool {
        let Some(at) = due.filter(|_| self.alive(worker as usize)) else { return false };
        let crash = self.crashes.remove(at);
        let companions = self.together.iter().filter(|(a, _)| *a == worker).map(|(_, b)| *b);
        let dying: Vec<u32> = std::iter::once(worker).chain(companions).collect();
        for w in dying {
            if !self.alive(w as usize) {
                continue;
            }
            self.exited[w as usize] = true;
            // Its writes in progress die with it.
            self.net.saves.retain(|s| s.worker != w);
            if !crash.silent {
                self.losses.push(w);
            }
        }
        true
    }

    fn deliver(
        &mut self,
        to: Dest,
        from: Dest,
        frame: &AlignedVec,
        factory: &dyn Fn() -> ModelFactory,
        preempts: &[AdminPreempt],
    ) -> Result<Option<Done>> {
        let message = decode(frame)?;
        match to {
            Dest::Coordinator => {
                let Dest::Worker(worker) = from else { return Ok(None) };
                self.coordinate(CoordEvent::Message { worker, message }, factory, preempts)
            }
            Dest::Worker(w) if !self.alive(w as usize) => Ok(None),
            Dest::Worker(w) => {
                if self.crash_on_arrival(w, &message) {
                    return Ok(None);
                }
                let outs = self.nodes[w as usize].handle(from, message)?;
                self.carry(w as usize, outs)?;
                Ok(None)
            }
        }
    }

    fn coordinate(
        &mut self,
        event: CoordEvent,
        factory: &dyn Fn() -> ModelFactory,
        preempts: &[AdminPreempt],
    ) -> Result<Option<Done>> {
        let mut effects = self.coordinator.handle(event, self.now);
        effects.extend(admin_preempts(&self.coordinator, preempts, &effects)?);
        self.apply(effects, factory, preempts)
    }

    fn apply(
        &mut self,
        effects: Vec<CoordEffect>,
        factory: &dyn Fn() -> ModelFactory,
        _preempts: &[AdminPreempt],
    ) -> Result<Option<Done>> {
        for effect in effects {
            match effect {
                CoordEffect::Send { worker, message } => {
                    self.net.push(Dest::Worker(worker), Dest::Coordinator, &message)?
                }
                CoordEffect::Spawn { worker } => {
                    self.nodes.push(Worker::new(worker, factory()));
                    self.exited.push(false);
                    self.restoring.push(None);
                    self.register(worker)?;
                }
                CoordEffect::Checkpoint { step, parts } => match self.net.store.as_deref_mut() {
                    Some(store) => store.commit(step, &parts)?,
                    None => return Err(Error::Usage("checkpoints need a store in memory".into())),
                },
                CoordEffect::Done(outcome) => return Ok(Some(Ok(*outcome))),
                CoordEffect::Failed(reason) => {
                    return Ok(Some(Err(Error::Aborted { by: "the coordinator".into(), reason })))
                }
                CoordEffect::StepFinished { .. }
                | CoordEffect::EvalFinished(_)
                | CoordEffect::Migrated(_)
                | CoordEffect::Recovered(_) => {}
            }
        }
        Ok(None)
    }
}

/// What the admin preempts due after `effects` ask for: those placed after
/// a step that `effects` report finished (the next step's start is among them).
fn admin_preempts(
    coordinator: &Coordinator,
    preempts: &[AdminPreempt],
    effects: &[CoordEffect],
) -> Result<Vec<CoordEffect>> {
    let mut asked = Vec::new();
    for effect in effects {
        let CoordEffect::StepFinished { step, .. } = effect else { continue };
        for p in preempts.iter().filter(|p| p.after_step == *step) {
            asked.extend(coordinator.preempt(p.worker, Duration::from_millis(p.grace_ms))?);
        }
    }
    Ok(asked)
}

/// Frames in flight: (to, from, bytes), and checkpoint writes in progress.
struct Network<'a> {
    frames: Vec<(Dest, Dest, AlignedVec)>,
    store: Option<&'a mut dyn CheckpointStore>,
    saves: Vec<PendingSave>,
}

/// A worker's checkpoint write not done yet.
struct PendingSave {
    worker: u32,
    dir: String,
    spec: String,
    optimizer: String,
    snapshot: Box<Snapshot>,
}

impl Network<'_> {
    fn push(&mut self, to: Dest, from: Dest, message: &Message) -> Result<()> {
        self.frames.push((to, from, encode(message)?));
        Ok(())
    }

    /// Turns a worker's outputs into frames; returns true once it exited. In
    /// memory every peer is connected at once, so `Connect` is answered by
    /// `Ready` straight away, and shipping takes no time.
    fn carry_out(&mut self, node: &mut Worker, outs: Vec<Out>) -> Result<bool> {
        let me = Dest::Worker(node.id);
        for out in outs {
            match out {
                Out::Send { to, message } => {
                    if let Message::Notice { grace_ms, .. } = message {
                        node.set_ship_budget(Some(grace_ms.saturating_mul(SIM_BYTES_PER_MS)));
                    }
                    if let Message::Final { .. } = message {
                        // As the driver: parts still being written are reported first.
                        self.flush_saves(node)?;
                    }
                    self.push(to, me, &message)?
                }
                Out::Connect(_) => self.push(Dest::Coordinator, me, &node.ready_message())?,
                Out::Ship { generation, handovers, bytes } => {
                    for (to, message) in handovers {
                        self.push(Dest::Worker(to), me, &message)?;
                    }
                    self.push(Dest::Coordinator, me, &node.migrated(generation, bytes, 0))?;
                }
                Out::Save { dir, spec, optimizer, snapshot } => {
                    self.saves.push(PendingSave { worker: node.id, dir, spec, optimizer, snapshot })
                }
                Out::Load { generation, dir, optimizer, step, layers, parts } => {
                    let store = self.store.as_deref_mut().ok_or_else(|| Error::Usage("no checkpoint store".into()))?;
                    let result = store.load(&dir, &optimizer, step, layers, &parts);
                    let outs = node.loaded(generation, result)?;
                    if self.carry_out(node, outs)? {
                        return Ok(true);
                    }
                }
                Out::Exit => {
                    self.flush_saves(node)?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

impl Network<'_> {
    /// Does one pending write and reports it to the coordinator from its worker.
    fn write(&mut self, node: &Worker, save: PendingSave) -> Result<()> {
        let store = self.store.as_deref_mut().ok_or_else(|| Error::Usage("no checkpoint store".into()))?;
        let result = store.write_part(&save.dir, &save.spec, &save.optimizer, &save.snapshot);
        self.push(Dest::Coordinator, Dest::Worker(node.id), &node.saved(save.snapshot.step, result))
    }

    /// Does every pending write of `node` (it is about to exit).
    fn flush_saves(&mut self, node: &Worker) -> Result<()> {
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.saves).into_iter().partition(|s| s.worker == node.id);
        self.saves = rest;
        mine.into_iter().try_for_each(|save| self.write(node, save))
    }
}
