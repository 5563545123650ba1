//! GPU versions of `matmul`, `elementwise` and `activation`: same names,
//! same argument order, same semantics as the CPU kernels, on [`GpuBuf`]s.

use super::check::{self, dim, eq, mul};
use super::gemm::ColMajorGemm;
use super::kernel::{Arg, Kernel, Shape};
use super::{Gpu, GpuBuf};
use crate::matmul::Trans;
use crate::Result;

impl Gpu {
    /// [`crate::matmul()`]: `c[m×n] = op(a)·op(b)`, or `c += op(a)·op(b)`
    /// when `accumulate` (cuBLAS `sgemm`, beta 1). `k == 0` writes zeros (or
    /// leaves `c` when accumulating); `m == 0` or `n == 0` does nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        c: &mut GpuBuf,
        a: &GpuBuf,
        ta: Trans,
        b: &GpuBuf,
        tb: Trans,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "matmul";
        eq(OP, ("a.len()", a.len()), ("m*k", mul(OP, m, k)?))?;
        eq(OP, ("b.len()", b.len()), ("k*n", mul(OP, k, n)?))?;
        eq(OP, ("c.len()", c.len()), ("m*n", mul(OP, m, n)?))?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return if accumulate { Ok(()) } else { self.dev.fill_zero(&mut c.slice) };
        }
        // m, k, n > 0 and each divides a buffer length <= i32::MAX.
        let g = ColMajorGemm::for_row_major(ta, tb, m, k, n);
        self.dev.gemm(&g, &a.slice, &b.slice, &mut c.slice, accumulate)
    }

    /// [`crate::elementwise::add_bias_rows`]: `y[r*cols + c] += bias[c]`,
    /// `cols = bias.len()`.
    pub fn add_bias_rows(&self, y: &mut GpuBuf, bias: &GpuBuf) -> Result<()> {
        const OP: &str = "add_bias_rows";
        let cols = bias.len();
        if cols == 0 {
            return check::ensure(y.is_empty(), OP, || "empty bias with non-empty y".into());
        }
        check::rows(OP, "y", y.len(), cols)?;
        let (n, cols) = (dim(OP, y.len())?, dim(OP, cols)?);
        let args = &mut [Arg::Out(&mut y.slice), Arg::In(&bias.slice), Arg::U32(n), Arg::U32(cols)];
        self.launch(Kernel::AddBiasRows, Shape::threads(n), args)
    }

    /// [`crate::elementwise::sum_rows`]: `out[c] (+)= Σ_r x[r*cols + c]`,
    /// one thread per column adding rows strictly in order (the CPU's order).
    pub fn sum_rows(&self, x: &GpuBuf, cols: usize, out: &mut GpuBuf, accumulate: bool) -> Result<()> {
        const OP: &str = "sum_rows";
        eq(OP, ("out.len()", out.len()), ("cols", cols))?;
        if cols == 0 {
            return check::ensure(x.is_empty(), OP, || "cols == 0 with non-empty x".into());
        }
        let rows = dim(OP, check::rows(OP, "x", x.len(), cols)?)?;
        let cols = dim(OP, cols)?;
        let args = &mut [Arg::In(&x.slice), Arg::U32(rows), Arg::U32(cols), Arg::Out(&mut out.slice), flag(accumulate)];
        self.launch(Kernel::SumRows, Shape::threads(cols), args)
    }

    /// [`crate::elementwise::add`]: `out = a + b`.
    pub fn add(&self, a: &GpuBuf, b: &GpuBuf, out: &mut GpuBuf) -> Result<()> {
        eq("add", ("a.len()", a.len()), ("out.len()", out.len()))?;
        eq("add", ("b.len()", b.len()), ("out.len()", out.len()))?;
        let n = dim("add", out.len())?;
        let args = &mut [Arg::In(&a.slice), Arg::In(&b.slice), Arg::Out(&mut out.slice), Arg::U32(n)];
        self.launch(Kernel::Add, Shape::threads(n), args)
    }

    /// [`crate::elementwise::add_assign`]: `dst += src`.
    pub fn add_assign(&self, dst: &mut GpuBuf, src: &GpuBuf) -> Result<()> {
        eq("add_assign", ("dst.len()", dst.len()), ("src.len()", src.len()))?;
        let n = dim("add_assign", dst.len())?;
        let args = &mut [Arg::Out(&mut dst.slice), Arg::In(&src.slice), Arg::U32(n)];
        self.launch(Kernel::AddAssign, Shape::threads(n), args)
    }

    /// [`crate::elementwise::scale`]: `x *= s`.
    pub fn scale(&self, x: &mut GpuBuf, s: f32) -> Result<()> {
        let n = dim("scale", x.len())?;
        self.launch(Kernel::Scale, Shape::threads(n), &mut [Arg::Out(&mut x.slice), Arg::F32(s), Arg::U32(n)])
    }

    /// [`crate::activation::relu`]: `y = max(x, 0)`, NaN stays NaN.
    pub fn relu(&self, x: &GpuBuf, y: &mut GpuBuf) -> Result<()> {
        self.map1(Kernel::Relu, x, y)
    }

    /// [`crate::activation::relu_backward`] (uses the forward OUTPUT `y`).
    pub fn relu_backward(&self, y: &GpuBuf, dy: &GpuBuf, dx: &mut GpuBuf) -> Result<()> {
        self.map2(Kernel::ReluBackward, y, dy, dx)
    }

    /// [`crate::activation::gelu`]: exact GELU with CUDA's `erff`.
    pub fn gelu(&self, x: &GpuBuf, y: &mut GpuBuf) -> Result<()> {
        self.map1(Kernel::Gelu, x, y)
    }

    /// [`crate::activation::gelu_backward`] (uses the forward INPUT `x`).
    pub fn gelu_backward(&self, x: &GpuBuf, dy: &GpuBuf, dx: &mut GpuBuf) -> Result<()> {
        self.map2(Kernel::GeluBackward, x, dy, dx)
    }

    /// [`crate::activation::tanh`] with CUDA's `tanhf`.
    pub fn tanh(&self, x: &GpuBuf, y: &mut GpuBuf) -> Result<()> {
        self.map1(Kernel::Tanh, x, y)
    }

    /// [`crate::activation::tanh_backward`] (uses the forward OUTPUT `y`).
    pub fn tanh_backward(&self, y: &GpuBuf, dy: &GpuBuf, dx: &mut GpuBuf) -> Result<()> {
        self.map2(Kernel::TanhBackward, y, dy, dx)
    }

    /// `y[i] = f(x[i])` for an activation kernel `k`.
    pub(super) fn map1(&self, k: Kernel, x: &GpuBuf, y: &mut GpuBuf) -> Result<()> {
        eq(k.name(), ("x.len()", x.len()), ("y.len()", y.len()))?;
        let n = dim(k.name(), y.len())?;
        self.launch(k, Shape::threads(n), &mut [Arg::In(&x.slice), Arg::Out(&mut y.slice), Arg::U32(n)])
    }

    /// `dx[i] = f(s[i], dy[i])` for an activation backward kernel `k`.
    pub(super) fn map2(&self, k: Kernel, s: &GpuBuf, dy: &GpuBuf, dx: &mut GpuBuf) -> Result<()> {
        eq(k.name(), ("saved.len()", s.len()), ("dx.len()", dx.len()))?;
        eq(k.name(), ("dy.len()", dy.len()), ("dx.len()", dx.len()))?;
        let n = dim(k.name(), dx.len())?;
        let args = &mut [Arg::In(&s.slice), Arg::In(&dy.slice), Arg::Out(&mut dx.slice), Arg::U32(n)];
        self.launch(k, Shape::threads(n), args)
    }
}

/// A `bool` kernel argument (`u32` 0 or 1).
pub(crate) fn flag(b: bool) -> Arg<'static> {
    Arg::U32(u32::from(b))
}
