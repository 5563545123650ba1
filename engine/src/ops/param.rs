//! Parameter reads and data constants: the tape nodes that define tensors
//! without reading any.

use crate::backward::{Ctx, Grads};
use crate::ops::{Meta, Rule};
use crate::tensor::DType;
use crate::validate::Shapes;
use crate::{Result, Tensor, TensorId};

/// `out = the parameter called name`. Backward deposits `out`'s gradient
/// under `name`; the value is read from the store of whichever worker runs
/// backward, so a segment never carries parameters.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Param {
    /// Full PyTorch-style name (`layers.3.attn.qkv.weight`).
    pub name: String,
    /// Shape when recorded; backward checks the receiver's copy against it.
    pub shape: Vec<usize>,
    pub out: TensorId,
}

impl Rule for Param {
    fn name(&self) -> &'static str {
        "param"
    }
    fn inputs(&self) -> Vec<TensorId> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        Vec::new()
    }
    fn infer(&self, _: &Shapes) -> Result<Vec<Meta>> {
        Ok(vec![Meta::f32(self.shape.clone())])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        ctx.check_grad(&dy, &self.shape)?;
        grads.add_param(&self.name, dy)
    }
}

/// A data tensor carried by the segment (targets, a mask, a constant). It
/// has no gradient.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Constant {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub out: TensorId,
}

impl Rule for Constant {
    fn name(&self) -> &'static str {
        "constant"
    }
    fn inputs(&self) -> Vec<TensorId> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        Vec::new()
    }
    fn infer(&self, _: &Shapes) -> Result<Vec<Meta>> {
        Ok(vec![Meta { shape: self.shape.clone(), dtype: self.dtype }])
    }
    fn backward(&self, _: &Ctx<'_>, _: Tensor, _: &mut Grads) -> Result<()> {
        Ok(())
    }
}
