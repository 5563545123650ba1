//! Messages between workers whose element buffers are adopted by the
//! receiver, not copied: handovers, activations, gradients, replays and
//! replica messages ([`splits`]).
//!
//! [`encode_split`] moves every host element buffer out of such a message
//! (f32 values and token ids of its tensors; for a handover also optimizer
//! state and saved tensors, bf16 saved tensors excepted since they are not
//! whole words; for a replica seed its optimizer state) in the order of
//! [`for_each_buffer`], and archives what is left: the *head*, every moved
//! buffer left empty in it, every shape kept. The buffers travel as the
//! parts of one split frame (the transport's `Outbound::split`), which the
//! receiving transport reads each into a word buffer of its own.
//! [`decode_split`] decodes the head and puts part `i` back as buffer `i`
//! of the same traversal, without copying it (an f32 buffer is the word
//! buffer re-typed: same size and alignment), then checks the message as
//! [`super::protocol::decode`] does.
//!
//! Invariants: the traversal depends only on the message's structure (how
//! many layers, tensors, segments ...), never on element counts, so sender
//! and receiver visit the same buffers in the same order; the head carries
//! every moved buffer empty. A part count that differs from the head's
//! buffers, a buffer the head did not leave empty, or a part whose length
//! does not match its tensor's shape is an [`Error::Protocol`] (the
//! peer's fault), never a panic.

use bytes::Bytes;
use rkyv::util::AlignedVec;

use super::protocol::{self, Message};
use crate::segment::Storage;
use crate::tensor::BufferMut;
use crate::{Error, Result};

/// A message as a split frame: its head (an archive) and its element buffers.
#[derive(Debug)]
pub struct Split {
    pub head: AlignedVec,
    /// The element buffers in traversal order, each borrowed (not copied)
    /// from the buffer moved out of the message.
    pub parts: Vec<Bytes>,
}

/// One element buffer of a message, lent mutably.
enum Buffer<'a> {
    F32(&'a mut Vec<f32>),
    U32(&'a mut Vec<u32>),
}

/// Whether `message` travels as a split frame when it is large: the
/// messages between workers ([`Message::is_between_workers`]) that carry
/// element buffers, which is all of them but a recompute request. Only
/// these are accepted as split frames ([`decode_split`]).
pub fn splits(message: &Message) -> bool {
    message.is_between_workers() && !matches!(message, Message::Recompute { .. })
}

/// Calls `f` on every element buffer of `message` that travels as a part,
/// in a fixed order: the tensors (in [`super::host::visit`]'s order), then
/// a handover's per-layer optimizer state buffers and f32/id saved tensors,
/// or a replica seed's optimizer state buffers.
fn for_each_buffer(message: &mut Message, f: &mut dyn FnMut(Buffer<'_>) -> Result<()>) -> Result<()> {
    super::host::visit(message, &mut |t| match t.buffer_mut() {
        BufferMut::F32(v) => f(Buffer::F32(v)),
        BufferMut::Ids(v) => f(Buffer::U32(v)),
    })?;
    let handover = match message {
        Message::Handover { handover, .. } => handover,
        Message::ReplicaSeed { optimizer, .. } => {
            return optimizer.iter_mut().flat_map(|(_, s)| &mut s.buffers).try_for_each(|b| f(Buffer::F32(b)));
        }
        _ => return Ok(()),
    };
    for layer in &mut handover.layers {
        layer.optimizer.iter_mut().flat_map(|(_, s)| &mut s.buffers).try_for_each(|b| f(Buffer::F32(b)))?;
        for saved in layer.segments.iter_mut().flat_map(|s| &mut s.saved) {
            match &mut saved.storage {
                Storage::F32(v) => f(Buffer::F32(v))?,
                Storage::Ids(v) => f(Buffer::U32(v))?,
                Storage::Bf16(_) => {}
            }
        }
    }
    Ok(())
}

/// The owner of a part on the sender: a buffer moved out of the message.
enum Owned {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        match self {
            Owned::F32(v) => bytemuck::cast_slice(v),
            Owned::U32(v) => bytemuck::cast_slice(v),
        }
    }
}

/// Splits a message into its head and its element buffers (see the module
/// docs); a message that never travels split ([`splits`]) is an
/// [`Error::Internal`].
/// Resident tensors are downloaded first, as in [`protocol::encode_in`].
pub fn encode_split(message: Message) -> Result<Split> {
    if !splits(&message) {
        return Err(Error::Internal(format!("a {} never travels as a split frame", message.kind())));
    }
    let mut message = if super::host::is_resident(&message) { super::host::to_host(&message)? } else { message };
    let mut parts = Vec::new();
    for_each_buffer(&mut message, &mut |buffer| {
        let owned = match buffer {
            Buffer::F32(v) => Owned::F32(std::mem::take(v)),
            Buffer::U32(v) => Owned::U32(std::mem::take(v)),
        };
        parts.push(Bytes::from_owner(owned));
        Ok(())
    })?;
    let head = protocol::encode(&message)?;
    Ok(Split { head, parts })
}

/// Decodes a split frame's `head` and adopts `parts` as its element
/// buffers, without copying them (see the module docs).
pub fn decode_split(head: &[u8], parts: Vec<Vec<u32>>) -> Result<Message> {
    let mut message = protocol::decode_unchecked(head)?;
    if !splits(&message) {
        return Err(lying(format!("it holds a {}, which never travels split", message.kind())));
    }
    let count = parts.len();
    let (mut parts, mut used) = (parts.into_iter(), 0usize);
    for_each_buffer(&mut message, &mut |buffer| {
        let part =
            parts.next().ok_or_else(|| lying(format!("its head has more element buffers than its {count} parts")))?;
        used += 1;
        match buffer {
            Buffer::F32(v) if v.is_empty() => *v = as_f32(part),
            Buffer::U32(v) if v.is_empty() => *v = part,
            _ => return Err(lying(format!("element buffer {} is in its head, not in a part", used - 1))),
        }
        Ok(())
    })?;
    if used != count {
        return Err(lying(format!("it has {count} parts but its head only {used} element buffers")));
    }
    protocol::check_message(&message)?;
    Ok(message)
}

/// The same allocation as f32s: `u32` and `f32` have the same size and
/// alignment, so [`bytemuck::allocation::try_cast_vec`] re-types the Vec
/// without copying and cannot fail (the fallback copy is never taken).
fn as_f32(words: Vec<u32>) -> Vec<f32> {
    bytemuck::allocation::try_cast_vec(words).unwrap_or_else(|(_, words)| bytemuck::cast_slice(&words).to_vec())
}

/// A split frame that does not hold a well-formed message: the peer's fault.
fn lying(detail: String) -> Error {
    Error::Protocol(format!("a split frame from the peer is malformed: {detail}"))
}

#[cfg(test)]
#[path = "adopt_tests.rs"]
mod tests;
