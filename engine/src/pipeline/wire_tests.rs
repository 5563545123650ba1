use super::*;
use crate::optim::OptState;
use crate::pipeline::migrate::{GradsState, LayerState};
use crate::pipeline::protocol::{decode, encode};
use crate::{Activation, ParamStore, Recorder, SegmentKey, Targets};

/// Deterministic values that are not all alike (so a misplaced byte shows).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 * 1e-9 - 1.5).collect()
}

fn tensor(shape: &[usize], seed: u32) -> Tensor {
    Tensor::new(shape.to_vec(), values(shape.iter().product(), seed)).unwrap()
}

/// One recorded segment of a linear + tanh layer of width `w` on `rows` rows.
fn segment(w: usize, rows: usize) -> crate::Segment {
    let mut params = ParamStore::new();
    params.insert("layers.0.weight", tensor(&[w, w], 1));
    params.insert("layers.0.bias", tensor(&[w], 2));
    let key = SegmentKey { step: 0, micro: 1, layer: 0 };
    let mut rec = Recorder::new(key, "layers.0.".into(), &params, tensor(&[rows, w], 3));
    let (wt, b) = (rec.param("weight").unwrap(), rec.param("bias").unwrap());
    let input = rec.input();
    let y = rec.linear(input, wt, Some(b)).unwrap();
    let out = rec.activation(y, Activation::Tanh).unwrap();
    rec.finish(out).unwrap().0
}

/// A handover with ragged sizes: tensors below, at and above the borrow
/// threshold, odd element counts, token ids, and a bf16 segment.
pub(crate) fn handover() -> Message {
    let odd = BORROW_MIN / 4 + 3;
    let layer = |l: u32, w: usize| LayerState {
        params: vec![(format!("layers.{l}.weight"), tensor(&[w, w + 1], l)), ("b".into(), tensor(&[odd], 9))],
        optimizer: vec![("b".into(), OptState { step: 1, buffers: vec![values(odd, 4), values(odd, 5)] })],
        grads: Some(GradsState { next: 1, sum: vec![("b".into(), tensor(&[odd], 6))], pending: Vec::new() }),
        segments: vec![segment(w, 5)],
        kept: vec![(0, 1, l, tensor(&[3, 1], 7))],
        ..LayerState::at_step_start(l, Vec::new(), Vec::new())
    };
    let mut bf16 = layer(2, 67);
    bf16.segments.iter_mut().for_each(crate::Segment::compact_bf16);
    let handover = Handover {
        step: Some((0, vec![5, 5])),
        layers: vec![layer(0, 129), layer(1, 3), bf16],
        activations: vec![(0, 1, 0, tensor(&[5, 4099], 8))],
        targets: vec![(0, 1, Targets::Classes(Tensor::from_ids(vec![5000], (0..5000).collect()).unwrap()))],
        parts: 1,
        ..Handover::default()
    };
    Message::Handover { generation: 2, handover }
}

#[test]
fn chunks_are_the_archive_byte_for_byte_and_decode_to_the_message() {
    let big = Message::Activation { generation: 0, step: 1, micro: 2, layer: 3, tensor: tensor(&[3, 5461], 11) };
    let small = Message::Loss { step: 1, micro: 0, value: 0.5 };
    for message in [handover(), big, small] {
        let archive = encode(&message).unwrap();
        let chunks = encode_chunks(message.clone()).unwrap();
        assert_eq!(chunks.len, archive.len());
        assert_eq!(chunks.chunks.iter().map(Bytes::len).sum::<usize>(), chunks.len);
        assert_eq!(chunks.concat(), archive.as_slice(), "{}", message.kind());
        assert_eq!(decode(&reassemble(&chunks)).unwrap(), message);
    }
}

#[test]
fn large_buffers_are_borrowed_not_copied() {
    let t = tensor(&[2, 40_000], 12);
    // Moving the tensor into the message does not move its elements.
    let elements = t.values().unwrap().as_ptr() as usize;
    let message = Message::Gradient { generation: 0, step: 0, micro: 0, layer: 1, tensor: t };
    let chunks = encode_chunks(message).unwrap();
    // Header bytes, the 320 000-byte payload on its own, the root.
    let big: Vec<usize> = chunks.chunks.iter().map(Bytes::len).filter(|&n| n >= BORROW_MIN).collect();
    assert_eq!(big, vec![320_000]);
    // The payload chunk is the tensor's own buffer: not a copy.
    let payload = chunks.chunks.iter().find(|c| c.len() == 320_000).unwrap();
    assert_eq!(payload.as_ptr() as usize, elements);
    let message = handover();
    let copied = encode(&message).unwrap();
    let chunks = encode_chunks(message).unwrap();
    let borrowed: usize = chunks.chunks.iter().map(Bytes::len).filter(|&n| n >= BORROW_MIN).sum();
    assert!(borrowed * 10 >= copied.len() * 9, "{borrowed} of {} bytes borrowed", copied.len());
}

#[test]
fn cut_or_misaligned_chunked_frames_are_errors() {
    let chunks = encode_chunks(handover()).unwrap();
    let whole = reassemble(&chunks);
    for cut in [1, 17, chunks.chunks[0].len(), whole.len() / 2, whole.len() - 1] {
        let mut short = AlignedVec::<16>::new();
        short.extend_from_slice(&whole[..cut]);
        assert!(decode(&short).is_err(), "cut at {cut}");
    }
    let mut shifted = AlignedVec::<16>::new();
    shifted.extend_from_slice(&[0]);
    shifted.extend_from_slice(&whole);
    assert!(decode(&shifted[1..]).unwrap_err().to_string().contains("not 16-byte aligned"));
}
