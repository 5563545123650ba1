//! The end of a job: the workers' final states, the outcome, and failure.

use std::collections::BTreeMap;

use super::{CoordEffect, Coordinator, JobOutcome, Phase};
use crate::pipeline::protocol::{Message, Span};
use crate::train::Counters;
use crate::{Error, ParamStore, Result, Tensor};

impl Coordinator {
    pub(super) fn on_final(
        &mut self,
        worker: u32,
        params: Vec<(String, Tensor)>,
        counters: Counters,
        spans: Vec<Span>,
    ) -> Result<Vec<CoordEffect>> {
        if self.phase != Phase::Finishing || self.finals.insert(worker, (params, counters, spans)).is_some() {
            return Err(Error::peer(format!("worker {worker}"), "it sent its final state out of turn"));
        }
        Ok(self.maybe_done())
    }

    pub(super) fn outcome(&mut self) -> JobOutcome {
        let mut outcome = JobOutcome {
            params: ParamStore::new(),
            losses: std::mem::take(&mut self.losses),
            counters: Counters::default(),
            partitions: std::mem::take(&mut self.partitions),
            migrations: std::mem::take(&mut self.migrations),
            spans: BTreeMap::new(),
            microbatch_losses: self.microbatch_losses,
            grad_norms: std::mem::take(&mut self.grad_norms),
            evals: std::mem::take(&mut self.evals),
            crashes: std::mem::take(&mut self.crashes),
            redone_steps: self.redone_steps,
            abandoned_checkpoints: std::mem::take(&mut self.ledger.abandoned),
        };
        let unfinished = self.unfinished_work();
        let finals = std::mem::take(&mut self.finals).into_iter().map(|(w, (p, c, s))| (w, p, c, s));
        let others = unfinished.into_iter().map(|(w, c, s)| (w, Vec::new(), c, s));
        for (worker, params, counters, spans) in finals.chain(others) {
            outcome.params.extend(params);
            outcome.counters.add(&counters);
            if !spans.is_empty() || !self.lost.contains(&worker) {
                outcome.spans.insert(worker, spans);
            }
        }
        move_to_redone(&mut outcome.counters, self.refallen_layer_passes);
        outcome
    }

    /// Ends the job: tells every worker to stop and reports why.
    pub(super) fn fail(&mut self, reason: String) -> Vec<CoordEffect> {
        self.phase = Phase::Over;
        let abort = |w: u32| CoordEffect::Send { worker: w, message: Message::Abort { reason: reason.clone() } };
        let known: Vec<u32> = self.addresses.keys().copied().collect();
        let mut effects: Vec<CoordEffect> = known.into_iter().map(abort).collect();
        effects.push(CoordEffect::Failed(reason));
        effects
    }
}

/// Completed steps run again after a fallback: their `passes` forwards and
/// backwards count as redone, so the executions stay those of one
/// uninterrupted run (M x layers per step).
fn move_to_redone(c: &mut Counters, passes: u64) {
    c.forward_layer_executions -= passes.min(c.forward_layer_executions);
    c.recomputed_forward_layers += passes;
    c.backward_layer_executions -= passes.min(c.backward_layer_executions);
    c.abandoned_backward_layers += passes;
}
