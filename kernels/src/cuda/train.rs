//! GPU versions of `norm`, `loss` and `optim`: same names, same argument
//! order, same semantics and the same reduction orders as the CPU kernels.

use super::check::{self, dim, ensure, eq, mul};
use super::kernel::{Arg, Kernel, Shape};
use super::math::flag;
use super::{Gpu, GpuBuf, GpuU32Buf};
use crate::optim::{AdamConfig, AdamScalars, SgdConfig};
use crate::threads::SUM_BLOCK;
use crate::Result;

impl Gpu {
    /// [`crate::norm::layernorm`]: `stats` = `[mean per row…, rstd per
    /// row…]` (`2*rows` values), `rows = x.len() / cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        x: &GpuBuf,
        gamma: &GpuBuf,
        beta: &GpuBuf,
        cols: usize,
        eps: f32,
        y: &mut GpuBuf,
        stats: &mut GpuBuf,
    ) -> Result<()> {
        const OP: &str = "layernorm";
        let rows = check::rows(OP, "x", x.len(), cols)?;
        eq(OP, ("y.len()", y.len()), ("x.len()", x.len()))?;
        eq(OP, ("gamma.len()", gamma.len()), ("cols", cols))?;
        eq(OP, ("beta.len()", beta.len()), ("cols", cols))?;
        eq(OP, ("stats.len()", stats.len()), ("2*rows", mul(OP, 2, rows)?))?;
        let (rows, cols) = (dim(OP, rows)?, dim(OP, cols)?);
        let args = &mut [
            Arg::In(&x.slice),
            Arg::In(&gamma.slice),
            Arg::In(&beta.slice),
            Arg::U32(rows),
            Arg::U32(cols),
            Arg::F32(eps),
            Arg::Out(&mut y.slice),
            Arg::Out(&mut stats.slice),
        ];
        self.launch(Kernel::LayernormFwd, Shape::lane_groups(rows), args)
    }

    /// [`crate::norm::layernorm_backward`]: writes `dx`; writes or (when
    /// `accumulate`) adds to `dgamma`/`dbeta`, rows summed in order.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &self,
        x: &GpuBuf,
        gamma: &GpuBuf,
        stats: &GpuBuf,
        dy: &GpuBuf,
        cols: usize,
        dx: &mut GpuBuf,
        dgamma: &mut GpuBuf,
        dbeta: &mut GpuBuf,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "layernorm_backward";
        let rows = check::rows(OP, "x", x.len(), cols)?;
        eq(OP, ("gamma.len()", gamma.len()), ("cols", cols))?;
        eq(OP, ("stats.len()", stats.len()), ("2*rows", mul(OP, 2, rows)?))?;
        eq(OP, ("dy.len()", dy.len()), ("x.len()", x.len()))?;
        eq(OP, ("dx.len()", dx.len()), ("x.len()", x.len()))?;
        eq(OP, ("dgamma.len()", dgamma.len()), ("cols", cols))?;
        eq(OP, ("dbeta.len()", dbeta.len()), ("cols", cols))?;
        let (rows, cols) = (dim(OP, rows)?, dim(OP, cols)?);
        let (x, stats, dy) = (&x.slice, &stats.slice, &dy.slice);
        let dx_args = &mut [
            Arg::In(x),
            Arg::In(&gamma.slice),
            Arg::In(stats),
            Arg::In(dy),
            Arg::U32(rows),
            Arg::U32(cols),
            Arg::Out(&mut dx.slice),
        ];
        self.launch(Kernel::LayernormDx, Shape::lane_groups(rows), dx_args)?;
        let param_args = &mut [
            Arg::In(x),
            Arg::In(stats),
            Arg::In(dy),
            Arg::U32(rows),
            Arg::U32(cols),
            Arg::Out(&mut dgamma.slice),
            Arg::Out(&mut dbeta.slice),
            flag(accumulate),
        ];
        self.launch(Kernel::LayernormParams, Shape::threads(cols), param_args)
    }

    /// [`crate::loss::mse`]: mean of `(pred − target)²`, summed in the CPU's
    /// blocks and lanes (so the same bits). NaN for empty input. Waits for
    /// the stream (returns a host value).
    pub fn mse(&self, pred: &GpuBuf, target: &GpuBuf) -> Result<f32> {
        eq("mse", ("pred.len()", pred.len()), ("target.len()", target.len()))?;
        let n = dim("mse", pred.len())?;
        let nblocks = pred.len().div_ceil(SUM_BLOCK);
        let mut partials = self.dev.zeros::<f64>(nblocks)?;
        let args = &mut [Arg::In(&pred.slice), Arg::In(&target.slice), Arg::U32(n), Arg::OutF64(&mut partials)];
        self.launch(Kernel::MsePartials, Shape::lane_groups(nblocks as u32), args)?;
        let sum = self.dev.download(&partials)?.into_iter().fold(0.0f64, |acc, s| acc + s);
        Ok((sum / pred.len() as f64) as f32)
    }

    /// [`crate::loss::mse_backward`]: `dpred = scale · 2·(pred − target)/N`.
    pub fn mse_backward(&self, pred: &GpuBuf, target: &GpuBuf, scale: f32, dpred: &mut GpuBuf) -> Result<()> {
        const OP: &str = "mse_backward";
        eq(OP, ("pred.len()", pred.len()), ("dpred.len()", dpred.len()))?;
        eq(OP, ("target.len()", target.len()), ("dpred.len()", dpred.len()))?;
        let n = dim(OP, dpred.len())?;
        let k = (2.0 * scale as f64 / pred.len() as f64) as f32;
        let args =
            &mut [Arg::In(&pred.slice), Arg::In(&target.slice), Arg::F32(k), Arg::Out(&mut dpred.slice), Arg::U32(n)];
        self.launch(Kernel::MseBackward, Shape::threads(n), args)
    }

    /// [`crate::loss::cross_entropy`]: writes `probs = softmax(logits)` per
    /// row and returns the mean over rows of `−log softmax[target]`
    /// (`rows = targets.len()`; NaN for zero rows). One thread per row;
    /// waits for the stream (returns a host value).
    pub fn cross_entropy(
        &self,
        logits: &GpuBuf,
        classes: usize,
        targets: &GpuU32Buf,
        probs: &mut GpuBuf,
    ) -> Result<f32> {
        const OP: &str = "cross_entropy";
        let rows = check_ce(OP, logits.len(), classes, targets)?;
        eq(OP, ("probs.len()", probs.len()), ("logits.len()", logits.len()))?;
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
        let sum = self.dev.download(&losses)?.into_iter().fold(0.0f64, |acc, l| acc + l);
        Ok((sum / rows as f64) as f32)
    }

    /// [`crate::loss::cross_entropy_backward`]:
    /// `dlogits = scale · (probs − onehot(target)) / rows`.
    pub fn cross_entropy_backward(
        &self,
        probs: &GpuBuf,
        classes: usize,
        targets: &GpuU32Buf,
        scale: f32,
        dlogits: &mut GpuBuf,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let rows = check_ce(OP, probs.len(), classes, targets)?;
        eq(OP, ("dlogits.len()", dlogits.len()), ("probs.len()", probs.len()))?;
        let k = (scale as f64 / rows as f64) as f32;
        let (classes, n) = (dim(OP, classes)?, dim(OP, probs.len())?);
        let args = &mut [
            Arg::In(&probs.slice),
            Arg::Idx(&targets.slice),
            Arg::U32(classes),
            Arg::F32(k),
            Arg::Out(&mut dlogits.slice),
            Arg::U32(n),
        ];
        self.launch(Kernel::CeBackward, Shape::threads(n), args)
    }

    /// [`crate::optim::sgd_step`] (`momentum_buf` is used only when
    /// `cfg.momentum != 0`).
    pub fn sgd_step(
        &self,
        param: &mut GpuBuf,
        grad: &GpuBuf,
        momentum_buf: &mut GpuBuf,
        first: bool,
        cfg: &SgdConfig,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        eq(OP, ("grad.len()", grad.len()), ("param.len()", param.len()))?;
        let n = dim(OP, param.len())?;
        let (neg_lr, wd) = (-cfg.lr, cfg.weight_decay);
        if cfg.momentum == 0.0 {
            let args =
                &mut [Arg::Out(&mut param.slice), Arg::In(&grad.slice), Arg::F32(neg_lr), Arg::F32(wd), Arg::U32(n)];
            return self.launch(Kernel::SgdPlain, Shape::threads(n), args);
        }
        eq(OP, ("momentum_buf.len()", momentum_buf.len()), ("param.len()", param.len()))?;
        let damp = (1.0 - cfg.dampening as f64) as f32;
        let args = &mut [
            Arg::Out(&mut param.slice),
            Arg::In(&grad.slice),
            Arg::Out(&mut momentum_buf.slice),
            flag(first),
            Arg::F32(cfg.momentum),
            Arg::F32(damp),
            flag(cfg.nesterov),
            Arg::F32(neg_lr),
            Arg::F32(wd),
            Arg::U32(n),
        ];
        self.launch(Kernel::SgdMomentum, Shape::threads(n), args)
    }

    /// [`crate::optim::adam_step`]; `step` is 1-based. The per-step scalars
    /// are computed on the host by the CPU kernel's own code.
    pub fn adam_step(
        &self,
        param: &mut GpuBuf,
        grad: &GpuBuf,
        m: &mut GpuBuf,
        v: &mut GpuBuf,
        step: u64,
        cfg: &AdamConfig,
    ) -> Result<()> {
        let s = AdamScalars::new(cfg, step);
        self.adam_launch(Kernel::Adam, [param, m, v], grad, step, s, s.wd)
    }

    /// [`crate::optim::adamw_step`] (decoupled weight decay); `step` is
    /// 1-based. The per-step scalars are the CPU kernel's own.
    pub fn adamw_step(
        &self,
        param: &mut GpuBuf,
        grad: &GpuBuf,
        m: &mut GpuBuf,
        v: &mut GpuBuf,
        step: u64,
        cfg: &AdamConfig,
    ) -> Result<()> {
        let s = AdamScalars::decoupled(cfg, step);
        self.adam_launch(Kernel::AdamW, [param, m, v], grad, step, s, s.keep)
    }

    /// Checks and launches `baton_adam` (`first` = the L2 coefficient) or
    /// `baton_adamw` (`first` = the decoupled factor).
    fn adam_launch(
        &self,
        kernel: Kernel,
        [param, m, v]: [&mut GpuBuf; 3],
        grad: &GpuBuf,
        step: u64,
        s: AdamScalars,
        first: f32,
    ) -> Result<()> {
        let op = kernel.name();
        ensure(step >= 1, op, || "step is 1-based".into())?;
        eq(op, ("grad.len()", grad.len()), ("param.len()", param.len()))?;
        eq(op, ("m.len()", m.len()), ("param.len()", param.len()))?;
        eq(op, ("v.len()", v.len()), ("param.len()", param.len()))?;
        let n = dim(op, param.len())?;
        let args = &mut [
            Arg::Out(&mut param.slice),
            Arg::In(&grad.slice),
            Arg::Out(&mut m.slice),
            Arg::Out(&mut v.slice),
            Arg::F32(first),
            Arg::F32(s.w1),
            Arg::F32(s.beta2),
            Arg::F32(s.w2),
            Arg::F32(s.neg_step_size),
            Arg::F32(s.bc2_sqrt),
            Arg::F32(s.eps),
            Arg::U32(n),
        ];
        self.launch(kernel, Shape::threads(n), args)
    }
}

/// Checks a cross-entropy shape: `classes > 0`, `len == rows*classes` with
/// `rows = targets.len()`, every target `< classes`. Returns `rows`.
pub(super) fn check_ce(op: &str, len: usize, classes: usize, targets: &GpuU32Buf) -> Result<usize> {
    ensure(classes > 0, op, || "classes == 0".into())?;
    let rows = targets.len();
    eq(op, ("logits/probs len", len), ("rows*classes", mul(op, rows, classes)?))?;
    match targets.max {
        Some(t) if t as usize >= classes => Err(check::invalid(op, format!("a target is {t} >= classes = {classes}"))),
        _ => Ok(rows),
    }
}
