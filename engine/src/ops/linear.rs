//! `y = x Wᵀ + b` on the last dimension of an N-d input.

use baton_kernels::Trans;

use crate::backward::{Ctx, Grads};
use crate::device::Call;
use crate::ops::{rows_cols, Meta, Rule};
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// x `[.., in]`, weight `[out, in]`, bias `[out]` → `[.., out]`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Linear {
    pub x: TensorId,
    pub weight: TensorId,
    pub bias: Option<TensorId>,
    pub out: TensorId,
}

/// The output shape, or what does not fit.
fn shape(x: &[usize], w: &[usize], b: Option<&[usize]>) -> Result<Vec<usize>> {
    let (&inp, lead) = x.split_last().ok_or_else(|| Error::Shape("linear of a scalar".into()))?;
    let [out, w_in] = *w else {
        return Err(Error::Shape(format!("linear weight must be [out, in], has shape {w:?}")));
    };
    if w_in != inp {
        return Err(Error::Shape(format!("linear weight is [{out}, {w_in}] but the input has {inp} features")));
    }
    if let Some(b) = b {
        if b != [out] {
            return Err(Error::Shape(format!("linear bias has shape {b:?}, expected [{out}]")));
        }
    }
    Ok(lead.iter().copied().chain([out]).collect())
}

impl Recorder<'_> {
    /// `x · weightᵀ + bias` on the last dimension; `weight` and `bias` are
    /// any tensors (usually [`Recorder::param`] reads).
    pub fn linear(&mut self, x: TensorId, weight: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        let (xv, wv) = (self.value(x)?, self.value(weight)?);
        let bv = bias.map(|b| self.value(b)).transpose()?;
        let out_shape =
            shape(xv.shape(), wv.shape(), bv.map(Tensor::shape)).map_err(|e| self.shape_err(e.to_string()))?;
        let (rows, inp) = rows_cols(xv.shape());
        let n = *out_shape.last().unwrap_or(&0);
        let mut ins = vec![xv.operand(), wv.operand()];
        ins.extend(bv.map(Tensor::operand));
        let call = Call::Linear { rows, inp, n, bias: bv.is_some() };
        let y = self.backend().launch1(&call, &ins, out_shape)?;
        let out = self.alloc();
        self.record(Op::Linear(Linear { x, weight, bias, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> Vec<TensorId> {
        [self.x, self.weight].into_iter().chain(self.bias).collect()
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.x, self.weight]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let b = self.bias.map(|b| s.f32(b)).transpose()?;
        Ok(vec![Meta::f32(shape(s.f32(self.x)?, s.f32(self.weight)?, b)?)])
    }
    /// dW = dyᵀ x, db = Σ_rows dy, dx = dy W.
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let (xs, xv) = ctx.f32(self.x)?;
        let (ws, wv) = ctx.f32(self.weight)?;
        let out_shape = shape(&xs, &ws, None).map_err(|e| ctx.mismatch(e.to_string()))?;
        ctx.check_grad(&dy, &out_shape)?;
        let ((rows, inp), out) = (rows_cols(&xs), ws[0]);
        let g = dy.operand();
        let mm = |ta, tb, m, k, n| Call::Matmul { ta, tb, batch: 1, m, k, n, accumulate: false };
        let dw = ctx.backend.launch1(&mm(Trans::Yes, Trans::No, out, rows, inp), &[g, xv.operand()], ws.clone())?;
        grads.add(self.weight, dw)?;
        if let Some(bias) = self.bias {
            let db = ctx.backend.launch1(&Call::SumRows { cols: out, accumulate: false }, &[g], vec![out])?;
            grads.add(bias, db)?;
        }
        if grads.wants(self.x) {
            let dx = ctx.backend.launch1(&mm(Trans::No, Trans::No, rows, out, inp), &[g, wv.operand()], xs)?;
            grads.add(self.x, dx)?;
        }
        Ok(())
    }
}
