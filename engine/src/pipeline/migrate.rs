//! What moves when a layer changes owner mid-step, as plain data.
//!
//! A [`Handover`] carries, for each layer it moves: parameters, optimizer
//! state, the running gradient sum of the step in progress, and every
//! unfinished tape segment (with its saved tensors); plus the activations,
//! gradients and targets waiting at those layers. Invariant: after a stage
//! releases layers and another adopts them, every micro-batch's forward and
//! backward continue exactly where they stopped: nothing is recomputed,
//! nothing is lost, and accumulation stays in micro-batch order.

use std::collections::BTreeMap;
use std::ops::Range;

use super::recompute::keeper_of;
use super::stage::{check_range, Stage, StepState};
use crate::accumulate::LayerGrads;
use crate::optim::OptState;
use crate::segment::Segment;
use crate::{Error, Result, Targets, Tensor};

/// A tensor waiting at a layer: (step, micro-batch, layer, value).
pub type Waiting = (u32, u32, u32, Tensor);

/// A layer's running gradient sum, as plain data.
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GradsState {
    pub next: u32,
    pub sum: Vec<(String, Tensor)>,
    pub pending: Vec<(u32, Vec<(String, Tensor)>)>,
}

/// Everything one layer owns in the step in progress.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LayerState {
    pub layer: u32,
    pub params: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, OptState)>,
    pub grads: Option<GradsState>,
    /// True when the layer already received its update for the step in progress.
    pub updated: bool,
    /// Unfinished segments of this layer (and the loss segments, for the last layer).
    pub segments: Vec<Segment>,
    /// Activations entering the next layer (layer 0: its own inputs) kept
    /// for recomputation, as (step, micro, layer entered, value).
    pub kept: Vec<Waiting>,
    /// (step, micro) whose forward entered this layer from a kept activation.
    pub entries: Vec<(u32, u32)>,
    /// Micro-batches whose segment of this layer was left out and will be
    /// recomputed by a replay.
    pub replays: Vec<u32>,
    /// Kept activations to send again: (step, micro, layer entered, stop).
    pub resends: Vec<(u32, u32, u32, u32)>,
    /// The worker that holds this layer's replica as of the step's start
    /// (where its step gradient goes), if any.
    pub replica: Option<u32>,
}

impl LayerState {
    /// A layer with only its parameters and optimizer state: nothing of a
    /// step in progress (a restored replica, a rolled-back layer).
    pub(crate) fn at_step_start(
        layer: u32,
        params: Vec<(String, Tensor)>,
        optimizer: Vec<(String, crate::optim::OptState)>,
    ) -> LayerState {
        LayerState {
            layer,
            params,
            optimizer,
            grads: None,
            updated: false,
            segments: Vec::new(),
            kept: Vec::new(),
            entries: Vec::new(),
            replays: Vec::new(),
            resends: Vec::new(),
            replica: None,
        }
    }
}

/// What one worker hands another when layers move.
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Handover {
    /// The step in progress and its micro-batch rows, for a receiver that has none yet.
    pub step: Option<(u32, Vec<u32>)>,
    pub layers: Vec<LayerState>,
    pub activations: Vec<Waiting>,
    pub gradients: Vec<Waiting>,
    pub targets: Vec<(u32, u32, Targets)>,
    /// Replayed activations waiting at these layers: (step, micro, layer, stop, value).
    pub replays: Vec<(u32, u32, u32, u32, Tensor)>,
    /// How many handovers the sender sends this receiver in this migration
    /// (one per layer, see [`Handover::into_parts`]); 0 counts as 1.
    pub parts: u32,
}

/// Bytes moved, by kind, for the run report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MovedBytes {
    pub parameters: u64,
    pub optimizer_state: u64,
    pub gradients: u64,
    pub segments: u64,
    pub queued_messages: u64,
    /// Activations kept for recomputation that move with their layer.
    pub kept_activations: u64,
    /// Saved-tensor bytes left out (recompute fallback): not shipped.
    pub unshipped_segments: u64,
}

impl MovedBytes {
    pub fn total(&self) -> u64 {
        self.parameters
            + self.optimizer_state
            + self.gradients
            + self.segments
            + self.queued_messages
            + self.kept_activations
    }

    pub fn add(&mut self, other: &MovedBytes) {
        self.parameters += other.parameters;
        self.optimizer_state += other.optimizer_state;
        self.gradients += other.gradients;
        self.segments += other.segments;
        self.queued_messages += other.queued_messages;
        self.kept_activations += other.kept_activations;
        self.unshipped_segments += other.unshipped_segments;
    }
}

fn tensor_bytes<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> u64 {
    tensors.map(|t| t.len() as u64 * 4).sum()
}

impl Handover {
    /// Splits into one handover per layer, so the sender can archive the
    /// next while the previous travels and the receiver adopts each as it
    /// arrives. The waiting tensors, targets and replays ride with the
    /// first; every part carries the step and the count of parts.
    pub fn into_parts(mut self) -> Vec<Handover> {
        let layers = std::mem::take(&mut self.layers);
        let count = layers.len().max(1) as u32;
        let step = self.step.clone();
        let mut parts = vec![Handover { parts: count, ..self }];
        for (i, layer) in layers.into_iter().enumerate() {
            match i {
                0 => parts[0].layers.push(layer),
                _ => parts.push(Handover {
                    step: step.clone(),
                    layers: vec![layer],
                    parts: count,
                    ..Handover::default()
                }),
            }
        }
        parts
    }

    /// True when nothing moves.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
            && self.activations.is_empty()
            && self.gradients.is_empty()
            && self.targets.is_empty()
            && self.replays.is_empty()
    }

    /// Payload bytes by kind.
    pub fn bytes(&self) -> MovedBytes {
        let mut b = MovedBytes::default();
        for l in &self.layers {
            b.parameters += tensor_bytes(l.params.iter().map(|(_, t)| t));
            b.optimizer_state +=
                l.optimizer.iter().flat_map(|(_, s)| &s.buffers).map(|v| v.len() as u64 * 4).sum::<u64>();
            if let Some(g) = &l.grads {
                let pending = g.pending.iter().flat_map(|(_, p)| p.iter().map(|(_, t)| t));
                b.gradients += tensor_bytes(g.sum.iter().map(|(_, t)| t).chain(pending));
            }
            b.segments += l.segments.iter().map(|s| s.saved_bytes() as u64).sum::<u64>();
            b.kept_activations += tensor_bytes(l.kept.iter().map(|(_, _, _, t)| t));
        }
        let waiting = self.activations.iter().chain(&self.gradients).map(|(_, _, _, t)| t);
        let replays = self.replays.iter().map(|(_, _, _, _, t)| t);
        b.queued_messages = tensor_bytes(waiting.chain(replays));
        b
    }
}

impl Stage {
    /// Removes `layers` (each must be held here) with everything attached to
    /// them, including tensors waiting to enter them and, with the last
    /// layer, the loss segments and targets.
    pub fn release(&mut self, layers: &[u32]) -> Result<Handover> {
        let step = self.current.as_ref().map(|c| (c.step, c.rows.clone()));
        let mut handover = Handover { step, ..Handover::default() };
        for &layer in layers {
            handover.layers.push(self.release_layer(layer)?);
        }
        let moving = |layer: &u32| layers.contains(layer);
        handover.activations = drain_waiting(&mut self.activations, moving);
        handover.gradients = drain_waiting(&mut self.gradients, moving);
        let replaying: Vec<(u32, u32, u32)> = self.replays.keys().filter(|(_, _, l)| moving(l)).copied().collect();
        for (step, micro, layer) in replaying {
            let (stop, tensor) = self.replays.remove(&(step, micro, layer)).expect("key listed above");
            handover.replays.push((step, micro, layer, stop, tensor));
        }
        if layers.contains(&(self.loss_layer() - 1)) {
            let targets = std::mem::take(&mut self.targets);
            handover.targets = targets.into_iter().map(|((s, m), t)| (s, m, t)).collect();
        }
        Ok(handover)
    }

    fn release_layer(&mut self, layer: u32) -> Result<LayerState> {
        if !self.layers.contains(&layer) {
            return Err(Error::Internal(format!("cannot release layer {layer}: this stage holds {:?}", self.layers)));
        }
        let prefix = format!("layers.{layer}.");
        let names: Vec<String> = self.params.names().filter(|n| n.starts_with(&prefix)).cloned().collect();
        let params: Vec<(String, Tensor)> =
            names.iter().filter_map(|n| self.params.remove(n).map(|t| (n.clone(), t))).collect();
        let optimizer: Vec<(String, OptState)> =
            names.iter().filter_map(|n| self.optimizer.take_state(n).map(|s| (n.clone(), s))).collect();
        self.depart(layer, &params, &optimizer);
        let grads = self.acc.take_layer(layer).map(grads_to_wire);
        let updated = self.current.as_mut().is_some_and(|c| c.updated.remove(&layer));
        let loss = self.loss_layer();
        let keys: Vec<(u32, u32)> =
            self.tape.keys().filter(|(_, l)| *l == layer || (*l == loss && layer == loss - 1)).copied().collect();
        let segments = keys.iter().filter_map(|k| self.tape.remove(k)).collect();
        let kept_here = |entered: u32| keeper_of(entered) == layer;
        let kept_keys: Vec<(u32, u32, u32)> = self.kept.keys().filter(|(_, _, e)| kept_here(*e)).copied().collect();
        let resend_keys: Vec<(u32, u32, u32)> =
            self.resends.keys().filter(|(_, _, e)| kept_here(*e)).copied().collect();
        let resends =
            resend_keys.into_iter().filter_map(|k| self.resends.remove(&k).map(|stop| (k.0, k.1, k.2, stop))).collect();
        let kept = kept_keys.into_iter().filter_map(|k| self.kept.remove(&k).map(|t| (k.0, k.1, k.2, t))).collect();
        let entries = self.entries.iter().filter(|(_, _, l)| *l == layer).map(|(s, m, _)| (*s, *m)).collect();
        self.entries.retain(|(_, _, l)| *l != layer);
        let replays = self.awaiting.iter().filter(|(_, l)| *l == layer).map(|(m, _)| *m).collect();
        self.awaiting.retain(|(_, l)| *l != layer);
        // Its snapshot stays behind: a layer updated before it moved is
        // restored from its replica if the step is rolled back.
        self.snapshots.remove(&layer);
        Ok(LayerState {
            layer,
            params,
            optimizer,
            grads,
            updated,
            segments,
            kept,
            entries,
            replays,
            resends,
            replica: None,
        })
    }

    /// Installs layers and waiting tensors handed over by another worker.
    pub fn adopt(&mut self, handover: Handover) -> Result<()> {
        if self.current.is_none() {
            if let Some((step, rows)) = handover.step {
                self.current = Some(StepState::resumed(step, rows));
            }
        }
        for state in handover.layers {
            self.adopt_layer(state)?;
        }
        let waiting = |v: Vec<Waiting>| v.into_iter().map(|(s, m, l, t)| ((s, m), (l, t)));
        self.activations.extend(waiting(handover.activations));
        self.gradients.extend(waiting(handover.gradients));
        self.targets.extend(handover.targets.into_iter().map(|(s, m, t)| ((s, m), t)));
        let replays = handover.replays.into_iter().map(|(s, m, l, stop, t)| ((s, m, l), (stop, t)));
        self.replays.extend(replays);
        Ok(())
    }

    fn adopt_layer(&mut self, state: LayerState) -> Result<()> {
        if !self.layers.contains(&state.layer) {
            return Err(Error::Internal(format!(
                "layer {} handed to the stage of layers {:?}",
                state.layer, self.layers
            )));
        }
        // A handover arrives in host memory; it moves to this stage's device once.
        let backend = self.model.backend();
        for (name, t) in state.params {
            self.params.insert(name, backend.adopt(t)?);
        }
        for (name, opt) in state.optimizer {
            self.optimizer.insert_state(name, opt);
        }
        if let Some(grads) = state.grads {
            self.acc.insert_layer(state.layer, grads_from_wire(grads));
        }
        if let (true, Some(cur)) = (state.updated, self.current.as_mut()) {
            cur.updated.insert(state.layer);
        }
        for segment in state.segments {
            self.tape.insert((segment.key.micro, segment.key.layer), segment);
        }
        self.kept.extend(state.kept.into_iter().map(|(s, m, l, t)| ((s, m, l), t)));
        self.entries.extend(state.entries.into_iter().map(|(s, m)| (s, m, state.layer)));
        self.awaiting.extend(state.replays.into_iter().map(|m| (m, state.layer)));
        self.resends.extend(state.resends.into_iter().map(|(s, m, l, stop)| ((s, m, l), stop)));
        Ok(())
    }

    /// Takes a new layer range and place in the pipeline (before adopting).
    pub fn reassign(&mut self, layers: Range<u32>, position: (u32, u32)) -> Result<()> {
        check_range(&self.model, &layers, position)?;
        self.layers = layers;
        self.position = position;
        Ok(())
    }

    /// After every handover is adopted: plans what is left of the step.
    pub fn resume(&mut self) {
        self.replan(false);
    }
}

fn drain_waiting(map: &mut BTreeMap<(u32, u32), (u32, Tensor)>, moving: impl Fn(&u32) -> bool) -> Vec<Waiting> {
    let keys: Vec<(u32, u32)> = map.iter().filter(|(_, (l, _))| moving(l)).map(|(k, _)| *k).collect();
    keys.into_iter().filter_map(|k| map.remove(&k).map(|(l, t)| (k.0, k.1, l, t))).collect()
}

fn grads_to_wire(g: LayerGrads) -> GradsState {
    GradsState {
        next: g.next,
        sum: g.sum.into_iter().collect(),
        pending: g.pending.into_iter().map(|(m, p)| (m, p.into_iter().collect())).collect(),
    }
}

fn grads_from_wire(g: GradsState) -> LayerGrads {
    LayerGrads {
        next: g.next,
        sum: g.sum.into_iter().collect(),
        pending: g.pending.into_iter().map(|(m, p)| (m, p.into_iter().collect())).collect(),
    }
}
