//! An in-memory pipeline: every stage in one process, messages through a
//! simulated network that delivers them in an order drawn from a seed.
//!
//! This is what the multi-process runtime does, minus sockets: the same
//! [`Stage`] state machines, the same step plan, the same loss sum. Tests
//! run it across worker counts, schedules and delivery orders.

use std::sync::Arc;

use super::plan::{split_step, StepLosses};
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
        Effect::LayerUpdated { .. } | Effect::Replica { .. } => {}
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

mod job;

pub use job::{
    run_job, run_job_traced, run_job_with_checkpoints, run_job_with_fallback, run_job_with_faults,
    run_job_with_preempts, AdminPreempt, SimCrash, SIM_BYTES_PER_MS,
};
