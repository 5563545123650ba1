//! The fallback when a leaving worker cannot ship everything before its
//! deadline: it leaves out the segments of whole micro-batches, and their
//! new owners rebuild them by running the forward again from an activation
//! kept upstream.
//!
//! Invariants:
//! - a micro-batch's segments are left out only when its forward entered
//!   the lowest of them from a kept activation (the stage input, or an
//!   activation a stage sent), so that activation exists until the
//!   backward of that micro-batch passes the layer below;
//! - the recomputed forward reads the same parameters (a layer's update
//!   waits for every micro-batch's backward) and the same input, so it
//!   rebuilds bit-identical segments; it stops where the shipped segments
//!   resume and never reports a loss twice;
//! - a backward does not start while a segment of its micro-batch awaits
//!   its replay.

use std::collections::BTreeMap;

use super::migrate::Handover;
use super::stage::{Effect, Stage};
use crate::{Error, Result, SegmentKey};

/// A micro-batch whose segments of layers `first..stop` were left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub step: u32,
    pub micro: u32,
    pub first: u32,
    pub stop: u32,
    /// Saved-tensor bytes not shipped.
    pub bytes: u64,
}

impl LeftOut {
    /// The layer whose holder keeps the activation entering `first`.
    pub fn keeper_layer(&self) -> u32 {
        keeper_of(self.first)
    }
}

/// The layer whose holder keeps the activation entering `layer`: the one
/// below, or layer 0 itself for the stage inputs.
pub fn keeper_of(layer: u32) -> u32 {
    layer.saturating_sub(1)
}

impl Stage {
    /// A one-line summary of the step in progress, for diagnostics.
    pub fn describe(&self) -> String {
        let plan = self.current.as_ref().map(|c| c.plan.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "));
        format!(
            "layers {:?}, plan [{}], tape {:?}, awaiting {:?}, replays {:?}, resends {:?}",
            self.layers,
            plan.unwrap_or_default(),
            self.tape.keys().collect::<Vec<_>>(),
            self.awaiting,
            self.replays.keys().collect::<Vec<_>>(),
            self.resends.keys().collect::<Vec<_>>()
        )
    }

    /// True while a segment of `micro` here waits to be recomputed.
    pub(crate) fn awaits_replay(&self, micro: u32) -> bool {
        self.awaiting.iter().any(|(m, _)| *m == micro)
    }

    /// Drops what was kept for steps before `step` (all of it is stale once
    /// a step ended: every backward ran).
    pub(crate) fn forget_before(&mut self, step: u32) {
        self.kept.retain(|(s, _, _), _| *s >= step);
        self.entries.retain(|(s, _, _)| *s >= step);
        self.replays.retain(|(s, _, _), _| *s >= step);
        self.resends.retain(|(s, _, _), _| *s >= step);
    }

    /// The backward of `micro` passed `layer`: the activation entering the
    /// layer above can no longer be needed.
    pub(crate) fn forget_layer(&mut self, step: u32, micro: u32, layer: u32) {
        self.entries.remove(&(step, micro, layer));
        self.kept.remove(&(step, micro, layer + 1));
        if layer == 0 {
            self.kept.remove(&(step, micro, 0));
        }
    }

    /// Recomputes the forward of a replayed activation through this
    /// stage's layers below `stop`, recording the missing segments, and
    /// passes it on when `stop` lies beyond this stage.
    pub(crate) fn replay(&mut self, step: u32, micro: u32, entry: u32) -> Result<Vec<Effect>> {
        let (stop, mut x) = self.replays.remove(&(step, micro, entry)).expect("ready() checked the replay");
        self.check_inside(entry, "replayed activation")?;
        self.entries.insert((step, micro, entry));
        let end = stop.min(self.layers.end);
        for layer in entry..end {
            if !self.awaiting.remove(&(micro, layer)) {
                return Err(Error::Internal(format!(
                    "a replay of micro-batch {micro} reached layer {layer}, whose segment is not missing"
                )));
            }
            let (segment, out) = self.model.forward_layer(SegmentKey { step, micro, layer }, &self.params, x)?;
            self.tape.insert((micro, layer), segment);
            self.counters.recomputed_forward_layers += 1;
            x = out;
        }
        if stop <= self.layers.end {
            return Ok(Vec::new());
        }
        self.kept.entry((step, micro, end)).or_insert_with(|| x.clone());
        Ok(vec![Effect::SendReplay { step, micro, layer: end, stop, tensor: x }])
    }

    /// The kept activation entering `layer`, sent again to recompute `layer..stop`.
    pub(crate) fn resend(&mut self, step: u32, micro: u32, layer: u32) -> Result<Vec<Effect>> {
        let stop = self.resends.remove(&(step, micro, layer)).expect("ready() checked the resend");
        let tensor = self.kept.get(&(step, micro, layer)).cloned().ok_or_else(|| {
            Error::Internal(format!(
                "asked to resend the activation entering layer {layer} (step {step}, micro-batch {micro}), \
                 which this stage did not keep"
            ))
        })?;
        Ok(vec![Effect::SendReplay { step, micro, layer, stop, tensor }])
    }
}

/// The segments of one micro-batch across a leaving worker's handovers.
#[derive(Default)]
struct MicroSegments {
    layers: Vec<u32>,
    bytes: u64,
    entered_lowest: bool,
    awaiting: bool,
}

/// Leaves segments out of `handovers` until their bytes fit in `budget`:
/// whole micro-batches, the latest first (the schedule needs them last),
/// only those that can be recomputed. The loss segments, parameters,
/// optimizer state, gradient sums and waiting tensors always go. Returns
/// what was left out; each layer that lost a segment lists the micro-batch
/// as awaiting a replay.
pub fn leave_out_segments(handovers: &mut [Handover], budget: u64) -> Vec<LeftOut> {
    let total: u64 = handovers.iter().map(|h| h.bytes().total()).sum();
    let Some(step) = handovers.iter().find_map(|h| h.step.as_ref().map(|(s, _)| *s)) else {
        return Vec::new();
    };
    let mut excess = total.saturating_sub(budget);
    let mut left_out = Vec::new();
    for (micro, found) in micro_segments(handovers, step).into_iter().rev() {
        if excess == 0 {
            break;
        }
        let (first, last) = (found.layers[0], found.layers[found.layers.len() - 1]);
        let contiguous = last - first + 1 == found.layers.len() as u32;
        if !found.entered_lowest || found.awaiting || !contiguous {
            continue;
        }
        remove_segments(handovers, micro, first..last + 1);
        excess = excess.saturating_sub(found.bytes);
        left_out.push(LeftOut { step, micro, first, stop: last + 1, bytes: found.bytes });
    }
    left_out
}

/// Layer segments (not the loss) of the step in progress, by micro-batch.
fn micro_segments(handovers: &[Handover], step: u32) -> BTreeMap<u32, MicroSegments> {
    let mut by_micro: BTreeMap<u32, MicroSegments> = BTreeMap::new();
    let layers = handovers.iter().flat_map(|h| &h.layers);
    for state in layers.clone() {
        for segment in state.segments.iter().filter(|s| s.key.layer == state.layer && s.key.step == step) {
            let found = by_micro.entry(segment.key.micro).or_default();
            found.layers.push(state.layer);
            found.bytes += segment.saved_bytes() as u64;
        }
    }
    for (micro, found) in by_micro.iter_mut() {
        found.layers.sort_unstable();
        let lowest = found.layers[0];
        let mut states = layers.clone();
        found.entered_lowest = states.clone().any(|s| s.layer == lowest && s.entries.contains(&(step, *micro)));
        found.awaiting = states.any(|s| s.replays.contains(micro));
    }
    by_micro
}

fn remove_segments(handovers: &mut [Handover], micro: u32, layers: std::ops::Range<u32>) {
    for state in handovers.iter_mut().flat_map(|h| &mut h.layers).filter(|s| layers.contains(&s.layer)) {
        let before = state.segments.len();
        state.segments.retain(|s| !(s.key.micro == micro && s.key.layer == state.layer));
        if state.segments.len() < before {
            state.replays.push(micro);
        }
    }
}
