//! GPU row kernels (softmax, RMSNorm), on-device loss values and norms,
//! strided-batched matrix products and device-to-device copies: what keeps
//! a transformer step resident. Same semantics as the CPU functions named.

use super::check::{self, dim, ensure, eq, mul};
use super::gemm::ColMajorGemm;
use super::kernel::{Arg, Kernel, Shape};
use super::{Gpu, GpuBuf, GpuU32Buf};
use crate::matmul::Trans;
use crate::threads::SUM_BLOCK;
use crate::Result;

impl Gpu {
    /// A device copy of `buf` (no host round trip).
    pub fn copy(&self, buf: &GpuBuf) -> Result<GpuBuf> {
        Ok(GpuBuf { slice: self.dev.copy(&buf.slice)? })
    }

    /// A device copy of an id buffer.
    pub fn copy_u32(&self, buf: &GpuU32Buf) -> Result<GpuU32Buf> {
        Ok(GpuU32Buf { slice: self.dev.copy(&buf.slice)?, max: buf.max })
    }

    /// Waits for every queued op, then copies an id buffer to the host.
    pub fn download_u32(&self, buf: &GpuU32Buf) -> Result<Vec<u32>> {
        self.dev.download(&buf.slice)
    }

    /// `c[i] (+)= op(a[i])·op(b[i])` for `batch` contiguous matrices: one
    /// cuBLAS strided-batched `sgemm` (attention's per-head products).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_batched(
        &self,
        c: &mut GpuBuf,
        a: &GpuBuf,
        ta: Trans,
        b: &GpuBuf,
        tb: Trans,
        (batch, m, k, n): (usize, usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "matmul_batched";
        if batch == 1 {
            return self.matmul(c, a, ta, b, tb, m, k, n, accumulate);
        }
        eq(OP, ("a.len()", a.len()), ("batch*m*k", mul(OP, batch, mul(OP, m, k)?)?))?;
        eq(OP, ("b.len()", b.len()), ("batch*k*n", mul(OP, batch, mul(OP, k, n)?)?))?;
        eq(OP, ("c.len()", c.len()), ("batch*m*n", mul(OP, batch, mul(OP, m, n)?)?))?;
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return if accumulate { Ok(()) } else { self.dev.fill_zero(&mut c.slice) };
        }
        let g = ColMajorGemm::for_row_major(ta, tb, m, k, n);
        let strides = ((m * k) as i64, (k * n) as i64, (m * n) as i64);
        self.dev.gemm_batched(&g, dim(OP, batch)?, strides, &a.slice, &b.slice, &mut c.slice, accumulate)
    }

    /// [`crate::softmax::softmax`] (one thread per row).
    pub fn softmax(&self, x: &GpuBuf, cols: usize, causal: bool, y: &mut GpuBuf) -> Result<()> {
        const OP: &str = "softmax";
        let rows = check::rows(OP, "x", x.len(), cols)?;
        eq(OP, ("y.len()", y.len()), ("x.len()", x.len()))?;
        let (r, c) = (dim(OP, rows)?, dim(OP, cols)?);
        let args =
            &mut [Arg::In(&x.slice), Arg::U32(r), Arg::U32(c), Arg::U32(u32::from(causal)), Arg::Out(&mut y.slice)];
        self.launch(Kernel::Softmax, Shape::threads(r), args)
    }

    /// [`crate::softmax::softmax_backward`] (one thread per row).
    pub fn softmax_backward(&self, y: &GpuBuf, dy: &GpuBuf, cols: usize, dx: &mut GpuBuf) -> Result<()> {
        const OP: &str = "softmax_backward";
        let rows = check::rows(OP, "y", y.len(), cols)?;
        eq(OP, ("dy.len()", dy.len()), ("y.len()", y.len()))?;
        eq(OP, ("dx.len()", dx.len()), ("y.len()", y.len()))?;
        let (r, c) = (dim(OP, rows)?, dim(OP, cols)?);
        let args = &mut [Arg::In(&y.slice), Arg::In(&dy.slice), Arg::U32(r), Arg::U32(c), Arg::Out(&mut dx.slice)];
        self.launch(Kernel::SoftmaxBackward, Shape::threads(r), args)
    }

    /// [`crate::norm::rmsnorm`] (one thread per row).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        x: &GpuBuf,
        gamma: &GpuBuf,
        cols: usize,
        eps: f32,
        y: &mut GpuBuf,
        rstd: &mut GpuBuf,
    ) -> Result<()> {
        const OP: &str = "rmsnorm";
        let rows = check::rows(OP, "x", x.len(), cols)?;
        eq(OP, ("gamma.len()", gamma.len()), ("cols", cols))?;
        eq(OP, ("y.len()", y.len()), ("x.len()", x.len()))?;
        eq(OP, ("rstd.len()", rstd.len()), ("rows", rows))?;
        let (r, c) = (dim(OP, rows)?, dim(OP, cols)?);
        let args = &mut [
            Arg::In(&x.slice),
            Arg::In(&gamma.slice),
            Arg::U32(r),
            Arg::U32(c),
            Arg::F32(eps),
            Arg::Out(&mut y.slice),
            Arg::Out(&mut rstd.slice),
        ];
        self.launch(Kernel::Rmsnorm, Shape::threads(r), args)
    }

    /// [`crate::norm::rmsnorm_backward`]: `dx` per row, `dgamma` per
    /// column with rows in order (both written).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward(
        &self,
        x: &GpuBuf,
        gamma: &GpuBuf,
        rstd: &GpuBuf,
        dy: &GpuBuf,
        cols: usize,
        dx: &mut GpuBuf,
        dgamma: &mut GpuBuf,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_backward";
        let rows = check::rows(OP, "x", x.len(), cols)?;
        eq(OP, ("gamma.len()", gamma.len()), ("cols", cols))?;
        eq(OP, ("dgamma.len()", dgamma.len()), ("cols", cols))?;
        eq(OP, ("rstd.len()", rstd.len()), ("rows", rows))?;
        eq(OP, ("dy.len()", dy.len()), ("x.len()", x.len()))?;
        eq(OP, ("dx.len()", dx.len()), ("x.len()", x.len()))?;
        let (r, c) = (dim(OP, rows)?, dim(OP, cols)?);
        let (xs, gs, ss, ds) = (&x.slice, &gamma.slice, &rstd.slice, &dy.slice);
        let dx_args = &mut [
            Arg::In(xs),
            Arg::In(gs),
            Arg::In(ss),
            Arg::In(ds),
            Arg::U32(r),
            Arg::U32(c),
            Arg::Out(&mut dx.slice),
        ];
        self.launch(Kernel::RmsnormDx, Shape::threads(r), dx_args)?;
        let dg_args =
            &mut [Arg::In(xs), Arg::In(ss), Arg::In(ds), Arg::U32(r), Arg::U32(c), Arg::Out(&mut dgamma.slice)];
        self.launch(Kernel::RmsnormDg, Shape::threads(c), dg_args)
    }

    /// `out[0] = Σ x` in f64, element order (one thread).
    pub fn sum_all(&self, x: &GpuBuf, out: &mut GpuBuf) -> Result<()> {
        self.whole(Kernel::SumAll, x, out)
    }

    /// `out[0] = ‖x‖₂`, squares summed in f64 in element order (one thread).
    pub fn norm(&self, x: &GpuBuf, out: &mut GpuBuf) -> Result<()> {
        self.whole(Kernel::Norm, x, out)
    }

    fn whole(&self, k: Kernel, x: &GpuBuf, out: &mut GpuBuf) -> Result<()> {
        eq(k.name(), ("out.len()", out.len()), ("1", 1))?;
        let n = dim(k.name(), x.len())?;
        self.launch(k, Shape::threads(1), &mut [Arg::In(&x.slice), Arg::U32(n), Arg::Out(&mut out.slice)])
    }

    /// [`crate::loss::mse`] into `out[0]` on the device (no host wait).
    pub fn mse_into(&self, pred: &GpuBuf, target: &GpuBuf, out: &mut GpuBuf) -> Result<()> {
        const OP: &str = "mse";
        eq(OP, ("pred.len()", pred.len()), ("target.len()", target.len()))?;
        eq(OP, ("out.len()", out.len()), ("1", 1))?;
        let n = dim(OP, pred.len())?;
        let nblocks = pred.len().div_ceil(SUM_BLOCK);
        let mut partials = self.dev.zeros::<f64>(nblocks)?;
        let args = &mut [Arg::In(&pred.slice), Arg::In(&target.slice), Arg::U32(n), Arg::OutF64(&mut partials)];
        self.launch(Kernel::MsePartials, Shape::lane_groups(nblocks as u32), args)?;
        self.mean_f64(&mut partials, nblocks, pred.len(), out)
    }

    /// [`crate::loss::cross_entropy`] with the loss into `loss[0]` on the
    /// device (no host wait).
    pub fn cross_entropy_into(
        &self,
        logits: &GpuBuf,
        classes: usize,
        targets: &GpuU32Buf,
        probs: &mut GpuBuf,
        loss: &mut GpuBuf,
    ) -> Result<()> {
        const OP: &str = "cross_entropy";
        let rows = super::train::check_ce(OP, logits.len(), classes, targets)?;
        eq(OP, ("probs.len()", probs.len()), ("logits.len()", logits.len()))?;
        eq(OP, ("loss.len()", loss.len()), ("1", 1))?;
        let mut losses = self.dev.zeros::<f64>(rows)?;
        let (rows32, classes32) = (dim(OP, rows)?, dim(OP, classes)?);
        let args = &mut [
            Arg::In(&logits.slice),
            Arg::Idx(&targets.slice),
            Arg::U32(rows32),
            Arg::U32(classes32),
            Arg::Out(&mut probs.slice),
            Arg::OutF64(&mut losses),
        ];
        self.launch(Kernel::CeRows, Shape::threads(rows32), args)?;
        self.mean_f64(&mut losses, rows, rows, loss)
    }

    fn mean_f64(&self, parts: &mut super::DevSlice<f64>, count: usize, divisor: usize, out: &mut GpuBuf) -> Result<()> {
        ensure(divisor > 0, "mean", || "empty input".into())?;
        let (c, d) = (dim("mean", count)?, dim("mean", divisor)?);
        let args = &mut [Arg::OutF64(parts), Arg::U32(c), Arg::U32(d), Arg::Out(&mut out.slice)];
        self.launch(Kernel::MeanF64, Shape::threads(1), args)
    }
}
