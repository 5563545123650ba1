//! A worker's part of checkpoints: a snapshot of its layers at a step
//! boundary, handed to the driver to write.

use super::{Dest, Out, Worker, COORDINATOR};
use crate::pipeline::checkpoint::{SavedPart, Snapshot};
use crate::pipeline::protocol::Message;
use crate::{Error, Result};

impl Worker {
    /// The coordinator's `Snapshot { step }`: every update of `step - 1` is
    /// done (the coordinator saw them all) and `step` waits for the answer,
    /// so the stage's state is exactly the boundary's. Copies it for the
    /// driver to write, and answers at once.
    pub(super) fn snapshot(&mut self, step: u32) -> Result<Vec<Out>> {
        let setup = self.setup.as_ref().ok_or_else(|| Error::peer(COORDINATOR, "a snapshot before the assignment"))?;
        let dir = setup.checkpoint_dir.clone().ok_or_else(|| {
            Error::peer(COORDINATOR, "it asked for a snapshot, but the assignment names no checkpoint directory")
        })?;
        let (spec, optimizer) = (setup.spec.clone(), setup.optimizer.to_string());
        let stage =
            self.stage.as_mut().ok_or_else(|| Error::peer(COORDINATOR, "a snapshot of a worker without layers"))?;
        if !stage.idle() || stage.current_step().is_some_and(|s| s >= step) {
            return Err(Error::peer(
                COORDINATOR,
                format!("a snapshot before step {step} came in the middle of a step"),
            ));
        }
        // On a device the state leaves it here (counted), as for --save.
        stage.optimizer.state_to_host()?;
        let params: Vec<_> = stage.params.to_host()?.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        let optim = params.iter().filter_map(|(n, _)| Some((n.clone(), stage.optimizer.state(n)?.clone()))).collect();
        let layers = stage.layers();
        let snapshot = Snapshot { step, first: layers.start, end: layers.end, params, optim };
        let ack = Message::Snapshotted { worker: self.id, step };
        Ok(vec![
            Out::Save { dir, spec, optimizer, snapshot: Box::new(snapshot) },
            Out::Send { to: Dest::Coordinator, message: ack },
        ])
    }

    /// The message that reports the part of the checkpoint before `step`
    /// written by the driver (or why it could not be).
    pub fn saved(&self, step: u32, result: std::result::Result<SavedPart, String>) -> Message {
        match result {
            Ok(part) => Message::Saved { worker: self.id, step, part: Some(part), error: None },
            Err(error) => Message::Saved { worker: self.id, step, part: None, error: Some(error) },
        }
    }
}
