//! Every kernel the engine launches, as plain data: one [`Call`] names the
//! kernel and its shape arguments; buffers are passed beside it (inputs
//! read-only, outputs written, some of them read first: accumulators and
//! optimizer state).
//!
//! The same `Call` runs on the host ([`run_host`], the CPU kernels), on the
//! [`SimulatedDevice`](super::SimulatedDevice) (the same [`run_host`] on its
//! private memory) and on a CUDA GPU (`super::cuda_mem`), so the dispatch
//! the simulated device exercises in CI is the one the GPU runs.
//!
//! Invariant: [`Call::arity`] gives the number of inputs and outputs each
//! call takes; [`run_host`] checks it before touching a buffer.

use baton_kernels::broadcast::{self, BinaryKind};
use baton_kernels::optim::{adam_step, adamw_step, sgd_step, AdamConfig, SgdConfig};
use baton_kernels::{activation, dropout, elementwise, embedding, layout, loss, matmul, norm, softmax, Trans};

use crate::{Activation, Error, Result};

/// One kernel launch. Inputs and outputs in the order each variant lists.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// `c[i] (+)= op(a[i]) · op(b[i])` for `batch` contiguous matrices; in `[a, b]`, out `[c]`.
    Matmul { ta: Trans, tb: Trans, batch: usize, m: usize, k: usize, n: usize, accumulate: bool },
    /// `y = x Wᵀ (+ b)`; in `[x, w]` or `[x, w, b]`, out `[y]`.
    Linear { rows: usize, inp: usize, n: usize, bias: bool },
    /// `out[c] (+)= Σ_r x[r, c]`; in `[x]`, out `[out]`.
    SumRows { cols: usize, accumulate: bool },
    /// Broadcasting `a ∘ b`; in `[a, b]`, out `[y]`.
    Binary { kind: BinaryKind, a_shape: Vec<usize>, b_shape: Vec<usize> },
    /// Sum of `from`-shaped `g` over broadcast dimensions down to `to`; in `[g]`, out `[out]`.
    ReduceTo { from: Vec<usize>, to: Vec<usize> },
    /// `x` broadcast from `from` to `to`; in `[x]`, out `[y]`.
    Expand { from: Vec<usize>, to: Vec<usize> },
    /// `y = factor · x`; in `[x]`, out `[y]`.
    Scale { factor: f32 },
    /// `dst += src`; in `[src]`, out `[dst]` (read first).
    AddAssign,
    /// `y = act(x)`; in `[x]`, out `[y]`.
    Act { kind: Activation },
    /// `dx` of `act` from its saved tensor; in `[saved, dy]`, out `[dx]`.
    ActBackward { kind: Activation },
    /// Softmax of rows of `cols`; in `[x]`, out `[y]`.
    Softmax { cols: usize, causal: bool },
    /// in `[y, dy]`, out `[dx]`.
    SoftmaxBackward { cols: usize },
    /// in `[x, gamma, beta]`, out `[y, stats]`.
    LayerNorm { cols: usize, eps: f32 },
    /// in `[x, gamma, stats, dy]`, out `[dx, dgamma, dbeta]`.
    LayerNormBackward { cols: usize },
    /// in `[x, gamma]`, out `[y, rstd]`.
    RmsNorm { cols: usize, eps: f32 },
    /// in `[x, gamma, rstd, dy]`, out `[dx, dgamma]`.
    RmsNormBackward { cols: usize },
    /// Rows of the table; in `[table, ids]`, out `[y]`.
    Gather { dim: usize },
    /// Deterministic scatter-add into a zeroed table; in `[dy, ids]`, out `[dtable]`.
    ScatterAdd { dim: usize },
    /// Counter-based dropout mask of `(seed, key, index)`; in `[x]`, out `[y]`.
    Dropout { seed: u64, key: u64, p: f32 },
    /// Swap of axes `d0 < d1`; in `[x]`, out `[y]`.
    Transpose { shape: Vec<usize>, d0: usize, d1: usize },
    /// Columns `start..start+len` of rows of `cols`; in `[x]`, out `[y]`.
    Narrow { cols: usize, start: usize, len: usize },
    /// in `[dy]`, out `[dx]` (zeros elsewhere).
    NarrowBackward { cols: usize, start: usize, len: usize },
    /// Join along the last axis; in the parts, out `[y]`.
    Concat { widths: Vec<usize> },
    /// Sum of all elements in f64, element order; in `[x]`, out `[1]`.
    Sum,
    /// `‖x‖₂`, squares summed in f64 in element order; in `[x]`, out `[1]`.
    Norm,
    /// in `[pred, target]`, out `[1]`.
    Mse,
    /// `dpred = scale · 2(pred − target)/N`; in `[pred, target]`, out `[dpred]`.
    MseBackward { scale: f32 },
    /// in `[logits, targets]`, out `[probs, loss]`.
    CrossEntropy { classes: usize },
    /// `dlogits = scale · (probs − onehot)/rows`; in `[probs, targets]`, out `[dlogits]`.
    CrossEntropyBackward { classes: usize, scale: f32 },
    /// in `[grad]`, out `[param, momentum]` (both read first).
    Sgd { cfg: SgdConfig, first: bool },
    /// in `[grad]`, out `[param, m, v]` (all read first); `step` is 1-based.
    Adam { cfg: AdamConfig, step: u64, decoupled: bool },
}

impl Call {
    /// The kernel's name, for error messages and transfer reports.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Matmul { .. } => "matmul",
            Call::Linear { .. } => "linear",
            Call::SumRows { .. } => "sum_rows",
            Call::Binary { .. } => "binary",
            Call::ReduceTo { .. } => "reduce_to",
            Call::Expand { .. } => "expand",
            Call::Scale { .. } => "scale",
            Call::AddAssign => "add_assign",
            Call::Act { .. } => "activation",
            Call::ActBackward { .. } => "activation_backward",
            Call::Softmax { .. } => "softmax",
            Call::SoftmaxBackward { .. } => "softmax_backward",
            Call::LayerNorm { .. } => "layernorm",
            Call::LayerNormBackward { .. } => "layernorm_backward",
            Call::RmsNorm { .. } => "rmsnorm",
            Call::RmsNormBackward { .. } => "rmsnorm_backward",
            Call::Gather { .. } => "embedding",
            Call::ScatterAdd { .. } => "embedding_backward",
            Call::Dropout { .. } => "dropout",
            Call::Transpose { .. } => "transpose",
            Call::Narrow { .. } => "narrow",
            Call::NarrowBackward { .. } => "narrow_backward",
            Call::Concat { .. } => "concat",
            Call::Sum => "sum",
            Call::Norm => "norm",
            Call::Mse => "mse",
            Call::MseBackward { .. } => "mse_backward",
            Call::CrossEntropy { .. } => "cross_entropy",
            Call::CrossEntropyBackward { .. } => "cross_entropy_backward",
            Call::Sgd { .. } => "sgd",
            Call::Adam { .. } => "adam",
        }
    }

    /// (inputs, outputs) this call takes.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Call::Linear { bias, .. } => (2 + usize::from(*bias), 1),
            Call::Matmul { .. } | Call::Binary { .. } | Call::ActBackward { .. } | Call::SoftmaxBackward { .. } => {
                (2, 1)
            }
            Call::Gather { .. } | Call::ScatterAdd { .. } => (2, 1),
            Call::LayerNorm { .. } => (3, 2),
            Call::LayerNormBackward { .. } => (4, 3),
            Call::RmsNorm { .. } => (2, 2),
            Call::RmsNormBackward { .. } => (4, 2),
            Call::Concat { widths } => (widths.len(), 1),
            Call::Mse | Call::MseBackward { .. } | Call::CrossEntropyBackward { .. } => (2, 1),
            Call::CrossEntropy { .. } => (2, 2),
            Call::Sgd { .. } => (1, 2),
            Call::Adam { .. } => (1, 3),
            _ => (1, 1),
        }
    }
}

/// A host input of a call.
#[derive(Clone, Copy, Debug)]
pub enum HostIn<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Token ids or class targets.
    Ids(&'a [u32]),
}

impl<'a> HostIn<'a> {
    fn f32(self, call: &Call) -> Result<&'a [f32]> {
        match self {
            HostIn::F32(v) => Ok(v),
            HostIn::Ids(_) => Err(Error::Internal(format!("{}: an f32 input was given token ids", call.name()))),
        }
    }
    fn ids(self, call: &Call) -> Result<&'a [u32]> {
        match self {
            HostIn::Ids(v) => Ok(v),
            HostIn::F32(_) => Err(Error::Internal(format!("{}: an id input was given f32 values", call.name()))),
        }
    }
}

/// Runs `call` with the CPU kernels: `ins` read, `outs` written (zeroed or
/// holding the values the call reads first). Errors on a wrong arity or
/// input kind (an internal bug); the kernels assert lengths, which the
/// engine's callers checked against shapes.
pub fn run_host(call: &Call, ins: &[HostIn<'_>], outs: &mut [&mut [f32]]) -> Result<()> {
    if call.arity() != (ins.len(), outs.len()) {
        return Err(Error::Internal(format!(
            "{} takes {:?} (inputs, outputs), was given ({}, {})",
            call.name(),
            call.arity(),
            ins.len(),
            outs.len()
        )));
    }
    let f = |i: usize| ins[i].f32(call);
    match call {
        Call::Matmul { ta, tb, batch, m, k, n, accumulate } => {
            let (a, b) = (f(0)?, f(1)?);
            let (sa, sb, sc) = (m * k, k * n, m * n);
            for i in 0..*batch {
                let c = &mut outs[0][i * sc..(i + 1) * sc];
                matmul(c, &a[i * sa..(i + 1) * sa], *ta, &b[i * sb..(i + 1) * sb], *tb, *m, *k, *n, *accumulate);
            }
        }
        Call::Linear { rows, inp, n, bias } => {
            matmul(outs[0], f(0)?, Trans::No, f(1)?, Trans::Yes, *rows, *inp, *n, false);
            if *bias {
                elementwise::add_bias_rows(outs[0], f(2)?);
            }
        }
        Call::SumRows { cols, accumulate } => elementwise::sum_rows(f(0)?, *cols, outs[0], *accumulate),
        Call::Binary { kind, a_shape, b_shape } => broadcast::binary(*kind, f(0)?, a_shape, f(1)?, b_shape, outs[0]),
        Call::ReduceTo { from, to } => broadcast::reduce_to(f(0)?, from, to, outs[0]),
        Call::Expand { from, to } => broadcast::expand(f(0)?, from, to, outs[0]),
        Call::Scale { factor } => outs[0].iter_mut().zip(f(0)?).for_each(|(y, &x)| *y = x * factor),
        Call::AddAssign => elementwise::add_assign(outs[0], f(0)?),
        Call::Act { kind } => host_activation(*kind, f(0)?, outs[0]),
        Call::ActBackward { kind } => host_activation_backward(*kind, f(0)?, f(1)?, outs[0]),
        _ => return run_host_rest(call, ins, outs),
    }
    Ok(())
}

/// The second half of [`run_host`]'s dispatch (arity already checked).
fn run_host_rest(call: &Call, ins: &[HostIn<'_>], outs: &mut [&mut [f32]]) -> Result<()> {
    let f = |i: usize| ins[i].f32(call);
    match call {
        Call::Softmax { cols, causal } => softmax::softmax(f(0)?, *cols, *causal, outs[0]),
        Call::SoftmaxBackward { cols } => softmax::softmax_backward(f(0)?, f(1)?, *cols, outs[0]),
        Call::LayerNorm { cols, eps } => {
            let [y, stats] = outs else { match unreachable_arity(call)? {} };
            norm::layernorm(f(0)?, f(1)?, f(2)?, *cols, *eps, y, stats);
        }
        Call::LayerNormBackward { cols } => {
            let [dx, dg, db] = outs else { match unreachable_arity(call)? {} };
            norm::layernorm_backward(f(0)?, f(1)?, f(2)?, f(3)?, *cols, dx, dg, db, false);
        }
        Call::RmsNorm { cols, eps } => {
            let [y, rstd] = outs else { match unreachable_arity(call)? {} };
            norm::rmsnorm(f(0)?, f(1)?, *cols, *eps, y, rstd);
        }
        Call::RmsNormBackward { cols } => {
            let [dx, dg] = outs else { match unreachable_arity(call)? {} };
            norm::rmsnorm_backward(f(0)?, f(1)?, f(2)?, f(3)?, *cols, dx, dg);
        }
        Call::Gather { dim } => embedding::gather(f(0)?, *dim, ins[1].ids(call)?, outs[0]),
        Call::ScatterAdd { dim } => embedding::scatter_add(f(0)?, *dim, ins[1].ids(call)?, outs[0]),
        Call::Dropout { seed, key, p } => dropout::apply(f(0)?, *seed, *key, *p, outs[0]),
        Call::Transpose { shape, d0, d1 } => layout::transpose(f(0)?, shape, *d0, *d1, outs[0]),
        Call::Narrow { cols, start, len } => layout::narrow(f(0)?, *cols, *start, *len, outs[0]),
        Call::NarrowBackward { cols, start, len } => layout::narrow_backward(f(0)?, *cols, *start, *len, outs[0]),
        Call::Concat { widths } => {
            let parts: Vec<&[f32]> = (0..ins.len()).map(f).collect::<Result<_>>()?;
            layout::concat(&parts, widths, outs[0]);
        }
        Call::Sum => outs[0][0] = f(0)?.iter().fold(0.0f64, |a, &v| a + f64::from(v)) as f32,
        Call::Norm => {
            let sum = f(0)?.iter().fold(0.0f64, |acc, &v| acc + f64::from(v) * f64::from(v));
            outs[0][0] = sum.sqrt() as f32;
        }
        Call::Mse => outs[0][0] = loss::mse(f(0)?, f(1)?),
        Call::MseBackward { scale } => loss::mse_backward(f(0)?, f(1)?, *scale, outs[0]),
        Call::CrossEntropy { classes } => {
            let [probs, value] = outs else { match unreachable_arity(call)? {} };
            value[0] = loss::cross_entropy(f(0)?, *classes, ins[1].ids(call)?, probs);
        }
        Call::CrossEntropyBackward { classes, scale } => {
            loss::cross_entropy_backward(f(0)?, *classes, ins[1].ids(call)?, *scale, outs[0]);
        }
        Call::Sgd { cfg, first } => {
            let [param, buf] = outs else { match unreachable_arity(call)? {} };
            sgd_step(param, f(0)?, buf, *first, cfg);
        }
        Call::Adam { cfg, step, decoupled } => {
            let [param, m, v] = outs else { match unreachable_arity(call)? {} };
            let step_fn = if *decoupled { adamw_step } else { adam_step };
            step_fn(param, f(0)?, m, v, *step, cfg);
        }
        _ => return Err(Error::Internal(format!("{} reached the second dispatch", call.name()))),
    }
    Ok(())
}

fn unreachable_arity(call: &Call) -> Result<std::convert::Infallible> {
    Err(Error::Internal(format!("{}: arity checked but outputs differ", call.name())))
}

fn host_activation(kind: Activation, x: &[f32], y: &mut [f32]) {
    match kind {
        Activation::Relu => activation::relu(x, y),
        Activation::Gelu => activation::gelu(x, y),
        Activation::Tanh => activation::tanh(x, y),
        Activation::Silu => activation::silu(x, y),
    }
}

fn host_activation_backward(kind: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    match kind {
        Activation::Relu => activation::relu_backward(saved, dy, dx),
        Activation::Gelu => activation::gelu_backward(saved, dy, dx),
        Activation::Tanh => activation::tanh_backward(saved, dy, dx),
        Activation::Silu => activation::silu_backward(saved, dy, dx),
    }
}
