//! A stage's part of an evaluation (`--eval-data`): forward only, apart
//! from the training state.
//!
//! Invariants:
//! - an evaluation runs between steps (after step s, before step s + 1
//!   starts), when no training work is pending anywhere, and no migration
//!   runs during one (a notice waits for its end), so its activations
//!   always enter this stage's first layer;
//! - it reads the parameters and writes nothing of the training state:
//!   no tape segment, kept activation, gradient, counter or update.

use std::collections::BTreeMap;

use super::stage::{Effect, Stage, StageEvent, Work};
use crate::{Error, Result, SegmentKey, Targets, Tensor};

/// Held-out batches waiting at a stage.
#[derive(Debug, Default)]
pub(crate) struct EvalState {
    /// Activations waiting, by (step, batch): the layer they enter and the tensor.
    activations: BTreeMap<(u32, u32), (u32, Tensor)>,
    /// Targets (last stage), by (step, batch).
    targets: BTreeMap<(u32, u32), Targets>,
}

impl Stage {
    /// Takes in an evaluation's start or one of its activations (which may
    /// arrive before the start).
    pub(crate) fn eval_event(&mut self, event: StageEvent) {
        match event {
            StageEvent::EvalStart { step, inputs, targets } => {
                let entry = self.layers.start;
                self.eval.activations.extend(inputs.into_iter().map(|(b, t)| ((step, b), (entry, t))));
                self.eval.targets.extend(targets.into_iter().map(|(b, t)| ((step, b), t)));
            }
            StageEvent::EvalActivation { step, batch, layer, tensor } => {
                self.eval.activations.insert((step, batch), (layer, tensor));
            }
            _ => {}
        }
    }

    /// The next held-out batch whose input (and, on the last stage, targets) is here.
    pub(crate) fn eval_ready(&self) -> Option<Work> {
        let last = self.is_last();
        self.eval
            .activations
            .keys()
            .find(|key| !last || self.eval.targets.contains_key(key))
            .map(|&(step, batch)| Work::Eval { step, batch })
    }

    /// True while an evaluation has batches waiting here.
    pub fn evaluating(&self) -> bool {
        !self.eval.activations.is_empty()
    }

    /// The forward of held-out batch `batch` through this stage's layers (and
    /// the loss on the last stage), keeping nothing.
    pub(crate) fn eval_forward(&mut self, step: u32, batch: u32) -> Result<Vec<Effect>> {
        let (entry, mut x) = self
            .eval
            .activations
            .remove(&(step, batch))
            .ok_or_else(|| Error::Internal(format!("no input for held-out batch {batch} after step {step}")))?;
        self.check_inside(entry, "held-out activation")?;
        let key = |layer| SegmentKey { step, micro: batch, layer };
        for layer in entry..self.layers.end {
            x = self.model.eval_layer(key(layer), &self.params, x)?;
        }
        if !self.is_last() {
            return Ok(vec![Effect::SendEvalActivation { step, batch, layer: self.layers.end, tensor: x }]);
        }
        let targets = self
            .eval
            .targets
            .remove(&(step, batch))
            .ok_or_else(|| Error::Internal(format!("no targets for held-out batch {batch} after step {step}")))?;
        let value = self.model.eval_loss_of(key(self.loss_layer()), x, &targets)?;
        Ok(vec![Effect::EvalLoss { step, batch, value }])
    }
}
