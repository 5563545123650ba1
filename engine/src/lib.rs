//! baton's engine: tensors, a relocatable tape autograd, optimizers and
//! single-process training.
//!
//! The tape is plain data. Forward of one micro-batch through one layer is
//! recorded as a [`Segment`]: ops naming tensors by [`TensorId`] (derived from
//! step, micro-batch, layer and position, so it means the same on every
//! worker) and parameters by name, plus exactly the saved tensors its
//! backward reads. A segment archives with rkyv, can be read back zero-copy
//! on another worker ([`segment::access`]) and backwarded there with the same
//! bits.
//!
//! Ops run on the CPU kernels or, per op, on a CUDA GPU ([`device`]): the
//! tensors themselves always live in host memory.

pub mod accumulate;
pub mod backward;
pub mod clip;
pub mod device;
mod error;
pub mod eval;
pub mod id;
pub mod init;
pub mod lr_schedule;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod pipeline;
pub mod record;
pub mod segment;
mod tensor;
pub mod train;
pub mod validate;

pub use accumulate::GradAccumulator;
pub use backward::BackwardOutput;
pub use device::{Backend, Device};
pub use error::{Error, Result};
pub use id::{SegmentKey, TensorId};
pub use lr_schedule::{LrSchedule, LrShape};
pub use model::{Layer, Loss, Model};
pub use ops::activation::Activation;
pub use ops::binary::BinaryOp;
pub use ops::Op;
pub use optim::{OptState, Optimizer, OptimizerConfig};
pub use params::{Init, ParamSpec, ParamStore};
pub use record::Recorder;
pub use segment::{Segment, SegmentBatch, SegmentView};
pub use tensor::{DType, RefData, Tensor, TensorRef};
pub use train::{Batch, Targets, Trainer};
