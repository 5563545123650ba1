//! Elementwise nonlinearities: relu, exact gelu, tanh, silu.

use crate::backward::{Ctx, Grads};
use crate::device::Call;
use crate::ops::{Meta, Rule};
use crate::validate::Shapes;
use crate::{Op, Recorder, Result, Tensor, TensorId};

/// Elementwise nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Activation {
    Relu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    Tanh,
    /// `x · sigmoid(x)`.
    Silu,
}

impl Activation {
    /// Whether backward reads the forward input (else its output).
    fn needs_input(self) -> bool {
        matches!(self, Activation::Gelu | Activation::Silu)
    }
}

/// `out = act(x)`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ActivationOp {
    pub kind: Activation,
    pub x: TensorId,
    pub out: TensorId,
}

impl Recorder<'_> {
    /// `act(x)` elementwise.
    pub fn activation(&mut self, x: TensorId, kind: Activation) -> Result<TensorId> {
        let xv = self.value(x)?;
        let y = self.backend().launch1(&Call::Act { kind }, &[xv.operand()], xv.shape().to_vec())?;
        let out = self.alloc();
        self.record(Op::Activation(ActivationOp { kind, x, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for ActivationOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Tanh => "tanh",
            Activation::Silu => "silu",
        }
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.x]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![if self.kind.needs_input() { self.x } else { self.out }]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        Ok(vec![Meta::f32(s.f32(self.x)?.to_vec())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let (shape, saved) = ctx.f32(self.saved()[0])?;
        ctx.check_grad(&dy, &shape)?;
        let call = Call::ActBackward { kind: self.kind };
        let dx = ctx.backend.launch1(&call, &[saved.operand(), dy.operand()], shape)?;
        grads.add(self.x, dx)
    }
}
