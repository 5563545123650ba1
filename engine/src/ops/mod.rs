//! Op families. Each module holds everything about one family: the op as
//! the tape records it (plain data naming tensors by [`TensorId`]), its
//! [`Recorder`](crate::Recorder) method, its shape inference (which
//! validates received segments), the tensors its backward reads, its
//! backward rule, and the dispatch to CPU or CUDA kernels.
//!
//! Adding an op family: write its module, add one line to [`op_families!`]
//! below, add its kernel to `baton-kernels` and its finite-difference test.
//! The macro generates the [`Op`] enum and the exhaustive dispatch, so the
//! compiler names any family that lacks a rule.

pub mod activation;
pub mod binary;
pub mod dropout;
pub mod embedding;
pub mod layout;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod param;
pub mod softmax;

use crate::backward::{Ctx, Grads};
use crate::tensor::DType;
use crate::validate::Shapes;
use crate::{Result, TensorId};

/// Shape and element kind of a tensor, as shape inference tracks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Meta {
    /// An f32 tensor of `shape`.
    pub fn f32(shape: Vec<usize>) -> Meta {
        Meta { shape, dtype: DType::F32 }
    }
}

/// What every op family implements.
pub(crate) trait Rule {
    /// Short name used in error messages (`linear`, `softmax`).
    fn name(&self) -> &'static str;
    /// Tensors the forward reads.
    fn inputs(&self) -> Vec<TensorId>;
    /// Tensors the op defines: its result first, then auxiliary tensors its
    /// backward needs (normalisation statistics, softmax probabilities).
    fn outputs(&self) -> Vec<TensorId>;
    /// Tensors its backward reads; a segment carries exactly these (except
    /// parameters, which backward reads from the receiver's store by name).
    fn saved(&self) -> Vec<TensorId>;
    /// Shapes of [`Rule::outputs`] from the shapes of [`Rule::inputs`], or an
    /// error saying what does not fit.
    fn infer(&self, shapes: &Shapes) -> Result<Vec<Meta>>;
    /// Adds the gradients of the inputs given `dy`, the gradient of the result.
    fn backward(&self, ctx: &Ctx<'_>, dy: crate::Tensor, grads: &mut Grads) -> Result<()>;
}

/// Generates [`Op`] and its dispatch from the list of families.
macro_rules! op_families {
    ($($(#[$doc:meta])* $variant:ident($module:ident::$ty:ident),)*) => {
        /// One recorded operation. Ops name tensors by [`TensorId`] and
        /// parameters by their stable PyTorch-style name, never by pointer,
        /// so a tape is plain data that can be archived and backwarded on
        /// another worker.
        #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        pub enum Op {
            $($(#[$doc])* $variant($module::$ty),)*
        }

        impl Op {
            pub(crate) fn rule(&self) -> &dyn Rule {
                match self {
                    $(Op::$variant(op) => op,)*
                }
            }
        }
    };
}

op_families! {
    /// Reads a parameter by name.
    Param(param::Param),
    /// A data tensor (targets, masks, constants) carried in the segment.
    Constant(param::Constant),
    /// `x Wᵀ + b` on the last dimension.
    Linear(linear::Linear),
    /// Batched matrix product with optional transposes.
    Matmul(matmul::Matmul),
    /// Broadcasting add, sub, mul.
    Binary(binary::Binary),
    /// Multiplication by a constant.
    Scale(binary::Scale),
    /// Same elements, another shape.
    Reshape(layout::Reshape),
    /// Swap of two axes.
    Transpose(layout::Transpose),
    /// A slice of the last dimension.
    Narrow(layout::Narrow),
    /// Join along the last dimension.
    Concat(layout::Concat),
    /// Softmax over the last dimension, optionally causal.
    Softmax(softmax::Softmax),
    /// Embedding lookup.
    Embedding(embedding::Embedding),
    /// Layer normalisation over the last dimension.
    LayerNorm(norm::LayerNorm),
    /// RMS normalisation over the last dimension.
    RmsNorm(norm::RmsNorm),
    /// Elementwise nonlinearity.
    Activation(activation::ActivationOp),
    /// Counter-based dropout.
    Dropout(dropout::Dropout),
    /// Sum of all elements.
    Sum(loss::Sum),
    /// Mean squared error.
    Mse(loss::Mse),
    /// Softmax cross-entropy over the last dimension, integer targets.
    CrossEntropy(loss::CrossEntropy),
}

impl Op {
    /// The tensor this op produces (its result).
    pub fn output(&self) -> TensorId {
        self.rule().outputs()[0]
    }

    /// Tensors this op's backward reads.
    pub fn saved(&self) -> Vec<TensorId> {
        self.rule().saved()
    }

    /// The parameter name this op reads, if it is a parameter read.
    pub fn param(&self) -> Option<&str> {
        match self {
            Op::Param(p) => Some(&p.name),
            _ => None,
        }
    }

    /// Parameter names this op reads (for compatibility with callers that
    /// list a segment's parameters).
    pub fn params(&self) -> Vec<&str> {
        self.param().into_iter().collect()
    }
}

/// The shape with its last dimension split off: (rows, last).
pub(crate) fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        Some((&last, rest)) => (rest.iter().product(), last),
        None => (1, 1),
    }
}

/// The outputs of a launch as an array (their count is the call's arity).
pub(crate) fn take<const N: usize>(outs: Vec<crate::Tensor>) -> Result<[crate::Tensor; N]> {
    outs.try_into().map_err(|v: Vec<crate::Tensor>| {
        crate::Error::Internal(format!("a call returned {} outputs, not {N}", v.len()))
    })
}
