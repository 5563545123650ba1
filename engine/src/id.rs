//! Tensor and segment identities that mean the same on every worker.
//!
//! Invariant: an id is derived from *what* a tensor is (step, micro-batch,
//! layer, position inside the layer's recording), never from a process-local
//! counter or pointer, so a segment recorded on one worker can be spliced into
//! another worker's tape without renumbering anything.

use std::fmt;

/// Identity of one tensor of the training run.
///
/// `slot` 0 is reserved for the boundary input of `layer`, i.e. the activation
/// that enters the layer for this micro-batch; slots from 1 upwards number the
/// tensors the layer's ops produce, in recording order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct TensorId {
    pub step: u32,
    pub micro: u32,
    pub layer: u32,
    pub slot: u32,
}

/// Slot of the loss targets in the loss segment (far from recorded slots).
pub const TARGET_SLOT: u32 = u32::MAX;

impl TensorId {
    /// The activation entering `key.layer` for `key`'s micro-batch.
    pub fn boundary(key: SegmentKey) -> Self {
        Self::local(key, 0)
    }

    /// Tensor number `slot` recorded inside `key`'s segment.
    pub fn local(key: SegmentKey, slot: u32) -> Self {
        TensorId { step: key.step, micro: key.micro, layer: key.layer, slot }
    }

    /// The segment this tensor belongs to.
    pub fn segment(self) -> SegmentKey {
        SegmentKey { step: self.step, micro: self.micro, layer: self.layer }
    }
}

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.m{}.l{}.t{}", self.step, self.micro, self.layer, self.slot)
    }
}

/// Identity of one segment: the forward of one micro-batch through one layer
/// in one step. The loss has its own segment with `layer == layer count`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SegmentKey {
    pub step: u32,
    pub micro: u32,
    pub layer: u32,
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} micro-batch {} layer {}", self.step, self.micro, self.layer)
    }
}
