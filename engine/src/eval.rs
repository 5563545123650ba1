//! Held-out evaluation (`--eval-data`): forward only, in evaluation mode.
//!
//! Invariants:
//! - an evaluation reads parameters and changes nothing: no tape node is
//!   kept (each layer's recording is dropped as soon as its output is
//!   known), no gradient, no optimizer state, no RNG position; so a run
//!   with evaluations trains exactly the bits of one without;
//! - dropout is the identity (PyTorch's `model.eval()`);
//! - the loss of one evaluation is the mean of its K batch losses, summed
//!   in f32 in batch order ([`mean_loss`]), whichever workers computed them,
//!   so a pipeline's evaluation equals [`eval_loss`] in one process bit for bit.

use crate::train::Batch;
use crate::{Error, Model, ParamStore, Result, SegmentKey, Targets, Tensor};

/// When and on what a job evaluates.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalPlan {
    /// Evaluate after step s when `(s + 1) % every == 0` (never 0).
    pub every: u32,
    /// The K held-out batches, the same at every evaluation.
    pub batches: Vec<Batch>,
}

impl EvalPlan {
    /// A plan; refuses `every == 0` and an empty batch list.
    pub fn new(every: u32, batches: Vec<Batch>) -> Result<EvalPlan> {
        if every == 0 {
            return Err(Error::Usage("evaluation every 0 steps: it must be at least 1".into()));
        }
        if batches.is_empty() {
            return Err(Error::Usage("an evaluation needs at least one batch".into()));
        }
        Ok(EvalPlan { every, batches })
    }

    /// True when an evaluation follows training step `step` (from 0).
    pub fn due_after(&self, step: u32) -> bool {
        (u64::from(step) + 1).is_multiple_of(u64::from(self.every))
    }
}

/// One finished evaluation: after training step `step`, the mean held-out `loss`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalPoint {
    pub step: u32,
    pub loss: f32,
}

impl Model {
    /// The forward of layer `key.layer` on `x` in evaluation mode, keeping
    /// nothing: only the output is returned.
    pub fn eval_layer(&self, key: SegmentKey, params: &ParamStore, x: Tensor) -> Result<Tensor> {
        let index = key.layer as usize;
        let layer = self.layers.get(index).ok_or_else(|| Error::Model(format!("the model has no layer {index}")))?;
        let mut rec = crate::Recorder::with_backend(key, format!("layers.{index}."), params, x, self.backend().clone())
            .with_seed(self.seed())
            .with_inference(true);
        let input = rec.input();
        let out = layer.forward(&mut rec, input)?;
        Ok(rec.finish(out)?.1)
    }

    /// The mean loss of `pred` against `targets`, keeping nothing.
    pub fn eval_loss_of(&self, key: SegmentKey, pred: Tensor, targets: &Targets) -> Result<f32> {
        Ok(self.forward_loss(key, pred, targets)?.1)
    }
}

/// The mean loss of one batch through every layer of `model`, forward only.
pub fn batch_loss(model: &Model, params: &ParamStore, step: u32, index: u32, batch: &Batch) -> Result<f32> {
    let key = |layer| SegmentKey { step, micro: index, layer };
    let mut x = batch.x.clone();
    for layer in 0..model.layers.len() as u32 {
        x = model.eval_layer(key(layer), params, x)?;
    }
    model.eval_loss_of(key(model.layers.len() as u32), x, &batch.targets)
}

/// The held-out loss of `batches` in one process (the reference that a
/// pipeline's evaluation equals bit for bit).
pub fn eval_loss(model: &Model, params: &ParamStore, step: u32, batches: &[Batch]) -> Result<f32> {
    let losses = batches
        .iter()
        .enumerate()
        .map(|(k, b)| batch_loss(model, params, step, k as u32, b))
        .collect::<Result<Vec<f32>>>()?;
    mean_loss(&losses)
}

/// The mean of the batch losses of one evaluation, summed in batch order.
pub fn mean_loss(losses: &[f32]) -> Result<f32> {
    if losses.is_empty() {
        return Err(Error::Internal("an evaluation without batch losses".into()));
    }
    Ok(losses.iter().sum::<f32>() / losses.len() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        let x = Tensor::new(vec![n, 1], vec![0.5; n]).unwrap();
        Batch::new(x.clone(), Targets::Values(x)).unwrap()
    }

    #[test]
    fn evaluations_follow_every_nth_step() {
        let plan = EvalPlan::new(3, vec![batch(2)]).unwrap();
        let due: Vec<u32> = (0..10).filter(|&s| plan.due_after(s)).collect();
        assert_eq!(due, vec![2, 5, 8]);
        assert!(EvalPlan::new(0, vec![batch(2)]).unwrap_err().to_string().contains("every 0 steps"));
        assert!(EvalPlan::new(1, Vec::new()).is_err());
    }

    #[test]
    fn the_mean_sums_in_batch_order() {
        let losses = [1.0e8f32, 1.0, -1.0e8];
        assert_eq!(mean_loss(&losses).unwrap(), ((1.0e8f32 + 1.0) + -1.0e8) / 3.0);
        assert!(mean_loss(&[]).is_err());
    }
}
