//! Batching a worker's reports to the coordinator (losses, layer updates,
//! clipping norms): one [`Message::Reports`] frame whenever the worker runs
//! out of ready work, instead of one frame per layer and micro-batch.
//!
//! Invariants: a report is never held while the worker waits (a worker with
//! no ready work has sent everything it owes), and reports never overtake,
//! nor are overtaken by, any other message to the coordinator or any
//! shipping: they go out, in the order made, just before the first such
//! output. Data sent to workers travels on other connections, whose order
//! relative to the coordinator's never mattered. Every batch ends with the
//! worker's work so far ([`Report::Work`]), so the coordinator can count
//! the work of a worker that is later lost without notice.
//!
//! The step gradients for replica holders are held and sent the same way,
//! at the same moments (just before the reports): one [`Message::Replica`]
//! per holder and step carrying every layer updated since, instead of one
//! per layer.

use super::{Dest, Out, Worker};
use crate::pipeline::protocol::{Message, Report, WorkDone};
use crate::Tensor;

impl Worker {
    /// Holds a report until [`Worker::settle`] sends it.
    pub(super) fn hold(&mut self, report: Report) {
        self.outbox.push(report);
    }

    /// Holds `layer`'s step gradient of `step` for `holder`, in the one
    /// message to that holder for this step and generation.
    pub(super) fn hold_replica(&mut self, holder: u32, step: u32, layer: u32, grads: Vec<(String, Tensor)>) {
        let generation = self.generation;
        let same = |(h, m): &&mut (u32, Message)| {
            *h == holder
                && matches!(m, Message::Replica { generation: g, step: s, .. } if *g == generation && *s == step)
        };
        match self.replica_outbox.iter_mut().find(same) {
            Some((_, Message::Replica { layers, .. })) => layers.push((layer, grads)),
            _ => {
                self.replica_outbox.push((holder, Message::Replica { generation, step, layers: vec![(layer, grads)] }))
            }
        }
    }

    /// Inserts the held replica gradients and then the held reports (as
    /// one message) into `outs`: before the first output that is not data
    /// for a worker, or at the end when the worker has no ready work left.
    pub(super) fn settle(&mut self, mut outs: Vec<Out>) -> Vec<Out> {
        if self.outbox.is_empty() && self.replica_outbox.is_empty() {
            return outs;
        }
        let first_other = outs.iter().position(|o| !matches!(o, Out::Send { to: Dest::Worker(_), .. }));
        let at = match first_other {
            Some(at) => at,
            None if self.ready().is_none() => outs.len(),
            None => return outs,
        };
        let replicas = std::mem::take(&mut self.replica_outbox);
        let mut held: Vec<Out> =
            replicas.into_iter().map(|(holder, message)| Out::Send { to: Dest::Worker(holder), message }).collect();
        if !self.outbox.is_empty() {
            let mut reports = std::mem::take(&mut self.outbox);
            self.work_seq += 1;
            reports.extend(self.progress().map(Report::Work));
            held.push(Out::Send { to: Dest::Coordinator, message: Message::Reports { reports } });
        }
        outs.splice(at..at, held);
        outs
    }

    /// A batch of one report: the work done so far (None without a stage).
    pub(super) fn work_report(&mut self) -> Option<Out> {
        self.work_seq += 1;
        let work = self.progress()?;
        Some(Out::Send { to: Dest::Coordinator, message: Message::Reports { reports: vec![Report::Work(work)] } })
    }

    /// The work this worker has done so far (None before its stage exists);
    /// after it finished, what it finished with.
    pub fn progress(&self) -> Option<WorkDone> {
        let Some(stage) = self.stage.as_ref() else { return self.final_work };
        Some(WorkDone {
            seq: self.work_seq,
            generation: self.generation,
            step: stage.current_step().unwrap_or(u32::MAX),
            counters: stage.counters,
            attempt_forwards: stage.attempt_forwards,
            attempt_backwards: stage.attempt_backwards,
        })
    }

    /// Reports made but not yet handed to the driver.
    pub fn held_reports(&self) -> usize {
        self.outbox.len()
    }
}
