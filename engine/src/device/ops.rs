//! The ops a [`Backend`] dispatches: the CPU kernel, or upload → CUDA
//! kernel → download. Same names, arguments and semantics as the kernels
//! crate's CPU functions; callers check shapes first (the CPU kernels
//! assert, the GPU ones return errors).

use baton_kernels::cuda::{Gpu, GpuBuf};
use baton_kernels::optim::{adam_step, adamw_step, sgd_step, AdamConfig, SgdConfig};
use baton_kernels::{activation, elementwise, loss, matmul, norm, Trans};

use super::{Backend, Inner};
use crate::{Activation, Error, Result};

impl Backend {
    /// `c = op(a)·op(b)` (`accumulate`: `c +=`), `c` `[m, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        ta: Trans,
        b: &[f32],
        tb: Trans,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu => matmul(c, a, ta, b, tb, m, k, n, accumulate),
            Inner::Cuda(gpu) => {
                let (a, b, mut out) = (gpu.upload(a)?, gpu.upload(b)?, stage_out(gpu, c, accumulate)?);
                gpu.matmul(&mut out, &a, ta, &b, tb, m, k, n, accumulate)?;
                download_into(gpu, &out, c)?;
            }
        }
        Ok(())
    }

    /// `y[r, c] += bias[c]`.
    pub fn add_bias_rows(&self, y: &mut [f32], bias: &[f32]) -> Result<()> {
        match &self.inner {
            Inner::Cpu => elementwise::add_bias_rows(y, bias),
            Inner::Cuda(gpu) => {
                let (mut out, bias) = (gpu.upload(y)?, gpu.upload(bias)?);
                gpu.add_bias_rows(&mut out, &bias)?;
                download_into(gpu, &out, y)?;
            }
        }
        Ok(())
    }

    /// `out[c] (+)= Σ_r x[r, c]`, rows added in order.
    pub fn sum_rows(&self, x: &[f32], cols: usize, out: &mut [f32], accumulate: bool) -> Result<()> {
        match &self.inner {
            Inner::Cpu => elementwise::sum_rows(x, cols, out, accumulate),
            Inner::Cuda(gpu) => {
                let (x, mut sums) = (gpu.upload(x)?, stage_out(gpu, out, accumulate)?);
                gpu.sum_rows(&x, cols, &mut sums, accumulate)?;
                download_into(gpu, &sums, out)?;
            }
        }
        Ok(())
    }

    /// `out = a + b`.
    pub fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
        match &self.inner {
            Inner::Cpu => elementwise::add(a, b, out),
            Inner::Cuda(gpu) => {
                let (a, b, mut y) = (gpu.upload(a)?, gpu.upload(b)?, gpu.zeros(out.len())?);
                gpu.add(&a, &b, &mut y)?;
                download_into(gpu, &y, out)?;
            }
        }
        Ok(())
    }

    /// `y = act(x)`. An activation without a CUDA kernel (SiLU) runs on the
    /// host whatever the backend: tensors are host-resident (per-op staging).
    pub fn activation(&self, kind: Activation, x: &[f32], y: &mut [f32]) -> Result<()> {
        let Some(gpu) = self.gpu_for(kind) else {
            cpu_activation(kind, x, y);
            return Ok(());
        };
        let (x, mut out) = (gpu.upload(x)?, gpu.zeros(y.len())?);
        match kind {
            Activation::Relu => gpu.relu(&x, &mut out)?,
            Activation::Gelu => gpu.gelu(&x, &mut out)?,
            Activation::Tanh => gpu.tanh(&x, &mut out)?,
            Activation::Silu => return Err(no_gpu_kernel(kind)),
        }
        download_into(gpu, &out, y)
    }

    /// `dx` of `act`, from the saved tensor its rule reads (the forward
    /// output for relu and tanh, the input for gelu and silu); where it runs
    /// as in [`Backend::activation`].
    pub fn activation_backward(&self, kind: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let Some(gpu) = self.gpu_for(kind) else {
            cpu_activation_backward(kind, saved, dy, dx);
            return Ok(());
        };
        let (s, dy, mut out) = (gpu.upload(saved)?, gpu.upload(dy)?, gpu.zeros(dx.len())?);
        match kind {
            Activation::Relu => gpu.relu_backward(&s, &dy, &mut out)?,
            Activation::Gelu => gpu.gelu_backward(&s, &dy, &mut out)?,
            Activation::Tanh => gpu.tanh_backward(&s, &dy, &mut out)?,
            Activation::Silu => return Err(no_gpu_kernel(kind)),
        }
        download_into(gpu, &out, dx)
    }

    /// The GPU to run `kind` on: None on the CPU, or for an activation that
    /// has no CUDA kernel.
    fn gpu_for(&self, kind: Activation) -> Option<&Gpu> {
        match (&self.inner, kind) {
            (_, Activation::Silu) | (Inner::Cpu, _) => None,
            (Inner::Cuda(gpu), _) => Some(gpu),
        }
    }

    /// Layer norm over rows of `cols`; `stats` gets `[means…, rstds…]`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        cols: usize,
        eps: f32,
        y: &mut [f32],
        stats: &mut [f32],
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu => norm::layernorm(x, gamma, beta, cols, eps, y, stats),
            Inner::Cuda(gpu) => {
                let (x, g, b) = (gpu.upload(x)?, gpu.upload(gamma)?, gpu.upload(beta)?);
                let (mut out, mut st) = (gpu.zeros(y.len())?, gpu.zeros(stats.len())?);
                gpu.layernorm(&x, &g, &b, cols, eps, &mut out, &mut st)?;
                download_into(gpu, &out, y)?;
                download_into(gpu, &st, stats)?;
            }
        }
        Ok(())
    }

    /// Layer norm backward: writes `dx`; writes or (when `accumulate`) adds
    /// to `dgamma` and `dbeta`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        stats: &[f32],
        dy: &[f32],
        cols: usize,
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu => norm::layernorm_backward(x, gamma, stats, dy, cols, dx, dgamma, dbeta, accumulate),
            Inner::Cuda(gpu) => {
                let (x, g, s, dy) = (gpu.upload(x)?, gpu.upload(gamma)?, gpu.upload(stats)?, gpu.upload(dy)?);
                let mut odx = gpu.zeros(dx.len())?;
                let (mut odg, mut odb) = (stage_out(gpu, dgamma, accumulate)?, stage_out(gpu, dbeta, accumulate)?);
                gpu.layernorm_backward(&x, &g, &s, &dy, cols, &mut odx, &mut odg, &mut odb, accumulate)?;
                download_into(gpu, &odx, dx)?;
                download_into(gpu, &odg, dgamma)?;
                download_into(gpu, &odb, dbeta)?;
            }
        }
        Ok(())
    }

    /// Mean of `(pred − target)²`.
    pub fn mse(&self, pred: &[f32], target: &[f32]) -> Result<f32> {
        match &self.inner {
            Inner::Cpu => Ok(loss::mse(pred, target)),
            Inner::Cuda(gpu) => Ok(gpu.mse(&gpu.upload(pred)?, &gpu.upload(target)?)?),
        }
    }

    /// `dpred = scale · 2·(pred − target) / N`.
    pub fn mse_backward(&self, pred: &[f32], target: &[f32], scale: f32, dpred: &mut [f32]) -> Result<()> {
        match &self.inner {
            Inner::Cpu => loss::mse_backward(pred, target, scale, dpred),
            Inner::Cuda(gpu) => {
                let (p, t, mut d) = (gpu.upload(pred)?, gpu.upload(target)?, gpu.zeros(dpred.len())?);
                gpu.mse_backward(&p, &t, scale, &mut d)?;
                download_into(gpu, &d, dpred)?;
            }
        }
        Ok(())
    }

    /// Writes `probs = softmax(logits)` per row; returns the mean
    /// `−log probs[target]` over rows.
    pub fn cross_entropy(&self, logits: &[f32], classes: usize, targets: &[u32], probs: &mut [f32]) -> Result<f32> {
        match &self.inner {
            Inner::Cpu => Ok(loss::cross_entropy(logits, classes, targets, probs)),
            Inner::Cuda(gpu) => {
                let (z, t, mut p) = (gpu.upload(logits)?, gpu.upload_u32(targets)?, gpu.zeros(probs.len())?);
                let value = gpu.cross_entropy(&z, classes, &t, &mut p)?;
                download_into(gpu, &p, probs)?;
                Ok(value)
            }
        }
    }

    /// `dlogits = scale · (probs − onehot(target)) / rows`.
    pub fn cross_entropy_backward(
        &self,
        probs: &[f32],
        classes: usize,
        targets: &[u32],
        scale: f32,
        dlogits: &mut [f32],
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu => loss::cross_entropy_backward(probs, classes, targets, scale, dlogits),
            Inner::Cuda(gpu) => {
                let (p, t, mut d) = (gpu.upload(probs)?, gpu.upload_u32(targets)?, gpu.zeros(dlogits.len())?);
                gpu.cross_entropy_backward(&p, classes, &t, scale, &mut d)?;
                download_into(gpu, &d, dlogits)?;
            }
        }
        Ok(())
    }

    /// One SGD update (PyTorch semantics; `momentum_buf` used when momentum ≠ 0).
    pub fn sgd_step(
        &self,
        param: &mut [f32],
        grad: &[f32],
        momentum_buf: &mut [f32],
        first: bool,
        cfg: &SgdConfig,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu => sgd_step(param, grad, momentum_buf, first, cfg),
            Inner::Cuda(gpu) => {
                let (mut p, g, mut buf) = (gpu.upload(param)?, gpu.upload(grad)?, gpu.upload(momentum_buf)?);
                gpu.sgd_step(&mut p, &g, &mut buf, first, cfg)?;
                download_into(gpu, &p, param)?;
                download_into(gpu, &buf, momentum_buf)?;
            }
        }
        Ok(())
    }

    /// One Adam update, or with `decoupled` one AdamW update (decoupled
    /// weight decay); `step` is 1-based.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        &self,
        param: &mut [f32],
        grad: &[f32],
        (m, v): (&mut [f32], &mut [f32]),
        step: u64,
        cfg: &AdamConfig,
        decoupled: bool,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu if decoupled => adamw_step(param, grad, m, v, step, cfg),
            Inner::Cpu => adam_step(param, grad, m, v, step, cfg),
            Inner::Cuda(gpu) => {
                let (mut p, g) = (gpu.upload(param)?, gpu.upload(grad)?);
                let (mut mb, mut vb) = (gpu.upload(m)?, gpu.upload(v)?);
                if decoupled {
                    gpu.adamw_step(&mut p, &g, &mut mb, &mut vb, step, cfg)?;
                } else {
                    gpu.adam_step(&mut p, &g, &mut mb, &mut vb, step, cfg)?;
                }
                download_into(gpu, &p, param)?;
                download_into(gpu, &mb, m)?;
                download_into(gpu, &vb, v)?;
            }
        }
        Ok(())
    }
}

/// A GPU buffer for the output `out`: its current values when the op reads
/// them (accumulating), else zeros.
fn stage_out(gpu: &Gpu, out: &[f32], reads: bool) -> Result<GpuBuf> {
    Ok(if reads { gpu.upload(out)? } else { gpu.zeros(out.len())? })
}

/// Copies `buf` back into `out` (after every queued op).
fn download_into(gpu: &Gpu, buf: &GpuBuf, out: &mut [f32]) -> Result<()> {
    let host = gpu.download(buf)?;
    if host.len() != out.len() {
        return Err(Error::Device(format!(
            "cuda:{}: the GPU returned {} values for a buffer of {} (a bug)",
            gpu.ordinal(),
            host.len(),
            out.len()
        )));
    }
    out.copy_from_slice(&host);
    Ok(())
}

fn cpu_activation(kind: Activation, x: &[f32], y: &mut [f32]) {
    match kind {
        Activation::Relu => activation::relu(x, y),
        Activation::Gelu => activation::gelu(x, y),
        Activation::Tanh => activation::tanh(x, y),
        Activation::Silu => activation::silu(x, y),
    }
}

fn cpu_activation_backward(kind: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    match kind {
        Activation::Relu => activation::relu_backward(saved, dy, dx),
        Activation::Gelu => activation::gelu_backward(saved, dy, dx),
        Activation::Tanh => activation::tanh_backward(saved, dy, dx),
        Activation::Silu => activation::silu_backward(saved, dy, dx),
    }
}

/// An internal invariant: `gpu_for` keeps activations without a CUDA kernel on the host.
fn no_gpu_kernel(kind: Activation) -> Error {
    Error::Internal(format!("{kind:?} has no CUDA kernel and must run on the host"))
}
