use crate::{SegmentKey, TensorId};

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tensor shapes that do not fit an op, a parameter or a file.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A parameter named by an op or expected by the model is not held here.
    #[error("parameter `{0}` is not held by this worker (check the weights file or the partition)")]
    MissingParam(String),
    /// A segment's backward needs a tensor the segment does not carry.
    #[error("segment {segment} lacks saved tensor {id}")]
    MissingSaved { id: TensorId, segment: SegmentKey },
    /// A layer referred to a tensor that was never recorded.
    #[error("segment {segment}: tensor {id} was not recorded in this segment")]
    UnknownTensor { id: TensorId, segment: SegmentKey },
    /// A segment archive that is corrupted, truncated or inconsistent.
    #[error("bad segment archive: {0}")]
    Archive(String),
    /// Training data that cannot be used (bad targets, empty batch).
    #[error("bad data: {0}")]
    Data(String),
    /// A model definition that cannot be built.
    #[error("bad model: {0}")]
    Model(String),
    /// An optimizer description that cannot be parsed or applied.
    #[error("bad optimizer: {0}")]
    Optimizer(String),
    /// Gradients of one layer arriving twice, or missing at the end of a step.
    #[error("gradient accumulation: {0}")]
    Accumulation(String),
    /// A schedule that cannot be parsed or cannot run to completion.
    #[error("schedule: {0}")]
    Schedule(String),
    /// Layers that cannot be placed on the workers.
    #[error("partition: {0}")]
    Partition(String),
    /// A peer (a worker, the coordinator) sent something that breaks the
    /// protocol or does not fit the state it is in: the peer's fault. A
    /// coordinator can drop such a peer when it holds no layers yet.
    #[error("{peer} broke the protocol: {detail}")]
    Peer { peer: String, detail: String },
    /// A member of the job vanished (its process exited, its connection
    /// was lost) before its layers were safe elsewhere.
    #[error("worker {worker} was lost: {reason}")]
    Lost { worker: u32, reason: String },
    /// A participant stopped the run on purpose and said why (a worker that
    /// failed, the coordinator that was stopped).
    #[error("{by} stopped the run: {reason}")]
    Aborted { by: String, reason: String },
    /// A request the job cannot carry out as asked (an admin's preempt of a
    /// worker that is no member, every worker preempted): the user's call.
    #[error("{0}")]
    Usage(String),
    /// A broken internal invariant of the pipeline: a bug in baton, whoever
    /// triggered it. Please report it with the message.
    #[error("internal error (a bug in baton): {0}")]
    Internal(String),
    /// A frame that is not a valid protocol message.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A device name that does not parse, or a device that cannot be used
    /// here (no GPU, no driver, a build without CUDA); the text says which
    /// and what to do.
    #[error("device {0}")]
    Device(String),
    /// A checkpoint that a fallback after a crash must read cannot be read
    /// (a part missing or damaged on the shared storage): the storage's fault.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The kernels refused (e.g. an invalid thread count).
    #[error(transparent)]
    Kernel(#[from] baton_kernels::Error),
}

impl Error {
    /// A protocol breach by `peer` (e.g. `worker 3`, `the coordinator`).
    pub fn peer(peer: impl std::fmt::Display, detail: impl Into<String>) -> Error {
        Error::Peer { peer: peer.to_string(), detail: detail.into() }
    }

    /// True when a peer is at fault ([`Error::Peer`]).
    pub fn is_peer(&self) -> bool {
        matches!(self, Error::Peer { .. })
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
