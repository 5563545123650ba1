//! Layout ops: reshape, swapping two axes, and slicing / joining the last
//! axis (attention's head split and qkv split).

use baton_kernels::layout;

use crate::backward::{Ctx, Grads};
use crate::device::{Call, Operand};
use crate::ops::{rows_cols, Meta, Rule};
use crate::validate::{numel, Shapes};
use crate::Backend;
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// The same elements under another shape.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Reshape {
    pub x: TensorId,
    pub from: Vec<usize>,
    pub to: Vec<usize>,
    pub out: TensorId,
}

impl Recorder<'_> {
    /// `x` with shape `to` (same element count).
    pub fn reshape(&mut self, x: TensorId, to: &[usize]) -> Result<TensorId> {
        let xv = self.value(x)?;
        let from = xv.shape().to_vec();
        let y = xv.clone().reshaped(to.to_vec()).map_err(|e| self.shape_err(format!("reshape: {e}")))?;
        let out = self.alloc();
        self.record(Op::Reshape(Reshape { x, from, to: to.to_vec(), out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
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
        let x = s.get(self.x)?;
        if x.shape != self.from || numel(&self.from)? != numel(&self.to)? {
            return Err(Error::Shape(format!("reshape {:?} -> {:?} of a {:?} tensor", self.from, self.to, x.shape)));
        }
        Ok(vec![Meta { shape: self.to.clone(), dtype: x.dtype }])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        ctx.check_grad(&dy, &self.to)?;
        grads.add(self.x, dy.reshaped(self.from.clone())?)
    }
}

/// `x` with axes `d0 < d1` swapped.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Transpose {
    pub x: TensorId,
    pub d0: u32,
    pub d1: u32,
    pub out: TensorId,
}

fn axes(shape: &[usize], d0: u32, d1: u32) -> Result<(usize, usize)> {
    let (d0, d1) = (d0.min(d1) as usize, d0.max(d1) as usize);
    if d0 == d1 || d1 >= shape.len() {
        return Err(Error::Shape(format!("transpose of axes {d0}, {d1} of a {shape:?} tensor")));
    }
    Ok((d0, d1))
}

fn swap(backend: &Backend, x: Operand<'_>, shape: &[usize], d0: usize, d1: usize) -> Result<Tensor> {
    let call = Call::Transpose { shape: shape.to_vec(), d0, d1 };
    backend.launch1(&call, &[x], layout::swapped(shape, d0, d1))
}

impl Recorder<'_> {
    /// `x` with axes `d0` and `d1` swapped.
    pub fn transpose(&mut self, x: TensorId, d0: usize, d1: usize) -> Result<TensorId> {
        let xv = self.value(x)?;
        let (a, b) = axes(xv.shape(), d0 as u32, d1 as u32).map_err(|e| self.shape_err(e.to_string()))?;
        let y = swap(self.backend(), xv.operand(), xv.shape(), a, b)?;
        let out = self.alloc();
        self.record(Op::Transpose(Transpose { x, d0: a as u32, d1: b as u32, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
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
        let x = s.f32(self.x)?;
        let (a, b) = axes(x, self.d0, self.d1)?;
        Ok(vec![Meta::f32(layout::swapped(x, a, b))])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let (a, b) = axes(dy.shape(), self.d0, self.d1).map_err(|e| ctx.mismatch(e.to_string()))?;
        grads.add(self.x, swap(ctx.backend, dy.operand(), dy.shape(), a, b)?)
    }
}

/// Columns `start..start + len` of the last axis.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Narrow {
    pub x: TensorId,
    pub x_shape: Vec<usize>,
    pub start: usize,
    pub len: usize,
    pub out: TensorId,
}

fn narrowed(shape: &[usize], start: usize, len: usize) -> Result<Vec<usize>> {
    match shape.split_last() {
        Some((&cols, lead)) if len > 0 && start.checked_add(len).is_some_and(|end| end <= cols) => {
            Ok(lead.iter().copied().chain([len]).collect())
        }
        _ => Err(Error::Shape(format!("columns {start}..{start}+{len} of a {shape:?} tensor"))),
    }
}

impl Recorder<'_> {
    /// Splits the last axis into parts of the given widths (q, k, v).
    pub fn split(&mut self, x: TensorId, widths: &[usize]) -> Result<Vec<TensorId>> {
        let mut start = 0;
        let mut parts = Vec::with_capacity(widths.len());
        for &len in widths {
            parts.push(self.narrow(x, start, len)?);
            start += len;
        }
        Ok(parts)
    }

    /// Columns `start..start + len` of the last axis.
    pub fn narrow(&mut self, x: TensorId, start: usize, len: usize) -> Result<TensorId> {
        let xv = self.value(x)?;
        let x_shape = xv.shape().to_vec();
        let shape = narrowed(&x_shape, start, len).map_err(|e| self.shape_err(e.to_string()))?;
        let call = Call::Narrow { cols: rows_cols(&x_shape).1, start, len };
        let y = self.backend().launch1(&call, &[xv.operand()], shape)?;
        let out = self.alloc();
        self.record(Op::Narrow(Narrow { x, x_shape, start, len, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Narrow {
    fn name(&self) -> &'static str {
        "narrow"
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
        Ok(vec![Meta::f32(narrowed(&self.x_shape, self.start, self.len)?)])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let shape = narrowed(&self.x_shape, self.start, self.len).map_err(|e| ctx.mismatch(e.to_string()))?;
        ctx.check_grad(&dy, &shape)?;
        let call = Call::NarrowBackward { cols: rows_cols(&self.x_shape).1, start: self.start, len: self.len };
        let dx = ctx.backend.launch1(&call, &[dy.operand()], self.x_shape.clone())?;
        grads.add(self.x, dx)
    }
}

/// Joins tensors with equal leading dimensions along the last axis.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Concat {
    pub xs: Vec<TensorId>,
    /// Last-axis width of each part, in order.
    pub widths: Vec<usize>,
    pub out: TensorId,
}

fn joined(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let Some((first, rest)) = shapes.split_first() else {
        return Err(Error::Shape("concat of no tensors".into()));
    };
    let lead = &first[..first.len().saturating_sub(1)];
    let mut cols = 0usize;
    for s in shapes {
        match s.split_last() {
            Some((&c, l)) if l == lead => {
                cols = cols.checked_add(c).ok_or_else(|| Error::Shape("concat too wide".into()))?
            }
            _ => return Err(Error::Shape(format!("concat of {first:?} and {rest:?}: leading dimensions differ"))),
        }
    }
    Ok(lead.iter().copied().chain([cols]).collect())
}

impl Recorder<'_> {
    /// `xs` joined along the last axis.
    pub fn concat(&mut self, xs: &[TensorId]) -> Result<TensorId> {
        let values: Vec<&Tensor> = xs.iter().map(|&x| self.value(x)).collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = values.iter().map(|v| v.shape()).collect();
        let shape = joined(&shapes).map_err(|e| self.shape_err(e.to_string()))?;
        let widths: Vec<usize> = shapes.iter().map(|s| rows_cols(s).1).collect();
        let parts: Vec<Operand<'_>> = values.iter().map(|v| v.operand()).collect();
        let y = self.backend().launch1(&Call::Concat { widths: widths.clone() }, &parts, shape)?;
        let out = self.alloc();
        self.record(Op::Concat(Concat { xs: xs.to_vec(), widths, out }), vec![(out, y)]);
        Ok(out)
    }
}

impl Rule for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn inputs(&self) -> Vec<TensorId> {
        self.xs.clone()
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        Vec::new()
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        let shapes: Vec<&[usize]> = self.xs.iter().map(|&x| s.f32(x)).collect::<Result<_>>()?;
        let widths: Vec<usize> = shapes.iter().map(|s| rows_cols(s).1).collect();
        if widths != self.widths {
            return Err(Error::Shape(format!("records widths {:?} for parts of widths {widths:?}", self.widths)));
        }
        Ok(vec![Meta::f32(joined(&shapes)?)])
    }
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let (rows, cols) = rows_cols(dy.shape());
        if self.widths.len() != self.xs.len() || self.widths.iter().sum::<usize>() != cols {
            return Err(ctx.mismatch(format!("concat of widths {:?} for a gradient of {cols} columns", self.widths)));
        }
        let lead = &dy.shape()[..dy.shape().len() - 1];
        let _ = rows;
        let mut start = 0;
        for (&x, &width) in self.xs.iter().zip(&self.widths) {
            let call = Call::Narrow { cols, start, len: width };
            let part = ctx.backend.launch1(&call, &[dy.operand()], lead.iter().copied().chain([width]).collect())?;
            grads.add(x, part)?;
            start += width;
        }
        Ok(())
    }
}
