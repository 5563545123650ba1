//! Batched worker reports ([`Message::Reports`](crate::pipeline::protocol::Message::Reports)).

use super::{CoordEffect, Coordinator};
use crate::pipeline::protocol::Report;
use crate::{Error, Result};

impl Coordinator {
    /// A batch of reports, taken one after the other as if each had come
    /// in its own message (an empty batch is a peer's mistake).
    pub(super) fn on_reports(&mut self, worker: u32, reports: Vec<Report>) -> Result<Vec<CoordEffect>> {
        if reports.is_empty() {
            return Err(Error::peer(format!("worker {worker}"), "it sent an empty batch of reports"));
        }
        let mut effects = Vec::new();
        for report in reports {
            effects.extend(match report {
                Report::Loss { step, micro, value } => self.on_loss(worker, step, micro, value)?,
                Report::LayerUpdated { step, layer, replica } => {
                    self.await_replica(layer, replica);
                    self.on_layer_updated(worker, step, layer)?
                }
                Report::LayerNorms { step, layer, norms } => self.on_layer_norms(worker, step, layer, norms)?,
                // Taken in by `Coordinator::handle`, from lost workers too.
                Report::Work(_) => Vec::new(),
            });
        }
        Ok(effects)
    }
}
