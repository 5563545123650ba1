//! Elementwise add, sub and mul with NumPy broadcasting (residuals, biases,
//! masks), and scaling by a constant.

use baton_kernels::broadcast::{self, broadcast_shape, BinaryKind};

use crate::backward::{Ctx, Grads};
use crate::ops::{Meta, Rule};
use crate::validate::Shapes;
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
        let mut y = vec![0.0; shape.iter().product()];
        broadcast::binary(kind.kernel(), av.values()?, av.shape(), bv.values()?, bv.shape(), &mut y);
        let (a_shape, b_shape) = (av.shape().to_vec(), bv.shape().to_vec());
        let out = self.alloc();
        let op = Binary { kind, a, b, a_shape, b_shape, out };
        self.record(Op::Binary(op), vec![(out, Tensor::new(shape, y)?)]);
        Ok(out)
    }
}

/// `dy` reduced to `shape` (sum over broadcast dimensions, in order).
fn reduce(dy: &[f32], dy_shape: &[usize], shape: &[usize]) -> Result<Tensor> {
    if dy_shape == shape {
        return Tensor::new(shape.to_vec(), dy.to_vec());
    }
    let mut out = vec![0.0; shape.iter().product()];
    broadcast::reduce_to(dy, dy_shape, shape, &mut out);
    Tensor::new(shape.to_vec(), out)
}

/// `dy ⊙ other` (other broadcast to dy's shape), reduced to `shape`.
fn product_grad(
    dy: &[f32],
    dy_shape: &[usize],
    other: &[f32],
    other_shape: &[usize],
    shape: &[usize],
) -> Result<Tensor> {
    let mut g = vec![0.0; dy.len()];
    broadcast::binary(BinaryKind::Mul, dy, dy_shape, other, other_shape, &mut g);
    reduce(&g, dy_shape, shape)
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
        let g = dy.values()?;
        match self.kind {
            BinaryOp::Add | BinaryOp::Sub => {
                let da = if self.a_shape == shape { dy.clone() } else { reduce(g, &shape, &self.a_shape)? };
                let mut db = if self.b_shape == shape { dy } else { reduce(g, &shape, &self.b_shape)? };
                if self.kind == BinaryOp::Sub {
                    db.values_mut()?.iter_mut().for_each(|v| *v = -*v);
                }
                grads.add(self.a, da)?;
                grads.add(self.b, db)
            }
            BinaryOp::Mul => {
                let ((_, a), (_, b)) = (ctx.f32(self.a)?, ctx.f32(self.b)?);
                if grads.wants(self.a) {
                    grads.add(self.a, product_grad(g, &shape, &b, &self.b_shape, &self.a_shape)?)?;
                }
                if grads.wants(self.b) {
                    grads.add(self.b, product_grad(g, &shape, &a, &self.a_shape, &self.b_shape)?)?;
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
        let y: Vec<f32> = xv.values()?.iter().map(|&v| v * factor).collect();
        let shape = xv.shape().to_vec();
        let out = self.alloc();
        self.record(Op::Scale(Scale { x, factor, out }), vec![(out, Tensor::new(shape, y)?)]);
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
    fn backward(&self, _: &Ctx<'_>, mut dy: Tensor, grads: &mut Grads) -> Result<()> {
        dy.values_mut()?.iter_mut().for_each(|v| *v *= self.factor);
        grads.add(self.x, dy)
    }
}
