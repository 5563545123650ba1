//! Counting the work of the whole job for the report, including that of
//! workers lost without notice (their final counters die with them).
//!
//! Invariant: the outcome's counters are the finished workers' final
//! counters, the leavers' farewells and, for every worker lost without
//! notice, the last work it reported (every batch of reports ends with
//! it). Forwards and backwards of an attempt that was later abandoned
//! count as `recomputed_forward_layers` / `abandoned_backward_layers`, so
//! `forward_layer_executions` and `backward_layer_executions` stay those of
//! the completed attempts: M x layers per step, as in one process. A lost
//! worker's work after its last report is not seen (a lower bound on the
//! abandoned work, never an overcount): every completed step's work of it
//! is seen, since its layers' updates ride in the same batches.

use std::collections::BTreeMap;

use super::Coordinator;
use crate::pipeline::protocol::{Report, Span, WorkDone};
use crate::train::Counters;

/// What the coordinator knows of each worker's work.
#[derive(Debug, Default)]
pub(super) struct WorkBook {
    /// The latest work each worker reported (by its sequence number).
    latest: BTreeMap<u32, WorkDone>,
    /// Every rollback: (its generation, the step abandoned).
    rollbacks: Vec<(u32, u32)>,
    /// Leavers' work and timelines, by worker (a later farewell replaces
    /// an earlier one: a leaver that took part in a restore sends two).
    pub(super) farewells: BTreeMap<u32, (WorkDone, Vec<Span>)>,
}

impl WorkBook {
    /// Takes in the work reports of a batch (from any worker, lost or not).
    pub(super) fn note(&mut self, worker: u32, reports: &[Report]) {
        for report in reports {
            let Report::Work(work) = report else { continue };
            let newer = self.latest.get(&worker).is_none_or(|w| w.seq < work.seq);
            if newer {
                self.latest.insert(worker, *work);
            }
        }
    }

    /// Step `step` is abandoned, entering `generation`.
    pub(super) fn rolled_back(&mut self, generation: u32, step: u32) {
        self.rollbacks.push((generation, step));
    }

    /// `work`'s counters, with its attempt moved to the redone counts if
    /// that attempt was abandoned after it was reported.
    fn settled(&self, work: &WorkDone) -> Counters {
        let mut c = work.counters;
        let abandoned = self.rollbacks.iter().any(|&(g, s)| s == work.step && g > work.generation);
        if abandoned {
            c.forward_layer_executions -= work.attempt_forwards.min(c.forward_layer_executions);
            c.recomputed_forward_layers += work.attempt_forwards;
            c.backward_layer_executions -= work.attempt_backwards.min(c.backward_layer_executions);
            c.abandoned_backward_layers += work.attempt_backwards;
        }
        c
    }
}

impl Coordinator {
    /// The work of workers that sent no final state: leavers (their
    /// farewell) and workers lost without notice (their last report).
    pub(super) fn unfinished_work(&mut self) -> Vec<(u32, Counters, Vec<Span>)> {
        let book = std::mem::take(&mut self.work);
        let mut out: Vec<(u32, Counters, Vec<Span>)> =
            book.farewells.iter().map(|(w, (work, spans))| (*w, book.settled(work), spans.clone())).collect();
        for worker in &self.lost {
            let reported = book.latest.get(worker).filter(|_| !book.farewells.contains_key(worker));
            if let Some(work) = reported.filter(|_| !self.finals.contains_key(worker)) {
                out.push((*worker, book.settled(work), Vec::new()));
            }
        }
        out
    }
}
