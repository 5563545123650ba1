//! Embedding lookup with a deterministic scatter-add backward.

use baton_kernels::embedding as kernel;

use crate::backward::{Ctx, Grads};
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
        check_ids(iv.ids()?, iv.shape(), vocab)?;
        let mut y = vec![0.0; iv.len() * dim];
        kernel::gather(tv.values()?, dim, iv.ids()?, &mut y);
        let out = self.alloc();
        self.record(Op::Embedding(Embedding { ids, table, out }), vec![(out, Tensor::new(out_shape, y)?)]);
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
        let ids_values = ids.ids()?;
        check_ids(ids_values, &ids.shape, table_shape[0])?;
        let mut dt = vec![0.0; table_shape.iter().product()];
        kernel::scatter_add(dy.values()?, table_shape[1], ids_values, &mut dt);
        grads.add(self.table, Tensor::new(table_shape, dt)?)
    }
}
