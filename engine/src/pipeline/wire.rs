//! Encoding a message into a frame without copying its tensors.
//!
//! [`encode_chunks`] archives a message the way [`super::protocol::encode`]
//! does, but through a writer that does not copy large element buffers:
//! every write of at least [`BORROW_MIN`] bytes that lies inside a buffer
//! the message owns becomes a chunk that *borrows* that buffer (the message
//! moves into an `Arc` that every such chunk holds). Small writes (names,
//! shapes, headers, padding) are copied into small owned chunks.
//!
//! Invariant: the chunks, concatenated, are byte for byte the archive
//! [`super::protocol::encode`] makes of the same message (rkyv writers only
//! append, and positions count borrowed bytes as if they were copied), so
//! the receiver reassembles them into one aligned buffer and decodes as
//! before. A write is borrowed only if it lies entirely inside one buffer
//! listed by [`owned_buffers`]; anything else is copied, so a message whose
//! buffers are not listed still encodes correctly, just with copies.

use std::sync::Arc;

use bytes::Bytes;
use rkyv::rancor::BoxedError;
use rkyv::ser::{Positional, Writer};
use rkyv::util::AlignedVec;

use super::migrate::Handover;
use super::protocol::Message;
use crate::segment::Storage;
use crate::{Error, Result, Tensor};

/// Writes at least this large are borrowed instead of copied (smaller
/// chunks would cost more in per-chunk bookkeeping than the copy saves).
pub const BORROW_MIN: usize = 16 << 10;

/// A frame as consecutive chunks, large tensor payloads borrowed.
#[derive(Clone, Debug, Default)]
pub struct Chunks {
    pub chunks: Vec<Bytes>,
    /// Total bytes (the frame length).
    pub len: usize,
}

impl Chunks {
    /// All chunks in one buffer (tests, and frames that must be contiguous).
    pub fn concat(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.chunks.iter().for_each(|c| out.extend_from_slice(c));
        out
    }
}

/// A part of the frame being written.
enum Piece {
    Copied(Vec<u8>),
    /// `len` bytes at address `start`, inside a buffer the message owns.
    Borrowed {
        start: usize,
        len: usize,
    },
}

/// An rkyv writer that records large owned writes instead of copying them.
struct ScatterWriter {
    /// Sorted, disjoint `(start, end)` address ranges of the message's buffers.
    owned: Vec<(usize, usize)>,
    pieces: Vec<Piece>,
    small: Vec<u8>,
    pos: usize,
}

impl ScatterWriter {
    fn is_owned(&self, bytes: &[u8]) -> bool {
        let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
        let i = self.owned.partition_point(|&(s, _)| s <= start);
        i > 0 && end <= self.owned[i - 1].1
    }

    fn finish(mut self) -> Vec<Piece> {
        if !self.small.is_empty() {
            self.pieces.push(Piece::Copied(std::mem::take(&mut self.small)));
        }
        self.pieces
    }
}

impl Positional for ScatterWriter {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for ScatterWriter {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), E> {
        if bytes.len() >= BORROW_MIN && self.is_owned(bytes) {
            if !self.small.is_empty() {
                self.pieces.push(Piece::Copied(std::mem::take(&mut self.small)));
            }
            self.pieces.push(Piece::Borrowed { start: bytes.as_ptr() as usize, len: bytes.len() });
        } else {
            self.small.extend_from_slice(bytes);
        }
        self.pos += bytes.len();
        Ok(())
    }
}

/// The owner of a borrowed chunk: the message and a range of one of its buffers.
struct Borrowed {
    message: Arc<Message>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Borrowed {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `start..start + len` lies inside an element buffer of
        // `*self.message` (checked by `ScatterWriter::is_owned` against
        // `owned_buffers` of this very message before it moved into the Arc;
        // moving a message does not move the heap buffers its Vecs own). The
        // Arc keeps the message alive as long as this chunk, and nothing
        // mutates it: it is shared immutably and its buffers have no
        // interior mutability. Any byte pattern is a valid `u8`.
        let _ = &self.message;
        unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
    }
}

/// Archives `message` into chunks that borrow its large buffers (see the
/// module docs). Resident tensors are downloaded first, as in
/// [`super::protocol::encode_in`].
pub fn encode_chunks(message: Message) -> Result<Chunks> {
    let mut message = if super::host::is_resident(&message) { super::host::to_host(&message)? } else { message };
    let owned = owned_buffers(&mut message);
    let writer = ScatterWriter { owned, pieces: Vec::new(), small: Vec::with_capacity(4096), pos: 0 };
    let writer = rkyv::api::high::to_bytes_in::<_, BoxedError>(&message, writer)
        .map_err(|e| Error::Protocol(format!("cannot encode {}: {e}", message.kind())))?;
    let len = writer.pos;
    let message = Arc::new(message);
    let chunks = writer
        .finish()
        .into_iter()
        .map(|piece| match piece {
            Piece::Copied(v) => Bytes::from(v),
            Piece::Borrowed { start, len } => Bytes::from_owner(Borrowed { message: message.clone(), start, len }),
        })
        .collect();
    Ok(Chunks { chunks, len })
}

/// Sorted address ranges of the element buffers `message` owns: its
/// tensors', saved tensors' and optimizer states' (host) elements. Takes
/// `&mut` only to reuse the tensor visitor of [`super::host`]; nothing changes.
fn owned_buffers(message: &mut Message) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut add = |bytes: &[u8]| {
        if !bytes.is_empty() {
            ranges.push((bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len()));
        }
    };
    let _ = super::host::visit(message, &mut |t: &mut Tensor| {
        tensor_bytes(t).into_iter().for_each(&mut add);
        Ok(())
    });
    match message {
        Message::Handover { handover, .. } => handover_buffers(handover, &mut add),
        Message::ReplicaSeed { optimizer, .. } => {
            optimizer.iter().flat_map(|(_, s)| &s.buffers).for_each(|b| add(bytemuck::cast_slice(b)))
        }
        _ => {}
    }
    ranges.sort_unstable();
    ranges
}

fn tensor_bytes(t: &Tensor) -> Option<&[u8]> {
    match (t.values(), t.ids()) {
        (Ok(v), _) => Some(bytemuck::cast_slice(v)),
        (_, Ok(ids)) => Some(bytemuck::cast_slice(ids)),
        _ => None,
    }
}

fn handover_buffers(h: &Handover, add: &mut impl FnMut(&[u8])) {
    for layer in &h.layers {
        layer.optimizer.iter().flat_map(|(_, s)| &s.buffers).for_each(|b| add(bytemuck::cast_slice(b)));
        for saved in layer.segments.iter().flat_map(|s| &s.saved) {
            match &saved.storage {
                Storage::F32(v) => add(bytemuck::cast_slice(v)),
                Storage::Bf16(v) => add(bytemuck::cast_slice(v)),
                Storage::Ids(v) => add(bytemuck::cast_slice(v)),
            }
        }
    }
}

/// The chunks of `message` in one 16-byte aligned buffer, as a receiver
/// reassembles them (tests).
pub fn reassemble(chunks: &Chunks) -> AlignedVec {
    let mut out = AlignedVec::with_capacity(chunks.len);
    chunks.chunks.iter().for_each(|c| out.extend_from_slice(c));
    out
}

#[cfg(test)]
#[path = "wire_tests.rs"]
pub(super) mod tests;
