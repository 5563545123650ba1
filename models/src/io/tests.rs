//! Unit tests of safetensors I/O, on a tiny model defined here so they do
//! not depend on the built-in layers.

use std::collections::HashMap;
use std::path::Path;

use baton_engine::{init, Init, Layer, Loss, Model, ParamSpec, Recorder, TensorId};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::*;

/// `y = x Wᵀ + b`, the smallest layer with parameters.
#[derive(Debug)]
struct Dense(usize, usize);

impl Layer for Dense {
    fn kind(&self) -> &str {
        "dense"
    }
    fn in_features(&self) -> usize {
        self.0
    }
    fn out_features(&self) -> usize {
        self.1
    }
    fn params(&self) -> Vec<ParamSpec> {
        let init = Init::Uniform { bound: 0.5 };
        vec![
            ParamSpec { name: "weight".into(), shape: vec![self.1, self.0], init },
            ParamSpec { name: "bias".into(), shape: vec![self.1], init },
        ]
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> baton_engine::Result<TensorId> {
        let (w, b) = (rec.param("weight")?, rec.param("bias")?);
        rec.linear(x, w, Some(b))
    }
}

fn model(loss: Loss) -> Model {
    Model::new(3, vec![Box::new(Dense(3, 4)), Box::new(Dense(4, 2))], loss).unwrap()
}

/// Writes raw tensors `(name, dtype, shape, bytes)` to `path`.
fn write_raw(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32 * 0.25).to_le_bytes()).collect()
}

#[test]
fn params_round_trip_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = model(Loss::Mse);
    let params = init::init_params(&m.param_specs(), 7);
    let meta = HashMap::from([("spec".to_string(), "tiny".to_string())]);
    save_params(&path, &params, Some(meta)).unwrap();
    assert_eq!(load_params(&path, &m).unwrap(), params);
    assert_eq!(load_tensors(&path, "").unwrap(), params);
    assert_eq!(load_tensors(&path, "layers.1.").unwrap().len(), 2);
    assert_eq!(load_f32(&path, "layers.0.bias").unwrap(), *params.get("layers.0.bias").unwrap());
    assert_eq!(read_metadata(&path).unwrap()["spec"], "tiny");
}

#[test]
fn missing_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = model(Loss::Mse);
    let mut params = init::init_params(&m.param_specs(), 7);
    params.remove("layers.1.bias");
    save_params(&path, &params, None).unwrap();
    let err = load_params(&path, &m).unwrap_err().to_string();
    assert!(err.contains("`layers.1.bias`") && err.contains("missing"), "{err}");
    assert!(err.contains("w.safetensors"), "{err}");
}

#[test]
fn wrong_shape_and_dtype_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let m = model(Loss::Mse);
    write_raw(
        &path,
        &[
            ("layers.0.weight", Dtype::F32, vec![3, 4], f32_bytes(12)),
            ("layers.0.bias", Dtype::F32, vec![4], f32_bytes(4)),
            ("layers.1.weight", Dtype::F32, vec![2, 4], f32_bytes(8)),
            ("layers.1.bias", Dtype::F32, vec![2], f32_bytes(2)),
        ],
    );
    let err = load_params(&path, &m).unwrap_err().to_string();
    assert!(err.contains("`layers.0.weight`") && err.contains("[3, 4]") && err.contains("[4, 3]"), "{err}");

    write_raw(
        &path,
        &[
            ("layers.0.weight", Dtype::F32, vec![4, 3], f32_bytes(12)),
            ("layers.0.bias", Dtype::F64, vec![4], vec![0; 32]),
            ("layers.1.weight", Dtype::F32, vec![2, 4], f32_bytes(8)),
            ("layers.1.bias", Dtype::F32, vec![2], f32_bytes(2)),
        ],
    );
    let err = load_params(&path, &m).unwrap_err().to_string();
    assert!(err.contains("`layers.0.bias`") && err.contains("F64"), "{err}");
}

#[test]
fn not_a_safetensors_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.safetensors");
    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let err = load_params(&path, &model(Loss::Mse)).unwrap_err().to_string();
    assert!(err.contains("junk.safetensors") && err.contains("not a valid safetensors"), "{err}");
    let err = load_params(&dir.path().join("absent"), &model(Loss::Mse)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

fn mse_data(path: &Path, steps: usize, batch: usize) {
    write_raw(
        path,
        &[
            ("data.x", Dtype::F32, vec![steps, batch, 3], f32_bytes(steps * batch * 3)),
            ("data.y", Dtype::F32, vec![steps, batch, 2], f32_bytes(steps * batch * 2)),
        ],
    );
}

#[test]
fn mse_data_loads_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    mse_data(&path, 3, 5);
    assert_eq!(data_steps(&path).unwrap(), 3);
    let batches = load_data(&path, &model(Loss::Mse), 2).unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].x.shape(), [5, 3]);
    assert_eq!(batches[1].x.values().unwrap()[0], 15.0 * 0.25);
    match &batches[1].targets {
        Targets::Values(t) => assert_eq!((t.shape().to_vec(), t.values().unwrap()[0]), (vec![5, 2], 10.0 * 0.25)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_steps_names_both_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    mse_data(&path, 3, 5);
    let err = load_data(&path, &model(Loss::Mse), 4).unwrap_err().to_string();
    assert!(err.contains('4') && err.contains("only 3"), "{err}");
}

#[test]
fn data_of_the_wrong_width_or_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    mse_data(&path, 2, 4);
    let err = load_data(&path, &model(Loss::CrossEntropy), 1).unwrap_err().to_string();
    assert!(err.contains("`data.y`") && err.contains("I64"), "{err}");
    write_raw(&path, &[("data.x", Dtype::F32, vec![2, 4, 5], f32_bytes(40))]);
    let err = load_data(&path, &model(Loss::Mse), 1).unwrap_err().to_string();
    assert!(err.contains("`data.x`") && err.contains("[2, 4, 5]"), "{err}");
}

#[test]
fn class_targets_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let classes = |v: &[i64]| v.iter().flat_map(|c| c.to_le_bytes()).collect::<Vec<u8>>();
    let x = ("data.x", Dtype::F32, vec![2, 2, 3], f32_bytes(12));
    write_raw(&path, &[x.clone(), ("data.y", Dtype::I64, vec![2, 2], classes(&[0, 1, 1, 0]))]);
    let batches = load_data(&path, &model(Loss::CrossEntropy), 2).unwrap();
    assert_eq!(batches[1].targets, Targets::Classes(Tensor::from_ids(vec![2], vec![1, 0]).unwrap()));
    write_raw(&path, &[x.clone(), ("data.y", Dtype::I64, vec![2, 2], classes(&[0, 1, 2, 0]))]);
    let err = load_data(&path, &model(Loss::CrossEntropy), 2).unwrap_err().to_string();
    assert!(err.contains("step 1 row 0") && err.contains("class 2"), "{err}");
    write_raw(&path, &[x, ("data.y", Dtype::I64, vec![2, 2], classes(&[0, -1, 1, 0]))]);
    let err = load_data(&path, &model(Loss::CrossEntropy), 2).unwrap_err().to_string();
    assert!(err.contains("step 0 row 1") && err.contains("-1"), "{err}");
}

#[test]
fn synthetic_data_is_deterministic_and_shaped() {
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let m = model(loss);
        let a = synthetic_data(&m, 3, 6, 11);
        assert_eq!(a, synthetic_data(&m, 3, 6, 11));
        assert_ne!(a, synthetic_data(&m, 3, 6, 12));
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|b| b.x.shape() == [6, 3] && b.x.values().unwrap().iter().all(|v| v.abs() <= 1.0)));
        match &a[0].targets {
            Targets::Values(t) => assert_eq!(t.shape(), [6, 2]),
            Targets::Classes(c) => assert!(c.len() == 6 && c.ids().unwrap().iter().all(|&c| c < 2)),
        }
    }
}
