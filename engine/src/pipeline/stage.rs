//! One worker's share of a pipeline step, as a state machine without I/O.
//!
//! The driver feeds [`StageEvent`]s in, asks for the next ready unit of
//! work, runs it and carries out the returned [`Effect`]s (sending tensors,
//! which it routes by layer through the current partition). One unit per
//! call lets the driver time work, count it and stop at an action boundary.
//!
//! Invariants:
//! - the bits a stage produces depend only on parameters, inputs and
//!   micro-batch order, never on the partition or the timing of arrivals;
//! - a pending activation or gradient names the layer it enters, so after a
//!   migration a forward or backward resumes exactly where it stopped;
//! - a layer's optimizer update runs once all M micro-batches' gradients
//!   are summed, independently of the other layers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use super::schedule::{plan_actions, Action, Phase, ScheduleKind};
use crate::train::Counters;
use crate::{Error, GradAccumulator, Model, Optimizer, ParamStore, Result, Segment, SegmentKey, Targets, Tensor};

/// What a stage learns from outside.
#[derive(Clone, Debug)]
pub enum StageEvent {
    /// Step `step` begins. `rows[m]` is micro-batch m's row count; the first
    /// stage gets the inputs, the last stage the targets.
    StepStart { step: u32, rows: Vec<u32>, inputs: Vec<(u32, Tensor)>, targets: Vec<(u32, Targets)> },
    /// The activation entering `layer` for micro-batch `micro`.
    Activation { step: u32, micro: u32, layer: u32, tensor: Tensor },
    /// The gradient of the output of `layer` for micro-batch `micro`.
    Gradient { step: u32, micro: u32, layer: u32, tensor: Tensor },
    /// The activation entering `layer`, sent again so the forward of layers
    /// `layer..stop` is recomputed (their segments were not shipped in time).
    Replay { step: u32, micro: u32, layer: u32, stop: u32, tensor: Tensor },
    /// Send the kept activation entering `layer` again as a replay of
    /// layers `layer..stop` (their segments were left out of a migration).
    Recompute { step: u32, micro: u32, layer: u32, stop: u32 },
    /// Gradient clipping: multiply step `step`'s gradients by `scale`
    /// before the updates (the coordinator combined every layer's norms).
    ClipScale { step: u32, scale: f32 },
    /// The evaluation after step `step` begins: held-out batches' inputs
    /// (first stage) and targets (last stage), by batch.
    EvalStart { step: u32, inputs: Vec<(u32, Tensor)>, targets: Vec<(u32, Targets)> },
    /// Held-out batch `batch`'s activation entering `layer`.
    EvalActivation { step: u32, batch: u32, layer: u32, tensor: Tensor },
}

/// What a stage asks the driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send the activation entering `layer` to that layer's owner.
    SendActivation { step: u32, micro: u32, layer: u32, tensor: Tensor },
    /// Send the gradient of `layer`'s output to that layer's owner.
    SendGradient { step: u32, micro: u32, layer: u32, tensor: Tensor },
    /// Send the activation entering `layer` again, to recompute layers `layer..stop`.
    SendReplay { step: u32, micro: u32, layer: u32, stop: u32, tensor: Tensor },
    /// The loss of one micro-batch (last stage only), unweighted mean.
    Loss { step: u32, micro: u32, value: f32 },
    /// `layer`'s parameters received their update for `step`.
    LayerUpdated { step: u32, layer: u32 },
    /// With replicas: `layer`'s step gradient of `step` as applied (after
    /// clipping), for the holder of its replica.
    Replica { step: u32, layer: u32, grads: Vec<(String, Tensor)> },
    /// With clipping: the norms of `layer`'s step gradients (its parameters
    /// in name order), for the coordinator to combine.
    LayerNorms { step: u32, layer: u32, norms: Vec<f32> },
    /// Send held-out batch `batch`'s activation entering `layer` to its owner.
    SendEvalActivation { step: u32, batch: u32, layer: u32, tensor: Tensor },
    /// Held-out batch `batch`'s mean loss (last stage only).
    EvalLoss { step: u32, batch: u32, value: f32 },
}

/// The next unit of work of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Compute(Action),
    /// The recomputed forward of one micro-batch (a migration fallback).
    Replay {
        step: u32,
        micro: u32,
        layer: u32,
    },
    /// Sending a kept activation again, for a replay elsewhere.
    Resend {
        step: u32,
        micro: u32,
        layer: u32,
    },
    /// The optimizer update of one layer, once its step gradient is complete
    /// (and, when clipping, the step's clip scale is known).
    Update {
        step: u32,
        layer: u32,
    },
    /// With clipping: report a complete layer gradient's norms.
    Norms {
        step: u32,
        layer: u32,
    },
    /// The forward-only pass of one held-out batch through this stage.
    Eval {
        step: u32,
        batch: u32,
    },
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Compute(action) => action.fmt(f),
            Work::Update { step, layer } => write!(f, "U{layer}.s{step}"),
            Work::Norms { step, layer } => write!(f, "N{layer}.s{step}"),
            Work::Replay { micro, layer, .. } => write!(f, "R{micro}@{layer}"),
            Work::Resend { micro, layer, .. } => write!(f, "K{micro}@{layer}"),
            Work::Eval { step, batch } => write!(f, "E{batch}.s{step}"),
        }
    }
}

/// The step in progress on this stage.
#[derive(Clone, Debug)]
pub(crate) struct StepState {
    pub(crate) step: u32,
    pub(crate) rows: Vec<u32>,
    pub(crate) plan: VecDeque<Action>,
    /// Follow `plan` strictly (a schedule made at step start), or take the
    /// first ready action in plan order (a plan remade after a migration,
    /// which must not wait on an order the new layout cannot honour).
    strict: bool,
    /// Layers whose update for this step is applied.
    pub(crate) updated: BTreeSet<u32>,
    /// With clipping: layers whose gradient norms this stage reported.
    normed: BTreeSet<u32>,
    /// With clipping: the factor of this step's gradients, once known.
    clip_scale: Option<f32>,
}

impl StepState {
    fn new(step: u32, rows: Vec<u32>, strict: bool) -> StepState {
        let (updated, normed) = (BTreeSet::new(), BTreeSet::new());
        StepState { step, rows, plan: VecDeque::new(), strict, updated, normed, clip_scale: None }
    }

    /// The state of a step a stage joins midway (it receives layers of it).
    pub(crate) fn resumed(step: u32, rows: Vec<u32>) -> StepState {
        StepState::new(step, rows, false)
    }
}

/// One pipeline stage: contiguous layers, their parameters and optimizer
/// state, and the unfinished tape of the step in progress.
#[derive(Debug)]
pub struct Stage {
    pub(crate) model: Arc<Model>,
    pub(crate) layers: Range<u32>,
    pub(crate) position: (u32, u32),
    kind: ScheduleKind,
    pub params: ParamStore,
    pub optimizer: Optimizer,
    pub counters: Counters,
    pub(crate) current: Option<StepState>,
    pub(crate) acc: GradAccumulator,
    /// Activations waiting, by (step, micro): the layer they enter and the tensor.
    pub(crate) activations: BTreeMap<(u32, u32), (u32, Tensor)>,
    /// Gradients waiting, by (step, micro): the layer whose output they belong to.
    pub(crate) gradients: BTreeMap<(u32, u32), (u32, Tensor)>,
    pub(crate) targets: BTreeMap<(u32, u32), Targets>,
    /// Segments whose backward has not run, by (micro, layer); the loss
    /// segment has layer == layer count.
    pub(crate) tape: BTreeMap<(u32, u32), Segment>,
    /// Activations this stage sent (or, on the first stage, its inputs), by
    /// (step, micro, layer entered): kept until the backward of that
    /// micro-batch passes `layer - 1` here, so a migration that cannot ship a
    /// segment in time can have it recomputed. They move with layer
    /// `layer - 1` (layer 0 for inputs).
    pub(crate) kept: BTreeMap<(u32, u32, u32), Tensor>,
    /// (step, micro, layer) where a forward entered from a kept activation:
    /// the segments of that micro-batch from `layer` up may be recomputed.
    pub(crate) entries: BTreeSet<(u32, u32, u32)>,
    /// (micro, layer) whose segment was not shipped and awaits a replay.
    pub(crate) awaiting: BTreeSet<(u32, u32)>,
    /// Replayed activations waiting, by (step, micro, layer): (stop, tensor).
    pub(crate) replays: BTreeMap<(u32, u32, u32), (u32, Tensor)>,
    /// Kept activations to send again, by (step, micro, layer entered): stop.
    pub(crate) resends: BTreeMap<(u32, u32, u32), u32>,
    /// Whether updates wait for a global clip scale (`--clip-grad-norm`).
    clipping: bool,
    /// The evaluation in progress (`--eval-data`), apart from the training state.
    pub(crate) eval: super::evaluate::EvalState,
    /// Whether updates emit [`Effect::Replica`] and keep a snapshot.
    pub(crate) replicate: bool,
    /// Layers updated in the step in progress, as they were before their
    /// update (so a crash elsewhere can roll the step back); entries of
    /// earlier steps are only buffers to refill (their `step` says which).
    pub(crate) snapshots: BTreeMap<u32, super::rollback::Snapshot>,
    /// Layers shipped away in the step in progress, as they were at its
    /// start: (parameters, optimizer state).
    pub(crate) departed: BTreeMap<u32, super::rollback::Departed>,
    /// Forwards run in the step in progress (moved to the recomputed count
    /// if the step is rolled back).
    pub(crate) attempt_forwards: u64,
    /// Backwards run in the step in progress (moved to the abandoned count
    /// if the step is rolled back).
    pub(crate) attempt_backwards: u64,
}

impl Stage {
    /// Stage `position.0` of `position.1` holding `layers` with their `params`.
    pub fn new(
        model: Arc<Model>,
        layers: Range<u32>,
        position: (u32, u32),
        kind: ScheduleKind,
        params: ParamStore,
        optimizer: Optimizer,
    ) -> Result<Stage> {
        check_range(&model, &layers, position)?;
        // Parameters and updates live where the model computes (its device).
        let optimizer = optimizer.with_backend(model.backend().clone());
        let params = params.adopted_by(model.backend())?;
        Ok(Stage {
            model,
            layers,
            position,
            kind,
            params,
            optimizer,
            counters: Counters::default(),
            current: None,
            acc: GradAccumulator::new(),
            activations: BTreeMap::new(),
            gradients: BTreeMap::new(),
            targets: BTreeMap::new(),
            tape: BTreeMap::new(),
            kept: BTreeMap::new(),
            entries: BTreeSet::new(),
            awaiting: BTreeSet::new(),
            replays: BTreeMap::new(),
            resends: BTreeMap::new(),
            clipping: false,
            eval: Default::default(),
            replicate: false,
            snapshots: BTreeMap::new(),
            attempt_forwards: 0,
            attempt_backwards: 0,
            departed: BTreeMap::new(),
        })
    }

    /// The same stage, its updates waiting for the coordinator's clip scale
    /// of each step (gradient clipping by global norm).
    pub fn with_clipping(mut self, clipping: bool) -> Stage {
        self.clipping = clipping;
        self
    }

    /// The same stage keeping replicas current: every update emits its
    /// gradient for the replica holder and snapshots the layer first.
    pub fn with_replicas(mut self, replicate: bool) -> Stage {
        self.replicate = replicate;
        self
    }

    pub fn layers(&self) -> Range<u32> {
        self.layers.clone()
    }

    pub(crate) fn loss_layer(&self) -> u32 {
        self.model.layers.len() as u32
    }

    pub(crate) fn is_last(&self) -> bool {
        self.layers.end == self.loss_layer()
    }

    /// Takes in one event. Tensors may arrive before their step starts.
    pub fn handle(&mut self, event: StageEvent) -> Result<()> {
        match event {
            StageEvent::StepStart { step, rows, inputs, targets } => {
                if self.current.as_ref().is_some_and(|c| !self.step_finished(c)) {
                    return Err(Error::Internal(format!("step {step} started before the previous one finished")));
                }
                self.current = Some(StepState::new(step, rows, true));
                self.forget_before(step);
                // Earlier steps' snapshots stay as buffers to refill (each
                // says its step; only the step in progress's are used).
                self.departed.clear();
                (self.attempt_forwards, self.attempt_backwards) = (0, 0);
                self.activations.extend(inputs.into_iter().map(|(m, t)| ((step, m), (0, t))));
                self.targets.extend(targets.into_iter().map(|(m, t)| ((step, m), t)));
                self.replan(true);
            }
            StageEvent::Activation { step, micro, layer, tensor } => {
                self.activations.insert((step, micro), (layer, tensor));
            }
            StageEvent::Gradient { step, micro, layer, tensor } => {
                self.gradients.insert((step, micro), (layer, tensor));
            }
            StageEvent::Replay { step, micro, layer, stop, tensor } => {
                self.replays.insert((step, micro, layer), (stop, tensor));
            }
            StageEvent::Recompute { step, micro, layer, stop } => {
                self.resends.insert((step, micro, layer), stop);
            }
            StageEvent::EvalStart { .. } | StageEvent::EvalActivation { .. } => self.eval_event(event),
            StageEvent::ClipScale { step, scale } => match self.current.as_mut() {
                Some(cur) if cur.step == step => cur.clip_scale = Some(scale),
                // A scale for a step this stage is not in (it joined later,
                // or finished it) changes nothing here.
                _ => {}
            },
        }
        Ok(())
    }

    /// Rebuilds the plan of the step in progress from what is left to do.
    pub(crate) fn replan(&mut self, strict: bool) {
        let Some(cur) = &self.current else { return };
        let micros = cur.rows.len() as u32;
        let (first, last) = (self.layers.start, self.layers.end - 1);
        let updated = |layer: u32| cur.updated.contains(&layer);
        let forward_done = |m: u32| {
            updated(last)
                || self.tape.contains_key(&(m, last))
                || self.awaiting.contains(&(m, last))
                || self.acc.has(last, m)
        };
        let backward_done = |m: u32| updated(first) || self.acc.has(first, m);
        let forwards: Vec<u32> = (0..micros).filter(|&m| !forward_done(m)).collect();
        let backwards: Vec<u32> = (0..micros).filter(|&m| !backward_done(m)).collect();
        let in_flight = (0..micros).filter(|&m| forward_done(m) && !backward_done(m)).count();
        let plan = plan_actions(self.kind, self.position, &forwards, &backwards, in_flight);
        let cur = self.current.as_mut().expect("checked above");
        cur.plan = plan.into();
        cur.strict = strict;
    }

    /// The next unit of work of the step in progress, if its input is here.
    pub fn ready(&self) -> Option<Work> {
        if let Some(work) = self.eval_ready() {
            return Some(work);
        }
        let cur = self.current.as_ref()?;
        if let Some(layer) = self.norms_due(cur) {
            return Some(Work::Norms { step: cur.step, layer });
        }
        if let Some(layer) = self.update_due(cur) {
            return Some(Work::Update { step: cur.step, layer });
        }
        if let Some(&(step, micro, layer)) = self.resends.keys().find(|(s, _, _)| *s == cur.step) {
            return Some(Work::Resend { step, micro, layer });
        }
        if let Some(&(step, micro, layer)) = self.replays.keys().find(|(s, _, _)| *s == cur.step) {
            return Some(Work::Replay { step, micro, layer });
        }
        let mut candidates = cur.plan.iter().take(if cur.strict { 1 } else { cur.plan.len() });
        candidates.find(|a| self.inputs_here(cur.step, **a)).map(|a| Work::Compute(*a))
    }

    fn inputs_here(&self, step: u32, action: Action) -> bool {
        match action.phase {
            Phase::Forward => self.activations.contains_key(&(step, action.micro)),
            Phase::Backward => {
                let grad = self.gradients.contains_key(&(step, action.micro))
                    || (self.is_last() && self.tape.contains_key(&(action.micro, self.loss_layer())));
                grad && !self.awaits_replay(action.micro)
            }
        }
    }

    /// A layer whose step gradient is complete and not yet applied (when
    /// clipping, once the step's scale is known).
    fn update_due(&self, cur: &StepState) -> Option<u32> {
        if self.clipping && cur.clip_scale.is_none() {
            return None;
        }
        let micros = cur.rows.len() as u32;
        self.layers.clone().find(|l| !cur.updated.contains(l) && self.acc.summed(*l) == micros)
    }

    /// When clipping: a complete layer gradient whose norms are not reported yet.
    fn norms_due(&self, cur: &StepState) -> Option<u32> {
        if !self.clipping || cur.clip_scale.is_some() {
            return None;
        }
        let micros = cur.rows.len() as u32;
        self.layers
            .clone()
            .find(|l| !cur.normed.contains(l) && !cur.updated.contains(l) && self.acc.summed(*l) == micros)
    }

    fn step_finished(&self, cur: &StepState) -> bool {
        cur.plan.is_empty() && self.layers.clone().all(|l| cur.updated.contains(&l))
    }

    /// True when no work of the step in progress remains here.
    pub fn idle(&self) -> bool {
        self.current.as_ref().is_none_or(|c| self.step_finished(c))
    }

    /// Runs the next unit of work (which must be [`Stage::ready`]) and returns its effects.
    pub fn run_next(&mut self) -> Result<Vec<Effect>> {
        let action = match self.ready().ok_or_else(|| Error::Internal("no work is ready".into()))? {
            Work::Update { step, layer } => return self.update(step, layer),
            Work::Norms { step, layer } => return self.norms(step, layer),
            Work::Replay { step, micro, layer } => return self.replay(step, micro, layer),
            Work::Resend { step, micro, layer } => return self.resend(step, micro, layer),
            Work::Eval { step, batch } => return self.eval_forward(step, batch),
            Work::Compute(action) => action,
        };
        let effects = match action.phase {
            Phase::Forward => self.forward(action.micro)?,
            Phase::Backward => self.backward(action.micro)?,
        };
        let cur = self.current.as_mut().expect("ready() implies a step in progress");
        cur.plan.retain(|a| *a != action);
        Ok(effects)
    }

    fn step(&self) -> u32 {
        self.current.as_ref().map_or(0, |c| c.step)
    }

    /// The step in progress (or last run).
    pub fn current_step(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.step)
    }

    /// Forward of `micro` from the layer its activation enters to the
    /// stage's last layer (and the loss on the last stage).
    fn forward(&mut self, micro: u32) -> Result<Vec<Effect>> {
        let step = self.step();
        let (entry, mut x) = self.activations.remove(&(step, micro)).expect("ready() checked the input");
        self.check_inside(entry, "activation")?;
        if entry == 0 {
            self.kept.insert((step, micro, 0), x.clone());
        }
        self.entries.insert((step, micro, entry));
        for layer in entry..self.layers.end {
            let key = SegmentKey { step, micro, layer };
            let (segment, out) = self.model.forward_layer(key, &self.params, x)?;
            self.tape.insert((micro, layer), segment);
            self.counters.forward_layer_executions += 1;
            self.attempt_forwards += 1;
            x = out;
        }
        if !self.is_last() {
            self.kept.insert((step, micro, self.layers.end), x.clone());
            return Ok(vec![Effect::SendActivation { step, micro, layer: self.layers.end, tensor: x }]);
        }
        let targets = self
            .targets
            .remove(&(step, micro))
            .ok_or_else(|| Error::Internal(format!("no targets for step {step} micro-batch {micro}")))?;
        let key = SegmentKey { step, micro, layer: self.loss_layer() };
        let (segment, value) = self.model.forward_loss(key, x, &targets)?;
        self.tape.insert((micro, self.loss_layer()), segment);
        Ok(vec![Effect::Loss { step, micro, value }])
    }

    /// Backward of `micro` from the layer its gradient belongs to (or the
    /// loss) down to the stage's first layer.
    fn backward(&mut self, micro: u32) -> Result<Vec<Effect>> {
        let step = self.step();
        let (top, mut grad) = match self.gradients.remove(&(step, micro)) {
            Some((layer, g)) => (layer, Some(g)),
            None => (self.layers.end - 1, Some(self.loss_gradient(micro)?)),
        };
        self.check_inside(top, "gradient")?;
        for layer in (self.layers.start..=top).rev() {
            let segment = self.take_segment(micro, layer)?;
            let dy = grad.take().ok_or_else(|| Error::Internal(format!("no gradient reaches layer {layer}")))?;
            let out = segment.backward_on(self.model.backend(), &self.params, dy, layer > 0)?;
            self.acc.add(layer, micro, out.param_grads)?;
            self.counters.backward_layer_executions += 1;
            self.attempt_backwards += 1;
            self.forget_layer(step, micro, layer);
            grad = out.input_grad;
        }
        Ok(match (self.layers.start, grad) {
            (0, _) | (_, None) => Vec::new(),
            (first, Some(tensor)) => vec![Effect::SendGradient { step, micro, layer: first - 1, tensor }],
        })
    }

    /// Backward of the loss segment: the gradient of the last layer's output,
    /// weighted by the micro-batch's share of the minibatch.
    fn loss_gradient(&mut self, micro: u32) -> Result<Tensor> {
        let segment = self.take_segment(micro, self.loss_layer())?;
        let cur = self.current.as_ref().expect("step in progress");
        let weight = super::plan::loss_weight(&cur.rows, micro as usize);
        segment
            .backward_on(self.model.backend(), &self.params, Tensor::scalar(weight), true)?
            .input_grad
            .ok_or_else(|| Error::Internal("the loss gave no gradient".into()))
    }

    pub(crate) fn check_inside(&self, layer: u32, what: &str) -> Result<()> {
        if !self.layers.contains(&layer) {
            return Err(Error::Internal(format!(
                "{what} for layer {layer} reached the stage of layers {:?}",
                self.layers
            )));
        }
        Ok(())
    }

    fn take_segment(&mut self, micro: u32, layer: u32) -> Result<Segment> {
        self.tape
            .remove(&(micro, layer))
            .ok_or_else(|| Error::Internal(format!("no recorded segment for micro-batch {micro} layer {layer}")))
    }

    /// The norms of `layer`'s complete step gradient, for the coordinator.
    fn norms(&mut self, step: u32, layer: u32) -> Result<Vec<Effect>> {
        let norms = crate::clip::norms(self.acc.peek_sum(layer)?)?;
        self.current.as_mut().expect("step in progress").normed.insert(layer);
        Ok(vec![Effect::LayerNorms { step, layer, norms }])
    }

    /// Applies `layer`'s step gradient (summed in micro-batch order), scaled
    /// by the step's clip factor when clipping.
    fn update(&mut self, step: u32, layer: u32) -> Result<Vec<Effect>> {
        let mut grads = self.acc.take_sum(layer)?;
        if let Some(scale) = self.current.as_ref().and_then(|c| c.clip_scale) {
            crate::clip::apply(&mut grads, scale)?;
        }
        let mut effects = Vec::new();
        // The step's learning rate comes from `step` alone, so it is the
        // same bits on whichever worker holds the layer now.
        match self.replicate {
            // Keeps the layer's step-start values for a rollback.
            true => self.update_keeping(step, layer, &grads)?,
            false => {
                for (name, grad) in grads.iter() {
                    self.optimizer.update(step, name, self.params.get_mut(name)?, grad)?;
                }
            }
        }
        if self.replicate {
            // The sums are spent: they travel to the replica without a copy.
            effects.push(Effect::Replica { step, layer, grads: grads.into_iter().collect() });
        }
        self.current.as_mut().expect("step in progress").updated.insert(layer);
        effects.push(Effect::LayerUpdated { step, layer });
        Ok(effects)
    }
}

/// A stage's layers must be a non-empty part of the model.
pub(crate) fn check_range(model: &Model, layers: &Range<u32>, (stage, stages): (u32, u32)) -> Result<()> {
    if layers.is_empty() || layers.end as usize > model.layers.len() || stage >= stages {
        return Err(Error::Partition(format!("stage {stage}/{stages} with layers {layers:?} does not fit the model")));
    }
    Ok(())
}
