//! Segments as plain data: archive round trips, zero-copy backward with the
//! same bits, splicing on a worker that holds only the named parameters,
//! corrupted archives rejected with clear errors, ordered accumulation.

mod common;

use baton_engine::segment::{self, SegmentBatch, Storage};
use baton_engine::{Activation, GradAccumulator, ParamStore, Recorder, Result, Segment, SegmentKey, Tensor, TensorId};
use common::{bits_equal, random};

/// A two-op layer: tanh(x Wᵀ + b), parameters prefixed by the layer index.
fn layer(rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId> {
    let (w, b) = (rec.param("weight")?, rec.param("bias")?);
    let y = rec.linear(x, w, Some(b))?;
    rec.activation(y, Activation::Tanh)
}

fn params(layers: u32, width: usize) -> ParamStore {
    let mut store = ParamStore::new();
    for l in 0..layers {
        store.insert(format!("layers.{l}.weight"), random(&[width, width], 100 + u64::from(l), 0.4));
        store.insert(format!("layers.{l}.bias"), random(&[width], 200 + u64::from(l), 0.1));
    }
    store
}

/// Forward of one micro-batch through `layers` layers: their segments and the output.
fn forward(params: &ParamStore, layers: u32, x: Tensor) -> (Vec<Segment>, Tensor) {
    let mut segments = Vec::new();
    let mut x = x;
    for l in 0..layers {
        let key = SegmentKey { step: 3, micro: 1, layer: l };
        let mut rec = Recorder::new(key, format!("layers.{l}."), params, x);
        let input = rec.input();
        let out = layer(&mut rec, input).unwrap();
        let (segment, value) = rec.finish(out).unwrap();
        segments.push(segment);
        x = value;
    }
    (segments, x)
}

#[test]
fn archived_backward_on_another_worker_gives_the_same_bits() {
    let all = params(4, 8);
    let (segments, out) = forward(&all, 4, random(&[5, 8], 1, 1.0));
    let dy = random(out.shape(), 2, 1.0);
    // Local backward of layers 3 and 2 where the forward ran.
    let local3 = segments[3].backward(&all, dy.clone(), true).unwrap();
    let local2 = segments[2].backward(&all, local3.input_grad.clone().unwrap(), true).unwrap();

    // Ship layers 2-3 to a worker that holds only their parameters.
    let bytes = segment::archive(&SegmentBatch(segments[2..].to_vec())).unwrap();
    let receiver = all.with_prefix("layers.2.").into_iter().chain(all.with_prefix("layers.3.")).collect();
    let views = segment::access(&bytes).unwrap();
    let remote3 = views[1].backward(&receiver, dy, true).unwrap();
    let remote2 = views[0].backward(&receiver, remote3.input_grad.clone().unwrap(), true).unwrap();

    for (local, remote) in [(&local3, &remote3), (&local2, &remote2)] {
        let (l, r) = (local.input_grad.as_ref().unwrap(), remote.input_grad.as_ref().unwrap());
        assert!(bits_equal(l.values().unwrap(), r.values().unwrap()));
        assert_eq!(local.param_grads.len(), 2);
        for (name, g) in local.param_grads.iter() {
            let r = remote.param_grads.get(name).unwrap();
            assert!(bits_equal(g.values().unwrap(), r.values().unwrap()), "{name}");
        }
    }
    assert_eq!(views[0].to_segment().unwrap(), segments[2]);
}

#[test]
fn segment_carries_exactly_what_backward_reads() {
    let all = params(1, 4);
    let (segments, _) = forward(&all, 1, random(&[2, 4], 3, 1.0));
    let s = &segments[0];
    // Slots 1 and 2 are the parameter reads (never carried: the receiver
    // reads its own copy by name), linear saves its input (slot 0), tanh its
    // output (slot 4); the linear output (slot 3) is not carried.
    let ids: Vec<u32> = s.saved.iter().map(|t| t.id.slot).collect();
    assert_eq!(ids, vec![0, 4]);
    assert_eq!(s.params(), vec!["layers.0.weight", "layers.0.bias"]);
    assert_eq!(s.saved_bytes(), 2 * 2 * 4 * 4);
}

#[test]
fn backward_without_the_parameters_names_the_missing_one() {
    let all = params(2, 4);
    let (segments, out) = forward(&all, 2, random(&[2, 4], 4, 1.0));
    let only_layer0 = all.with_prefix("layers.0.");
    let err = segments[1].backward(&only_layer0, out, true).unwrap_err().to_string();
    assert!(err.contains("layers.1.weight"), "{err}");
}

#[test]
fn corrupted_or_truncated_archives_are_errors_not_panics() {
    let all = params(2, 4);
    let (segments, _) = forward(&all, 2, random(&[3, 4], 5, 1.0));
    let bytes = segment::archive(&SegmentBatch(segments)).unwrap();
    for cut in [0, 1, 7, bytes.len() / 2, bytes.len() - 1] {
        let mut short = rkyv::util::AlignedVec::<16>::new();
        short.extend_from_slice(&bytes[..cut]);
        assert!(segment::access(&short).is_err(), "truncated to {cut} bytes was accepted");
    }
    // Flip every byte in turn: each outcome must be an error or a valid view, never a panic.
    let mut rejected = 0;
    for i in 0..bytes.len() {
        let mut bad = rkyv::util::AlignedVec::<16>::new();
        bad.extend_from_slice(&bytes);
        bad[i] ^= 0xA5;
        rejected += usize::from(segment::access(&bad).is_err());
    }
    assert!(rejected > 0, "no corruption was detected at all");
}

#[test]
fn inconsistent_segments_are_rejected_with_the_reason() {
    let all = params(1, 4);
    let (segments, _) = forward(&all, 1, random(&[2, 4], 6, 1.0));
    let mut missing = segments[0].clone();
    missing.saved.pop();
    let msg = access_err(missing);
    assert!(msg.contains("is missing"), "{msg}");

    let mut bad_shape = segments[0].clone();
    bad_shape.saved[0].shape = vec![3, 4];
    let msg = access_err(bad_shape);
    assert!(msg.contains("has shape [3, 4] (8 elements"), "{msg}");

    let mut foreign = segments[0].clone();
    foreign.saved[0].id.layer = 9;
    assert!(access_err(foreign).contains("belongs to another segment"));
}

#[test]
fn an_op_reading_a_tensor_nobody_defined_is_refused_naming_the_op() {
    // As a new user found: an archive whose tanh reads slot 7 instead of the
    // linear's output must not backward into an incomplete gradient.
    let all = params(1, 4);
    let (segments, _) = forward(&all, 1, random(&[2, 4], 6, 1.0));
    let mut bad = segments[0].clone();
    let baton_engine::Op::Activation(tanh) = &mut bad.ops[3] else { panic!("op 3 is the tanh: {:?}", bad.ops) };
    tanh.x.slot = 7;
    let msg = access_err(bad);
    assert!(
        msg.contains("op 3 (tanh)") && msg.contains("t7") && msg.contains("neither the segment's input nor defined"),
        "{msg}"
    );
}

#[test]
fn ops_that_do_not_reach_the_output_are_refused() {
    let all = params(1, 4);
    let (segments, _) = forward(&all, 1, random(&[2, 4], 6, 1.0));
    // The output claimed to be the linear's result leaves the tanh dangling.
    let mut dangling = segments[0].clone();
    dangling.output.slot = 3;
    let msg = access_err(dangling);
    assert!(msg.contains("does not contribute"), "{msg}");
    // A shape that does not fit the ops: the input claimed to be wider.
    let mut wide = segments[0].clone();
    wide.input_shape = vec![2, 5];
    let msg = access_err(wide);
    assert!(msg.contains("op 2 (linear)") && msg.contains("5 features"), "{msg}");
}

fn access_err(segment: Segment) -> String {
    assert!(segment.validate().is_err());
    let bytes = segment::archive(&SegmentBatch(vec![segment])).unwrap();
    match segment::access(&bytes) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an inconsistent segment was accepted"),
    }
}

#[test]
fn misaligned_buffers_are_refused() {
    let all = params(1, 4);
    let (segments, _) = forward(&all, 1, random(&[2, 4], 7, 1.0));
    let bytes = segment::archive(&SegmentBatch(segments)).unwrap();
    let mut shifted = rkyv::util::AlignedVec::<16>::new();
    shifted.push(0);
    shifted.extend_from_slice(&bytes);
    let msg = segment::access(&shifted[1..]).err().unwrap().to_string();
    assert!(msg.contains("aligned"), "{msg}");
}

#[test]
fn bf16_compaction_halves_saved_bytes_and_stays_close() {
    let all = params(1, 16);
    let (segments, out) = forward(&all, 1, random(&[8, 16], 8, 1.0));
    let mut compact = segments[0].clone();
    compact.compact_bf16();
    assert!(compact.saved.iter().all(|t| matches!(t.storage, Storage::Bf16(_))));
    assert_eq!(compact.saved_bytes() * 2, segments[0].saved_bytes());
    let dy = random(out.shape(), 9, 1.0);
    let exact = segments[0].backward(&all, dy.clone(), true).unwrap();
    let approx = compact.backward(&all, dy, true).unwrap();
    let (e, a) = (exact.input_grad.unwrap(), approx.input_grad.unwrap());
    assert!(common::max_diff(e.values().unwrap(), a.values().unwrap()) < 0.05);
}

#[test]
fn accumulation_order_does_not_depend_on_arrival_order() {
    let grads: Vec<ParamStore> =
        (0..4).map(|m| [("layers.0.weight".to_string(), random(&[64], 300 + m, 1.0))].into_iter().collect()).collect();
    let sum = |order: &[usize]| {
        let mut acc = GradAccumulator::new();
        for &m in order {
            acc.add(0, m as u32, grads[m].clone()).unwrap();
        }
        acc.finish(4).unwrap().get("layers.0.weight").unwrap().clone()
    };
    let in_order = sum(&[0, 1, 2, 3]);
    let same = |order: &[usize]| bits_equal(in_order.values().unwrap(), sum(order).values().unwrap());
    assert!(same(&[3, 1, 0, 2]));
    assert!(same(&[2, 3, 1, 0]));

    let mut acc = GradAccumulator::new();
    acc.add(0, 1, grads[1].clone()).unwrap();
    assert!(acc.add(0, 1, grads[1].clone()).unwrap_err().to_string().contains("twice"));
    let msg = acc.finish(4).unwrap_err().to_string();
    assert!(msg.contains("0 of 4 micro-batches"), "{msg}");
}
