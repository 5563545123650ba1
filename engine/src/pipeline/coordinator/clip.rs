//! Gradient clipping across stages (`--clip-grad-norm`): the coordinator
//! collects every layer's gradient norms of the step, combines them in layer
//! order (the same bits for any partition) and sends the factor back.

use std::collections::BTreeMap;

use super::{CoordEffect, Coordinator, Phase};
use crate::pipeline::protocol::Message;
use crate::{Error, Result};

/// Gradient norms of the step in progress, by layer, and its clip scale.
#[derive(Debug, Default)]
pub(super) struct ClipState {
    pub(super) norms: BTreeMap<u32, Vec<f32>>,
    pub(super) scale: Option<f32>,
}

impl Coordinator {
    /// Collects a layer's gradient norms; once every layer reported, the
    /// step's clip scale goes to every member. A layer that changed owner
    /// reports again from its new owner: the same bits, so the repeat only
    /// asks for the scale, which that worker then gets if it is known.
    pub(super) fn on_layer_norms(
        &mut self,
        worker: u32,
        step: u32,
        layer: u32,
        norms: Vec<f32>,
    ) -> Result<Vec<CoordEffect>> {
        let (Some(max), Phase::Running { step: current, updated }) = (self.plan.clip_grad_norm, &self.phase) else {
            let detail = "sent gradient norms but the run does not clip".to_string();
            return Err(Error::Peer { peer: format!("worker {worker}"), detail });
        };
        if *current != step || layer as usize >= updated.len() {
            let detail = format!("sent norms of layer {layer} for step {step} out of turn");
            return Err(Error::Peer { peer: format!("worker {worker}"), detail });
        }
        let layers = updated.len();
        if self.clip.norms.contains_key(&layer) {
            let scale = self.clip.scale.map(|scale| Message::ClipScale { step, scale });
            return Ok(scale.map(|message| CoordEffect::Send { worker, message }).into_iter().collect());
        }
        self.clip.norms.insert(layer, norms);
        if self.clip.norms.len() < layers {
            return Ok(Vec::new());
        }
        let (total, scale) = crate::clip::scale(self.clip.norms.values().flatten().copied(), max);
        self.clip.scale = Some(scale);
        self.grad_norms.push(total);
        let message = Message::ClipScale { step, scale };
        Ok(self.members().into_iter().map(|w| CoordEffect::Send { worker: w, message: message.clone() }).collect())
    }
}
