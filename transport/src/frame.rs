//! The wire framing, as pure functions on byte buffers (no I/O).
//!
//! Every frame is a `u64` little-endian length followed by that many bytes.
//! The same decoder reads the control stream (many frames) and each bulk
//! stream (exactly one frame), so garbage on the wire is tested here without
//! a network.
//!
//! A *split* frame ([`Outbound::split`], decoded in [`crate::parts`])
//! announces its length with the top bit ([`SPLIT`]) set and carries a part
//! table, a head and parts of whole 4-byte words; the receiver reads each
//! part straight into a buffer of its own, so a payload that is mostly a
//! few large arrays is copied once in user space and handed over as those
//! buffers. Every length the plain framing accepts keeps its meaning.
//!
//! Invariant: an announced length is checked against the maximum *before*
//! anything is allocated, and the body buffer is reserved to exactly the
//! validated length, so a hostile header cannot make us allocate more than
//! `max_frame_bytes` (for a split frame: head and parts together).

use crate::parts::{self, SplitBody};
use crate::{Error, Result};
use bytes::Bytes;
use rkyv::util::AlignedVec;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

/// The header bit that marks a split frame (the other bits: its length).
pub const SPLIT: u64 = 1 << 63;

/// A 16-byte aligned payload buffer, so that rkyv archives can be accessed in place.
pub type Aligned = AlignedVec<16>;

/// A large part of a split frame: whole 4-byte words in a buffer of its own.
pub type Part = Vec<u32>;

/// One received frame: the payload (16-byte aligned) or, for a split
/// frame, its head and its parts in the order they were sent.
///
/// Derefs to the payload, or the head of a split frame.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    head: Aligned,
    /// `Some` exactly for a split frame (even one of no parts).
    parts: Option<Vec<Part>>,
}

impl Frame {
    /// An empty plain frame.
    pub fn new() -> Frame {
        Frame::default()
    }

    /// A split frame of `head` and `parts`.
    pub fn split(head: Aligned, parts: Vec<Part>) -> Frame {
        Frame { head, parts: Some(parts) }
    }

    /// The payload (plain frame) or the head (split frame).
    pub fn as_slice(&self) -> &[u8] {
        self.head.as_slice()
    }

    /// Whether the sender split this frame ([`Outbound::split`]).
    pub fn is_split(&self) -> bool {
        self.parts.is_some()
    }

    /// The parts of a split frame (none for a plain one).
    pub fn parts(&self) -> &[Part] {
        self.parts.as_deref().unwrap_or(&[])
    }

    /// The head (or payload) and the parts, without copying either.
    pub fn into_split(self) -> (Aligned, Vec<Part>) {
        (self.head, self.parts.unwrap_or_default())
    }
}

impl From<Aligned> for Frame {
    fn from(head: Aligned) -> Frame {
        Frame { head, parts: None }
    }
}

impl std::ops::Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.head.as_slice()
    }
}

/// The header announcing a payload of `len` bytes.
pub fn encode_header(len: usize) -> [u8; HEADER_LEN] {
    (len as u64).to_le_bytes()
}

/// A frame to send: its payload as consecutive chunks, which go to QUIC
/// as they are (no chunk is copied into a frame buffer).
#[derive(Clone, Debug, Default)]
pub struct Outbound {
    chunks: Vec<Bytes>,
    /// Payload bytes, a split frame's table included.
    len: usize,
    /// A split frame's part table (goes first in the payload).
    table: Option<Bytes>,
}

impl Outbound {
    /// The frame whose payload is `chunks`, concatenated.
    pub fn new(chunks: Vec<Bytes>) -> Outbound {
        let len = chunks.iter().map(Bytes::len).sum();
        Outbound { chunks, len, table: None }
    }

    /// A split frame: `head` (the chunks, concatenated), then each of
    /// `parts`, which the receiver gets back as buffers of their own
    /// ([`Frame::parts`]). Errors if a part is not whole 4-byte words.
    pub fn split(head: Vec<Bytes>, parts: Vec<Bytes>) -> Result<Outbound> {
        let head_len = head.iter().map(Bytes::len).sum();
        let table = parts::encode_table(head_len, &parts)?;
        let len = table.len() + head_len + parts.iter().map(Bytes::len).sum::<usize>();
        let mut chunks = head;
        chunks.extend(parts);
        Ok(Outbound { chunks, len, table: Some(Bytes::from(table)) })
    }

    /// Payload bytes (without the header).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this is a split frame ([`Outbound::split`]).
    pub fn is_split(&self) -> bool {
        self.table.is_some()
    }

    /// The header, then the payload chunks: what goes on the stream.
    pub fn with_header(self) -> Vec<Bytes> {
        let mut all = Vec::with_capacity(self.chunks.len() + 2);
        let flag = if self.table.is_some() { SPLIT } else { 0 };
        all.push(Bytes::copy_from_slice(&(self.len as u64 | flag).to_le_bytes()));
        all.extend(self.table);
        all.extend(self.chunks.into_iter().filter(|c| !c.is_empty()));
        all
    }
}

impl From<Bytes> for Outbound {
    fn from(bytes: Bytes) -> Outbound {
        Outbound::new(vec![bytes])
    }
}

impl From<Vec<u8>> for Outbound {
    fn from(bytes: Vec<u8>) -> Outbound {
        Outbound::from(Bytes::from(bytes))
    }
}

/// Header and payload in one buffer (for small frames and tests).
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&encode_header(payload.len()));
    out.extend_from_slice(payload);
    out
}

/// The payload length a header announces, if it is at most `max`.
pub fn check_header(header: [u8; HEADER_LEN], max: usize) -> Result<usize> {
    let size = u64::from_le_bytes(header);
    match usize::try_from(size) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(Error::FrameTooLarge { size, max: max as u64 }),
    }
}

/// The payload length a header announces and whether the frame is split,
/// if that length is at most `max`. A length the plain framing accepts is
/// always plain, so [`SPLIT`] changes no frame that was valid before it.
pub fn parse_header(header: [u8; HEADER_LEN], max: usize) -> Result<(usize, bool)> {
    let size = u64::from_le_bytes(header);
    if let Ok(len) = check_header(header, max) {
        return Ok((len, false));
    }
    match usize::try_from(size & !SPLIT) {
        Ok(len) if size & SPLIT != 0 && len <= max => Ok((len, true)),
        _ => Err(Error::FrameTooLarge { size, max: max as u64 }),
    }
}

/// Incremental frame decoder: feed it chunks as they arrive.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    header: [u8; HEADER_LEN],
    header_have: usize,
    body: Option<Body>,
}

#[derive(Debug)]
enum Body {
    Plain { buf: Aligned, len: usize },
    Split(SplitBody),
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder { max: max_frame_bytes, header: [0; HEADER_LEN], header_have: 0, body: None }
    }

    /// Consumes all of `input`, handing every completed frame to `on_frame`.
    ///
    /// After an error the stream is broken: do not feed the decoder again.
    pub fn feed(&mut self, mut input: &[u8], on_frame: &mut dyn FnMut(Frame)) -> Result<()> {
        while !input.is_empty() {
            input = match self.body.as_mut() {
                None => self.feed_header(input, on_frame)?,
                Some(Body::Plain { buf, len }) => {
                    let n = (*len - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..n]);
                    if buf.len() == *len {
                        if let Some(Body::Plain { buf, .. }) = self.body.take() {
                            on_frame(Frame::from(buf));
                        }
                    }
                    &input[n..]
                }
                Some(Body::Split(body)) => {
                    let n = body.feed(input)?;
                    if body.is_done() {
                        if let Some(Body::Split(body)) = self.body.take() {
                            on_frame(body.into_frame());
                        }
                    }
                    &input[n..]
                }
            };
        }
        Ok(())
    }

    fn feed_header<'a>(&mut self, input: &'a [u8], on_frame: &mut dyn FnMut(Frame)) -> Result<&'a [u8]> {
        let n = (HEADER_LEN - self.header_have).min(input.len());
        self.header[self.header_have..self.header_have + n].copy_from_slice(&input[..n]);
        self.header_have += n;
        if self.header_have == HEADER_LEN {
            self.header_have = 0;
            match parse_header(self.header, self.max)? {
                (0, false) => on_frame(Frame::new()),
                (len, false) => self.body = Some(Body::Plain { buf: receive_buffer(len), len }),
                (len, true) => self.body = Some(Body::Split(SplitBody::new(len)?)),
            }
        }
        Ok(&input[n..])
    }

    /// True when no frame is partly received (a stream may end here).
    pub fn is_between_frames(&self) -> bool {
        self.header_have == 0 && self.body.is_none()
    }

    /// Call when the stream ends: an error if it ended inside a frame.
    ///
    /// Sizes count the header, so a stream that stopped inside the header
    /// reports fewer than [`HEADER_LEN`] bytes expected-of-8.
    pub fn finish(&self) -> Result<()> {
        let truncated = |received: usize, len: usize| {
            Err(Error::TruncatedFrame { received: (HEADER_LEN + received) as u64, expected: (HEADER_LEN + len) as u64 })
        };
        match &self.body {
            Some(Body::Plain { buf, len }) => truncated(buf.len(), *len),
            Some(Body::Split(body)) => truncated(body.received(), body.len()),
            None if self.header_have > 0 => {
                Err(Error::TruncatedFrame { received: self.header_have as u64, expected: HEADER_LEN as u64 })
            }
            None => Ok(()),
        }
    }
}

/// Frames at least this large get huge pages where the OS allows.
const HUGE_PAGE_MIN: usize = 8 << 20;

/// An empty buffer with room for exactly `len` bytes, for a frame being
/// received or written.
///
/// Filling a fresh buffer costs a page fault per 4 KiB page, which capped
/// receiving at about 1 GB/s on our 2-core machine; asking Linux for
/// transparent huge pages (2 MiB) raised the fill rate to about 4 GB/s.
pub fn receive_buffer(len: usize) -> Aligned {
    let mut buf = Aligned::with_capacity(len);
    advise_huge_pages(buf.as_mut_ptr() as usize, buf.capacity());
    buf
}

/// A split frame's part of `len` bytes: an empty buffer with room for
/// exactly its words (huge pages as in [`receive_buffer`]).
pub(crate) fn part_buffer(len: usize) -> Part {
    let mut part = Part::with_capacity(len / 4);
    advise_huge_pages(part.as_mut_ptr() as usize, part.capacity() * 4);
    part
}

/// Asks for huge pages on the 2 MiB pages inside the `capacity` bytes of
/// allocation at `base`, if it is at least [`HUGE_PAGE_MIN`].
fn advise_huge_pages(base: usize, capacity: usize) {
    #[cfg(target_os = "linux")]
    if capacity >= HUGE_PAGE_MIN {
        advise_range(base, capacity);
    }
    let _ = (base, capacity);
}

#[cfg(target_os = "linux")]
fn advise_range(base: usize, capacity: usize) {
    const HUGE: usize = 2 << 20;
    let start = base.next_multiple_of(HUGE);
    let end = (base + capacity) & !(HUGE - 1);
    if end > start {
        // SAFETY: [start, end) is page-aligned and lies inside the allocation
        // at `base` (its capacity), which the caller owns and keeps alive
        // for the call.
        // MADV_HUGEPAGE only changes how the kernel backs those pages, never
        // their contents, so no memory Rust can observe changes. The result
        // is ignored on purpose: the advice is optional (THP may be off).
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// Decodes a complete byte buffer into frames (a whole stream at once).
pub fn decode_all(bytes: &[u8], max_frame_bytes: usize) -> Result<Vec<Frame>> {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    let mut frames = Vec::new();
    decoder.feed(bytes, &mut |f| frames.push(f))?;
    decoder.finish()?;
    Ok(frames)
}

#[cfg(test)]
#[path = "frame_split_tests.rs"]
mod split_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(frames: &[Frame]) -> Vec<Vec<u8>> {
        frames.iter().map(|f| f.as_slice().to_vec()).collect()
    }

    #[test]
    fn chunked_frames_arrive_as_one_aligned_payload() {
        // Ragged chunk sizes, an empty chunk, and every split of the stream.
        let payload: Vec<u8> = (0..301u32).map(|i| (i * 7 % 251) as u8).collect();
        let cuts = [0, 1, 1, 17, 160, 301];
        let chunks = cuts.windows(2).map(|w| Bytes::copy_from_slice(&payload[w[0]..w[1]])).collect();
        let out = Outbound::new(chunks);
        assert_eq!(out.len(), 301);
        let wire: Vec<u8> = out.with_header().concat();
        assert_eq!(wire, encode_frame(&payload));
        for split in [0, 3, 8, 9, 100, wire.len()] {
            let mut decoder = FrameDecoder::new(1000);
            let mut frames = Vec::new();
            decoder.feed(&wire[..split], &mut |f| frames.push(f)).unwrap();
            decoder.feed(&wire[split..], &mut |f| frames.push(f)).unwrap();
            decoder.finish().unwrap();
            assert_eq!(payloads(&frames), vec![payload.clone()]);
            assert_eq!(frames[0].as_ptr() as usize % 16, 0);
        }
    }

    #[test]
    fn round_trip_in_every_split() {
        let mut wire = encode_frame(b"hello");
        wire.extend(encode_frame(b""));
        wire.extend(encode_frame(&[7u8; 100]));
        for split in 0..wire.len() {
            let mut decoder = FrameDecoder::new(1000);
            let mut frames = Vec::new();
            decoder.feed(&wire[..split], &mut |f| frames.push(f)).unwrap();
            decoder.feed(&wire[split..], &mut |f| frames.push(f)).unwrap();
            decoder.finish().unwrap();
            assert_eq!(payloads(&frames), vec![b"hello".to_vec(), vec![], vec![7u8; 100]]);
        }
    }

    #[test]
    fn byte_at_a_time_frames_are_aligned() {
        let wire = encode_frame(&[1u8; 33]);
        let mut decoder = FrameDecoder::new(64);
        let mut frames = Vec::new();
        for b in &wire {
            decoder.feed(std::slice::from_ref(b), &mut |f| frames.push(f)).unwrap();
        }
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_ptr() as usize % 16, 0);
        assert!(decoder.is_between_frames());
    }

    #[test]
    fn oversized_header_is_refused_before_allocating() {
        let wire = u64::MAX.to_le_bytes();
        let err = decode_all(&wire, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { size: u64::MAX, max } if max == 1 << 20));
        assert!(err.to_string().contains(&u64::MAX.to_string()), "{err}");
        let just_over = encode_header(1025);
        assert!(decode_all(&just_over, 1024).is_err());
        let exact = encode_frame(&[0u8; 1024]);
        assert_eq!(decode_all(&exact, 1024).unwrap().len(), 1);
    }

    #[test]
    fn truncated_body_and_header_are_reported() {
        let wire = encode_frame(&[9u8; 10]);
        let err = decode_all(&wire[..12], 100).unwrap_err();
        assert!(matches!(err, Error::TruncatedFrame { received: 12, expected: 18 }), "{err}");
        let err = decode_all(&wire[..3], 100).unwrap_err();
        assert!(matches!(err, Error::TruncatedFrame { received: 3, expected: 8 }), "{err}");
        assert!(decode_all(&[], 100).unwrap().is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic pseudo-random byte soup, fed in odd-sized chunks.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..200 {
            let bytes: Vec<u8> = (0..(round * 7 % 97))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 7) as u8 // small values make short, valid-looking lengths
                })
                .collect();
            let mut decoder = FrameDecoder::new(64);
            let mut total = 0;
            for chunk in bytes.chunks(5) {
                if decoder.feed(chunk, &mut |f| total += f.len()).is_err() {
                    break;
                }
            }
            let _ = decoder.finish();
            assert!(total <= bytes.len());
        }
    }
}
