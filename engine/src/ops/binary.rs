//! Elementwise add, sub and mul with NumPy broadcasting (residuals, biases,
//! masks), and scaling by a constant.

use baton_kernels::broadcast::{broadcast_shape, BinaryKind};

use crate::backward::{Ctx, Grads};
use crate::device::{Call, Operand};
use crate::ops::{Meta, Rule};
use crate::validate::Shapes;
use crate::Backend;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// Which elementwise operation a [`Binary`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
}

impl BinaryOp {
    fn kernel(self) -> BinaryKind {
        match self {
            BinaryOp::Add => BinaryKind::Add,
            BinaryOp::Sub => BinaryKind::Sub,
            BinaryOp::Mul => BinaryKind::Mul,
        }
    }
}

/// `out = a ∘ b`, broadcast. The operands' shapes are recorded because
/// add and sub save no tensor but their backward reduces to those shapes.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Binary {
    pub kind: BinaryOp,
    pub a: TensorId,
    pub b: TensorId,
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
    pub out: TensorId,
}

fn out_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    broadcast_shape(a, b).ok_or_else(|| Error::Shape(format!("shapes {a:?} and {b:?} do not broadcast")))
}

impl Recorder<'_> {
    /// `a + b` with broadcasting.
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b` with broadcasting.
    pub fn sub(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a * b` with broadcasting.
    pub fn mul(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.binary(BinaryOp::Mul, a, b)
    }

    fn binary(&mut self, kind: BinaryOp, a: TensorId, b: TensorId) -> Result<TensorId> {
        let (av, bv) = (self.value(a)?, self.value(b)?);
        let shape = out_shape(av.shape(), bv.shape()).map_err(|e| self.shape_err(e.to_string()))?;
        let (a_shape, b_shape) = (av.shape().to_vec(), bv.shape().to_vec());
        let call = Call::Binary { kind: kind.kernel(), a_shape: a_shape.clone(), b_shape: b_shape.clone() };
        let y = self.backend().launch1(&call, &[av.operand(), bv.operand()], shape)?;
        let out = self.alloc();
        let op = Binary { kind, a, b, a_shape, b_shape, out };
        self.record(Op::Binary(op), vec![(out, y)]);
        Ok(out)
    }
}

/// `dy` (of `dy_shape`, not equal to `shape`) reduced to `shape` (sum over
/// broadcast dimensions, in order).
fn reduce(backend: &Backend, dy: Operand<'_>, dy_shape: &[usize], shape: &[usize]) -> Result<Tensor> {
    let call = Call::ReduceTo { from: dy_shape.to_vec(), to: shape.to_vec() };
    backend.launch1(&call, &[dy], shape.to_vec())
}

/// `dy ⊙ other` (other broadcast to dy's shape), reduced to `shape`.
fn product_grad(
    backend: &Backend,
    dy: &Tensor,
    other: Operand<'_>,
    other_shape: &[usize],
    shape: &[usize],
) -> Result<Tensor> {
    let call = Call::Binary { kind: BinaryKind::Mul, a_shape: dy.shape().to_vec(), b_shape: other_shape.to_vec() };
    let g = backend.launch1(&call, &[dy.operand(), other], dy.shape().to_vec())?;
    if dy.shape() == shape {
        return Ok(g);
    }
    reduce(backend, g.operand(), dy.shape(), shape)
}

impl Rule for Binary {
    fn name(&self) -> &'static str {
        match self.kind {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
        }
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.a, self.b]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        match self.kind {
            BinaryOp::Mul => vec![self.a, self.b],
            BinaryOp::Add | BinaryOp::Sub => Vec::new(),
        }
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let (a, b) = (s.f32(self.a)?, s.f32(self.b)?);
        if a != self.a_shape || b != self.b_shape {
            return Err(Error::Shape(format!(
                "records operand shapes {:?}, {:?} for {a:?}, {b:?}",
                self.a_shape, self.b_shape
            )));
        }
        Ok(vec![Meta::f32(out_shape(a, b)?)])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let shape = out_shape(&self.a_shape, &self.b_shape).map_err(|e| ctx.mismatch(e.to_string()))?;
        ctx.check_grad(&dy, &shape)?;
        let backend = ctx.backend;
        match self.kind {
            BinaryOp::Add | BinaryOp::Sub => {
                let g = dy.operand();
                let da = if self.a_shape == shape { dy.clone() } else { reduce(backend, g, &shape, &self.a_shape)? };
                let db = if self.b_shape == shape { dy.clone() } else { reduce(backend, g, &shape, &self.b_shape)? };
                let db = if self.kind == BinaryOp::Sub {
                    backend.launch1(&Call::Scale { factor: -1.0 }, &[db.operand()], self.b_shape.clone())?
                } else {
                    db
                };
                grads.add(self.a, da)?;
                grads.add(self.b, db)
            }
            BinaryOp::Mul => {
                let ((_, a), (_, b)) = (ctx.f32(self.a)?, ctx.f32(self.b)?);
                if grads.wants(self.a) {
                    grads.add(self.a, product_grad(backend, &dy, b.operand(), &self.b_shape, &self.a_shape)?)?;
                }
                if grads.wants(self.b) {
                    grads.add(self.b, product_grad(backend, &dy, a.operand(), &self.a_shape, &self.b_shape)?)?;
                }
                Ok(())
            }
        }
    }
}

/// `out = factor · x`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Scale {
    pub x: TensorId,
    pub factor: f32,
    pub out: TensorId,
}

impl Recorder<'_> {
    /// `factor · x`.
    pub fn scale(&mut self, x: TensorId, factor: f32) -> Result<TensorId> {
        let xv = self.value(x)?;
        let y = self.backend().launch1(&Call::Scale { factor }, &[xv.operand()], xv.shape().to_vec())?;
        let out = self.alloc();
        self.record(Op::Scale(Scale { x, factor, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Scale {
    fn name(&self) -> &'static str {
        "scale"
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
        Ok(vec![Meta::f32(s.f32(self.x)?.to_vec())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let dx = ctx.backend.launch1(&Call::Scale { factor: self.factor }, &[dy.operand()], dy.shape().to_vec())?;
        grads.add(self.x, dx)
    }
}
