//! A leaving worker's replicas: they must not leave with it.
//!
//! A worker that leaves in a migration holds the replicas of the layers
//! before its own in the ring. It hands each one (valid at the step's
//! start, with the step gradient if it came) to the worker that holds that
//! layer's replica in the new layout: the next stage's worker after the
//! layer's new owner, which is where the owner sends its gradients from
//! now on, and what the coordinator waits for before the step completes.
//! Replica messages that reach the leaver later are passed on the same way.

use std::collections::BTreeMap;

use super::{owner_in, Dest, Mode, Out, Worker};
use crate::pipeline::protocol::Message;
use crate::Result;

impl Worker {
    /// Hands every replica valid at the step's start to its holder in the
    /// new layout (`self.placements`, already the new one).
    pub(super) fn pass_replicas(&mut self) -> Result<Vec<Out>> {
        let (Some(replicas), Some(step)) = (self.replicas.as_ref(), self.current_step()) else {
            return Ok(Vec::new());
        };
        let generation = self.generation;
        let mut outs = Vec::new();
        for layer in replicas.valid(step) {
            let Some(to) = self.holder_in_layout(layer) else { continue };
            let state = replicas.layer_state(layer)?;
            let (params, optimizer) = (state.params, state.optimizer);
            let message = Message::ReplicaSeed { generation, step, layer, params, optimizer };
            outs.push(Out::Send { to: Dest::Worker(to), message });
            if let Some(grads) = replicas.pending(step, layer) {
                let message = Message::Replica { generation, step, layers: vec![(layer, grads)] };
                outs.push(Out::Send { to: Dest::Worker(to), message });
            }
        }
        Ok(outs)
    }

    /// A replica message that reached this worker after it left: passed on
    /// to the layer's holder in the new layout (and kept here too).
    pub(super) fn pass_on(&self, message: &Message) -> Vec<Out> {
        if !matches!(self.mode, Mode::Leaving) {
            return Vec::new();
        }
        match message {
            Message::ReplicaSeed { layer, .. } => match self.holder_in_layout(*layer) {
                Some(to) => vec![Out::Send { to: Dest::Worker(to), message: message.clone() }],
                None => Vec::new(),
            },
            // Each layer's gradient to its own holder.
            Message::Replica { generation, step, layers } => {
                let mut by_holder: BTreeMap<u32, Vec<_>> = BTreeMap::new();
                for (layer, grads) in layers {
                    if let Some(to) = self.holder_in_layout(*layer) {
                        by_holder.entry(to).or_default().push((*layer, grads.clone()));
                    }
                }
                let (generation, step) = (*generation, *step);
                let send = |(to, layers)| Out::Send {
                    to: Dest::Worker(to),
                    message: Message::Replica { generation, step, layers },
                };
                by_holder.into_iter().map(send).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Where `layer`'s replica lives in the current placements: with the
    /// next stage's worker after its owner (ring order); none in a job of one.
    fn holder_in_layout(&self, layer: u32) -> Option<u32> {
        let owner = owner_in(&self.placements, layer).ok()?;
        let at = self.placements.iter().position(|p| p.worker == owner)?;
        let next = self.placements[(at + 1) % self.placements.len()].worker;
        (next != owner).then_some(next)
    }
}
