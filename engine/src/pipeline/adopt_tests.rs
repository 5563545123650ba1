use super::*;
use crate::optim::OptState;
use crate::pipeline::migrate::Handover;
use crate::pipeline::migrate::{GradsState, LayerState};
use crate::pipeline::protocol::{decode, encode};
use crate::{Activation, ParamStore, Recorder, SegmentKey, Targets, Tensor};

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

/// A handover with ragged sizes: tensors of 3 to about 20 000 elements, odd
/// element counts, token ids, and a bf16 segment.
fn handover() -> Message {
    let odd = 4099;
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

/// The parts as the receiving transport delivers them: each its own word buffer.
fn received(split: &Split) -> (AlignedVec, Vec<Vec<u32>>) {
    let words = |p: &Bytes| p.chunks_exact(4).map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]])).collect();
    let mut head = AlignedVec::new();
    head.extend_from_slice(&split.head);
    (head, split.parts.iter().map(words).collect())
}

/// Addresses and lengths of every element buffer, in traversal order.
fn buffers(message: &mut Message) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for_each_buffer(message, &mut |b| {
        out.push(match b {
            Buffer::F32(v) => (v.as_ptr() as usize, v.len()),
            Buffer::U32(v) => (v.as_ptr() as usize, v.len()),
        });
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn a_split_handover_decodes_to_the_message_bit_for_bit() {
    let message = handover();
    let split = encode_split(message.clone()).unwrap();
    let (head, parts) = received(&split);
    let decoded = decode_split(&head, parts).unwrap();
    assert_eq!(decoded, message);
    // The same message as the unsplit frame decodes to, and the same bytes.
    assert_eq!(decode(&encode(&message).unwrap()).unwrap(), decoded);
    assert_eq!(encode(&decoded).unwrap().as_slice(), encode(&message).unwrap().as_slice());
}

/// The other messages that travel split: an activation, a gradient, a
/// replay, replica gradients of two layers and a replica seed with Adam state.
fn others() -> Vec<Message> {
    let (w, odd) = (129, 4099);
    let grads = |l: u32| vec![(format!("layers.{l}.weight"), tensor(&[w, w], l)), ("b".into(), tensor(&[odd], 9))];
    vec![
        Message::Activation { generation: 1, step: 2, micro: 3, layer: 4, tensor: tensor(&[5, odd], 1) },
        Message::Gradient { generation: 1, step: 2, micro: 3, layer: 4, tensor: tensor(&[7, w], 2) },
        Message::Replay { generation: 1, step: 2, micro: 3, layer: 4, stop: 6, tensor: tensor(&[3, w], 3) },
        Message::EvalActivation { step: 2, batch: 1, layer: 4, tensor: tensor(&[2, w], 4) },
        Message::Replica { generation: 1, step: 2, layers: vec![(4, grads(4)), (5, grads(5))] },
        Message::ReplicaSeed {
            generation: 1,
            step: 2,
            layer: 4,
            params: grads(4),
            optimizer: vec![("b".into(), OptState { step: 3, buffers: vec![values(odd, 4), values(odd, 5)] })],
        },
    ]
}

#[test]
fn other_split_messages_decode_bit_for_bit_and_adopt_their_buffers() {
    for message in others() {
        let mut sent = message.clone();
        let expected = buffers(&mut sent).len();
        let split = encode_split(message.clone()).unwrap();
        assert_eq!(split.parts.len(), expected, "{}", message.kind());
        let (head, parts) = received(&split);
        let delivered: Vec<usize> = parts.iter().map(|p| p.as_ptr() as usize).collect();
        let mut decoded = decode_split(&head, parts).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(encode(&decoded).unwrap().as_slice(), encode(&message).unwrap().as_slice());
        let adopted: Vec<usize> = buffers(&mut decoded).iter().map(|b| b.0).collect();
        assert_eq!(adopted, delivered, "{}: a buffer was copied, not adopted", message.kind());
        // One part fewer, or one of the wrong length, is the peer's fault.
        let (head, mut parts) = received(&split);
        parts.pop();
        assert!(matches!(decode_split(&head, parts), Err(Error::Protocol(_))), "{}", message.kind());
        let (head, mut parts) = received(&split);
        parts[0].push(0);
        assert!(matches!(decode_split(&head, parts), Err(Error::Protocol(_))), "{}", message.kind());
    }
}

#[test]
fn the_head_holds_no_element_buffer_and_the_parts_are_the_senders_buffers() {
    let mut message = handover();
    let sent = buffers(&mut message);
    let split = encode_split(message).unwrap();
    assert_eq!(split.parts.len(), sent.len());
    for (part, (ptr, len)) in split.parts.iter().zip(&sent) {
        assert_eq!(part.len(), 4 * len);
        if *len > 0 {
            assert_eq!(part.as_ptr() as usize, *ptr, "a part is a copy of its buffer");
        }
    }
    let bytes: usize = sent.iter().map(|(_, n)| 4 * n).sum();
    assert!(split.head.len() * 10 < bytes, "head {} bytes of {bytes}", split.head.len());
}

#[test]
fn received_parts_are_adopted_not_copied() {
    let split = encode_split(handover()).unwrap();
    let (head, parts) = received(&split);
    let delivered: Vec<(usize, usize)> = parts.iter().map(|p| (p.as_ptr() as usize, p.len())).collect();
    let mut decoded = decode_split(&head, parts).unwrap();
    let adopted = buffers(&mut decoded);
    assert_eq!(adopted.len(), delivered.len());
    for (i, (a, d)) in adopted.iter().zip(&delivered).enumerate() {
        assert_eq!(a.1, d.1, "buffer {i}");
        if d.1 > 0 {
            assert_eq!(a.0, d.0, "buffer {i} was copied, not adopted");
        }
    }
}

#[test]
fn part_counts_that_do_not_match_the_head_are_peer_errors() {
    let split = encode_split(handover()).unwrap();
    let (head, parts) = received(&split);
    let mut fewer = parts.clone();
    fewer.pop();
    let mut more = parts.clone();
    more.push(vec![1, 2, 3]);
    for (what, parts) in [("one part short", fewer), ("one part too many", more), ("no parts", Vec::new())] {
        let err = decode_split(&head, parts).expect_err(what);
        assert!(matches!(&err, Error::Protocol(m) if m.contains("split frame")), "{what}: {err}");
    }
}

#[test]
fn parts_of_the_wrong_length_are_peer_errors() {
    let split = encode_split(handover()).unwrap();
    let (head, parts) = received(&split);
    // Every part that belongs to a tensor or saved tensor, one word short or long.
    let mut caught = 0;
    for i in 0..parts.len() {
        for delta in [-1i32, 1] {
            let mut lying = parts.clone();
            if delta < 0 && lying[i].pop().is_none() {
                continue;
            }
            if delta > 0 {
                lying[i].push(7);
            }
            match decode_split(&head, lying) {
                // Tensors fail `Tensor::check`, saved tensors segment
                // validation, optimizer state the length of its parameter.
                Err(Error::Protocol(_) | Error::Archive(_)) => caught += 1,
                Err(e) => panic!("part {i}: {e}"),
                Ok(_) => panic!("part {i} one word {}: accepted", if delta < 0 { "short" } else { "long" }),
            }
        }
    }
    let tries: usize = parts.iter().map(|p| if p.is_empty() { 1 } else { 2 }).sum();
    assert_eq!(caught, tries, "every wrong length is caught");
}

#[test]
fn heads_that_are_not_split_handovers_are_peer_errors() {
    let message = handover();
    // An unsplit archive as a head: its buffers are not empty.
    let whole = encode(&message).unwrap();
    let err = decode_split(&whole, Vec::new()).unwrap_err();
    assert!(matches!(&err, Error::Protocol(m) if m.contains("split frame")), "{err}");
    let split = encode_split(message).unwrap();
    let (_, parts) = received(&split);
    let err = decode_split(&whole, parts).unwrap_err();
    assert!(err.to_string().contains("in its head, not in a part"), "{err}");
    let loss = encode(&Message::Loss { step: 0, micro: 0, value: 1.0 }).unwrap();
    assert!(decode_split(&loss, Vec::new()).unwrap_err().to_string().contains("never travels split"));
    assert!(encode_split(Message::Loss { step: 0, micro: 0, value: 1.0 }).is_err());
    let mut cut = AlignedVec::<16>::new();
    cut.extend_from_slice(&split.head[..split.head.len() / 2]);
    assert!(decode_split(&cut, received(&split).1).is_err());
}
