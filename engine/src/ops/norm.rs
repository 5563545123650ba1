//! LayerNorm and RMSNorm over the last dimension of an N-d input.

use baton_kernels::norm as kernel;

use crate::backward::{Ctx, Grads};
use crate::ops::{rows_cols, Meta, Rule};
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
        let (mut y, mut stats) = (vec![0.0; rows * cols], vec![0.0; 2 * rows]);
        self.backend().layernorm(xv.values()?, g.values()?, b.values()?, cols, eps, &mut y, &mut stats)?;
        let y = Tensor::new(xv.shape().to_vec(), y)?;
        let (stats_id, out) = (self.alloc(), self.alloc());
        let op = LayerNorm { x, weight, bias, eps, stats: stats_id, out };
        self.record(Op::LayerNorm(op), vec![(stats_id, Tensor::new(vec![2, rows], stats)?), (out, y)]);
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
        let (mut dx, mut dg, mut db) = (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
        ctx.backend.layernorm_backward(&x, &g, &stats, dy.values()?, cols, &mut dx, &mut dg, &mut db, false)?;
        grads.add(self.weight, Tensor::new(vec![cols], dg)?)?;
        grads.add(self.bias, Tensor::new(vec![cols], db)?)?;
        grads.add(self.x, Tensor::new(xs, dx)?)
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
        let (mut y, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows]);
        kernel::rmsnorm(xv.values()?, g.values()?, cols, eps, &mut y, &mut rstd);
        let y = Tensor::new(xv.shape().to_vec(), y)?;
        let (rstd_id, out) = (self.alloc(), self.alloc());
        let op = RmsNorm { x, weight, eps, rstd: rstd_id, out };
        self.record(Op::RmsNorm(op), vec![(rstd_id, Tensor::new(vec![rows], rstd)?), (out, y)]);
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
        let (mut dx, mut dg) = (vec![0.0; rows * cols], vec![0.0; cols]);
        kernel::rmsnorm_backward(&x, &g, &rstd, dy.values()?, cols, &mut dx, &mut dg);
        grads.add(self.weight, Tensor::new(vec![cols], dg)?)?;
        grads.add(self.x, Tensor::new(xs, dx)?)
    }
}
