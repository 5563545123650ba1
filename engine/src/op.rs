//! The op enum recorded on the tape.
//!
//! Invariant: ops name tensors by [`TensorId`] and parameters by their stable
//! PyTorch-style name, never by pointer, so a tape is plain data that can be
//! archived and backwarded on another worker.

use crate::TensorId;

/// Elementwise nonlinearity of a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Activation {
    Relu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    Tanh,
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Op {
    /// `out = x · weightᵀ (+ bias)`; x is `[rows, in]`, weight `[out, in]`.
    Linear { x: TensorId, weight: String, bias: Option<String>, out: TensorId },
    /// `out = act(x)`.
    Activation { kind: Activation, x: TensorId, out: TensorId },
    /// Layer normalisation over the last dimension; `stats` holds the
    /// per-row mean and reciprocal standard deviation.
    LayerNorm { x: TensorId, weight: String, bias: String, eps: f32, stats: TensorId, out: TensorId },
    /// `out = a + b`.
    Add { a: TensorId, b: TensorId, out: TensorId },
    /// `out = mean((pred - target)^2)`, a scalar.
    MseLoss { pred: TensorId, target: TensorId, out: TensorId },
    /// `out = mean_r(-log softmax(logits_r)[target_r])`; `probs` is the softmax.
    CrossEntropyLoss { logits: TensorId, target: TensorId, probs: TensorId, out: TensorId },
}

impl Op {
    /// The tensor this op produces.
    pub fn output(&self) -> TensorId {
        match self {
            Op::Linear { out, .. }
            | Op::Activation { out, .. }
            | Op::LayerNorm { out, .. }
            | Op::Add { out, .. }
            | Op::MseLoss { out, .. }
            | Op::CrossEntropyLoss { out, .. } => *out,
        }
    }

    /// Tensors this op's backward reads. A segment carries exactly these.
    pub fn saved(&self) -> Vec<TensorId> {
        match self {
            Op::Linear { x, .. } => vec![*x],
            Op::Activation { kind: Activation::Gelu, x, .. } => vec![*x],
            Op::Activation { out, .. } => vec![*out],
            Op::LayerNorm { x, stats, .. } => vec![*x, *stats],
            Op::Add { .. } => Vec::new(),
            Op::MseLoss { pred, target, .. } => vec![*pred, *target],
            Op::CrossEntropyLoss { probs, target, .. } => vec![*probs, *target],
        }
    }

    /// Parameter names this op reads.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Op::Linear { weight, bias, .. } => std::iter::once(weight.as_str()).chain(bias.as_deref()).collect(),
            Op::LayerNorm { weight, bias, .. } => vec![weight.as_str(), bias.as_str()],
            _ => Vec::new(),
        }
    }
}
