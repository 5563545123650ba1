//! The layer-definition API and models built from layers.
//!
//! A [`Layer`] declares its parameters and records its forward through a
//! [`Recorder`]. That is the whole contract: a layer written outside this
//! crate is relocatable like the built-ins because its tape holds only the
//! engine's ops.
//!
//! A model also says where its forward runs ([`Model::on_device`]); layers
//! do not know, since they call only [`Recorder`] ops.

use std::fmt;

use crate::device::{self, Backend, Device};
use crate::{Error, ParamSpec, ParamStore, Recorder, Result, Segment, SegmentKey, Tensor, TensorId};

/// One layer of a model: the unit of placement and migration.
pub trait Layer: fmt::Debug + Send + Sync {
    /// A short name of the layer type (`linear`, `residual_mlp`).
    fn kind(&self) -> &str;
    /// Width of the activation this layer takes.
    fn in_features(&self) -> usize;
    /// Width of the activation this layer produces.
    fn out_features(&self) -> usize;
    /// Parameters, named relative to the layer (`weight`, `fc1.bias`).
    fn params(&self) -> Vec<ParamSpec>;
    /// Records the forward of `x` (`[rows, in_features]`), returning the output id.
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId>;
    /// Whether the layer takes token ids (an embedding) rather than values.
    fn takes_tokens(&self) -> bool {
        false
    }
    /// Relative cost of one row through this layer, used to balance partitions.
    /// Default: forward multiply-adds of a dense layer, i.e. the parameter count.
    fn cost(&self) -> f64 {
        self.params().iter().map(|p| p.shape.iter().product::<usize>() as f64).sum()
    }
}

/// The loss on the last layer's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean over all elements of the squared error.
    Mse,
    /// Mean over every position (rows, and tokens of each row for token
    /// models) of softmax cross-entropy against integer classes.
    CrossEntropy,
}

/// Layers in order plus the loss, and the backend their forward runs on.
#[derive(Debug)]
pub struct Model {
    /// Width of the input features, or the vocabulary size of a token model.
    pub input: usize,
    /// Sequence length of a token model (rows are sequences of token ids).
    pub seq: Option<usize>,
    pub layers: Vec<Box<dyn Layer>>,
    pub loss: Loss,
    backend: Backend,
    /// Keys counter-based randomness (dropout masks) with tensor ids.
    seed: u64,
}

/// Name of parameter `relative` of layer `layer` (`layers.3.weight`).
pub fn param_name(layer: usize, relative: &str) -> String {
    format!("layers.{layer}.{relative}")
}

impl Model {
    /// A model; errors unless each layer's input width is the previous output
    /// width. It runs on the process's default backend
    /// ([`device::process_default`], the CPU unless the process chose one).
    pub fn new(input: usize, layers: Vec<Box<dyn Layer>>, loss: Loss) -> Result<Model> {
        Self::build(input, None, layers, loss)
    }

    /// A token model: rows are `seq` token ids in `0..vocab`, and the first
    /// layer takes tokens (an embedding of `vocab` rows).
    pub fn tokens(vocab: usize, seq: usize, layers: Vec<Box<dyn Layer>>, loss: Loss) -> Result<Model> {
        if seq == 0 || vocab == 0 {
            return Err(Error::Model("a token model needs tokens >= 1 and seq >= 1".into()));
        }
        Self::build(vocab, Some(seq), layers, loss)
    }

    fn build(input: usize, seq: Option<usize>, layers: Vec<Box<dyn Layer>>, loss: Loss) -> Result<Model> {
        if layers.is_empty() {
            return Err(Error::Model("a model needs at least one layer".into()));
        }
        let mut width = input;
        for (i, layer) in layers.iter().enumerate() {
            let wants_tokens = i == 0 && seq.is_some();
            if layer.takes_tokens() != wants_tokens {
                let why =
                    if wants_tokens { "a token model must start with" } else { "only layer 0 of a token model may be" };
                return Err(Error::Model(format!(
                    "layer {i} ({}): {why} a layer that takes tokens (embedding)",
                    layer.kind()
                )));
            }
            if layer.in_features() != width {
                return Err(Error::Model(format!(
                    "layer {i} ({}) takes {} features but receives {width}",
                    layer.kind(),
                    layer.in_features()
                )));
            }
            width = layer.out_features();
        }
        Ok(Model { input, seq, layers, loss, backend: device::process_default(), seed: 0 })
    }

    /// The same model with dropout masks keyed by `seed`.
    pub fn with_seed(self, seed: u64) -> Model {
        Model { seed, ..self }
    }

    /// The seed that keys dropout masks.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Shape of one row of input: `[input]`, or `[seq]` token ids.
    pub fn row_shape(&self) -> Vec<usize> {
        vec![self.seq.unwrap_or(self.input)]
    }

    /// The same model running on `device`.
    ///
    /// # Errors
    /// [`Error::Device`] when `device` cannot be used here (see
    /// [`Backend::open`]): no GPU, or a build without CUDA.
    pub fn on_device(self, device: Device) -> Result<Model> {
        Ok(self.with_backend(Backend::open(device)?))
    }

    /// The same model running on `backend`.
    pub fn with_backend(self, backend: Backend) -> Model {
        Model { backend, ..self }
    }

    /// The device the model's forward runs on.
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// The backend the model's forward runs on (the natural choice for its
    /// backward and optimizer too).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Width of the model's output.
    pub fn output(&self) -> usize {
        self.layers.last().map_or(self.input, |l| l.out_features())
    }

    /// Every parameter with its full name, in layer order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut specs = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for mut spec in layer.params() {
                spec.name = param_name(i, &spec.name);
                specs.push(spec);
            }
        }
        specs
    }

    /// Checks that `params` holds exactly the model's parameters with their shapes.
    pub fn check_params(&self, params: &ParamStore) -> Result<()> {
        let specs = self.param_specs();
        for spec in &specs {
            let tensor = params.get(&spec.name)?;
            if tensor.shape() != spec.shape {
                return Err(Error::Shape(format!(
                    "parameter {} has shape {:?}, the model expects {:?}",
                    spec.name,
                    tensor.shape(),
                    spec.shape
                )));
            }
        }
        if let Some(extra) = params.names().find(|n| !specs.iter().any(|s| &s.name == *n)) {
            return Err(Error::Model(format!("parameter {extra} is not part of the model")));
        }
        Ok(())
    }

    /// Records the forward of layer `key.layer` on `x`.
    pub fn forward_layer(&self, key: SegmentKey, params: &ParamStore, x: Tensor) -> Result<(Segment, Tensor)> {
        let index = key.layer as usize;
        let layer = self.layers.get(index).ok_or_else(|| Error::Model(format!("the model has no layer {index}")))?;
        let mut rec = Recorder::with_backend(key, format!("layers.{index}."), params, x, self.backend.clone())
            .with_seed(self.seed);
        let input = rec.input();
        let out = layer.forward(&mut rec, input)?;
        rec.finish(out)
    }

    /// Records the loss segment (`key.layer` == layer count) of `pred` against
    /// `targets`, returning it and the micro-batch's mean loss.
    pub fn forward_loss(&self, key: SegmentKey, pred: Tensor, targets: &crate::Targets) -> Result<(Segment, f32)> {
        let empty = ParamStore::new();
        let mut rec = Recorder::with_backend(key, String::new(), &empty, pred, self.backend.clone());
        let input = rec.input();
        let out = match (self.loss, targets) {
            (Loss::Mse, crate::Targets::Values(t)) => rec.mse_loss(input, t.clone())?,
            (Loss::CrossEntropy, crate::Targets::Classes(c)) => rec.cross_entropy_loss(input, c.clone())?,
            (loss, _) => {
                return Err(Error::Data(format!("{loss:?} loss got the wrong kind of targets")));
            }
        };
        let (segment, value) = rec.finish(out)?;
        let loss = value.into_host()?.values()?.first().copied();
        Ok((segment, loss.ok_or_else(|| Error::Model("the loss is not a scalar".into()))?))
    }
}
