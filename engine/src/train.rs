//! Single-process training: micro-batching, per-layer gradient accumulation
//! in micro-batch order, per-parameter optimizer updates.

use std::ops::Range;

use crate::pipeline::plan::{loss_weight, split_step, StepLosses};
use crate::{Device, Error, GradAccumulator, Model, Optimizer, ParamStore, Result, SegmentKey, Tensor};

/// Loss targets of a batch.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Targets {
    /// Regression targets shaped like the model output (`mse`).
    Values(Tensor),
    /// Integer class ids (`cross_entropy`): `[rows]`, or `[rows, T]` for a
    /// token model (one target per position).
    Classes(Tensor),
}

impl Targets {
    fn rows(&self) -> usize {
        match self {
            Targets::Values(t) | Targets::Classes(t) => t.shape().first().copied().unwrap_or(0),
        }
    }

    fn slice(&self, rows: Range<usize>) -> Result<Targets> {
        Ok(match self {
            Targets::Values(t) => Targets::Values(t.rows(rows.start, rows.end)?),
            Targets::Classes(c) => Targets::Classes(c.rows(rows.start, rows.end)?),
        })
    }
}

/// Inputs `[rows, features]` and their targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Tensor,
    pub targets: Targets,
}

impl Batch {
    /// A batch; errors unless `x` has a row dimension and as many rows as targets.
    pub fn new(x: Tensor, targets: Targets) -> Result<Batch> {
        let rows = *x.shape().first().ok_or_else(|| Error::Data("a batch input needs a row dimension".into()))?;
        if rows == 0 {
            return Err(Error::Data("a batch needs at least one row".into()));
        }
        if targets.rows() != rows {
            return Err(Error::Data(format!("{rows} input rows but {} target rows", targets.rows())));
        }
        Ok(Batch { x, targets })
    }

    pub fn rows(&self) -> usize {
        self.x.shape()[0]
    }

    /// Rows `range` of the batch.
    pub fn slice(&self, range: Range<usize>) -> Result<Batch> {
        Ok(Batch { x: self.x.rows(range.start, range.end)?, targets: self.targets.slice(range)? })
    }
}

/// Splits `rows` into `micro_batches` contiguous ranges; the first
/// `rows % micro_batches` get one extra row.
pub fn micro_batch_ranges(rows: usize, micro_batches: usize) -> Result<Vec<Range<usize>>> {
    if micro_batches == 0 || micro_batches > rows {
        return Err(Error::Data(format!(
            "cannot split a batch of {rows} rows into {micro_batches} micro-batches (need 1..={rows})"
        )));
    }
    let (base, extra) = (rows / micro_batches, rows % micro_batches);
    let mut start = 0;
    Ok((0..micro_batches)
        .map(|m| {
            let len = base + usize::from(m < extra);
            start += len;
            start - len..start
        })
        .collect())
}

/// Work done, for the run report (invariant 4: nothing lost, nothing redone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Counters {
    /// First forward of a (micro-batch, layer): M x layers per step, always.
    pub forward_layer_executions: u64,
    pub backward_layer_executions: u64,
    /// Forwards run again: to rebuild segments a migration could not ship
    /// in time, and the forwards of attempts abandoned after a loss
    /// without notice (redone from the step's start). Every forward run is
    /// in `forward_layer_executions` or here, never in both.
    pub recomputed_forward_layers: u64,
    /// Backwards of attempts abandoned after a loss without notice (so
    /// `backward_layer_executions` stays M x layers per step).
    pub abandoned_backward_layers: u64,
    /// Host→device bytes of the worker's device (0 on a CPU), until the
    /// worker finished (its final parameters' download excepted).
    pub device_h2d_bytes: u64,
    /// Host→device copies.
    pub device_h2d_copies: u64,
    /// Device→host bytes.
    pub device_d2h_bytes: u64,
    /// Device→host copies.
    pub device_d2h_copies: u64,
}

impl Counters {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &Counters) {
        self.forward_layer_executions += other.forward_layer_executions;
        self.backward_layer_executions += other.backward_layer_executions;
        self.recomputed_forward_layers += other.recomputed_forward_layers;
        self.abandoned_backward_layers += other.abandoned_backward_layers;
        self.device_h2d_bytes += other.device_h2d_bytes;
        self.device_h2d_copies += other.device_h2d_copies;
        self.device_d2h_bytes += other.device_d2h_bytes;
        self.device_d2h_copies += other.device_d2h_copies;
    }
}

/// Trains a model in one process.
#[derive(Debug)]
pub struct Trainer {
    pub model: Model,
    pub params: ParamStore,
    pub optimizer: Optimizer,
    pub counters: Counters,
    /// `--clip-grad-norm`: the maximum total gradient norm, if clipping.
    clip_grad_norm: Option<f32>,
    /// The total gradient norm of each step taken, when clipping.
    pub grad_norms: Vec<f32>,
}

impl Trainer {
    /// A trainer; errors unless `params` are exactly the model's parameters.
    /// Forward, backward and optimizer updates all run on the model's
    /// backend ([`Model::on_device`]): the optimizer is moved onto it, and
    /// the parameters are uploaded to its device once (they stay resident;
    /// [`ParamStore::to_host`] brings them back).
    pub fn new(model: Model, params: ParamStore, optimizer: Optimizer) -> Result<Trainer> {
        model.check_params(&params)?;
        let optimizer = optimizer.with_backend(model.backend().clone());
        let params = params.adopted_by(model.backend())?;
        Ok(Trainer {
            model,
            params,
            optimizer,
            counters: Counters::default(),
            clip_grad_norm: None,
            grad_norms: Vec::new(),
        })
    }

    /// The same trainer clipping gradients to a total norm of `max_norm`
    /// before each update (`torch.nn.utils.clip_grad_norm_`).
    pub fn with_clip_grad_norm(mut self, max_norm: Option<f32>) -> Result<Trainer> {
        if let Some(max) = max_norm {
            crate::clip::check_max_norm(max)?;
        }
        self.clip_grad_norm = max_norm;
        Ok(self)
    }

    /// Clips `grads` (a whole step's) to the configured total norm; returns
    /// the total norm, or None when not clipping. The total combines the
    /// per-parameter norms layer by layer, as the pipeline does.
    pub fn clip(&mut self, grads: &mut ParamStore) -> Result<Option<f32>> {
        let Some(max) = self.clip_grad_norm else {
            return Ok(None);
        };
        let mut norms = Vec::with_capacity(grads.len());
        for layer in 0..self.model.layers.len() {
            norms.extend(crate::clip::norms(&grads.with_prefix(&format!("layers.{layer}.")))?);
        }
        let (total, factor) = crate::clip::scale(norms, max);
        crate::clip::apply(grads, factor)?;
        self.grad_norms.push(total);
        Ok(Some(total))
    }

    /// Forward and backward of every micro-batch of `batch`: the minibatch-mean
    /// loss and its gradients, summed per layer in micro-batch order.
    pub fn gradients(&mut self, step: u32, batch: &Batch, micro_batches: usize) -> Result<(f32, ParamStore)> {
        let split = split_step(batch, micro_batches)?;
        let mut acc = GradAccumulator::new();
        let mut losses = StepLosses::new(split.rows.clone());
        for ((micro, x), (_, targets)) in split.inputs.into_iter().zip(split.targets) {
            let weight = loss_weight(&split.rows, micro as usize);
            let value = self.micro_batch(step, micro, x, &targets, weight, &mut acc)?;
            losses.record(micro, value)?;
        }
        let loss = losses.total().expect("every micro-batch recorded its loss");
        Ok((loss, acc.finish(micro_batches as u32)?))
    }

    /// Forward then backward of one micro-batch whose loss counts `weight`.
    fn micro_batch(
        &mut self,
        step: u32,
        micro: u32,
        x: Tensor,
        targets: &Targets,
        weight: f32,
        acc: &mut GradAccumulator,
    ) -> Result<f32> {
        let layers = self.model.layers.len() as u32;
        let key = |layer| SegmentKey { step, micro, layer };
        let mut segments = Vec::with_capacity(layers as usize);
        let mut x = x;
        for layer in 0..layers {
            let (segment, out) = self.model.forward_layer(key(layer), &self.params, x)?;
            segments.push(segment);
            x = out;
            self.counters.forward_layer_executions += 1;
        }
        let (loss_segment, micro_loss) = self.model.forward_loss(key(layers), x, targets)?;
        let backend = self.model.backend();
        let mut grad = loss_segment.backward_on(backend, &self.params, Tensor::scalar(weight), true)?.input_grad;
        for segment in segments.iter().rev() {
            let dy = grad.take().ok_or_else(|| Error::Model("a layer output has no gradient".into()))?;
            let out = segment.backward_on(backend, &self.params, dy, segment.key.layer > 0)?;
            acc.add(segment.key.layer, micro, out.param_grads)?;
            grad = out.input_grad;
            self.counters.backward_layer_executions += 1;
        }
        Ok(micro_loss)
    }

    /// Applies the optimizer update of step `step` (from 0: it picks the
    /// learning rate) to every parameter with a gradient.
    pub fn apply(&mut self, step: u32, grads: &ParamStore) -> Result<()> {
        for (name, grad) in grads.iter() {
            let param = self.params.get_mut(name)?;
            self.optimizer.update(step, name, param, grad)?;
        }
        Ok(())
    }

    /// One training step; returns the minibatch-mean loss. With the CPU
    /// kernels (the CPU and the simulated device) the step runs on a thread
    /// of the kernels' pool ([`baton_kernels::threads::run_inside`]): one
    /// hand-off per step instead of two thread wake-ups per parallel kernel
    /// call. (CUDA kernels never use that pool, so there it stays where it is.)
    pub fn step(&mut self, step: u32, batch: &Batch, micro_batches: usize) -> Result<f32> {
        let device = self.model.backend().device();
        let mut run = || {
            let (loss, mut grads) = self.gradients(step, batch, micro_batches)?;
            self.clip(&mut grads)?;
            self.apply(step, &grads)?;
            Ok(loss)
        };
        match device {
            Device::Cpu | Device::Simulated => baton_kernels::threads::run_inside(run),
            Device::Cuda(_) => run(),
        }
    }
}
