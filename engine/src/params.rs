//! Parameters, their gradients and their optimizer state, keyed by stable
//! PyTorch-style names (`layers.3.weight`).

use std::collections::BTreeMap;

use crate::{Error, Result, Tensor, TensorRef};

/// How a parameter is initialised when no weights file is given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound]`, PyTorch's default for linear layers
    /// (`bound = 1/sqrt(fan_in)`).
    Uniform { bound: f32 },
    /// Every element equal to the value (layer-norm weight 1, bias 0).
    Constant(f32),
    /// Normal with mean 0 and standard deviation `std` (PyTorch's
    /// `nn.Embedding` default is `std = 1`).
    Normal { std: f32 },
}

/// A parameter a layer declares: its name relative to the layer
/// (`weight`, `fc1.bias`), shape and default initialisation.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Named tensors: parameter values, or their gradients.
///
/// Invariant: a BTreeMap, so iteration (and everything derived from it, like
/// the order of optimizer updates or of a saved file) is the same everywhere.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamStore {
    tensors: BTreeMap<String, Tensor>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// The tensor called `name`, or a clear error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingParam(name.to_string()))
    }

    /// Mutable access to the tensor called `name`.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Tensor> {
        self.tensors.get_mut(name).ok_or_else(|| Error::MissingParam(name.to_string()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Names and tensors in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Adds `grad` into the tensor called `name`, creating it if absent.
    /// The first contribution is added onto zeros so that every worker's
    /// accumulator produces the same bits whatever it received before.
    pub fn accumulate(&mut self, name: &str, grad: TensorRef<'_>) -> Result<()> {
        if !self.tensors.contains_key(name) {
            let zeros = crate::device::zeros_like(&grad, &grad.shape)?;
            self.tensors.insert(name.to_string(), zeros);
        }
        let slot = self.get_mut(name)?;
        if slot.shape() != &grad.shape[..] {
            return Err(Error::Shape(format!(
                "gradient of {name} has shape {:?}, expected {:?}",
                grad.shape,
                slot.shape()
            )));
        }
        crate::device::add_into(slot, grad)
    }

    /// [`ParamStore::accumulate`] of an owned gradient: the same bits, but
    /// a first host contribution becomes the sum itself (`g + 0`, computed
    /// in place, is `0 + g` bit for bit), with no zeroed buffer and no copy.
    pub fn accumulate_owned(&mut self, name: &str, mut grad: Tensor) -> Result<()> {
        if self.tensors.contains_key(name) || grad.device_buf().is_some() {
            return self.accumulate(name, grad.view());
        }
        baton_kernels::elementwise::plus_zero(grad.values_mut()?);
        self.tensors.insert(name.to_string(), grad);
        Ok(())
    }

    /// Every tensor where `backend` computes: uploaded once (counted) to its
    /// device if it has one, so no op stages a parameter per call.
    pub fn adopted_by(self, backend: &crate::Backend) -> Result<ParamStore> {
        self.into_iter().map(|(n, t)| Ok((n, backend.adopt(t)?))).collect()
    }

    /// Every tensor brought to the host (downloads of resident ones, counted).
    pub fn to_host(&self) -> Result<ParamStore> {
        self.tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_host()?))).collect()
    }

    /// The subset of tensors whose names start with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> ParamStore {
        let tensors = self
            .tensors
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        ParamStore { tensors }
    }
}

impl Extend<(String, Tensor)> for ParamStore {
    fn extend<I: IntoIterator<Item = (String, Tensor)>>(&mut self, iter: I) {
        self.tensors.extend(iter);
    }
}

impl FromIterator<(String, Tensor)> for ParamStore {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        ParamStore { tensors: iter.into_iter().collect() }
    }
}

impl IntoIterator for ParamStore {
    type Item = (String, Tensor);
    type IntoIter = std::collections::btree_map::IntoIter<String, Tensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}
