//! One worker's share of a pipeline step, as a state machine without I/O.
//!
//! The driver feeds [`StageEvent`]s in, asks for the next ready action,
//! runs it and carries out the returned [`Effect`]s (sending tensors, which
//! it routes by layer through the current partition). Doing one action per
//! call lets the driver time actions, count them and stop at an action
//! boundary. Invariant: the bits a stage produces depend only on the
//! parameters, the inputs and the micro-batch order, never on the partition
//! or the timing of arrivals.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use super::schedule::{stage_actions, Action, Phase, ScheduleKind};
use crate::train::Counters;
use crate::{
    Error, GradAccumulator, Model, Optimizer, ParamStore, Result, Segment, SegmentKey, Targets,
    Tensor,
};

/// What a stage learns from outside.
#[derive(Clone, Debug)]
pub enum StageEvent {
    /// Step `step` begins. `rows[m]` is micro-batch m's row count; the first
    /// stage gets the inputs, the last stage the targets.
    StepStart {
        step: u32,
        rows: Vec<u32>,
        inputs: Vec<(u32, Tensor)>,
        targets: Vec<(u32, Targets)>,
    },
    /// The activation entering `layer` for micro-batch `micro`.
    Activation {
        step: u32,
        micro: u32,
        layer: u32,
        tensor: Tensor,
    },
    /// The gradient of the output of `layer` for micro-batch `micro`.
    Gradient {
        step: u32,
        micro: u32,
        layer: u32,
        tensor: Tensor,
    },
}

/// What a stage asks the driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send the activation entering `layer` to that layer's owner.
    SendActivation {
        step: u32,
        micro: u32,
        layer: u32,
        tensor: Tensor,
    },
    /// Send the gradient of `layer`'s output to that layer's owner.
    SendGradient {
        step: u32,
        micro: u32,
        layer: u32,
        tensor: Tensor,
    },
    /// The loss of one micro-batch (last stage only), unweighted mean.
    Loss { step: u32, micro: u32, value: f32 },
    /// All of this stage's actions of `step` ran and its parameters are updated.
    StepDone { step: u32 },
}

/// The next unit of work of a stage: a compute action, or the optimizer
/// update once every action of the step ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Compute(Action),
    Update { step: u32 },
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Compute(action) => action.fmt(f),
            Work::Update { step } => write!(f, "update{step}"),
        }
    }
}

/// One step in progress on this stage.
#[derive(Debug)]
struct StepState {
    step: u32,
    rows: Vec<u32>,
    actions: VecDeque<Action>,
    acc: GradAccumulator,
}

/// One pipeline stage: contiguous layers, their parameters and optimizer
/// state, and the unfinished tape of the step in progress.
#[derive(Debug)]
pub struct Stage {
    model: Arc<Model>,
    layers: Range<u32>,
    stage: u32,
    stages: u32,
    kind: ScheduleKind,
    pub params: ParamStore,
    pub optimizer: Optimizer,
    pub counters: Counters,
    current: Option<StepState>,
    /// Activations entering `layers.start`, by (step, micro).
    inputs: BTreeMap<(u32, u32), Tensor>,
    /// Gradients of the output of `layers.end - 1`, by (step, micro).
    grads_in: BTreeMap<(u32, u32), Tensor>,
    targets: BTreeMap<(u32, u32), Targets>,
    /// Segments whose backward has not run, by (micro, layer).
    tape: BTreeMap<(u32, u32), Segment>,
}

impl Stage {
    /// Stage `stage` of `stages` holding `layers` with their `params`.
    pub fn new(
        model: Arc<Model>,
        layers: Range<u32>,
        (stage, stages): (u32, u32),
        kind: ScheduleKind,
        params: ParamStore,
        optimizer: Optimizer,
    ) -> Result<Stage> {
        if layers.is_empty() || layers.end as usize > model.layers.len() || stage >= stages {
            return Err(Error::Partition(format!(
                "stage {stage}/{stages} with layers {layers:?} does not fit the model"
            )));
        }
        Ok(Stage {
            model,
            layers,
            stage,
            stages,
            kind,
            params,
            optimizer,
            counters: Counters::default(),
            current: None,
            inputs: BTreeMap::new(),
            grads_in: BTreeMap::new(),
            targets: BTreeMap::new(),
            tape: BTreeMap::new(),
        })
    }

    pub fn layers(&self) -> Range<u32> {
        self.layers.clone()
    }

    fn is_last(&self) -> bool {
        self.layers.end as usize == self.model.layers.len()
    }

    /// Takes in one event. Tensors may arrive before their step starts.
    pub fn handle(&mut self, event: StageEvent) -> Result<()> {
        match event {
            StageEvent::StepStart {
                step,
                rows,
                inputs,
                targets,
            } => {
                if let Some(cur) = &self.current {
                    return Err(Error::Pipeline(format!(
                        "step {step} started while step {} runs",
                        cur.step
                    )));
                }
                let actions =
                    stage_actions(self.kind, self.stage, self.stages, rows.len() as u32).into();
                self.current = Some(StepState {
                    step,
                    rows,
                    actions,
                    acc: GradAccumulator::new(),
                });
                self.inputs
                    .extend(inputs.into_iter().map(|(m, t)| ((step, m), t)));
                self.targets
                    .extend(targets.into_iter().map(|(m, t)| ((step, m), t)));
            }
            StageEvent::Activation {
                step,
                micro,
                layer,
                tensor,
            } => {
                self.expect_layer(layer, self.layers.start, "activation")?;
                self.inputs.insert((step, micro), tensor);
            }
            StageEvent::Gradient {
                step,
                micro,
                layer,
                tensor,
            } => {
                self.expect_layer(layer, self.layers.end - 1, "gradient")?;
                self.grads_in.insert((step, micro), tensor);
            }
        }
        Ok(())
    }

    fn expect_layer(&self, got: u32, want: u32, what: &str) -> Result<()> {
        if got != want {
            return Err(Error::Pipeline(format!(
                "{what} for layer {got} reached the stage whose boundary is layer {want}"
            )));
        }
        Ok(())
    }

    /// The next unit of work of the step in progress, if its input is here.
    pub fn ready(&self) -> Option<Work> {
        let cur = self.current.as_ref()?;
        let Some(&action) = cur.actions.front() else {
            return Some(Work::Update { step: cur.step });
        };
        let key = (cur.step, action.micro);
        let here = match action.phase {
            Phase::Forward => self.inputs.contains_key(&key),
            Phase::Backward if self.is_last() => true,
            Phase::Backward => self.grads_in.contains_key(&key),
        };
        here.then_some(Work::Compute(action))
    }

    /// True when no step is in progress.
    pub fn idle(&self) -> bool {
        self.current.is_none()
    }

    /// Runs the next unit of work (which must be [`Stage::ready`]) and returns its effects.
    pub fn run_next(&mut self) -> Result<Vec<Effect>> {
        let work = self
            .ready()
            .ok_or_else(|| Error::Pipeline("no work is ready".into()))?;
        let action = match work {
            Work::Update { .. } => return Ok(vec![self.finish_step()?]),
            Work::Compute(action) => action,
        };
        let effects = match action.phase {
            Phase::Forward => self.forward(action.micro)?,
            Phase::Backward => self.backward(action.micro)?,
        };
        self.current
            .as_mut()
            .expect("ready() implies a step in progress")
            .actions
            .pop_front();
        Ok(effects)
    }

    fn step(&self) -> u32 {
        self.current.as_ref().map_or(0, |c| c.step)
    }

    fn forward(&mut self, micro: u32) -> Result<Vec<Effect>> {
        let step = self.step();
        let mut x = self
            .inputs
            .remove(&(step, micro))
            .expect("ready() checked the input");
        for layer in self.layers.clone() {
            let key = SegmentKey { step, micro, layer };
            let (segment, out) = self.model.forward_layer(key, &self.params, x)?;
            self.tape.insert((micro, layer), segment);
            self.counters.forward_layer_executions += 1;
            x = out;
        }
        if !self.is_last() {
            return Ok(vec![Effect::SendActivation {
                step,
                micro,
                layer: self.layers.end,
                tensor: x,
            }]);
        }
        let targets = self.targets.remove(&(step, micro)).ok_or_else(|| {
            Error::Pipeline(format!("no targets for step {step} micro-batch {micro}"))
        })?;
        let loss_layer = self.model.layers.len() as u32;
        let (segment, value) = self.model.forward_loss(
            SegmentKey {
                step,
                micro,
                layer: loss_layer,
            },
            x,
            &targets,
        )?;
        self.tape.insert((micro, loss_layer), segment);
        Ok(vec![Effect::Loss { step, micro, value }])
    }

    fn backward(&mut self, micro: u32) -> Result<Vec<Effect>> {
        let step = self.step();
        let mut grad = if self.is_last() {
            let loss_layer = self.model.layers.len() as u32;
            let segment = self.take_segment(micro, loss_layer)?;
            let cur = self.current.as_ref().expect("step in progress");
            let total: u32 = cur.rows.iter().sum();
            let weight = cur.rows[micro as usize] as f32 / total as f32;
            segment
                .backward(&self.params, Tensor::scalar(weight), true)?
                .input_grad
        } else {
            self.grads_in.remove(&(step, micro))
        };
        for layer in self.layers.clone().rev() {
            let segment = self.take_segment(micro, layer)?;
            let dy = grad
                .take()
                .ok_or_else(|| Error::Pipeline(format!("no gradient for layer {layer}")))?;
            let out = segment.backward(&self.params, dy, layer > 0)?;
            let cur = self.current.as_mut().expect("step in progress");
            cur.acc.add(layer, micro, out.param_grads)?;
            self.counters.backward_layer_executions += 1;
            grad = out.input_grad;
        }
        Ok(match (self.layers.start, grad) {
            (0, _) | (_, None) => Vec::new(),
            (first, Some(tensor)) => vec![Effect::SendGradient {
                step,
                micro,
                layer: first - 1,
                tensor,
            }],
        })
    }

    fn take_segment(&mut self, micro: u32, layer: u32) -> Result<Segment> {
        self.tape.remove(&(micro, layer)).ok_or_else(|| {
            Error::Pipeline(format!(
                "no recorded segment for micro-batch {micro} layer {layer}"
            ))
        })
    }

    /// Sums the step's gradients (micro-batch order) and updates every parameter.
    fn finish_step(&mut self) -> Result<Effect> {
        let cur = self.current.take().expect("step in progress");
        let grads = cur.acc.finish(cur.rows.len() as u32)?;
        for (name, grad) in grads.iter() {
            let param = self.params.get_mut(name)?;
            self.optimizer.update(name, param, grad)?;
        }
        Ok(Effect::StepDone { step: cur.step })
    }
}
