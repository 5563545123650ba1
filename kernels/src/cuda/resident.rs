//! GPU versions of the layout, broadcast, embedding, dropout and SiLU
//! kernels, on resident buffers: same arguments and semantics as the CPU
//! functions in `layout`, `broadcast`, `embedding`, `dropout` and
//! `activation`. Every length is checked before anything is queued.

use super::check::{dim, ensure, eq, invalid};
use super::kernel::{Arg, Kernel, Shape};
use super::{Gpu, GpuBuf, GpuU32Buf};
use crate::broadcast::{broadcast_shape, BinaryKind};
use crate::Result;

/// Largest rank of a broadcast on the GPU.
const RANK: usize = 6;

/// `shape` padded with leading 1s to [`RANK`] dims.
fn padded(op: &str, shape: &[usize]) -> Result<[usize; RANK]> {
    ensure(shape.len() <= RANK, op, || format!("rank {} > {RANK} is not supported on the GPU", shape.len()))?;
    let mut out = [1usize; RANK];
    out[RANK - shape.len()..].copy_from_slice(shape);
    Ok(out)
}

/// Row-major strides of `shape` (padded) against `out` dims, 0 where
/// `shape` broadcasts (its dim is 1 and the output's is not).
fn strides(op: &str, shape: &[usize; RANK], out: &[usize; RANK]) -> Result<[u32; RANK]> {
    let mut s = [0u32; RANK];
    let mut step = 1usize;
    for d in (0..RANK).rev() {
        s[d] = if shape[d] == 1 && out[d] != 1 { 0 } else { dim(op, step)? };
        step *= shape[d];
    }
    Ok(s)
}

fn u32s(op: &str, v: &[usize; RANK]) -> Result<[u32; RANK]> {
    let mut out = [0u32; RANK];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = dim(op, x)?;
    }
    Ok(out)
}

impl Gpu {
    /// [`crate::broadcast::binary`] for rank <= 6.
    pub fn binary(
        &self,
        kind: BinaryKind,
        a: &GpuBuf,
        a_shape: &[usize],
        b: &GpuBuf,
        b_shape: &[usize],
        out: &mut GpuBuf,
    ) -> Result<()> {
        const OP: &str = "binary";
        let shape = broadcast_shape(a_shape, b_shape).ok_or_else(|| invalid(OP, "shapes do not broadcast"))?;
        eq(OP, ("a.len()", a.len()), ("a_shape", a_shape.iter().product()))?;
        eq(OP, ("b.len()", b.len()), ("b_shape", b_shape.iter().product()))?;
        eq(OP, ("out.len()", out.len()), ("shape", shape.iter().product()))?;
        let o = padded(OP, &shape)?;
        let (sa, sb) = (strides(OP, &padded(OP, a_shape)?, &o)?, strides(OP, &padded(OP, b_shape)?, &o)?);
        let (n, dims) = (dim(OP, out.len())?, u32s(OP, &o)?);
        let kind = match kind {
            BinaryKind::Add => 0,
            BinaryKind::Sub => 1,
            BinaryKind::Mul => 2,
        };
        let mut args =
            vec![Arg::In(&a.slice), Arg::In(&b.slice), Arg::Out(&mut out.slice), Arg::U32(n), Arg::U32(kind)];
        args.extend(dims.iter().chain(&sa).chain(&sb).map(|&v| Arg::U32(v)));
        self.launch(Kernel::Binary, Shape::threads(n), &mut args)
    }

    /// [`crate::broadcast::expand`] for rank <= 6.
    pub fn expand(&self, x: &GpuBuf, shape: &[usize], out_shape: &[usize], out: &mut GpuBuf) -> Result<()> {
        const OP: &str = "expand";
        ensure(broadcast_shape(shape, out_shape).as_deref() == Some(out_shape), OP, || "shapes".into())?;
        eq(OP, ("x.len()", x.len()), ("shape", shape.iter().product()))?;
        eq(OP, ("out.len()", out.len()), ("out_shape", out_shape.iter().product()))?;
        let o = padded(OP, out_shape)?;
        let (sx, dims, n) = (strides(OP, &padded(OP, shape)?, &o)?, u32s(OP, &o)?, dim(OP, out.len())?);
        let mut args = vec![Arg::In(&x.slice), Arg::Out(&mut out.slice), Arg::U32(n)];
        args.extend(dims.iter().chain(&sx).map(|&v| Arg::U32(v)));
        self.launch(Kernel::Expand, Shape::threads(n), &mut args)
    }

    /// [`crate::broadcast::reduce_to`] for rank <= 6 (overwrites `out`).
    pub fn reduce_to(&self, grad: &GpuBuf, grad_shape: &[usize], shape: &[usize], out: &mut GpuBuf) -> Result<()> {
        const OP: &str = "reduce_to";
        ensure(broadcast_shape(grad_shape, shape).as_deref() == Some(grad_shape), OP, || "shapes".into())?;
        eq(OP, ("grad.len()", grad.len()), ("grad_shape", grad_shape.iter().product()))?;
        eq(OP, ("out.len()", out.len()), ("shape", shape.iter().product()))?;
        let (g, s) = (padded(OP, grad_shape)?, padded(OP, shape)?);
        let reduced = (0..RANK).filter(|&d| s[d] == 1 && g[d] != 1).fold(0u32, |m, d| m | (1 << d));
        let count: usize = (0..RANK).filter(|&d| reduced & (1 << d) != 0).map(|d| g[d]).product();
        let (n, count, dims) = (dim(OP, out.len())?, dim(OP, count)?, u32s(OP, &g)?);
        let mut args = vec![Arg::In(&grad.slice), Arg::Out(&mut out.slice), Arg::U32(n), Arg::U32(count)];
        args.push(Arg::U32(reduced));
        args.extend(dims.iter().map(|&v| Arg::U32(v)));
        self.launch(Kernel::ReduceTo, Shape::threads(n), &mut args)
    }

    /// `y = f · x` (out of place).
    pub fn scale_into(&self, x: &GpuBuf, f: f32, y: &mut GpuBuf) -> Result<()> {
        eq("scale_into", ("x.len()", x.len()), ("y.len()", y.len()))?;
        let n = dim("scale_into", y.len())?;
        let args = &mut [Arg::In(&x.slice), Arg::F32(f), Arg::Out(&mut y.slice), Arg::U32(n)];
        self.launch(Kernel::ScaleInto, Shape::threads(n), args)
    }

    /// [`crate::activation::silu`].
    pub fn silu(&self, x: &GpuBuf, y: &mut GpuBuf) -> Result<()> {
        self.map1(Kernel::Silu, x, y)
    }

    /// [`crate::activation::silu_backward`] (from the forward input).
    pub fn silu_backward(&self, x: &GpuBuf, dy: &GpuBuf, dx: &mut GpuBuf) -> Result<()> {
        self.map2(Kernel::SiluBackward, x, dy, dx)
    }

    /// [`crate::embedding::gather`]: rows of `table` (`[vocab, dim]`) by id.
    pub fn gather(&self, table: &GpuBuf, d: usize, ids: &GpuU32Buf, y: &mut GpuBuf) -> Result<()> {
        const OP: &str = "embedding";
        let vocab = super::check::rows(OP, "table", table.len(), d)?;
        eq(OP, ("y.len()", y.len()), ("ids*dim", ids.len() * d))?;
        ensure(ids.max.is_none_or(|m| (m as usize) < vocab), OP, || format!("an id is not below {vocab}"))?;
        let (v, dd, n) = (dim(OP, vocab)?, dim(OP, d)?, dim(OP, y.len())?);
        let args = &mut [
            Arg::In(&table.slice),
            Arg::U32(v),
            Arg::U32(dd),
            Arg::Idx(&ids.slice),
            Arg::U32(n),
            Arg::Out(&mut y.slice),
        ];
        self.launch(Kernel::Gather, Shape::threads(n), args)
    }

    /// [`crate::embedding::scatter_add`] into a table of zeros (`dtable` is
    /// overwritten): one thread per table element, positions in order.
    pub fn scatter_add(&self, dy: &GpuBuf, d: usize, ids: &GpuU32Buf, dtable: &mut GpuBuf) -> Result<()> {
        const OP: &str = "embedding_backward";
        let vocab = super::check::rows(OP, "dtable", dtable.len(), d)?;
        eq(OP, ("dy.len()", dy.len()), ("ids*dim", ids.len() * d))?;
        ensure(ids.max.is_none_or(|m| (m as usize) < vocab), OP, || format!("an id is not below {vocab}"))?;
        let (dd, count, n) = (dim(OP, d)?, dim(OP, ids.len())?, dim(OP, dtable.len())?);
        let args = &mut [
            Arg::In(&dy.slice),
            Arg::U32(dd),
            Arg::Idx(&ids.slice),
            Arg::U32(count),
            Arg::U32(n),
            Arg::Out(&mut dtable.slice),
        ];
        self.launch(Kernel::ScatterAdd, Shape::threads(n), args)
    }

    /// [`crate::dropout::apply`]: the same counter-based mask, bit for bit.
    pub fn dropout(&self, x: &GpuBuf, seed: u64, key: u64, p: f32, y: &mut GpuBuf) -> Result<()> {
        const OP: &str = "dropout";
        eq(OP, ("x.len()", x.len()), ("y.len()", y.len()))?;
        ensure((0.0..1.0).contains(&p), OP, || format!("p = {p} is not in [0, 1)"))?;
        let n = dim(OP, y.len())?;
        let (lo, hi) = (|v: u64| v as u32, |v: u64| (v >> 32) as u32);
        let args = &mut [
            Arg::In(&x.slice),
            Arg::U32(lo(seed)),
            Arg::U32(hi(seed)),
            Arg::U32(lo(key)),
            Arg::U32(hi(key)),
            Arg::F32(p),
            Arg::Out(&mut y.slice),
            Arg::U32(n),
        ];
        self.launch(Kernel::Dropout, Shape::threads(n), args)
    }

    /// [`crate::layout::transpose`]: swaps axes `d0 < d1` of `shape`.
    pub fn transpose(&self, x: &GpuBuf, shape: &[usize], d0: usize, d1: usize, y: &mut GpuBuf) -> Result<()> {
        const OP: &str = "transpose";
        ensure(d0 < d1 && d1 < shape.len(), OP, || format!("axes {d0}, {d1} of {shape:?}"))?;
        eq(OP, ("x.len()", x.len()), ("shape", shape.iter().product()))?;
        eq(OP, ("y.len()", y.len()), ("x.len()", x.len()))?;
        let part = |r: std::ops::Range<usize>| shape[r].iter().product::<usize>();
        let (outer, a, mid, b, inner) =
            (part(0..d0), shape[d0], part(d0 + 1..d1), shape[d1], part(d1 + 1..shape.len()));
        let mut args = vec![Arg::In(&x.slice)];
        for v in [outer, a, mid, b, inner] {
            args.push(Arg::U32(dim(OP, v)?));
        }
        let n = dim(OP, y.len())?;
        args.extend([Arg::Out(&mut y.slice), Arg::U32(n)]);
        self.launch(Kernel::Transpose, Shape::threads(n), &mut args)
    }

    /// [`crate::layout::narrow`]: columns `start..start+len` of rows of `cols`.
    pub fn narrow(&self, x: &GpuBuf, cols: usize, start: usize, len: usize, y: &mut GpuBuf) -> Result<()> {
        self.columns(Kernel::Narrow, x, cols, start, len, y, false)
    }

    /// [`crate::layout::narrow_backward`]: `dy` into those columns, zeros elsewhere.
    pub fn narrow_backward(&self, dy: &GpuBuf, cols: usize, start: usize, len: usize, dx: &mut GpuBuf) -> Result<()> {
        self.columns(Kernel::NarrowBackward, dy, cols, start, len, dx, true)
    }

    /// [`crate::layout::concat`]: parts of `widths` columns side by side.
    pub fn concat(&self, parts: &[&GpuBuf], widths: &[usize], y: &mut GpuBuf) -> Result<()> {
        const OP: &str = "concat";
        eq(OP, ("parts", parts.len()), ("widths", widths.len()))?;
        let cols: usize = widths.iter().sum();
        let rows = super::check::rows(OP, "y", y.len(), cols)?;
        let mut start = 0;
        for (part, &w) in parts.iter().zip(widths) {
            eq(OP, ("part.len()", part.len()), ("rows*width", rows * w))?;
            let (ww, cc, ss, n) = (dim(OP, w)?, dim(OP, cols)?, dim(OP, start)?, dim(OP, part.len())?);
            let args = &mut [
                Arg::In(&part.slice),
                Arg::U32(ww),
                Arg::U32(cc),
                Arg::U32(ss),
                Arg::Out(&mut y.slice),
                Arg::U32(n),
            ];
            self.launch(Kernel::Place, Shape::threads(n), args)?;
            start += w;
        }
        Ok(())
    }

    /// One thread per output element of a column slice (`wide`: the output
    /// has `cols` columns, else `len`).
    #[allow(clippy::too_many_arguments)]
    fn columns(
        &self,
        k: Kernel,
        x: &GpuBuf,
        cols: usize,
        start: usize,
        len: usize,
        y: &mut GpuBuf,
        wide: bool,
    ) -> Result<()> {
        let op = k.name();
        ensure(len > 0 && start + len <= cols, op, || format!("columns {start}..+{len} of {cols}"))?;
        let (big, small) = if wide { (y.len(), x.len()) } else { (x.len(), y.len()) };
        let rows = super::check::rows(op, "input", big, cols)?;
        eq(op, ("narrow side", small), ("rows*len", rows * len))?;
        let (c, s, l, n) = (dim(op, cols)?, dim(op, start)?, dim(op, len)?, dim(op, y.len())?);
        let args = &mut [Arg::In(&x.slice), Arg::U32(c), Arg::U32(s), Arg::U32(l), Arg::Out(&mut y.slice), Arg::U32(n)];
        self.launch(k, Shape::threads(n), args)
    }
}
