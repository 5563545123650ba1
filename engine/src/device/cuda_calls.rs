//! Each [`Call`] as `baton_kernels::cuda` methods on resident buffers
//! (the GPU twin of [`run_host`](super::run_host)).

use baton_kernels::cuda::{Gpu, GpuBuf};

use super::call::Call;
use super::cuda_mem::In;
use crate::{Activation, Error};

/// A failure of a kernel (the GPU's) or of the engine's call (a bug).
pub(crate) enum CallError {
    Kernel(baton_kernels::Error),
    Engine(Error),
}

impl From<baton_kernels::Error> for CallError {
    fn from(e: baton_kernels::Error) -> CallError {
        CallError::Kernel(e)
    }
}

impl From<Error> for CallError {
    fn from(e: Error) -> CallError {
        CallError::Engine(e)
    }
}

type R = std::result::Result<(), CallError>;

/// Runs `call` on the GPU: `ins` read, `outs` written (some read first).
pub(crate) fn run(gpu: &Gpu, call: &Call, ins: &[In<'_>], outs: &mut [&mut GpuBuf]) -> R {
    if call.arity() != (ins.len(), outs.len()) {
        return Err(Error::Internal(format!("{}: wrong arity on the GPU", call.name())).into());
    }
    let f = |i: usize| ins[i].f32(call);
    match call {
        Call::Matmul { ta, tb, batch, m, k, n, accumulate } => {
            gpu.matmul_batched(outs[0], f(0)?, *ta, f(1)?, *tb, (*batch, *m, *k, *n), *accumulate)?
        }
        Call::Linear { rows, inp, n, bias } => {
            let t = baton_kernels::Trans::No;
            gpu.matmul(outs[0], f(0)?, t, f(1)?, baton_kernels::Trans::Yes, *rows, *inp, *n, false)?;
            if *bias {
                gpu.add_bias_rows(outs[0], f(2)?)?;
            }
        }
        Call::SumRows { cols, accumulate } => gpu.sum_rows(f(0)?, *cols, outs[0], *accumulate)?,
        Call::Binary { kind, a_shape, b_shape } => gpu.binary(*kind, f(0)?, a_shape, f(1)?, b_shape, outs[0])?,
        Call::ReduceTo { from, to } => gpu.reduce_to(f(0)?, from, to, outs[0])?,
        Call::Expand { from, to } => gpu.expand(f(0)?, from, to, outs[0])?,
        Call::Scale { factor } => gpu.scale_into(f(0)?, *factor, outs[0])?,
        Call::AddAssign => gpu.add_assign(outs[0], f(0)?)?,
        Call::Act { kind } => activation(gpu, *kind, f(0)?, outs[0])?,
        Call::ActBackward { kind } => activation_backward(gpu, *kind, f(0)?, f(1)?, outs[0])?,
        _ => return run_rest(gpu, call, ins, outs),
    }
    Ok(())
}

fn run_rest(gpu: &Gpu, call: &Call, ins: &[In<'_>], outs: &mut [&mut GpuBuf]) -> R {
    let f = |i: usize| ins[i].f32(call);
    match (call, outs) {
        (Call::Softmax { cols, causal }, [y]) => gpu.softmax(f(0)?, *cols, *causal, y)?,
        (Call::SoftmaxBackward { cols }, [dx]) => gpu.softmax_backward(f(0)?, f(1)?, *cols, dx)?,
        (Call::LayerNorm { cols, eps }, [y, stats]) => gpu.layernorm(f(0)?, f(1)?, f(2)?, *cols, *eps, y, stats)?,
        (Call::LayerNormBackward { cols }, [dx, dg, db]) => {
            gpu.layernorm_backward(f(0)?, f(1)?, f(2)?, f(3)?, *cols, dx, dg, db, false)?
        }
        (Call::RmsNorm { cols, eps }, [y, rstd]) => gpu.rmsnorm(f(0)?, f(1)?, *cols, *eps, y, rstd)?,
        (Call::RmsNormBackward { cols }, [dx, dg]) => {
            gpu.rmsnorm_backward(f(0)?, f(1)?, f(2)?, f(3)?, *cols, dx, dg)?
        }
        (Call::Gather { dim }, [y]) => gpu.gather(f(0)?, *dim, ins[1].ids(call)?, y)?,
        (Call::ScatterAdd { dim }, [dt]) => gpu.scatter_add(f(0)?, *dim, ins[1].ids(call)?, dt)?,
        (Call::Dropout { seed, key, p }, [y]) => gpu.dropout(f(0)?, *seed, *key, *p, y)?,
        (Call::Transpose { shape, d0, d1 }, [y]) => gpu.transpose(f(0)?, shape, *d0, *d1, y)?,
        (Call::Narrow { cols, start, len }, [y]) => gpu.narrow(f(0)?, *cols, *start, *len, y)?,
        (Call::NarrowBackward { cols, start, len }, [dx]) => gpu.narrow_backward(f(0)?, *cols, *start, *len, dx)?,
        (Call::Concat { widths }, [y]) => {
            let parts: Vec<&GpuBuf> = (0..ins.len()).map(f).collect::<crate::Result<_>>()?;
            gpu.concat(&parts, widths, y)?
        }
        (Call::Sum, [out]) => gpu.sum_all(f(0)?, out)?,
        (Call::Norm, [out]) => gpu.norm(f(0)?, out)?,
        (Call::Mse, [out]) => gpu.mse_into(f(0)?, f(1)?, out)?,
        (Call::MseBackward { scale }, [dp]) => gpu.mse_backward(f(0)?, f(1)?, *scale, dp)?,
        (Call::CrossEntropy { classes }, [probs, loss]) => {
            gpu.cross_entropy_into(f(0)?, *classes, ins[1].ids(call)?, probs, loss)?
        }
        (Call::CrossEntropyBackward { classes, scale }, [dl]) => {
            gpu.cross_entropy_backward(f(0)?, *classes, ins[1].ids(call)?, *scale, dl)?
        }
        (Call::Sgd { cfg, first }, [param, buf]) => gpu.sgd_step(param, f(0)?, buf, *first, cfg)?,
        (Call::Adam { cfg, step, decoupled: false }, [p, m, v]) => gpu.adam_step(p, f(0)?, m, v, *step, cfg)?,
        (Call::Adam { cfg, step, decoupled: true }, [p, m, v]) => gpu.adamw_step(p, f(0)?, m, v, *step, cfg)?,
        (call, _) => return Err(Error::Internal(format!("{}: no GPU dispatch for these outputs", call.name())).into()),
    }
    Ok(())
}

fn activation(gpu: &Gpu, kind: Activation, x: &GpuBuf, y: &mut GpuBuf) -> baton_kernels::Result<()> {
    match kind {
        Activation::Relu => gpu.relu(x, y),
        Activation::Gelu => gpu.gelu(x, y),
        Activation::Tanh => gpu.tanh(x, y),
        Activation::Silu => gpu.silu(x, y),
    }
}

fn activation_backward(
    gpu: &Gpu,
    kind: Activation,
    saved: &GpuBuf,
    dy: &GpuBuf,
    dx: &mut GpuBuf,
) -> baton_kernels::Result<()> {
    match kind {
        Activation::Relu => gpu.relu_backward(saved, dy, dx),
        Activation::Gelu => gpu.gelu_backward(saved, dy, dx),
        Activation::Tanh => gpu.tanh_backward(saved, dy, dx),
        Activation::Silu => gpu.silu_backward(saved, dy, dx),
    }
}
