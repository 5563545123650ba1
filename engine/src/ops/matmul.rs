//! Batched matrix products with the transposes attention needs:
//! `out[..] = op(a[..]) · op(b[..])` over equal leading (batch) dimensions.

use baton_kernels::Trans;

use crate::backward::{Ctx, Grads};
use crate::device::{Call, Operand};
use crate::ops::{Meta, Rule};
use crate::validate::{numel, Shapes};
use crate::{Error, Op, Recorder, Result, Tensor, TensorId};

/// `a` is `[.., m, k]` (`[.., k, m]` when `ta`), `b` `[.., k, n]` (`[.., n, k]`
/// when `tb`), with equal batch dimensions; out is `[.., m, n]`.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Matmul {
    pub a: TensorId,
    pub b: TensorId,
    pub ta: bool,
    pub tb: bool,
    pub out: TensorId,
}

/// Batch count and (m, k, n) of a product, or what does not fit.
struct Dims {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    out: Vec<usize>,
}

fn dims(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<Dims> {
    if a.len() < 2 || a.len() != b.len() || a[..a.len() - 2] != b[..b.len() - 2] {
        return Err(Error::Shape(format!("matmul of {a:?} and {b:?}: need equal batch dimensions and rank >= 2")));
    }
    let r = a.len();
    let (m, ka) = if ta { (a[r - 1], a[r - 2]) } else { (a[r - 2], a[r - 1]) };
    let (kb, n) = if tb { (b[r - 1], b[r - 2]) } else { (b[r - 2], b[r - 1]) };
    if ka != kb {
        return Err(Error::Shape(format!(
            "matmul of {a:?} and {b:?} (transposed: {ta}, {tb}): inner sizes {ka} and {kb}"
        )));
    }
    let lead = &a[..r - 2];
    let out: Vec<usize> = lead.iter().copied().chain([m, n]).collect();
    numel(&out)?;
    Ok(Dims { batch: lead.iter().product(), m, k: ka, n, out })
}

fn trans(t: bool) -> Trans {
    if t {
        Trans::Yes
    } else {
        Trans::No
    }
}

/// Runs `batch` products `c[i] = op(x[i]) op(y[i])` of the given sizes.
#[allow(clippy::too_many_arguments)]
fn batched(
    backend: &crate::Backend,
    x: Operand<'_>,
    tx: bool,
    y: Operand<'_>,
    ty: bool,
    (batch, m, k, n): (usize, usize, usize, usize),
    shape: Vec<usize>,
) -> Result<Tensor> {
    let call = Call::Matmul { ta: trans(tx), tb: trans(ty), batch, m, k, n, accumulate: false };
    backend.launch1(&call, &[x, y], shape)
}

impl Recorder<'_> {
    /// `op(a) · op(b)` over equal leading dimensions (`ta`/`tb` transpose
    /// the last two axes of `a`/`b`).
    pub fn matmul(&mut self, a: TensorId, b: TensorId, ta: bool, tb: bool) -> Result<TensorId> {
        let (av, bv) = (self.value(a)?, self.value(b)?);
        let d = dims(av.shape(), bv.shape(), ta, tb).map_err(|e| self.shape_err(e.to_string()))?;
        let c = batched(self.backend(), av.operand(), ta, bv.operand(), tb, (d.batch, d.m, d.k, d.n), d.out)?;
        let out = self.alloc();
        self.record(Op::Matmul(Matmul { a, b, ta, tb, out }), vec![(out, c)]);
        Ok(out)
    }
}

impl Rule for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> Vec<TensorId> {
        vec![self.a, self.b]
    }
    fn outputs(&self) -> Vec<TensorId> {
        vec![self.out]
    }
    fn saved(&self) -> Vec<TensorId> {
        vec![self.a, self.b]
    }
    fn infer(&self, s: &Shapes) -> Result<Vec<Meta>> {
        Ok(vec![Meta::f32(dims(s.f32(self.a)?, s.f32(self.b)?, self.ta, self.tb)?.out)])
    }
    /// With C = op(A) op(B): d op(A) = dC op(B)ᵀ and d op(B) = op(A)ᵀ dC,
    /// written in each operand's stored layout.
    fn backward(&self, ctx: &Ctx<'_>, dy: Tensor, grads: &mut Grads) -> Result<()> {
        let ((a_shape, a), (b_shape, b)) = (ctx.f32(self.a)?, ctx.f32(self.b)?);
        let d = dims(&a_shape, &b_shape, self.ta, self.tb).map_err(|e| ctx.mismatch(e.to_string()))?;
        ctx.check_grad(&dy, &d.out)?;
        let (g, a, b) = (dy.operand(), a.operand(), b.operand());
        let (batch, m, k, n) = (d.batch, d.m, d.k, d.n);
        if grads.wants(self.a) {
            let da = if self.ta {
                batched(ctx.backend, b, self.tb, g, true, (batch, k, n, m), a_shape)?
            } else {
                batched(ctx.backend, g, false, b, !self.tb, (batch, m, n, k), a_shape)?
            };
            grads.add(self.a, da)?;
        }
        if grads.wants(self.b) {
            let db = if self.tb {
                batched(ctx.backend, g, true, a, self.ta, (batch, n, m, k), b_shape)?
            } else {
                batched(ctx.backend, a, !self.ta, g, false, (batch, k, m, n), b_shape)?
            };
            grads.add(self.b, db)?;
        }
        Ok(())
    }
}
