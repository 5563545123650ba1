//! Relocation across processes: a micro-batch's segments recorded here are
//! archived, and a separate process (this test binary re-run as the
//! splice helper of `common::splice`) that holds only those layers'
//! parameters runs their backward. Its gradients must be bit-identical to
//! the backward where the forward ran. The helper's own checks follow.

mod common;

use std::path::Path;

use baton_engine::init::{self, init_params};
use baton_engine::segment::{self, SegmentBatch};
use baton_engine::{ParamStore, Segment, SegmentKey, Tensor};
use baton_models::{io, spec};
use common::bit_identical;
use common::splice::{aligned_copy, backward_chain, ChainGrads, SpliceArgs, GRAD_TENSOR, INPUT_GRAD_TENSOR};

const CROSS_PROCESS: &str = "segments_backwarded_in_another_process_give_the_same_bits";

#[test]
fn segments_backwarded_in_another_process_give_the_same_bits() {
    common::splice::serve_if_child();
    let model = spec::mlp12();
    let params = init_params(&model.param_specs(), 7);
    let data = io::synthetic_data(&model, 1, 8, 3);
    let key = |layer| SegmentKey { step: 2, micro: 1, layer };

    let (mut segments, mut x) = (Vec::new(), data[0].x.clone());
    for layer in 0..12 {
        let (segment, out) = model.forward_layer(key(layer), &params, x).unwrap();
        segments.push(segment);
        x = out;
    }
    let (loss, _) = model.forward_loss(key(12), x, &data[0].targets).unwrap();
    let mut grad = loss.backward(&params, Tensor::scalar(1.0), true).unwrap().input_grad.unwrap();
    for segment in segments[8..].iter().rev() {
        grad = segment.backward(&params, grad, true).unwrap().input_grad.unwrap();
    }
    let grad_into_layer7 = grad.clone();
    let mut local = ParamStore::new();
    for segment in segments[4..8].iter().rev() {
        let out = segment.backward(&params, grad, true).unwrap();
        out.param_grads.into_iter().for_each(|(n, g)| local.insert(n, g));
        grad = out.input_grad.unwrap();
    }
    local.insert("input_grad", grad);

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let bytes = segment::archive(&SegmentBatch(segments[4..8].to_vec())).unwrap();
    std::fs::write(path("segments.rkyv"), &bytes[..]).unwrap();
    let held: ParamStore = (4..8).flat_map(|l| params.with_prefix(&format!("layers.{l}."))).collect();
    io::save_params(&path("params.safetensors"), &held, None).unwrap();
    let grad_file: ParamStore = [("grad".to_string(), grad_into_layer7)].into_iter().collect();
    io::save_params(&path("grad.safetensors"), &grad_file, None).unwrap();

    let arg = |name: &str| path(name).to_str().unwrap().to_string();
    let out = common::splice::in_child(
        CROSS_PROCESS,
        &[
            "--params",
            &arg("params.safetensors"),
            "--segments",
            &arg("segments.rkyv"),
            "--grad",
            &arg("grad.safetensors"),
            "--out",
            &arg("out.safetensors"),
        ],
    );
    assert!(out.status.success(), "the splice process failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let remote = io::load_tensors(&path("out.safetensors"), "").unwrap();
    assert_eq!(remote.len(), 9, "8 parameter gradients and the input gradient");
    assert!(bit_identical(&local, &remote), "gradients differ after relocation");

    // The same archive, truncated, is refused with a clear error and no panic.
    std::fs::write(path("short.rkyv"), &bytes[..bytes.len() / 3]).unwrap();
    let out = common::splice::in_child(
        CROSS_PROCESS,
        &[
            "--params",
            &arg("params.safetensors"),
            "--segments",
            &arg("short.rkyv"),
            "--grad",
            &arg("grad.safetensors"),
            "--out",
            &arg("out2.safetensors"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("segment archive"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Forward of one micro-batch through mlp12 and the loss, locally.
fn forward() -> (ParamStore, Vec<Segment>, Segment) {
    let model = spec::mlp12();
    let params = init::init_params(&model.param_specs(), 3);
    let batch = &io::synthetic_data(&model, 1, 4, 3)[0];
    let key = |layer| SegmentKey { step: 0, micro: 0, layer };
    let mut x = batch.x.clone();
    let mut segments = Vec::new();
    for layer in 0..12 {
        let (seg, out) = model.forward_layer(key(layer), &params, x).unwrap();
        segments.push(seg);
        x = out;
    }
    let (loss, _) = model.forward_loss(key(12), x, &batch.targets).unwrap();
    (params, segments, loss)
}

#[test]
fn archived_chain_matches_local_backward_bit_for_bit() {
    let (params, segments, loss) = forward();
    let grad = loss.backward(&params, Tensor::scalar(1.0), true).unwrap().input_grad.unwrap();
    let local = backward_chain(&segments, &params, grad.clone()).unwrap();
    let bytes = aligned_copy(&segment::archive(&SegmentBatch(segments.iter().rev().cloned().collect())).unwrap());
    let views = segment::access(&bytes).unwrap();
    let remote = backward_chain(&views, &params, grad).unwrap();
    assert_eq!(local.params, remote.params);
    assert_eq!(local.params.len(), 24);
    assert!(local.input.is_none() && remote.input.is_none());
}

#[test]
fn gaps_and_missing_parameters_are_refused() {
    let (params, segments, _) = forward();
    let gap = [segments[3].clone(), segments[5].clone()];
    let err = backward_chain(&gap, &params, Tensor::zeros(&[4, 64])).unwrap_err();
    assert!(err.to_string().contains("not consecutive"), "{err:#}");
    let few = params.with_prefix("layers.5.");
    let err = backward_chain(&segments[4..6], &few, Tensor::zeros(&[4, 64])).unwrap_err();
    assert!(format!("{err:#}").contains("layers.4.weight"), "{err:#}");
}

/// Files for a splice of layers 4-7 of micro-batch 0; returns the local result.
fn write_inputs(dir: &Path) -> (SpliceArgs, ChainGrads) {
    let (params, segments, loss) = forward();
    let mut grad = loss.backward(&params, Tensor::scalar(1.0), true).unwrap().input_grad.unwrap();
    grad = backward_chain(&segments[8..], &params, grad).unwrap().input.unwrap();
    let local = backward_chain(&segments[4..8], &params, grad.clone()).unwrap();
    let held: ParamStore = (4..8).flat_map(|l| params.with_prefix(&format!("layers.{l}."))).collect();
    let args = SpliceArgs {
        params: dir.join("params.safetensors"),
        segments: dir.join("segments.rkyv"),
        grad: dir.join("grad.safetensors"),
        out: dir.join("out.safetensors"),
    };
    io::save_params(&args.params, &held, None).unwrap();
    let archive = segment::archive(&SegmentBatch(segments[4..8].to_vec())).unwrap();
    std::fs::write(&args.segments, &archive[..]).unwrap();
    io::save_params(&args.grad, &[(GRAD_TENSOR.to_string(), grad)].into_iter().collect(), None).unwrap();
    (args, local)
}

#[test]
fn splice_command_writes_bit_identical_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let (args, local) = write_inputs(dir.path());
    let out = args.out.clone();
    common::splice::run(args).unwrap();
    let mut written = io::load_tensors(&out, "").unwrap();
    assert_eq!(written.remove(INPUT_GRAD_TENSOR), local.input);
    assert_eq!(written, local.params);
}

#[test]
fn corrupt_archive_is_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let (args, _) = write_inputs(dir.path());
    let mut bytes = std::fs::read(&args.segments).unwrap();
    let n = bytes.len();
    bytes[n - 40..].fill(0xff);
    std::fs::write(&args.segments, &bytes).unwrap();
    let err = format!("{:#}", common::splice::run(args).unwrap_err());
    assert!(err.contains("--segments") && err.contains("archive"), "{err}");
}
