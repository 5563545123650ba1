//! Backward: one exhaustive match over [`Op`], one small function per op family.
//!
//! Invariant: backward reads only the segment's saved tensors and the named
//! parameters' values, so it gives the same bits on every worker that holds
//! those parameters. The rules run on a [`Backend`] that the caller picks
//! (the receiver's device), whatever device recorded the segment.

use std::collections::BTreeMap;

use baton_kernels::{elementwise, Trans};

use crate::device::{self, Backend};
use crate::segment::{SavedTensors, SegmentView};
use crate::{Activation, Error, Op, ParamStore, Result, Segment, SegmentKey, Tensor, TensorId, TensorRef};

/// What backward of one segment produces.
#[derive(Debug)]
pub struct BackwardOutput {
    /// Gradient of the segment's input (None when not requested).
    pub input_grad: Option<Tensor>,
    /// Gradients of the parameters the segment used, by name.
    pub param_grads: ParamStore,
}

/// The parts of a segment backward walks.
pub struct Tape<'a> {
    pub key: SegmentKey,
    pub input: TensorId,
    pub output: TensorId,
    pub ops: &'a [Op],
}

impl Segment {
    /// Backward of this segment given the gradient of its output, on the
    /// process's default backend ([`device::process_default`]).
    pub fn backward(&self, params: &ParamStore, grad_output: Tensor, input_grad: bool) -> Result<BackwardOutput> {
        self.backward_on(&device::process_default(), params, grad_output, input_grad)
    }

    /// Backward on `backend`, whatever device recorded the segment.
    pub fn backward_on(
        &self,
        backend: &Backend,
        params: &ParamStore,
        grad_output: Tensor,
        input_grad: bool,
    ) -> Result<BackwardOutput> {
        let tape = Tape { key: self.key, input: self.input, output: self.output, ops: &self.ops };
        backward_on(backend, &tape, self, params, grad_output, input_grad)
    }
}

impl SegmentView<'_> {
    /// Backward straight from the archive (saved tensors are not copied), on
    /// the process's default backend.
    pub fn backward(&self, params: &ParamStore, grad_output: Tensor, input_grad: bool) -> Result<BackwardOutput> {
        self.backward_on(&device::process_default(), params, grad_output, input_grad)
    }

    /// Backward from the archive on `backend`, whatever device recorded it.
    pub fn backward_on(
        &self,
        backend: &Backend,
        params: &ParamStore,
        grad_output: Tensor,
        input_grad: bool,
    ) -> Result<BackwardOutput> {
        let tape = Tape { key: self.key, input: self.input, output: self.output, ops: &self.ops };
        backward_on(backend, &tape, self, params, grad_output, input_grad)
    }
}

/// Gradients of the tensors of one segment, summed in reverse tape order.
struct Grads {
    by_id: BTreeMap<TensorId, Tensor>,
    skip: Option<TensorId>,
}

impl Grads {
    fn wants(&self, id: TensorId) -> bool {
        self.skip != Some(id)
    }

    fn add(&mut self, id: TensorId, grad: Tensor) {
        match self.by_id.get_mut(&id) {
            Some(sum) => elementwise::add_assign(&mut sum.data, &grad.data),
            None => {
                self.by_id.insert(id, grad);
            }
        }
    }
}

/// Runs backward over `tape`, reading saved tensors from `saved`, on the
/// process's default backend.
pub fn backward(
    tape: &Tape<'_>,
    saved: &dyn SavedTensors,
    params: &ParamStore,
    grad_output: Tensor,
    input_grad: bool,
) -> Result<BackwardOutput> {
    backward_on(&device::process_default(), tape, saved, params, grad_output, input_grad)
}

/// Runs backward over `tape` on `backend`, reading saved tensors from `saved`.
pub fn backward_on(
    backend: &Backend,
    tape: &Tape<'_>,
    saved: &dyn SavedTensors,
    params: &ParamStore,
    grad_output: Tensor,
    input_grad: bool,
) -> Result<BackwardOutput> {
    let mut grads = Grads { by_id: BTreeMap::new(), skip: (!input_grad).then_some(tape.input) };
    grads.by_id.insert(tape.output, grad_output);
    let mut param_grads = ParamStore::new();
    for op in tape.ops.iter().rev() {
        let Some(dy) = grads.by_id.remove(&op.output()) else {
            continue;
        };
        let ctx = OpCtx { saved, params, key: tape.key, backend };
        match op {
            Op::Linear { x, weight, bias, .. } => {
                linear(&ctx, *x, weight, bias.as_deref(), &dy, &mut grads, &mut param_grads)?
            }
            Op::Activation { kind, x, out } => activation_grad(&ctx, *kind, *x, *out, &dy, &mut grads)?,
            Op::LayerNorm { x, weight, bias, stats, .. } => {
                layernorm(&ctx, *x, weight, bias, *stats, &dy, &mut grads, &mut param_grads)?
            }
            Op::Add { a, b, .. } => {
                grads.add(*a, dy.clone());
                grads.add(*b, dy);
            }
            Op::MseLoss { pred, target, .. } => mse(&ctx, *pred, *target, &dy, &mut grads)?,
            Op::CrossEntropyLoss { logits, target, probs, .. } => {
                cross_entropy(&ctx, *logits, *target, *probs, &dy, &mut grads)?
            }
        }
    }
    let input_grad = if input_grad { grads.by_id.remove(&tape.input) } else { None };
    Ok(BackwardOutput { input_grad, param_grads })
}

/// What every backward rule may read.
struct OpCtx<'a> {
    saved: &'a dyn SavedTensors,
    params: &'a ParamStore,
    key: SegmentKey,
    backend: &'a Backend,
}

impl OpCtx<'_> {
    fn saved(&self, id: TensorId) -> Result<TensorRef<'_>> {
        self.saved.saved(id)
    }

    fn mismatch(&self, detail: String) -> Error {
        Error::Shape(format!("backward of segment {}: {detail}", self.key))
    }

    /// Checks that the upstream gradient has the shape of the op's output.
    fn check_grad(&self, dy: &Tensor, shape: &[usize]) -> Result<()> {
        if dy.shape[..] != *shape {
            return Err(self.mismatch(format!("gradient {:?} for output of shape {shape:?}", dy.shape)));
        }
        Ok(())
    }
}

fn add_param_grad(param_grads: &mut ParamStore, name: &str, grad: Tensor) -> Result<()> {
    if param_grads.contains(name) {
        param_grads.accumulate(name, grad.view())
    } else {
        param_grads.insert(name, grad);
        Ok(())
    }
}

/// `y = x Wᵀ + b`: dW = dyᵀ x, db = Σ_rows dy, dx = dy W.
fn linear(
    ctx: &OpCtx<'_>,
    x: TensorId,
    weight: &str,
    bias: Option<&str>,
    dy: &Tensor,
    grads: &mut Grads,
    param_grads: &mut ParamStore,
) -> Result<()> {
    let xv = ctx.saved(x)?;
    let (rows, inp) = xv.matrix("saved linear input")?;
    let w = ctx.params.get(weight)?;
    let (out, w_in) = w.view().matrix(weight)?;
    if w_in != inp {
        return Err(ctx.mismatch(format!("{weight} is [{out}, {w_in}], saved input has {inp} features")));
    }
    ctx.check_grad(dy, &[rows, out])?;
    let mut dw = Tensor::zeros(&[out, inp]);
    ctx.backend.matmul(&mut dw.data, &dy.data, Trans::Yes, &xv.data, Trans::No, out, rows, inp, false)?;
    add_param_grad(param_grads, weight, dw)?;
    if let Some(bias) = bias {
        let mut db = Tensor::zeros(&[out]);
        ctx.backend.sum_rows(&dy.data, out, &mut db.data, false)?;
        add_param_grad(param_grads, bias, db)?;
    }
    if grads.wants(x) {
        let mut dx = Tensor::zeros(&[rows, inp]);
        ctx.backend.matmul(&mut dx.data, &dy.data, Trans::No, &w.data, Trans::No, rows, out, inp, false)?;
        grads.add(x, dx);
    }
    Ok(())
}

fn activation_grad(
    ctx: &OpCtx<'_>,
    kind: Activation,
    x: TensorId,
    out: TensorId,
    dy: &Tensor,
    grads: &mut Grads,
) -> Result<()> {
    let saved = ctx.saved(if kind == Activation::Gelu { x } else { out })?;
    ctx.check_grad(dy, &saved.shape)?;
    let mut dx = Tensor::zeros(&saved.shape);
    ctx.backend.activation_backward(kind, &saved.data, &dy.data, &mut dx.data)?;
    grads.add(x, dx);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn layernorm(
    ctx: &OpCtx<'_>,
    x: TensorId,
    weight: &str,
    bias: &str,
    stats: TensorId,
    dy: &Tensor,
    grads: &mut Grads,
    param_grads: &mut ParamStore,
) -> Result<()> {
    let (xv, sv) = (ctx.saved(x)?, ctx.saved(stats)?);
    let (rows, cols) = xv.matrix("saved layernorm input")?;
    let gamma = ctx.params.get(weight)?;
    if gamma.shape[..] != [cols] || sv.shape[..] != [2, rows] {
        return Err(ctx.mismatch(format!("layernorm {weight} {:?} / stats {:?}", gamma.shape, sv.shape)));
    }
    ctx.check_grad(dy, &[rows, cols])?;
    let (mut dx, mut dg, mut db) = (Tensor::zeros(&[rows, cols]), Tensor::zeros(&[cols]), Tensor::zeros(&[cols]));
    ctx.backend.layernorm_backward(
        &xv.data,
        &gamma.data,
        &sv.data,
        &dy.data,
        cols,
        &mut dx.data,
        &mut dg.data,
        &mut db.data,
        false,
    )?;
    add_param_grad(param_grads, weight, dg)?;
    add_param_grad(param_grads, bias, db)?;
    grads.add(x, dx);
    Ok(())
}

fn scalar_grad(ctx: &OpCtx<'_>, dy: &Tensor) -> Result<f32> {
    match dy.data[..] {
        [g] => Ok(g),
        _ => Err(ctx.mismatch(format!("loss gradient must be a scalar, has shape {:?}", dy.shape))),
    }
}

fn mse(ctx: &OpCtx<'_>, pred: TensorId, target: TensorId, dy: &Tensor, grads: &mut Grads) -> Result<()> {
    let g = scalar_grad(ctx, dy)?;
    let (pv, tv) = (ctx.saved(pred)?, ctx.saved(target)?);
    if pv.shape != tv.shape {
        return Err(ctx.mismatch(format!("mse prediction {:?} vs target {:?}", pv.shape, tv.shape)));
    }
    let mut dpred = Tensor::zeros(&pv.shape);
    ctx.backend.mse_backward(&pv.data, &tv.data, g, &mut dpred.data)?;
    grads.add(pred, dpred);
    Ok(())
}

fn cross_entropy(
    ctx: &OpCtx<'_>,
    logits: TensorId,
    target: TensorId,
    probs: TensorId,
    dy: &Tensor,
    grads: &mut Grads,
) -> Result<()> {
    let g = scalar_grad(ctx, dy)?;
    let (pv, tv) = (ctx.saved(probs)?, ctx.saved(target)?);
    let (rows, classes) = pv.matrix("saved softmax")?;
    let targets = class_indices(&tv.data)?;
    crate::record::check_classes(&targets, rows, classes)?;
    let mut dlogits = Tensor::zeros(&[rows, classes]);
    ctx.backend.cross_entropy_backward(&pv.data, classes, &targets, g, &mut dlogits.data)?;
    grads.add(logits, dlogits);
    Ok(())
}

/// Class targets travel as f32 holding small non-negative integers.
fn class_indices(values: &[f32]) -> Result<Vec<u32>> {
    values
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0 {
                Ok(v as u32)
            } else {
                Err(Error::Data(format!("class target {v} is not a non-negative integer")))
            }
        })
        .collect()
}
