//! The coordinator's side of evaluations (`--eval-data`) and of the end of
//! a step.
//!
//! An evaluation follows step s when `(s + 1) % every == 0`; it runs once
//! every layer has its update for step s and before step s + 1 starts, on
//! the members of the generation in force, which forward the K held-out
//! batches through their layers. Step s + 1 starts once all K losses are
//! in. A notice (or a joiner) arriving meanwhile waits, as it would for an
//! action boundary: the evaluation finishes on the current layout and the
//! migration begins with step s + 1 (after the last step, the job finishes
//! and the notice has nothing left to move).

use super::{CoordEffect, Coordinator, Phase};
use crate::eval::{mean_loss, EvalPoint};
use crate::pipeline::plan::split_step;
use crate::pipeline::protocol::Message;
use crate::{Error, Result};

impl Coordinator {
    /// True while training runs: during a step or an evaluation between steps.
    pub(super) fn training(&self) -> bool {
        matches!(self.phase, Phase::Running { .. } | Phase::Evaluating { .. })
    }

    /// Every evaluation so far, in step order.
    pub fn evals(&self) -> &[EvalPoint] {
        &self.evals
    }

    /// After step `step`: its evaluation if one is due, else the next step
    /// or the end of the run.
    pub(super) fn after_step(&mut self, step: u32) -> Result<Vec<CoordEffect>> {
        let mut effects = self.release_lingering();
        effects.extend(match &self.plan.eval {
            Some(plan) if plan.due_after(step) => self.start_eval(step)?,
            _ => self.at_boundary(step + 1)?,
        });
        Ok(effects)
    }

    /// Sends the held-out batches: inputs to the first stage, targets to the
    /// last, one batch per "micro-batch" (never split).
    fn start_eval(&mut self, step: u32) -> Result<Vec<CoordEffect>> {
        let plan = self.plan.eval.as_ref().ok_or_else(|| Error::Internal("no evaluation planned".into()))?;
        let mut inputs = Vec::with_capacity(plan.batches.len());
        let mut targets = Vec::with_capacity(plan.batches.len());
        for (k, batch) in plan.batches.iter().enumerate() {
            let mut split = split_step(batch, 1)?;
            inputs.extend(split.inputs.pop().map(|(_, x)| (k as u32, x)));
            targets.extend(split.targets.pop().map(|(_, t)| (k as u32, t)));
        }
        self.phase = Phase::Evaluating { step, losses: vec![None; plan.batches.len()] };
        let (first, last) = (self.placements.first().map(|p| p.worker), self.placements.last().map(|p| p.worker));
        let starts = self.members().into_iter().map(|w| {
            let inputs = if Some(w) == first { inputs.clone() } else { Vec::new() };
            let targets = if Some(w) == last { targets.clone() } else { Vec::new() };
            CoordEffect::Send { worker: w, message: Message::EvalStart { step, inputs, targets } }
        });
        Ok(starts.collect())
    }

    /// One held-out batch's loss; the last one ends the evaluation.
    pub(super) fn on_eval_loss(&mut self, worker: u32, step: u32, batch: u32, value: f32) -> Result<Vec<CoordEffect>> {
        let out_of_turn = || {
            Error::peer(
                format!("worker {worker}"),
                format!("its held-out loss {batch} after step {step} arrived out of turn"),
            )
        };
        let Phase::Evaluating { step: current, losses } = &mut self.phase else { return Err(out_of_turn()) };
        let slot = losses.get_mut(batch as usize).filter(|_| *current == step).ok_or_else(out_of_turn)?;
        if slot.replace(value).is_some() {
            return Err(out_of_turn());
        }
        let Some(all) = losses.iter().copied().collect::<Option<Vec<f32>>>() else { return Ok(Vec::new()) };
        let point = EvalPoint { step, loss: mean_loss(&all)? };
        self.evals.push(point);
        let mut effects = vec![CoordEffect::EvalFinished(point)];
        effects.extend(self.at_boundary(step + 1)?);
        Ok(effects)
    }
}
