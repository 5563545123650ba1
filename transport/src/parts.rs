//! The body of a split frame: a part table, a head, then the parts, each
//! part received into a buffer of its own (pure functions, no I/O).
//!
//! Payload layout (all integers `u64` little-endian):
//! `head_len`, `count`, `count` part lengths in bytes, the head
//! (`head_len` bytes), then the parts in table order.
//!
//! Invariants: the table is checked before anything it announces is
//! allocated: `count` must fit in the announced payload, every part must be
//! whole 4-byte words, and table, head and parts must add up to exactly the
//! announced length (already checked against `max_frame_bytes`), and there
//! are at most [`MAX_PARTS`] parts, so a lying table is an
//! [`Error::Protocol`] and allocates no more than that length plus 32 bytes
//! of bookkeeping per part.
//! A part is filled word by word into a buffer reserved to its exact size,
//! so a part never moves once allocated: the buffer the transport hands
//! over is the one the bytes were read into.

use crate::frame::{part_buffer, receive_buffer, Aligned, Frame, Part};
use crate::{Error, Result};
use bytes::Bytes;

/// Bytes of the table's fixed prefix (`head_len`, `count`).
const PREFIX: usize = 16;

/// Most parts a split frame may have. Each costs the receiver about 32
/// bytes of bookkeeping (its length and its buffer's header) whatever its
/// size, so without a cap a frame of empty parts would make it allocate
/// about four times `max_frame_bytes`; a handover of one layer has tens to
/// a few thousand.
pub(crate) const MAX_PARTS: usize = 1 << 20;

/// The table of a split frame whose head is `head_len` bytes and whose parts are `parts`.
pub(crate) fn encode_table(head_len: usize, parts: &[Bytes]) -> Result<Vec<u8>> {
    if parts.len() > MAX_PARTS {
        return Err(Error::TooManyParts { count: parts.len(), max: MAX_PARTS });
    }
    let mut table = Vec::with_capacity(PREFIX + 8 * parts.len());
    table.extend_from_slice(&(head_len as u64).to_le_bytes());
    table.extend_from_slice(&(parts.len() as u64).to_le_bytes());
    for (index, part) in parts.iter().enumerate() {
        if part.len() % 4 != 0 {
            return Err(Error::PartNotWords { index, len: part.len() });
        }
        table.extend_from_slice(&(part.len() as u64).to_le_bytes());
    }
    Ok(table)
}

/// A split frame being received.
#[derive(Debug)]
pub(crate) struct SplitBody {
    /// Announced payload bytes (table, head and parts).
    len: usize,
    /// Payload bytes consumed so far.
    received: usize,
    /// The table's bytes read so far.
    table: Vec<u8>,
    /// Bytes of table to read: [`PREFIX`] until the prefix is in, then the whole table.
    table_len: usize,
    /// Part lengths in bytes, once the whole table is in and checked.
    lens: Option<Vec<usize>>,
    head_len: usize,
    head: Aligned,
    /// Complete parts.
    parts: Vec<Part>,
    /// The part being filled, and the bytes of a word not yet complete.
    current: Option<(Part, [u8; 4], usize)>,
}

impl SplitBody {
    /// A split frame announcing `len` payload bytes.
    pub(crate) fn new(len: usize) -> Result<SplitBody> {
        if len < PREFIX {
            return Err(lying(format!("a split frame of {len} bytes cannot hold its {PREFIX}-byte table")));
        }
        Ok(SplitBody {
            len,
            received: 0,
            table: Vec::with_capacity(PREFIX),
            table_len: PREFIX,
            lens: None,
            head_len: 0,
            head: Aligned::new(),
            parts: Vec::new(),
            current: None,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn received(&self) -> usize {
        self.received
    }

    /// Whether table, head and every part are in.
    pub(crate) fn is_done(&self) -> bool {
        self.lens.as_ref().is_some_and(|lens| {
            self.head.len() == self.head_len && self.current.is_none() && self.parts.len() == lens.len()
        })
    }

    /// The received frame (call once [`Self::is_done`]).
    pub(crate) fn into_frame(self) -> Frame {
        Frame::split(self.head, self.parts)
    }

    /// Consumes a prefix of `input` (all of it unless the frame completes
    /// first); returns how many bytes it took.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<usize> {
        let mut used = 0;
        // Each round takes input or completes a zero-length item, and there
        // are at most `2 + parts` items, so the loop is bounded.
        while !self.is_done() && (used < input.len() || self.next_is_empty()) {
            let n = self.step(&input[used..])?;
            used += n;
            self.received += n;
        }
        Ok(used)
    }

    /// True when the next item to receive has no bytes (so needs no input).
    fn next_is_empty(&self) -> bool {
        match &self.lens {
            None => false,
            Some(_) if self.head.len() < self.head_len => false,
            Some(lens) => self.current.is_none() && lens.get(self.parts.len()) == Some(&0),
        }
    }

    /// One step into the table, the head or the current part.
    fn step(&mut self, input: &[u8]) -> Result<usize> {
        if self.lens.is_none() {
            let n = (self.table_len - self.table.len()).min(input.len());
            self.table.extend_from_slice(&input[..n]);
            if self.table.len() == self.table_len {
                self.read_table()?;
            }
            return Ok(n);
        }
        if self.head.len() < self.head_len {
            let n = (self.head_len - self.head.len()).min(input.len());
            self.head.extend_from_slice(&input[..n]);
            return Ok(n);
        }
        Ok(self.fill_part(input))
    }

    /// Checks the prefix (then waits for the rest of the table) or the whole table.
    fn read_table(&mut self) -> Result<()> {
        let word = |i: usize| u64::from_le_bytes(self.table[8 * i..8 * i + 8].try_into().unwrap_or_default());
        if self.table_len == PREFIX {
            let count = word(1);
            let room = ((self.len - PREFIX) / 8).min(MAX_PARTS) as u64;
            if count > room {
                return Err(lying(format!(
                    "the part table lists {count} parts; {} bytes hold at most {room}",
                    self.len
                )));
            }
            self.table_len = PREFIX + 8 * count as usize;
            if self.table_len > PREFIX {
                self.table.reserve_exact(self.table_len - PREFIX);
                return Ok(());
            }
        }
        let count = (self.table_len - PREFIX) / 8;
        let lens: Vec<u64> = (0..count).map(|i| word(2 + i)).collect();
        if let Some((index, len)) = lens.iter().enumerate().find(|(_, &l)| l % 4 != 0) {
            return Err(lying(format!("part {index} is {len} bytes, not whole 4-byte words")));
        }
        let total = lens
            .iter()
            .try_fold(word(0), |acc, &l| acc.checked_add(l))
            .and_then(|s| s.checked_add(self.table_len as u64));
        if total != Some(self.len as u64) {
            let said = total.map_or("more than 2^64".to_string(), |t| t.to_string());
            return Err(lying(format!("table, head and parts add up to {said} bytes, the header says {}", self.len)));
        }
        self.head_len = word(0) as usize;
        self.head = receive_buffer(self.head_len);
        self.lens = Some(lens.into_iter().map(|l| l as usize).collect());
        Ok(())
    }

    /// Moves bytes of `input` into the current part (starting the next part
    /// if none is open); returns how many it took.
    fn fill_part(&mut self, input: &[u8]) -> usize {
        let want = self.lens.as_ref().and_then(|l| l.get(self.parts.len()).copied()).unwrap_or(0);
        let (part, pending, have) = self.current.get_or_insert_with(|| (part_buffer(want), [0; 4], 0));
        let n = (want - (part.len() * 4 + *have)).min(input.len());
        let mut bytes = &input[..n];
        if *have > 0 {
            let k = (4 - *have).min(bytes.len());
            pending[*have..*have + k].copy_from_slice(&bytes[..k]);
            *have += k;
            bytes = &bytes[k..];
            if *have < 4 {
                return n;
            }
            part.push(u32::from_ne_bytes(*pending));
            *have = 0;
        }
        let words = bytes.chunks_exact(4);
        let rest = words.remainder();
        part.extend(words.map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]])));
        pending[..rest.len()].copy_from_slice(rest);
        *have = rest.len();
        if part.len() * 4 == want {
            if let Some((part, _, _)) = self.current.take() {
                self.parts.push(part);
            }
        }
        n
    }
}

/// A split frame whose table does not match its bytes: the sender's fault.
fn lying(detail: String) -> Error {
    Error::Protocol(format!("malformed split frame: {detail}"))
}
