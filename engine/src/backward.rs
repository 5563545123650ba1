//! Backward: the tape walked in reverse, each op's rule from its family
//! module ([`crate::ops`]), dispatched by one exhaustive match.
//!
//! Invariant: backward reads only the segment's saved tensors and the named
//! parameters' values, so it gives the same bits on every worker that holds
//! those parameters. The rules run on a [`Backend`] that the caller picks
//! (the receiver's device), whatever device recorded the segment.

use std::collections::BTreeMap;

use crate::device::{self, Backend};
use crate::segment::{SavedTensors, SegmentView};
use crate::{Error, Op, ParamStore, Result, Segment, SegmentKey, Tensor, TensorId, TensorRef};

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

/// Gradients of one segment's tensors, summed in reverse tape order, and of
/// the parameters its `Param` nodes read.
pub(crate) struct Grads {
    by_id: BTreeMap<TensorId, Tensor>,
    skip: Option<TensorId>,
    param_grads: ParamStore,
}

impl Grads {
    /// Whether the gradient of `id` is wanted (the segment's input may not be).
    pub(crate) fn wants(&self, id: TensorId) -> bool {
        self.skip != Some(id)
    }

    /// Adds `grad` to the gradient of `id`.
    pub(crate) fn add(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        if !self.wants(id) {
            return Ok(());
        }
        match self.by_id.get_mut(&id) {
            Some(sum) => {
                if sum.shape() != grad.shape() {
                    return Err(Error::Shape(format!(
                        "gradients of {id} with shapes {:?} and {:?}",
                        sum.shape(),
                        grad.shape()
                    )));
                }
                crate::device::add_into(sum, grad.view())?;
            }
            None => {
                self.by_id.insert(id, grad);
            }
        }
        Ok(())
    }

    /// Adds `grad` to the gradient of parameter `name`.
    pub(crate) fn add_param(&mut self, name: &str, grad: Tensor) -> Result<()> {
        if self.param_grads.contains(name) {
            self.param_grads.accumulate(name, grad.view())
        } else {
            self.param_grads.insert(name, grad);
            Ok(())
        }
    }
}

/// What every backward rule may read.
pub(crate) struct Ctx<'a> {
    pub(crate) key: SegmentKey,
    pub(crate) backend: &'a Backend,
    saved: &'a dyn SavedTensors,
    params: &'a ParamStore,
    /// Tensors defined by parameter reads: their parameter's name and the
    /// shape the segment recorded for it.
    param_ids: BTreeMap<TensorId, (&'a str, &'a [usize])>,
}

impl Ctx<'_> {
    /// The value of `id`: a parameter from the receiver's store (checked
    /// against the shape the segment recorded), else a saved tensor.
    pub(crate) fn get(&self, id: TensorId) -> Result<TensorRef<'_>> {
        let Some(&(name, shape)) = self.param_ids.get(&id) else {
            return self.saved.saved(id);
        };
        let value = self.params.get(name)?;
        if value.shape() != shape {
            return Err(self.mismatch(format!(
                "parameter {name} has shape {:?} here but {shape:?} where the segment was recorded",
                value.shape()
            )));
        }
        Ok(value.view())
    }

    /// The shape and f32 value of `id` (host or resident).
    pub(crate) fn f32(&self, id: TensorId) -> Result<(Vec<usize>, TensorRef<'_>)> {
        let t = self.get(id)?;
        if t.is_ids() {
            return Err(self.mismatch(format!("{id} holds token ids, not values")));
        }
        Ok((t.shape.to_vec(), t))
    }

    /// An error naming this segment.
    pub(crate) fn mismatch(&self, detail: String) -> Error {
        Error::Shape(format!("backward of segment {}: {detail}", self.key))
    }

    /// Checks that the upstream gradient has the shape of the op's output.
    pub(crate) fn check_grad(&self, dy: &Tensor, shape: &[usize]) -> Result<()> {
        if dy.shape() != shape {
            return Err(self.mismatch(format!("gradient {:?} for output of shape {shape:?}", dy.shape())));
        }
        Ok(())
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
    let param_ids = tape
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Param(p) => Some((p.out, (p.name.as_str(), p.shape.as_slice()))),
            _ => None,
        })
        .collect();
    let ctx = Ctx { key: tape.key, backend, saved, params, param_ids };
    let mut grads =
        Grads { by_id: BTreeMap::new(), skip: (!input_grad).then_some(tape.input), param_grads: ParamStore::new() };
    grads.by_id.insert(tape.output, grad_output);
    for op in tape.ops.iter().rev() {
        let rule = op.rule();
        let Some(dy) = grads.by_id.remove(&rule.outputs()[0]) else {
            continue;
        };
        rule.backward(&ctx, dy, &mut grads)?;
    }
    let input_grad = if input_grad { grads.by_id.remove(&tape.input) } else { None };
    Ok(BackwardOutput { input_grad, param_grads: grads.param_grads })
}
