//! Dropout with masks from a counter-based RNG keyed by the run's seed and
//! the output tensor's id: every worker, and a recompute, draws the same
//! mask, and backward redraws it rather than saving it.

use crate::device::Call;

use crate::backward::{Ctx, Grads};
use crate::ops::{Meta, Rule};
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// `out = x ⊙ mask / (1 - p)`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Dropout {
    pub x: TensorId,
    pub p: f32,
    pub seed: u64,
    pub out: TensorId,
}

/// The mask's key: the output id, which means the same on every worker.
fn key(id: TensorId) -> u64 {
    let hi = (u64::from(id.step) << 32) | u64::from(id.micro);
    let lo = (u64::from(id.layer) << 32) | u64::from(id.slot);
    hi.rotate_left(17) ^ lo.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn check_p(p: f32) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::Model(format!("dropout probability {p} is not in [0, 1)")))
    }
}

impl Recorder<'_> {
    /// Dropout with rate `p`, masks keyed by the recorder's seed; the
    /// identity in evaluation mode.
    pub fn dropout(&mut self, x: TensorId, p: f32) -> Result<TensorId> {
        check_p(p)?;
        if self.inference() {
            return Ok(x);
        }
        let out = self.alloc();
        let seed = self.seed();
        let xv = self.value(x)?;
        let call = Call::Dropout { seed, key: key(out), p };
        let y = self.backend().launch1(&call, &[xv.operand()], xv.shape().to_vec())?;
        self.record(Op::Dropout(Dropout { x, p, seed, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
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
        check_p(self.p).map_err(|e| Error::Shape(e.to_string()))?;
        Ok(vec![Meta::f32(s.f32(self.x)?.to_vec())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let call = Call::Dropout { seed: self.seed, key: key(self.out), p: self.p };
        let dx = ctx.backend.launch1(&call, &[dy.operand()], dy.shape().to_vec())?;
        grads.add(self.x, dx)
    }
}
