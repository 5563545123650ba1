//! An in-memory pipeline: every stage in one process, messages through a
//! simulated network that delivers them in an order drawn from a seed.
//!
//! This is what the multi-process runtime does, minus sockets: the same
//! [`Stage`] state machines, the same step plan, the same loss sum. Tests
//! run it across worker counts, schedules and delivery orders.

use std::sync::Arc;
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::checkpoint::CheckpointStore;
use super::coordinator::{CoordEffect, CoordEvent, Coordinator, JobOutcome, JobPlan};
use super::plan::{split_step, StepLosses};
use super::protocol::{decode, encode, Message, PROTOCOL_VERSION};
use super::worker::{Dest, ModelFactory, Out, Worker};
use super::{Effect, Partition, ScheduleKind, Stage, StageEvent};
use crate::init::SplitMix64;
use crate::train::{Batch, Counters};
use crate::{Error, Model, Optimizer, OptimizerConfig, ParamStore, Result};

/// How an in-memory run is laid out.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub workers: usize,
    pub micro_batches: usize,
    pub kind: ScheduleKind,
    /// Seed of the delivery and execution order.
    pub seed: u64,
}

/// Result of a run: the merged parameters, per-step losses, summed counters.
#[derive(Debug)]
pub struct SimOutcome {
    pub params: ParamStore,
    pub losses: Vec<f32>,
    pub counters: Counters,
}

/// Trains `model` on `batches` with every stage in memory.
pub fn train(
    model: Arc<Model>,
    params: &ParamStore,
    optimizer: OptimizerConfig,
    batches: &[Batch],
    config: SimConfig,
) -> Result<SimOutcome> {
    let costs: Vec<f64> = model.layers.iter().map(|l| l.cost()).collect();
    let partition = Partition::balanced(&costs, config.workers)?;
    let mut stages = build_stages(&model, &partition, params, optimizer, config.kind)?;
    let mut rng = SplitMix64::new(config.seed);
    let mut losses = Vec::new();
    for (step, batch) in batches.iter().enumerate() {
        let split = split_step(batch, config.micro_batches)?;
        let mut book = StepLosses::new(split.rows.clone());
        let last = stages.len() - 1;
        for (i, stage) in stages.iter_mut().enumerate() {
            let inputs = if i == 0 { split.inputs.clone() } else { Vec::new() };
            let targets = if i == last { split.targets.clone() } else { Vec::new() };
            stage.handle(StageEvent::StepStart { step: step as u32, rows: split.rows.clone(), inputs, targets })?;
        }
        run_step(&mut stages, &partition, &mut rng, &mut book)?;
        losses.push(book.total().ok_or_else(|| Error::Internal("a micro-batch loss is missing".into()))?);
    }
    Ok(merge(stages, losses))
}

fn build_stages(
    model: &Arc<Model>,
    partition: &Partition,
    params: &ParamStore,
    optimizer: OptimizerConfig,
    kind: ScheduleKind,
) -> Result<Vec<Stage>> {
    let n = partition.stages.len() as u32;
    partition
        .stages
        .iter()
        .enumerate()
        .map(|(i, layers)| {
            let held = layers.clone().flat_map(|l| params.with_prefix(&format!("layers.{l}."))).collect();
            Stage::new(model.clone(), layers.clone(), (i as u32, n), kind, held, Optimizer::new(optimizer))
        })
        .collect()
}

/// Delivers messages and runs ready actions in a seeded random interleaving
/// until every stage finished the step.
fn run_step(stages: &mut [Stage], partition: &Partition, rng: &mut SplitMix64, book: &mut StepLosses) -> Result<()> {
    let mut in_flight: Vec<(usize, StageEvent)> = Vec::new();
    loop {
        let ready: Vec<usize> = (0..stages.len()).filter(|&i| stages[i].ready().is_some()).collect();
        let choices = ready.len() + in_flight.len();
        if choices == 0 {
            return match stages.iter().all(Stage::idle) {
                true => Ok(()),
                false => Err(Error::Internal("deadlock: nothing to deliver and no action ready".into())),
            };
        }
        let pick = (rng.next_u64() % choices as u64) as usize;
        if pick < ready.len() {
            for effect in stages[ready[pick]].run_next()? {
                route(effect, partition, &mut in_flight, book)?;
            }
        } else {
            let (to, event) = in_flight.swap_remove(pick - ready.len());
            stages[to].handle(event)?;
        }
    }
}

fn route(
    effect: Effect,
    partition: &Partition,
    in_flight: &mut Vec<(usize, StageEvent)>,
    book: &mut StepLosses,
) -> Result<()> {
    let owner =
        |layer| partition.stage_of(layer).ok_or_else(|| Error::Internal(format!("no stage holds layer {layer}")));
    match effect {
        Effect::SendActivation { step, micro, layer, tensor } => {
            in_flight.push((owner(layer)?, StageEvent::Activation { step, micro, layer, tensor }))
        }
        Effect::SendGradient { step, micro, layer, tensor } => {
            in_flight.push((owner(layer)?, StageEvent::Gradient { step, micro, layer, tensor }))
        }
        Effect::SendReplay { step, micro, layer, stop, tensor } => {
            in_flight.push((owner(layer)?, StageEvent::Replay { step, micro, layer, stop, tensor }))
        }
        Effect::Loss { micro, value, .. } => book.record(micro, value)?,
        Effect::LayerUpdated { .. } => {}
        Effect::LayerNorms { layer, .. } => {
            return Err(Error::Usage(format!("layer {layer}: the stage-level simulation does not clip gradients")))
        }
        Effect::SendEvalActivation { .. } | Effect::EvalLoss { .. } => {
            return Err(Error::Usage("the stage-level simulation does not evaluate".into()))
        }
    }
    Ok(())
}

fn merge(stages: Vec<Stage>, losses: Vec<f32>) -> SimOutcome {
    let mut params = ParamStore::new();
    let mut counters = Counters::default();
    for stage in stages {
        counters.add(&stage.counters);
        params.extend(stage.params);
    }
    SimOutcome { params, losses, counters }
}

/// The simulated network's bandwidth for ship budgets: a noticed worker may
/// ship `grace_ms x SIM_BYTES_PER_MS` bytes (so a grace of 0 forces the
/// recompute fallback for everything that can be recomputed).
pub const SIM_BYTES_PER_MS: u64 = 1000;

/// Runs a whole job in memory: a [`Coordinator`] and one [`Worker`] per
/// stage exchanging encoded protocol frames, delivered in an order drawn
/// from `seed` (more adversarial than any real network: frames between the
/// same pair may overtake each other). Scripted notices in the plan trigger
/// migrations exactly as in real processes, with ship budgets from
/// [`SIM_BYTES_PER_MS`]. The clock advances one microsecond per delivered
/// frame or unit of work.
pub fn run_job(plan: JobPlan, factory: &dyn Fn() -> ModelFactory, seed: u64) -> Result<JobOutcome> {
    run_job_with_preempts(plan, factory, seed, &[])
}

/// An admin's `baton preempt` in a simulated job: once step `after_step`
/// finishes (the next step's start is then in flight), worker `worker` is
/// preempted with `grace_ms`, through [`Coordinator::preempt`].
#[derive(Clone, Copy, Debug)]
pub struct AdminPreempt {
    pub after_step: u32,
    pub worker: u32,
    pub grace_ms: u64,
}

/// [`run_job`] with admin preempts, which can land where scripted notices
/// cannot: between a worker's last update of a step and the next step's start.
pub fn run_job_with_preempts(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    preempts: &[AdminPreempt],
) -> Result<JobOutcome> {
    run_job_full(plan, factory, seed, preempts, None)
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
    run_job_full(plan, factory, seed, &[], Some(store))
}

fn run_job_full(
    plan: JobPlan,
    factory: &dyn Fn() -> ModelFactory,
    seed: u64,
    preempts: &[AdminPreempt],
    store: Option<&mut dyn CheckpointStore>,
) -> Result<JobOutcome> {
    let workers = plan.workers;
    let mut coordinator = Coordinator::new(plan, Duration::ZERO)?;
    let mut nodes: Vec<Worker> = (0..workers as u32).map(|w| Worker::new(w, factory())).collect();
    let mut exited = vec![false; workers];
    let mut net = Network { frames: Vec::new(), store };
    for w in 0..workers as u32 {
        let register = Message::Register { worker: w, protocol: PROTOCOL_VERSION, address: format!("sim:{w}") };
        net.push(Dest::Coordinator, Dest::Worker(w), &register)?;
    }
    let mut rng = SplitMix64::new(seed);
    for tick in 0u64.. {
        let now = Duration::from_micros(tick);
        let ready: Vec<usize> = (0..nodes.len()).filter(|&w| !exited[w] && nodes[w].ready().is_some()).collect();
        let choices = ready.len() + net.frames.len();
        if choices == 0 {
            let states: Vec<String> = nodes.iter().map(Worker::describe).collect();
            return Err(Error::Internal(format!(
                "the job stalled: no frame in flight and no work ready; {}",
                states.join("; ")
            )));
        }
        let pick = (rng.next_u64() % choices as u64) as usize;
        if pick < ready.len() {
            let w = ready[pick];
            let outs = nodes[w].run_next()?;
            exited[w] |= net.carry_out(&mut nodes[w], outs)?;
            continue;
        }
        let (to, from, frame) = net.frames.swap_remove(pick - ready.len());
        let message = decode(&frame)?;
        match to {
            Dest::Coordinator => {
                let Dest::Worker(worker) = from else { continue };
                let mut effects = coordinator.handle(CoordEvent::Message { worker, message }, now);
                let admin = admin_preempts(&coordinator, preempts, &effects)?;
                effects.extend(admin);
                for effect in effects {
                    match effect {
                        CoordEffect::Send { worker, message } => {
                            net.push(Dest::Worker(worker), Dest::Coordinator, &message)?
                        }
                        CoordEffect::Spawn { worker } => {
                            nodes.push(Worker::new(worker, factory()));
                            exited.push(false);
                            let register = Message::Register {
                                worker,
                                protocol: PROTOCOL_VERSION,
                                address: format!("sim:{worker}"),
                            };
                            net.push(Dest::Coordinator, Dest::Worker(worker), &register)?;
                        }
                        CoordEffect::Checkpoint { step, parts } => match net.store.as_deref_mut() {
                            Some(store) => store.commit(step, &parts)?,
                            None => return Err(Error::Usage("checkpoints need a store in memory".into())),
                        },
                        CoordEffect::Done(outcome) => return Ok(*outcome),
                        CoordEffect::Failed(reason) => {
                            return Err(Error::Aborted { by: "the coordinator".into(), reason })
                        }
                        CoordEffect::StepFinished { .. } | CoordEffect::EvalFinished(_) | CoordEffect::Migrated(_) => {}
                    }
                }
            }
            Dest::Worker(w) if exited[w as usize] => {}
            Dest::Worker(w) => {
                let outs = nodes[w as usize].handle(from, message)?;
                exited[w as usize] |= net.carry_out(&mut nodes[w as usize], outs)?;
            }
        }
    }
    unreachable!("the tick counter does not run out")
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

/// Frames in flight: (to, from, bytes), and where checkpoints go.
struct Network<'a> {
    frames: Vec<(Dest, Dest, AlignedVec)>,
    store: Option<&'a mut dyn CheckpointStore>,
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
                    let store = self.store.as_deref_mut().ok_or_else(|| Error::Usage("no checkpoint store".into()))?;
                    let result = store.write_part(&dir, &spec, &optimizer, &snapshot);
                    self.push(Dest::Coordinator, me, &node.saved(snapshot.step, result))?;
                }
                Out::Exit => return Ok(true),
            }
        }
        Ok(false)
    }
}
