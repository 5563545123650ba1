//! LayerNorm and RMSNorm over the last dimension of an N-d input.

use crate::backward::{Ctx, Grads};
use crate::device::{Call, Out};
use crate::ops::{rows_cols, take, Meta, Rule};
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// LayerNorm with affine `weight`, `bias` (`[cols]`); `stats` holds the
/// per-row mean and reciprocal standard deviation (`[2, rows]`).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LayerNorm {
    pub x: TensorId,
    pub weight: TensorId,
    pub bias: TensorId,
    pub eps: f32,
    pub stats: TensorId,
    pub out: TensorId,
}

/// (rows, cols) of a normalisation of `x` by parameters of `shapes`.
fn dims(x: &[usize], params: &[&[usize]]) -> Result<(usize, usize)> {
    if x.is_empty() {
        return Err(Error::Shape("normalisation of a scalar".into()));
    }
    let (rows, cols) = rows_cols(x);
    if cols == 0 || params.iter().any(|p| *p != [cols]) {
        return Err(Error::Shape(format!("normalisation of {x:?} needs parameters of shape [{cols}], got {params:?}")));
    }
    Ok((rows, cols))
}

impl Recorder<'_> {
    /// LayerNorm over the last axis (`eps` inside the square root, biased
    /// variance, as PyTorch).
    pub fn layernorm(&mut self, x: TensorId, weight: TensorId, bias: TensorId, eps: f32) -> Result<TensorId> {
        let (xv, g, b) = (self.value(x)?, self.value(weight)?, self.value(bias)?);
        let (rows, cols) = dims(xv.shape(), &[g.shape(), b.shape()]).map_err(|e| self.shape_err(e.to_string()))?;
        let outs = vec![Out::Zeros(xv.shape().to_vec()), Out::Zeros(vec![2, rows])];
        let ins = [xv.operand(), g.operand(), b.operand()];
        let [y, stats] = take(self.backend().launch(&Call::LayerNorm { cols, eps }, &ins, outs)?)?;
        let (stats_id, out) = (self.alloc(), self.alloc());
        let op = LayerNorm { x, weight, bias, eps, stats: stats_id, out };
        self.record(Op::LayerNorm(op), vec![(stats_id, stats), (out, y)]);
        Ok(out)
    }
}

impl Rule for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.x, self.weight, self.bias]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out, self.stats]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.x, self.weight, self.stats]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let x = s.f32(self.x)?;
        let (rows, _) = dims(x, &[s.f32(self.weight)?, s.f32(self.bias)?])?;
        Ok(vec![Meta::f32(x.to_vec()), Meta::f32(vec![2, rows])])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let ((xs, x), (gs, g), (ss, stats)) = (ctx.f32(self.x)?, ctx.f32(self.weight)?, ctx.f32(self.stats)?);
        let (rows, cols) = dims(&xs, &[&gs]).map_err(|e| ctx.mismatch(e.to_string()))?;
        if ss != [2, rows] {
            return Err(ctx.mismatch(format!("layernorm statistics {ss:?} for {rows} rows")));
        }
        ctx.check_grad(&dy, &xs)?;
        let outs = vec![Out::Zeros(xs), Out::Zeros(vec![cols]), Out::Zeros(vec![cols])];
        let ins = [x.operand(), g.operand(), stats.operand(), dy.operand()];
        let [dx, dg, db] = take(ctx.backend.launch(&Call::LayerNormBackward { cols }, &ins, outs)?)?;
        grads.add(self.weight, dg)?;
        grads.add(self.bias, db)?;
        grads.add(self.x, dx)
    }
}

/// RMSNorm with scale `weight` (`[cols]`); `rstd` is `[rows]`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RmsNorm {
    pub x: TensorId,
    pub weight: TensorId,
    pub eps: f32,
    pub rstd: TensorId,
    pub out: TensorId,
}

impl Recorder<'_> {
    /// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · weight`.
    pub fn rmsnorm(&mut self, x: TensorId, weight: TensorId, eps: f32) -> Result<TensorId> {
        let (xv, g) = (self.value(x)?, self.value(weight)?);
        let (rows, cols) = dims(xv.shape(), &[g.shape()]).map_err(|e| self.shape_err(e.to_string()))?;
        let outs = vec![Out::Zeros(xv.shape().to_vec()), Out::Zeros(vec![rows])];
        let ins = [xv.operand(), g.operand()];
        let [y, rstd] = take(self.backend().launch(&Call::RmsNorm { cols, eps }, &ins, outs)?)?;
        let (rstd_id, out) = (self.alloc(), self.alloc());
        let op = RmsNorm { x, weight, eps, rstd: rstd_id, out };
        self.record(Op::RmsNorm(op), vec![(rstd_id, rstd), (out, y)]);
        Ok(out)
    }
}

impl Rule for RmsNorm {
    fn name(&self) -> &'static str {
        "rmsnorm"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.x, self.weight]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out, self.rstd]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.x, self.weight, self.rstd]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let x = s.f32(self.x)?;
        let (rows, _) = dims(x, &[s.f32(self.weight)?])?;
        Ok(vec![Meta::f32(x.to_vec()), Meta::f32(vec![rows])])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let ((xs, x), (gs, g), (rs, rstd)) = (ctx.f32(self.x)?, ctx.f32(self.weight)?, ctx.f32(self.rstd)?);
        let (rows, cols) = dims(&xs, &[&gs]).map_err(|e| ctx.mismatch(e.to_string()))?;
        if rs != [rows] {
            return Err(ctx.mismatch(format!("rmsnorm statistics {rs:?} for {rows} rows")));
        }
        ctx.check_grad(&dy, &xs)?;
        let outs = vec![Out::Zeros(xs), Out::Zeros(vec![cols])];
        let ins = [x.operand(), g.operand(), rstd.operand(), dy.operand()];
        let [dx, dg] = take(ctx.backend.launch(&Call::RmsNormBackward { cols }, &ins, outs)?)?;
        grads.add(self.weight, dg)?;
        grads.add(self.x, dx)
    }
}
