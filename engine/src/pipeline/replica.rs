//! The replicas a worker keeps of a neighbour's layers, so a worker lost
//! without notice costs only the step in progress.
//!
//! Kept current Checkmate-style: the owner sends each layer's step
//! gradient (after clipping) once it applied it; the holder keeps it
//! pending and applies the same deterministic update to its copy when the
//! next step starts, so the replica is bit-identical to the owner's layer
//! as of the start of every step. Invariant: a replica reported valid for
//! step `s` holds exactly the layer's parameters and optimizer state at the
//! start of `s`; a replica that missed a step's gradient is dropped, never
//! used.

use std::collections::{BTreeMap, BTreeSet};

use super::migrate::LayerState;
use crate::optim::OptState;
use crate::{Error, Optimizer, ParamStore, Result, Tensor};

/// A layer's step gradient, by parameter name.
type Grads = Vec<(String, Tensor)>;

/// The replicas held by one worker.
#[derive(Debug)]
pub struct Replicas {
    params: ParamStore,
    /// Holds the replicas' optimizer state and applies their updates.
    optimizer: Optimizer,
    /// Each replicated layer: the step at whose start it is valid.
    as_of: BTreeMap<u32, u32>,
    /// Step gradients not yet applied, by (step, layer).
    pending: BTreeMap<(u32, u32), Grads>,
    /// (step, layer) already confirmed to the coordinator.
    acked: BTreeSet<(u32, u32)>,
    /// The step this holder is in (the last step start it saw).
    current: u32,
}

impl Replicas {
    /// No replicas yet; updates use `optimizer`'s configuration and schedule.
    pub fn new(optimizer: Optimizer) -> Replicas {
        Replicas {
            params: ParamStore::new(),
            optimizer,
            as_of: BTreeMap::new(),
            pending: BTreeMap::new(),
            acked: BTreeSet::new(),
            current: 0,
        }
    }

    /// Installs `layer` as it is at the start of `step` (and brings it up
    /// to the step this holder is in, if that step's gradient is here);
    /// returns the (step, layer) confirmations now due. A seed older than
    /// the replica held (a copy that took a longer way) is ignored.
    pub fn seed(
        &mut self,
        step: u32,
        layer: u32,
        params: Vec<(String, Tensor)>,
        optimizer: Vec<(String, OptState)>,
    ) -> Result<Vec<(u32, u32)>> {
        if self.as_of.get(&layer).is_some_and(|&held| held > step) {
            return Ok(Vec::new());
        }
        self.forget(layer);
        self.params.extend(params);
        for (name, state) in optimizer {
            self.optimizer.insert_state(name, state);
        }
        self.as_of.insert(layer, step);
        let mut due = self.catch_up(layer)?;
        due.extend(self.due());
        Ok(due)
    }

    /// Takes in `layer`'s step gradient of `step`; returns the confirmations due.
    pub fn gradient(&mut self, step: u32, layer: u32, grads: Grads) -> Result<Vec<(u32, u32)>> {
        self.pending.insert((step, layer), grads);
        let mut due = self.catch_up(layer)?;
        due.extend(self.due());
        Ok(due)
    }

    /// Confirms every pending gradient whose layer is valid at that step's
    /// start (so it can be applied when the step completes).
    fn due(&mut self) -> Vec<(u32, u32)> {
        let ready: Vec<(u32, u32)> = self
            .pending
            .keys()
            .filter(|k| self.as_of.get(&k.1) == Some(&k.0) && !self.acked.contains(k))
            .copied()
            .collect();
        self.acked.extend(ready.iter().copied());
        ready
    }

    /// Applies the completed steps' gradients of `layer` that are here, up
    /// to the step this holder is in (a seed or a gradient passed on after
    /// a migration may come after that step started here).
    fn catch_up(&mut self, layer: u32) -> Result<Vec<(u32, u32)>> {
        let mut due = Vec::new();
        while let Some(&as_of) = self.as_of.get(&layer).filter(|s| **s < self.current) {
            let Some(grads) = self.pending.remove(&(as_of, layer)) else { break };
            if self.acked.insert((as_of, layer)) {
                due.push((as_of, layer));
            }
            self.apply(as_of, layer, grads)?;
        }
        Ok(due)
    }

    /// Step `step` starts, so `step - 1` is complete: every replica valid
    /// at the start of `step - 1` whose gradient came takes its update. One
    /// still waiting for it may get it later; replicas further behind are
    /// dropped.
    pub fn advance(&mut self, step: u32) -> Result<Vec<(u32, u32)>> {
        self.current = self.current.max(step);
        let mut due = Vec::new();
        let layers: Vec<u32> = self.as_of.keys().copied().collect();
        for layer in layers {
            due.extend(self.catch_up(layer)?);
        }
        let stale: Vec<u32> = self.as_of.iter().filter(|(_, s)| **s + 1 < step).map(|(l, _)| *l).collect();
        stale.into_iter().for_each(|l| self.forget(l));
        self.pending.retain(|(s, _), _| *s + 1 >= step);
        self.acked.retain(|(s, _)| *s + 1 >= step);
        due.extend(self.due());
        Ok(due)
    }

    fn apply(&mut self, step: u32, layer: u32, grads: Grads) -> Result<()> {
        for (name, grad) in &grads {
            let param = self.params.get_mut(name).map_err(|_| {
                Error::Internal(format!("the replica of layer {layer} has no parameter {name} to update"))
            })?;
            self.optimizer.update(step, name, param, grad)?;
        }
        self.as_of.insert(layer, step + 1);
        Ok(())
    }

    /// The step `step` is abandoned: replicas are brought to its start and
    /// its gradients are dropped.
    pub fn rollback(&mut self, step: u32) -> Result<()> {
        self.advance(step)?;
        self.pending.retain(|(s, _), _| *s < step);
        self.acked.retain(|(s, _)| *s < step);
        Ok(())
    }

    /// `layer`'s gradient of `step`, if it came (to pass on with the replica).
    pub fn pending(&self, step: u32, layer: u32) -> Option<Grads> {
        self.pending.get(&(step, layer)).cloned()
    }

    /// Layers whose replica is valid at the start of `step`.
    pub fn valid(&self, step: u32) -> Vec<u32> {
        self.as_of.iter().filter(|(_, s)| **s == step).map(|(l, _)| *l).collect()
    }

    /// A copy of `layer`'s replica as a layer to install (restore after a loss).
    pub fn layer_state(&self, layer: u32) -> Result<LayerState> {
        if !self.as_of.contains_key(&layer) {
            return Err(Error::Internal(format!("no replica of layer {layer} is held here")));
        }
        let params: Vec<(String, Tensor)> = self.params.with_prefix(&format!("layers.{layer}.")).into_iter().collect();
        let optimizer =
            params.iter().filter_map(|(n, _)| self.optimizer.state(n).map(|s| (n.clone(), s.clone()))).collect();
        Ok(LayerState::at_step_start(layer, params, optimizer))
    }

    /// Bytes of parameters and optimizer state held in replicas.
    pub fn bytes(&self) -> u64 {
        let params: u64 = self.params.iter().map(|(_, t)| t.len() as u64 * 4).sum();
        let state: u64 = self
            .params
            .names()
            .filter_map(|n| self.optimizer.state(n))
            .flat_map(|s| &s.buffers)
            .map(|b| b.len() as u64 * 4)
            .sum();
        params + state
    }

    fn forget(&mut self, layer: u32) {
        let prefix = format!("layers.{layer}.");
        let names: Vec<String> = self.params.names().filter(|n| n.starts_with(&prefix)).cloned().collect();
        for name in names {
            self.params.remove(&name);
            self.optimizer.take_state(&name);
        }
        self.as_of.remove(&layer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OptimizerConfig;

    fn grads(value: f32) -> Grads {
        vec![("layers.3.weight".into(), Tensor::new(vec![2], vec![value, -value]).unwrap())]
    }

    #[test]
    fn a_replica_follows_its_owner_bit_for_bit_and_drops_a_missed_step() {
        let config: OptimizerConfig = "adam:lr=0.01".parse().unwrap();
        let mut owner = Optimizer::new(config);
        let mut param = Tensor::new(vec![2], vec![0.5, -1.5]).unwrap();
        let mut replicas = Replicas::new(Optimizer::new(config));
        assert!(replicas.seed(0, 3, vec![("layers.3.weight".into(), param.clone())], Vec::new()).unwrap().is_empty());
        for step in 0..3u32 {
            let g = grads(0.25 + step as f32);
            owner.update(step, "layers.3.weight", &mut param, &g[0].1).unwrap();
            assert_eq!(replicas.gradient(step, 3, g).unwrap(), vec![(step, 3)]);
            replicas.advance(step + 1).unwrap();
            assert_eq!(replicas.valid(step + 1), vec![3]);
        }
        let state = replicas.layer_state(3).unwrap();
        assert_eq!(state.params[0].1, param);
        assert_eq!(state.optimizer[0].1, owner.state("layers.3.weight").unwrap().clone());
        // A step whose gradient never came: the replica cannot be current.
        replicas.advance(4).unwrap();
        replicas.advance(5).unwrap();
        assert!(replicas.valid(5).is_empty());
        assert!(replicas.layer_state(3).is_err());
    }
}
