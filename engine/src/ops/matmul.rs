//! Batched matrix products with the transposes attention needs:
//! `out[..] = op(a[..]) · op(b[..])` over equal leading (batch) dimensions.

use baton_kernels::Trans;

use crate::backward::{Ctx, Grads};
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
    x: &[f32],
    tx: bool,
    y: &[f32],
    ty: bool,
    (batch, m, k, n): (usize, usize, usize, usize),
) -> Result<Vec<f32>> {
    let mut c = vec![0.0; batch * m * n];
    for i in 0..batch {
        let (xs, ys) = (&x[i * m * k..(i + 1) * m * k], &y[i * k * n..(i + 1) * k * n]);
        backend.matmul(&mut c[i * m * n..(i + 1) * m * n], xs, trans(tx), ys, trans(ty), m, k, n, false)?;
    }
    Ok(c)
}

impl Recorder<'_> {
    /// `op(a) · op(b)` over equal leading dimensions (`ta`/`tb` transpose
    /// the last two axes of `a`/`b`).
    pub fn matmul(&mut self, a: TensorId, b: TensorId, ta: bool, tb: bool) -> Result<TensorId> {
        let (av, bv) = (self.value(a)?, self.value(b)?);
        let d = dims(av.shape(), bv.shape(), ta, tb).map_err(|e| self.shape_err(e.to_string()))?;
        let c = batched(self.backend(), av.values()?, ta, bv.values()?, tb, (d.batch, d.m, d.k, d.n))?;
        let out = self.alloc();
        self.record(Op::Matmul(Matmul { a, b, ta, tb, out }), vec![(out, Tensor::new(d.out, c)?)]);
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
        let g = dy.values()?;
        let (batch, m, k, n) = (d.batch, d.m, d.k, d.n);
        if grads.wants(self.a) {
            let da = if self.ta {
                batched(ctx.backend, &b, self.tb, g, true, (batch, k, n, m))?
            } else {
                batched(ctx.backend, g, false, &b, !self.tb, (batch, m, n, k))?
            };
            grads.add(self.a, Tensor::new(a_shape.clone(), da)?)?;
        }
        if grads.wants(self.b) {
            let db = if self.tb {
                batched(ctx.backend, g, true, &a, self.ta, (batch, n, m, k))?
            } else {
                batched(ctx.backend, &a, !self.ta, g, false, (batch, k, m, n))?
            };
            grads.add(self.b, Tensor::new(b_shape, db)?)?;
        }
        Ok(())
    }
}
