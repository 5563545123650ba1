//! Softmax over the last dimension, optionally with a causal mask.

use crate::backward::{Ctx, Grads};
use crate::device::Call;
use crate::ops::{rows_cols, Meta, Rule};
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// `out = softmax(x)` over the last axis. With `causal`, `x` is `[.., T, T]`
/// scores and query position t sees keys `0..=t` (the rest are exactly 0).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Softmax {
    pub x: TensorId,
    pub causal: bool,
    pub out: TensorId,
}

fn check(shape: &[usize], causal: bool) -> Result<()> {
    let r = shape.len();
    if r == 0 || shape[r - 1] == 0 || (causal && (r < 2 || shape[r - 1] != shape[r - 2])) {
        return Err(Error::Shape(format!("softmax (causal: {causal}) of a {shape:?} tensor")));
    }
    Ok(())
}

impl Recorder<'_> {
    /// Softmax over the last axis; `causal` masks keys after the query.
    pub fn softmax(&mut self, x: TensorId, causal: bool) -> Result<TensorId> {
        let xv = self.value(x)?;
        check(xv.shape(), causal).map_err(|e| self.shape_err(e.to_string()))?;
        let call = Call::Softmax { cols: rows_cols(xv.shape()).1, causal };
        let y = self.backend().launch1(&call, &[xv.operand()], xv.shape().to_vec())?;
        let out = self.alloc();
        self.record(Op::Softmax(Softmax { x, causal, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let x = s.f32(self.x)?;
        check(x, self.causal)?;
        Ok(vec![Meta::f32(x.to_vec())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let (shape, y) = ctx.f32(self.out)?;
        ctx.check_grad(&dy, &shape)?;
        let call = Call::SoftmaxBackward { cols: rows_cols(&shape).1 };
        let dx = ctx.backend.launch1(&call, &[y.operand(), dy.operand()], shape)?;
        grads.add(self.x, dx)
    }
}
