//! Per-layer gradient accumulation in micro-batch order.
//!
//! Invariant: a layer's step gradient is `((0 + g_0) + g_1) + ... + g_{M-1}`
//! in micro-batch order, whatever order the micro-batches' backward finish
//! in and whichever worker ran them, so the bits do not depend on the
//! schedule, the partition or a migration in between. Early arrivals wait
//! in `pending` until their predecessors are in.

use std::collections::BTreeMap;

use crate::{Error, ParamStore, Result};

/// The running sum of one layer's gradients in one step.
#[derive(Clone, Debug, Default)]
pub struct LayerGrads {
    /// Micro-batches `0..next` are summed into `sum`.
    pub next: u32,
    pub sum: ParamStore,
    /// Contributions of micro-batches `> next`, waiting for their turn.
    pub pending: BTreeMap<u32, ParamStore>,
}

/// Gradient sums of every layer a worker holds.
#[derive(Clone, Debug, Default)]
pub struct GradAccumulator {
    layers: BTreeMap<u32, LayerGrads>,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of `layer` from micro-batch `micro`.
    pub fn add(&mut self, layer: u32, micro: u32, grads: ParamStore) -> Result<()> {
        let acc = self.layers.entry(layer).or_default();
        if micro < acc.next || acc.pending.contains_key(&micro) {
            return Err(Error::Accumulation(format!("layer {layer} received micro-batch {micro} twice")));
        }
        acc.pending.insert(micro, grads);
        while let Some(ready) = acc.pending.remove(&acc.next) {
            for (name, grad) in ready {
                acc.sum.accumulate_owned(&name, grad)?;
            }
            acc.next += 1;
        }
        Ok(())
    }

    /// True when micro-batch `micro`'s gradients of `layer` were added (or wait in line).
    pub fn has(&self, layer: u32, micro: u32) -> bool {
        self.layers.get(&layer).is_some_and(|acc| micro < acc.next || acc.pending.contains_key(&micro))
    }

    /// Micro-batches of `layer` summed so far (in order).
    pub fn summed(&self, layer: u32) -> u32 {
        self.layers.get(&layer).map_or(0, |acc| acc.next)
    }

    /// Ends the step: every layer must have all `micro_batches` contributions.
    pub fn finish(self, micro_batches: u32) -> Result<ParamStore> {
        let mut all = ParamStore::new();
        for (layer, acc) in self.layers {
            if acc.next != micro_batches {
                return Err(Error::Accumulation(format!(
                    "layer {layer} has gradients of {} of {micro_batches} micro-batches",
                    acc.next
                )));
            }
            for (name, grad) in acc.sum {
                all.insert(name, grad);
            }
        }
        Ok(all)
    }

    /// Removes and returns a layer's summed gradient (for its update).
    pub fn take_sum(&mut self, layer: u32) -> Result<ParamStore> {
        match self.layers.remove(&layer) {
            Some(acc) if acc.pending.is_empty() => Ok(acc.sum),
            _ => Err(Error::Accumulation(format!("layer {layer} has no complete gradient to apply"))),
        }
    }

    /// A layer's complete summed gradient, left in place (for its norms).
    pub fn peek_sum(&self, layer: u32) -> Result<&ParamStore> {
        match self.layers.get(&layer) {
            Some(acc) if acc.pending.is_empty() => Ok(&acc.sum),
            _ => Err(Error::Accumulation(format!("layer {layer} has no complete gradient to measure"))),
        }
    }

    /// Removes a layer's running sum (to ship it when the layer migrates).
    pub fn take_layer(&mut self, layer: u32) -> Option<LayerGrads> {
        self.layers.remove(&layer)
    }

    /// Installs a layer's running sum received from its previous owner.
    pub fn insert_layer(&mut self, layer: u32, grads: LayerGrads) {
        self.layers.insert(layer, grads);
    }
}
