//! Rolling a stage back to the start of the step in progress, after a
//! member of the job was lost without notice.
//!
//! Invariant: after [`Stage::rollback`], every layer the stage reports
//! clean holds exactly the parameters and optimizer state it had at the
//! start of the step (restored from the snapshot taken before its update,
//! or untouched because it was not updated yet); layers it cannot vouch
//! for (updated before they moved here) are dropped, and nothing of the
//! abandoned attempt (tape, sums, waiting tensors) is left.

use super::Stage;
use crate::optim::OptState;
use crate::{Error, GradAccumulator, Optimizer, ParamStore, Result, Tensor};

/// A layer as it was before its update in `step`.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    step: u32,
    params: Vec<(String, Tensor)>,
    /// Each parameter's optimizer state (None: it had none yet).
    optimizer: Vec<(String, Option<OptState>)>,
}

impl Snapshot {
    /// True when this snapshot's buffers have the names and sizes of the
    /// layer's current parameters and state, on the host.
    fn fits(&self, prefix: &str, params: &ParamStore, optimizer: &Optimizer) -> bool {
        let names = params.names().filter(|n| n.starts_with(prefix));
        if !names.eq(self.params.iter().map(|(n, _)| n)) {
            return false;
        }
        self.params.iter().zip(&self.optimizer).all(|((name, kept), (_, state))| {
            let same_state = match (state, optimizer.state(name)) {
                (Some(a), Some(b)) => {
                    a.buffers.len() == b.buffers.len()
                        && a.buffers.iter().zip(&b.buffers).all(|(x, y)| x.len() == y.len())
                }
                (None, None) => true,
                _ => false,
            };
            let value = params.get(name).ok().and_then(|t| t.values().ok());
            same_state && kept.values().ok().zip(value).is_some_and(|(a, b)| a.len() == b.len())
        })
    }

    /// True when this snapshot can take the layer's update out of place:
    /// it fits, every parameter has state the optimizer updates out of
    /// place, and `grads` name exactly the snapshot's parameters.
    fn takes_update(&self, prefix: &str, params: &ParamStore, optimizer: &Optimizer, grads: &ParamStore) -> bool {
        self.fits(prefix, params, optimizer)
            && grads.names().eq(self.params.iter().map(|(n, _)| n))
            && self
                .params
                .iter()
                .zip(&self.optimizer)
                .all(|((name, kept), (_, state))| state.is_some() && optimizer.updates_into(name, kept.len()))
    }

    /// Copies the layer's current values into this snapshot's buffers and
    /// makes it `step`'s; false (nothing usable changed) when the layer's
    /// parameters or state no longer have this snapshot's names and sizes,
    /// or are not host f32 values.
    fn refill(&mut self, step: u32, prefix: &str, params: &ParamStore, optimizer: &Optimizer) -> bool {
        if !self.fits(prefix, params, optimizer) {
            return false;
        }
        for ((name, kept), (_, state)) in self.params.iter_mut().zip(&mut self.optimizer) {
            if let (Ok(to), Some(from)) = (kept.values_mut(), params.get(name).ok().and_then(|t| t.values().ok())) {
                to.copy_from_slice(from);
            }
            if let (Some(to), Some(from)) = (state.as_mut(), optimizer.state(name)) {
                to.step = from.step;
                to.buffers.iter_mut().zip(&from.buffers).for_each(|(t, f)| t.copy_from_slice(f));
            }
        }
        self.step = step;
        true
    }
}

/// A layer's parameters and optimizer state, kept after it left.
pub(crate) type Departed = (Vec<(String, Tensor)>, Vec<(String, OptState)>);

/// What a stage reports after a rollback.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolledBack {
    /// Layers held here at the state of the step's start.
    pub clean: Vec<u32>,
    /// Forwards of the abandoned attempt run here (now counted as recomputed).
    pub forwards: u64,
}

impl Stage {
    /// Applies `layer`'s update of `step` with `grads` and keeps the
    /// layer's values from before it as the step's snapshot. When an
    /// earlier step's snapshot of the layer can take it, the update runs
    /// out of place into that snapshot's buffers, which are then swapped
    /// with the layer's (the same arithmetic, so the same bits): the
    /// step-start values stay valid with no copy of them. Otherwise (the
    /// layer's first update here, device-resident values, a layer whose
    /// shape changed) they are copied first and updated in place.
    pub(crate) fn update_keeping(&mut self, step: u32, layer: u32, grads: &ParamStore) -> Result<()> {
        let prefix = format!("layers.{layer}.");
        let fits =
            self.snapshots.get(&layer).is_some_and(|s| s.takes_update(&prefix, &self.params, &self.optimizer, grads));
        let Some(mut spare) = fits.then(|| self.snapshots.remove(&layer)).flatten() else {
            self.snapshot(step, layer);
            for (name, grad) in grads.iter() {
                self.optimizer.update(step, name, self.params.get_mut(name)?, grad)?;
            }
            return Ok(());
        };
        for ((name, kept), (_, state)) in spare.params.iter_mut().zip(&mut spare.optimizer) {
            let state = state.as_mut().ok_or_else(|| Error::Internal(format!("no kept state of {name}")))?;
            let (param, grad) = (self.params.get_mut(name)?, grads.get(name)?);
            self.optimizer.update_into(step, name, param, grad, (kept, state))?;
        }
        spare.step = step;
        self.snapshots.insert(layer, spare);
        Ok(())
    }

    /// Keeps `layer` as it is now, before its update in `step`. An earlier
    /// step's snapshot of the layer is refilled in place when it fits, so
    /// a step does not allocate (and fault in) fresh pages for the copies.
    pub(crate) fn snapshot(&mut self, step: u32, layer: u32) {
        let prefix = format!("layers.{layer}.");
        if let Some(old) = self.snapshots.get_mut(&layer) {
            if old.refill(step, &prefix, &self.params, &self.optimizer) {
                return;
            }
        }
        let params: Vec<(String, Tensor)> = self.params.with_prefix(&prefix).into_iter().collect();
        let optimizer = params.iter().map(|(n, _)| (n.clone(), self.optimizer.state(n).cloned())).collect();
        self.snapshots.insert(layer, Snapshot { step, params, optimizer });
    }

    /// Abandons step `step`: restores the layers updated in it from their
    /// snapshots, drops layers that were updated elsewhere before moving
    /// here, and forgets the attempt's tape, sums and waiting tensors. A
    /// stage still on an earlier step (the start of `step` has not arrived)
    /// only forgets tensors of `step` that came early.
    pub fn rollback(&mut self, step: u32) -> RolledBack {
        let in_step = self.current.as_ref().is_some_and(|c| c.step == step);
        // A stage still on the previous step: its counts belong to that
        // completed step, and stay.
        let (forwards, backwards) = match in_step {
            true => (std::mem::take(&mut self.attempt_forwards), std::mem::take(&mut self.attempt_backwards)),
            false => (0, 0),
        };
        (self.attempt_forwards, self.attempt_backwards) = (0, 0);
        if in_step {
            self.restore_snapshots(step);
            // Layers shipped away in the abandoned step come back as they
            // were at its start (the migration is cancelled).
            for (_, (params, optimizer)) in std::mem::take(&mut self.departed) {
                self.params.extend(params);
                optimizer.into_iter().for_each(|(n, s)| self.optimizer.insert_state(n, s));
            }
        }
        self.departed.clear();
        // The previous step is complete everywhere; its state here would
        // not fit the range a restore may give this stage.
        self.current = None;
        self.snapshots.clear();
        self.acc = GradAccumulator::new();
        self.tape.clear();
        self.awaiting.clear();
        self.activations.retain(|(s, _), _| *s < step);
        self.gradients.retain(|(s, _), _| *s < step);
        self.targets.retain(|(s, _), _| *s < step);
        self.forget_before(u32::MAX);
        self.counters.forward_layer_executions -= forwards;
        self.counters.recomputed_forward_layers += forwards;
        self.counters.backward_layer_executions -= backwards;
        self.counters.abandoned_backward_layers += backwards;
        RolledBack { clean: self.held_layers(), forwards }
    }

    /// Puts back every layer updated in `step`; layers marked updated
    /// without a snapshot here (updated before they moved) are dropped.
    fn restore_snapshots(&mut self, step: u32) {
        let updated: Vec<u32> = self.current.as_ref().map(|c| c.updated.iter().copied().collect()).unwrap_or_default();
        for layer in updated {
            match self.snapshots.remove(&layer).filter(|s| s.step == step) {
                Some(snapshot) => {
                    self.params.extend(snapshot.params);
                    for (name, state) in snapshot.optimizer {
                        match state {
                            Some(state) => self.optimizer.insert_state(name, state),
                            None => drop(self.optimizer.take_state(&name)),
                        }
                    }
                }
                None => self.drop_layer(layer),
            }
        }
    }

    /// `layer` leaves this stage in a migration: keeps its state as of the
    /// step's start (its snapshot if it was updated here, else a copy), so
    /// a rollback of the step finds it here even if its new owner is lost.
    pub(crate) fn depart(&mut self, layer: u32, params: &[(String, Tensor)], optimizer: &[(String, OptState)]) {
        if !self.replicate {
            return;
        }
        let step = self.current.as_ref().map(|c| c.step);
        let updated = self.current.as_ref().is_some_and(|c| c.updated.contains(&layer));
        let kept = match self.snapshots.get(&layer) {
            Some(s) if Some(s.step) == step => {
                let optimizer = s.optimizer.iter().filter_map(|(n, o)| o.clone().map(|o| (n.clone(), o))).collect();
                Some((s.params.clone(), optimizer))
            }
            _ if !updated => Some((params.to_vec(), optimizer.to_vec())),
            // Updated before it came here: only its replica knows its start.
            _ => None,
        };
        if let Some(kept) = kept {
            self.departed.insert(layer, kept);
        }
    }

    /// Puts back a layer's step-start state this stage handed away (its
    /// receiver was lost before the step began again).
    pub(crate) fn reinstate(&mut self, state: super::migrate::LayerState) {
        self.params.extend(state.params);
        state.optimizer.into_iter().for_each(|(n, s)| self.optimizer.insert_state(n, s));
    }

    /// Forgets `layer`'s parameters and optimizer state.
    pub(crate) fn drop_layer(&mut self, layer: u32) {
        let prefix = format!("layers.{layer}.");
        let names: Vec<String> = self.params.names().filter(|n| n.starts_with(&prefix)).cloned().collect();
        for name in names {
            self.params.remove(&name);
            self.optimizer.take_state(&name);
        }
    }

    /// Layers whose parameters are here (in or out of the stage's range:
    /// mid-migration the range may already be the new one).
    pub(crate) fn held_layers(&self) -> Vec<u32> {
        let layer_of = |n: &String| n.strip_prefix("layers.")?.split('.').next()?.parse::<u32>().ok();
        let held: std::collections::BTreeSet<u32> = self.params.names().filter_map(layer_of).collect();
        held.into_iter().collect()
    }
}

impl Stage {
    /// Removes `layer`'s parameters and optimizer state as a layer to hand over.
    pub(crate) fn take_layer_state(&mut self, layer: u32) -> super::migrate::LayerState {
        let prefix = format!("layers.{layer}.");
        let names: Vec<String> = self.params.names().filter(|n| n.starts_with(&prefix)).cloned().collect();
        let params = names.iter().filter_map(|n| self.params.remove(n).map(|t| (n.clone(), t))).collect();
        let optimizer = names.iter().filter_map(|n| self.optimizer.take_state(n).map(|s| (n.clone(), s))).collect();
        super::migrate::LayerState::at_step_start(layer, params, optimizer)
    }
}
