//! The update of [`Optimizer::update`] done out of place, for a caller that
//! keeps a parameter's values from before its update (a stage keeping a
//! layer's step-start state for a rollback): the update is written into
//! spare buffers, which are then swapped with the parameter's, so the old
//! values stay valid where the new ones would have gone, and no copy of
//! them is made.
//!
//! Invariant: after [`Optimizer::update_into`] the parameter and its state
//! hold bit for bit what [`Optimizer::update`] would have left (the
//! kernels' `*_into` variants run the in-place arithmetic), and the spare
//! buffers hold the parameter and state as they were before.

use baton_kernels::optim::{adam_step_into, adamw_step_into, sgd_step_into};

use super::{OptState, Optimizer, OptimizerConfig};
use crate::{Error, Result, Tensor};

impl Optimizer {
    /// How many state buffers this optimizer keeps per parameter.
    fn buffer_count(&self) -> usize {
        match &self.config {
            OptimizerConfig::Sgd(c) if c.momentum == 0.0 => 0,
            OptimizerConfig::Sgd(_) => 1,
            OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => 2,
        }
    }

    /// True when [`Optimizer::update_into`] can update `name` (a parameter
    /// of `len` elements): updates run on the host and `name` has host
    /// state of this optimizer's buffers (it was updated before).
    pub(crate) fn updates_into(&self, name: &str, len: usize) -> bool {
        let host = !self.backend.device().is_device() && !self.resident.contains_key(name);
        let state = self.state.get(name);
        host && state
            .is_some_and(|s| s.buffers.len() == self.buffer_count() && s.buffers.iter().all(|b| b.len() == len))
    }

    /// Applies step `step`'s update of `name` like [`Optimizer::update`],
    /// writing it into `spare` and `spare_state` (of `param`'s shape and
    /// this optimizer's buffers; their contents are overwritten), then
    /// swapping them with `param` and its state: `param` and the state
    /// hold the updated values, `spare` and `spare_state` those from
    /// before. Errors (nothing changed) unless [`Optimizer::updates_into`]
    /// holds and the shapes agree.
    pub(crate) fn update_into(
        &mut self,
        step: u32,
        name: &str,
        param: &mut Tensor,
        grad: &Tensor,
        spare: (&mut Tensor, &mut OptState),
    ) -> Result<()> {
        let (spare, spare_state) = spare;
        let count = self.buffer_count();
        let fits = spare.shape() == param.shape()
            && grad.shape() == param.shape()
            && spare_state.buffers.len() == count
            && spare_state.buffers.iter().all(|b| b.len() == param.len());
        if !fits || !self.updates_into(name, param.len()) {
            return Err(Error::Internal(format!("{name} cannot be updated out of place into these buffers")));
        }
        let config = self.config_at(step);
        let state = self.state.get_mut(name).ok_or_else(|| Error::Internal(format!("{name} has no state")))?;
        let done = state.step;
        let (from, g, to) = (param.values()?, grad.values()?, spare.values_mut()?);
        match (&config, &state.buffers[..], &mut spare_state.buffers[..]) {
            (OptimizerConfig::Sgd(cfg), [], []) => sgd_step_into([from, &[]], g, [to, &mut []], done == 0, cfg),
            (OptimizerConfig::Sgd(cfg), [b], [tb]) => sgd_step_into([from, b], g, [to, tb], done == 0, cfg),
            (OptimizerConfig::Adam(cfg), [m, v], [tm, tv]) => {
                adam_step_into([from, m, v], g, [to, tm, tv], done + 1, cfg)
            }
            (OptimizerConfig::AdamW(cfg), [m, v], [tm, tv]) => {
                adamw_step_into([from, m, v], g, [to, tm, tv], done + 1, cfg)
            }
            _ => return Err(Error::Internal(format!("the state of {name} does not fit its optimizer"))),
        }
        std::mem::swap(param, spare);
        std::mem::swap(&mut state.buffers, &mut spare_state.buffers);
        (spare_state.step, state.step) = (done, done + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three updates in place and three out of place give the same bits,
    /// and each out-of-place one leaves the values from before it in the
    /// spare buffers, for SGD (plain and momentum), Adam and AdamW.
    #[test]
    fn out_of_place_updates_match_and_keep_the_old_values() {
        for text in ["sgd:lr=0.1", "sgd:lr=0.1,momentum=0.9,weight_decay=0.01", "adam:lr=0.01", "adamw:lr=0.01"] {
            let config: OptimizerConfig = text.parse().unwrap();
            let (mut a, mut b) = (Optimizer::new(config), Optimizer::new(config));
            let start: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
            let (mut pa, mut pb) =
                (Tensor::new(vec![37], start.clone()).unwrap(), Tensor::new(vec![37], start).unwrap());
            let grad =
                |s: u32| Tensor::new(vec![37], (0..37).map(|i| ((i + s) as f32 * 0.11).cos()).collect()).unwrap();
            a.update(0, "w", &mut pa, &grad(0)).unwrap();
            b.update(0, "w", &mut pb, &grad(0)).unwrap();
            assert!(!b.updates_into("never-updated", 37), "{text}: a parameter without state");
            let mut spare = (Tensor::zeros(&[37]), b.state("w").unwrap().clone());
            for step in 1..3 {
                let (before, state_before) = (pb.clone(), b.state("w").unwrap().clone());
                a.update(step, "w", &mut pa, &grad(step)).unwrap();
                b.update_into(step, "w", &mut pb, &grad(step), (&mut spare.0, &mut spare.1)).unwrap();
                assert_eq!(pa, pb, "{text} step {step}");
                assert_eq!(a.state("w"), b.state("w"), "{text} step {step}");
                assert_eq!((&spare.0, &spare.1), (&before, &state_before), "{text} step {step}: the old values");
            }
            let mut short = (Tensor::zeros(&[36]), spare.1.clone());
            let kept = pb.clone();
            assert!(b.update_into(3, "w", &mut pb, &grad(3), (&mut short.0, &mut short.1)).is_err());
            assert_eq!(pb, kept, "{text}: a refused update changes nothing");
        }
    }
}
