//! Reductions to a scalar: sum, mean squared error, and softmax
//! cross-entropy over the last dimension with integer targets.

use crate::backward::{Ctx, Grads};
use crate::device::{Call, Out};
use crate::ops::{rows_cols, take, Meta, Rule};
use crate::tensor::DType;
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

fn scalar_grad(ctx: &Ctx<'_>, dy: &Tensor) -> Result<f32> {
    // A loss's gradient is the caller's seed (a host scalar); a resident one
    // (a loss inside a larger graph) is downloaded, 4 bytes, counted.
    match dy.to_host()?.values()? {
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
        let total = self.backend().launch1(&Call::Sum, &[xv.operand()], Vec::new())?;
        let x_shape = xv.shape().to_vec();
        let out = self.alloc();
        self.record(Op::Sum(Sum { x, x_shape, out }), vec![(out, total)]);
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
        if !dy.is_empty() && dy.len() != 1 {
            return Err(ctx.mismatch(format!("a sum's gradient must be a scalar, has shape {:?}", dy.shape())));
        }
        let call = Call::Expand { from: dy.shape().to_vec(), to: self.x_shape.clone() };
        let dx = ctx.backend.launch1(&call, &[dy.operand()], self.x_shape.clone())?;
        grads.add(self.x, dx)
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
        let value = self.backend().launch1(&Call::Mse, &[pv.operand(), tv.operand()], Vec::new())?;
        let out = self.alloc();
        self.record(Op::Mse(Mse { pred, target, out }), vec![(out, value)]);
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
        let dpred = ctx.backend.launch1(&Call::MseBackward { scale: g }, &[p.operand(), t.operand()], ps)?;
        grads.add(self.pred, dpred)
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
        if tv.device_buf().is_none() {
            crate::ops::embedding::check_ids(tv.ids()?, tv.shape(), classes).map_err(|e| {
                Error::Data(e.to_string().replace("token id", "target").replace("vocabulary size", "number of classes"))
            })?;
        }
        self.make_resident(target)?;
        let (lv, tv) = (self.value(logits)?, self.value(target)?);
        let outs = vec![Out::Zeros(lv.shape().to_vec()), Out::Zeros(Vec::new())];
        let ins = [lv.operand(), tv.operand()];
        let [probs, value] = take(self.backend().launch(&Call::CrossEntropy { classes }, &ins, outs)?)?;
        let (probs_id, out) = (self.alloc(), self.alloc());
        let op = CrossEntropy { logits, target, probs: probs_id, out };
        self.record(Op::CrossEntropy(op), vec![(probs_id, probs), (out, value)]);
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
        if !t.is_ids() {
            return Err(ctx.mismatch(format!("cross-entropy targets {} hold f32 values", self.target)));
        }
        if let Ok(host) = t.ids() {
            crate::ops::embedding::check_ids(host, &t.shape, classes)?;
        }
        let call = Call::CrossEntropyBackward { classes, scale: g };
        let dlogits = ctx.backend.launch1(&call, &[p.operand(), t.operand()], ps)?;
        grads.add(self.logits, dlogits)
    }
}
