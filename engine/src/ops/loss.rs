//! Reductions to a scalar: sum, mean squared error, and softmax
//! cross-entropy over the last dimension with integer targets.

use crate::backward::{Ctx, Grads};
use crate::ops::{rows_cols, Meta, Rule};
use crate::tensor::DType;
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

fn scalar_grad(ctx: &Ctx<'_>, dy: &Tensor) -> Result<f32> {
    match dy.values()? {
        [g] => Ok(*g),
        _ => Err(ctx.mismatch(format!("a loss gradient must be a scalar, has shape {:?}", dy.shape()))),
    }
}

/// `out = Σ x`, a scalar (summed in f64 in element order).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Sum {
    pub x: TensorId,
    pub x_shape: Vec<usize>,
    pub out: TensorId,
}

impl Recorder<'_> {
    /// The sum of every element, a scalar.
    pub fn sum(&mut self, x: TensorId) -> Result<TensorId> {
        let xv = self.value(x)?;
        let total = xv.values()?.iter().fold(0.0f64, |a, &v| a + f64::from(v)) as f32;
        let x_shape = xv.shape().to_vec();
        let out = self.alloc();
        self.record(Op::Sum(Sum { x, x_shape, out }), vec![(out, Tensor::scalar(total))]);
        Ok(out)
    }
}

impl Rule for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        Vec::new()
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        if s.f32(self.x)? != self.x_shape {
            return Err(Error::Shape(format!("records input shape {:?} for {:?}", self.x_shape, s.f32(self.x)?)));
        }
        Ok(vec![Meta::f32(Vec::new())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let g = scalar_grad(ctx, &dy)?;
        let n = self.x_shape.iter().product();
        grads.add(self.x, Tensor::new(self.x_shape.clone(), vec![g; n])?)
    }
}

/// `out = mean((pred - target)²)`, a scalar.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Mse {
    pub pred: TensorId,
    pub target: TensorId,
    pub out: TensorId,
}

impl Recorder<'_> {
    /// Mean squared error of `pred` against `target` (same shapes), a scalar.
    pub fn mse_loss(&mut self, pred: TensorId, target: Tensor) -> Result<TensorId> {
        let target = self.constant(target);
        let (pv, tv) = (self.value(pred)?, self.value(target)?);
        if pv.shape() != tv.shape() {
            return Err(self.shape_err(format!("mse of {:?} against targets {:?}", pv.shape(), tv.shape())));
        }
        let value = self.backend().mse(pv.values()?, tv.values()?)?;
        let out = self.alloc();
        self.record(Op::Mse(Mse { pred, target, out }), vec![(out, Tensor::scalar(value))]);
        Ok(out)
    }
}

impl Rule for Mse {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.pred, self.target]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.pred, self.target]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let (p, t) = (s.f32(self.pred)?, s.f32(self.target)?);
        if p != t {
            return Err(Error::Shape(format!("mse of {p:?} against {t:?}")));
        }
        Ok(vec![Meta::f32(Vec::new())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let g = scalar_grad(ctx, &dy)?;
        let ((ps, p), (_, t)) = (ctx.f32(self.pred)?, ctx.f32(self.target)?);
        let mut dpred = vec![0.0; p.len()];
        ctx.backend.mse_backward(&p, &t, g, &mut dpred)?;
        grads.add(self.pred, Tensor::new(ps, dpred)?)
    }
}

/// `out = mean over positions of -log softmax(logits)[target]`; logits
/// `[.., V]`, targets `[..]` token ids; `probs` is the softmax.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CrossEntropy {
    pub logits: TensorId,
    pub target: TensorId,
    pub probs: TensorId,
    pub out: TensorId,
}

fn ce_check(logits: &[usize], target: &[usize]) -> Result<()> {
    match logits.split_last() {
        Some((&v, lead)) if v > 0 && lead == target => Ok(()),
        _ => Err(Error::Shape(format!("cross-entropy of logits {logits:?} against targets {target:?}"))),
    }
}

impl Recorder<'_> {
    /// Mean softmax cross-entropy of `logits` `[.., V]` against token-id
    /// targets `[..]` (every position counts once).
    pub fn cross_entropy_loss(&mut self, logits: TensorId, targets: Tensor) -> Result<TensorId> {
        if targets.dtype() != DType::Ids {
            return Err(Error::Data("cross-entropy targets must be integer class ids".into()));
        }
        let target = self.constant(targets);
        let (lv, tv) = (self.value(logits)?, self.value(target)?);
        ce_check(lv.shape(), tv.shape()).map_err(|e| self.shape_err(e.to_string()))?;
        let classes = rows_cols(lv.shape()).1;
        crate::ops::embedding::check_ids(tv.ids()?, tv.shape(), classes).map_err(|e| {
            Error::Data(e.to_string().replace("token id", "target").replace("vocabulary size", "number of classes"))
        })?;
        let mut probs = vec![0.0; lv.len()];
        let value = self.backend().cross_entropy(lv.values()?, classes, tv.ids()?, &mut probs)?;
        let probs = Tensor::new(lv.shape().to_vec(), probs)?;
        let (probs_id, out) = (self.alloc(), self.alloc());
        let op = CrossEntropy { logits, target, probs: probs_id, out };
        self.record(Op::CrossEntropy(op), vec![(probs_id, probs), (out, Tensor::scalar(value))]);
        Ok(out)
    }
}

impl Rule for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.logits, self.target]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out, self.probs]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.probs, self.target]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let (l, t) = (s.f32(self.logits)?, s.ids(self.target)?);
        ce_check(l, t)?;
        Ok(vec![Meta::f32(Vec::new()), Meta::f32(l.to_vec())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let g = scalar_grad(ctx, &dy)?;
        let (ps, p) = ctx.f32(self.probs)?;
        let t = ctx.get(self.target)?;
        ce_check(&ps, &t.shape).map_err(|e| ctx.mismatch(e.to_string()))?;
        let classes = rows_cols(&ps).1;
        crate::ops::embedding::check_ids(t.ids()?, &t.shape, classes)?;
        let mut dlogits = vec![0.0; p.len()];
        ctx.backend.cross_entropy_backward(&p, classes, t.ids()?, g, &mut dlogits)?;
        grads.add(self.logits, Tensor::new(ps, dlogits)?)
    }
}
