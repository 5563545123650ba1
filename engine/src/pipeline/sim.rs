//! An in-memory pipeline: every stage in one process, messages through a
//! simulated network that delivers them in an order drawn from a seed.
//!
//! This is what the multi-process runtime does, minus sockets: the same
//! [`Stage`] state machines, the same step plan, the same loss sum. Tests
//! run it across worker counts, schedules and delivery orders.

use std::sync::Arc;
use std::time::Duration;

use rkyv::util::AlignedVec;

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
        losses.push(book.total().ok_or_else(|| Error::Pipeline("a micro-batch loss is missing".into()))?);
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
                false => Err(Error::Pipeline("deadlock: nothing to deliver and no action ready".into())),
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
        |layer| partition.stage_of(layer).ok_or_else(|| Error::Pipeline(format!("no stage holds layer {layer}")));
    match effect {
        Effect::SendActivation { step, micro, layer, tensor } => {
            in_flight.push((owner(layer)?, StageEvent::Activation { step, micro, layer, tensor }))
        }
        Effect::SendGradient { step, micro, layer, tensor } => {
            in_flight.push((owner(layer)?, StageEvent::Gradient { step, micro, layer, tensor }))
        }
        Effect::Loss { micro, value, .. } => book.record(micro, value)?,
        Effect::LayerUpdated { .. } => {}
    }
    Ok(())
}

fn merge(stages: Vec<Stage>, losses: Vec<f32>) -> SimOutcome {
    let mut params = ParamStore::new();
    let mut counters = Counters::default();
    for stage in stages {
        counters.forward_layer_executions += stage.counters.forward_layer_executions;
        counters.backward_layer_executions += stage.counters.backward_layer_executions;
        params.extend(stage.params);
    }
    SimOutcome { params, losses, counters }
}

/// Runs a whole job in memory: a [`Coordinator`] and one [`Worker`] per
/// stage exchanging encoded protocol frames, delivered in an order drawn
/// from `seed` (more adversarial than any real network: frames between the
/// same pair may overtake each other).
pub fn run_job(plan: JobPlan, factory: &dyn Fn() -> ModelFactory, seed: u64) -> Result<JobOutcome> {
    let workers = plan.workers;
    let mut coordinator = Coordinator::new(plan, Duration::ZERO)?;
    let mut nodes: Vec<Worker> = (0..workers as u32).map(|w| Worker::new(w, factory())).collect();
    let mut frames: Vec<(Dest, u32, AlignedVec)> = Vec::new();
    for w in 0..workers as u32 {
        let register = Message::Register { worker: w, protocol: PROTOCOL_VERSION, address: format!("sim:{w}") };
        frames.push((Dest::Coordinator, w, encode(&register)?));
    }
    let mut rng = SplitMix64::new(seed);
    loop {
        let ready: Vec<usize> = (0..workers).filter(|&w| nodes[w].ready().is_some()).collect();
        let choices = ready.len() + frames.len();
        if choices == 0 {
            return Err(Error::Pipeline("the job stalled: no frame in flight and no action ready".into()));
        }
        let pick = (rng.next_u64() % choices as u64) as usize;
        if pick < ready.len() {
            let w = ready[pick];
            let outs = nodes[w].run_next()?;
            queue_outs(w as u32, outs, &nodes[w], &mut frames)?;
            continue;
        }
        let (dest, from, frame) = frames.swap_remove(pick - ready.len());
        let message = decode(&frame)?;
        match dest {
            Dest::Coordinator => {
                for effect in coordinator.handle(CoordEvent::Message { worker: from, message }) {
                    match effect {
                        CoordEffect::Send { worker, message } => {
                            frames.push((Dest::Worker(worker), u32::MAX, encode(&message)?))
                        }
                        CoordEffect::StepFinished { .. } => {}
                        CoordEffect::Done(outcome) => return Ok(*outcome),
                        CoordEffect::Failed(reason) => return Err(Error::Pipeline(reason)),
                    }
                }
            }
            Dest::Worker(w) => {
                let outs = nodes[w as usize].handle(message)?;
                queue_outs(w, outs, &nodes[w as usize], &mut frames)?;
            }
        }
    }
}

/// Turns a worker's outputs into frames; in memory every peer is connected
/// at once, so a `Connect` is answered by `Ready` straight away.
fn queue_outs(from: u32, outs: Vec<Out>, node: &Worker, frames: &mut Vec<(Dest, u32, AlignedVec)>) -> Result<()> {
    for out in outs {
        let (to, message) = match out {
            Out::Send { to, message } => (to, message),
            Out::Connect(_) => (Dest::Coordinator, node.ready_message()),
            Out::Exit => continue,
        };
        frames.push((to, from, encode(&message)?));
    }
    Ok(())
}
