//! The worker's side of a fallback to the last checkpoint: after a
//! worker and the holder of its replica were lost together, no survivor
//! holds some layer, so every member drops all its layers and replicas
//! and loads its new range from the committed checkpoint (its driver
//! reads the files; this state machine decides and takes the state in).

use std::ops::Range;

use super::{Dest, Mode, Out, Worker, COORDINATOR};
use crate::pipeline::checkpoint::{Restored, SavedPart};
use crate::pipeline::migrate::MovedBytes;
use crate::pipeline::protocol::{Message, Placement};
use crate::pipeline::replica::Replicas;
use crate::{Error, Optimizer, Result};

impl Worker {
    /// The coordinator's `Fallback`: forgets every layer (own and replica),
    /// takes `placements`, reports that nothing was shipped, and asks the
    /// driver to load this worker's range of the checkpoint before `step`.
    /// A survivor left out of `placements` leaves (it is retired).
    pub(super) fn fall_back(
        &mut self,
        generation: u32,
        step: u32,
        placements: Vec<Placement>,
        parts: Vec<SavedPart>,
    ) -> Result<Vec<Out>> {
        if !matches!(self.mode, Mode::RolledBack) || generation != self.generation {
            let detail = format!("a fallback of generation {generation} came out of turn ({:?})", self.mode);
            return Err(Error::peer(COORDINATOR, detail));
        }
        let setup = self.setup.as_ref().ok_or_else(|| Error::peer(COORDINATOR, "a fallback before the assignment"))?;
        let dir = setup.checkpoint_dir.clone().ok_or_else(|| {
            Error::peer(COORDINATOR, "it asked for a fallback, but the assignment names no checkpoint directory")
        })?;
        let optimizer = setup.optimizer.to_string();
        self.replicas = setup.replicate.then(|| Replicas::new(setup.new_optimizer()));
        self.holders.clear();
        if let Some(stage) = self.stage.as_mut() {
            stage.held_layers().into_iter().for_each(|l| stage.drop_layer(l));
        }
        let mine = placements.iter().find(|p| p.worker == self.id).map(|p| p.first..p.end);
        self.placements = placements;
        let mut outs = vec![Out::Ship { generation, handovers: Vec::new(), bytes: MovedBytes::default() }];
        let Some(layers) = mine else {
            self.mode = Mode::Leaving;
            return Ok(outs);
        };
        let parts: Vec<SavedPart> =
            parts.into_iter().filter(|p| p.first < layers.end && layers.start < p.end).collect();
        self.mode = Mode::Loading { generation, step };
        outs.push(Out::Load { generation, dir, optimizer, step, layers, parts });
        Ok(outs)
    }

    /// The driver read this worker's layers of the checkpoint (or could
    /// not): builds the stage of the new range from them (its counters
    /// carry on) and reports `Resumed`. A load of an overtaken generation
    /// (another loss came meanwhile) is dropped.
    pub fn loaded(&mut self, generation: u32, result: std::result::Result<Restored, String>) -> Result<Vec<Out>> {
        let Mode::Loading { generation: expected, step } = self.mode else { return Ok(Vec::new()) };
        if generation != expected {
            return Ok(Vec::new());
        }
        let restored = result.map_err(|e| {
            Error::Checkpoint(format!("falling back to the checkpoint before step {step} after a crash: {e}"))
        })?;
        let position = self.placements.iter().position(|p| p.worker == self.id);
        let position = position.ok_or_else(|| Error::Internal("a loading worker without a placement".into()))?;
        let place = &self.placements[position];
        let layers: Range<u32> = place.first..place.end;
        if restored.step != step || (restored.first, restored.end) != (layers.start, layers.end) {
            let detail = format!("loaded layers {}..{} of step {}", restored.first, restored.end, restored.step);
            return Err(Error::Internal(format!("{detail}, asked for {layers:?} of step {step}")));
        }
        let setup = self.setup.as_ref().ok_or_else(|| Error::Internal("a fallback without a setup".into()))?;
        let mut optimizer: Optimizer = setup.new_optimizer();
        restored.optim.into_iter().for_each(|(name, state)| optimizer.insert_state(name, state));
        let at = (position as u32, self.placements.len() as u32);
        let mut stage = setup.stage_with(layers, at, restored.params.into_iter().collect(), optimizer)?;
        if let Some(old) = self.stage.take() {
            stage.counters = old.counters;
        }
        self.stage = Some(stage);
        self.mode = if self.noticed { Mode::Paused } else { Mode::Running };
        self.sent.clear();
        self.received.clear();
        let mut outs =
            vec![Out::Send { to: Dest::Coordinator, message: Message::Resumed { worker: self.id, generation } }];
        for (sender, message) in std::mem::take(&mut self.early) {
            outs.extend(self.handle(Dest::Worker(sender), message)?);
        }
        Ok(self.settle(outs))
    }
}
