//! Embedding lookup with a deterministic scatter-add backward.

use crate::backward::{Ctx, Grads};
use crate::device::Call;
use crate::ops::{Meta, Rule};
use crate::validate::Shapes;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// `out[.., :] = table[ids[..], :]`; ids `[..]`, table `[V, D]` → `[.., D]`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Embedding {
    pub ids: TensorId,
    pub table: TensorId,
    pub out: TensorId,
}

fn shape(ids: &[usize], table: &[usize]) -> Result<Vec<usize>> {
    match *table {
        [v, d] if v > 0 && d > 0 => Ok(ids.iter().copied().chain([d]).collect()),
        _ => Err(Error::Shape(format!("embedding table must be [vocab, dim], has shape {table:?}"))),
    }
}

/// Every id below `vocab`, or an error naming the first position that is not.
pub(crate) fn check_ids(ids: &[u32], shape: &[usize], vocab: usize) -> Result<()> {
    let Some(i) = ids.iter().position(|&t| t as usize >= vocab) else {
        return Ok(());
    };
    let mut index = Vec::with_capacity(shape.len());
    let mut rest = i;
    for &d in shape.iter().rev() {
        index.push(rest % d.max(1));
        rest /= d.max(1);
    }
    index.reverse();
    Err(Error::Data(format!("token id {} at position {index:?} is not below the vocabulary size {vocab}", ids[i])))
}

impl Recorder<'_> {
    /// Rows of `table` picked by the token ids `ids`.
    pub fn embedding(&mut self, ids: TensorId, table: TensorId) -> Result<TensorId> {
        let (iv, tv) = (self.value(ids)?, self.value(table)?);
        let out_shape = shape(iv.shape(), tv.shape()).map_err(|e| self.shape_err(e.to_string()))?;
        let (vocab, dim) = (tv.shape()[0], tv.shape()[1]);
        if iv.dtype() != crate::DType::Ids {
            return Err(self.shape_err(format!("embedding ids must be token ids, {ids} holds f32 values")));
        }
        if iv.device_buf().is_none() {
            check_ids(iv.ids()?, iv.shape(), vocab)?;
        }
        self.make_resident(ids)?;
        let (iv, tv) = (self.value(ids)?, self.value(table)?);
        let y = self.backend().launch1(&Call::Gather { dim }, &[tv.operand(), iv.operand()], out_shape)?;
        let out = self.alloc();
        self.record(Op::Embedding(Embedding { ids, table, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.ids, self.table]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.ids, self.table]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        Ok(vec![Meta::f32(shape(s.ids(self.ids)?, s.f32(self.table)?)?)])
    }
    /// `dtable[id] += dy[position]` in position order.
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let ids = ctx.get(self.ids)?;
        let (table_shape, _) = ctx.f32(self.table)?;
        let out_shape = shape(&ids.shape, &table_shape).map_err(|e| ctx.mismatch(e.to_string()))?;
        ctx.check_grad(&dy, &out_shape)?;
        if !ids.is_ids() {
            return Err(ctx.mismatch(format!("embedding ids {} hold f32 values", self.ids)));
        }
        if let Ok(host_ids) = ids.ids() {
            check_ids(host_ids, &ids.shape, table_shape[0])?;
        }
        let call = Call::ScatterAdd { dim: table_shape[1] };
        let dt = ctx.backend.launch1(&call, &[dy.operand(), ids.operand()], table_shape)?;
        grads.add(self.table, dt)
    }
}
