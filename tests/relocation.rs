//! Relocation across processes: a micro-batch's segments recorded here are
//! archived, and a separate `baton splice` process that holds only those
//! layers' parameters runs their backward. Its gradients must be
//! bit-identical to the backward where the forward ran.

mod common;

use baton_engine::init::init_params;
use baton_engine::segment::{self, SegmentBatch};
use baton_engine::{ParamStore, SegmentKey, Tensor};
use baton_models::{io, spec};
use common::{bit_identical, run_baton, run_baton_ok};

#[test]
fn segments_backwarded_in_another_process_give_the_same_bits() {
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
    run_baton_ok(&[
        "splice",
        "--params",
        &arg("params.safetensors"),
        "--segments",
        &arg("segments.rkyv"),
        "--grad",
        &arg("grad.safetensors"),
        "--out",
        &arg("out.safetensors"),
    ]);
    let remote = io::load_tensors(&path("out.safetensors"), "").unwrap();
    assert_eq!(remote.len(), 9, "8 parameter gradients and the input gradient");
    assert!(bit_identical(&local, &remote), "gradients differ after relocation");

    // The same archive, truncated, is refused with a clear error and no panic.
    std::fs::write(path("short.rkyv"), &bytes[..bytes.len() / 3]).unwrap();
    let out = run_baton(&[
        "splice",
        "--params",
        &arg("params.safetensors"),
        "--segments",
        &arg("short.rkyv"),
        "--grad",
        &arg("grad.safetensors"),
        "--out",
        &arg("out2.safetensors"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("segment archive"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
