//! The seed question's own example (`models/examples/seed_question.rs`):
//! process A forwards `Linear(4, 5)` and ships the segment, parameters and
//! SGD state; process B backwards `(z - y).sum() / 5` through it and steps
//! its own copy. B's numbers must match PyTorch's within 1e-6; this test
//! reads them itself rather than trusting the example's own check.

mod common;

use std::process::Command;

use baton_models::{io, seed_question};
use common::golden_dir;

/// Set in the child: this test binary is then process B.
const RECEIVER: &str = "BATON_SEED_QUESTION_RECEIVER";
const NAME: &str = "process_b_updates_its_own_copy_of_the_layer_process_a_recorded";

#[test]
fn process_b_updates_its_own_copy_of_the_layer_process_a_recorded() {
    if std::env::var_os(RECEIVER).is_some() {
        seed_question::receive().unwrap();
        std::process::exit(0);
    }
    let mut receiver = Command::new(std::env::current_exe().unwrap());
    receiver.args(["--exact", NAME, "--nocapture", "--test-threads", "1"]).env(RECEIVER, "1");
    let path = golden_dir().join("seed_question.safetensors");
    let line = seed_question::send(&path, receiver).unwrap();
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    for (key, tensor) in [
        ("y", "expect.y"),
        ("grad.weight", "expect.grad.weight"),
        ("grad.bias", "expect.grad.bias"),
        ("after.weight", "expect.after.weight"),
        ("after.bias", "expect.after.bias"),
    ] {
        let want = io::load_f32(&path, tensor).unwrap();
        let got: Vec<f32> = got[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(got.len(), want.len(), "{key}");
        for (g, w) in got.iter().zip(want.values().unwrap()) {
            assert!((g - w).abs() <= 1e-6, "{key}: {g} vs PyTorch {w}");
        }
    }
    let loss = got["loss"].as_f64().unwrap() as f32;
    let want = io::load_f32(&path, "expect.loss").unwrap().values().unwrap()[0];
    assert!((loss - want).abs() <= 1e-6, "loss {loss} vs PyTorch {want}");
    // The weights moved: B's optimizer stepped its copy, not a no-op.
    let before = io::load_f32(&path, "weight").unwrap();
    let after: Vec<f64> = got["after.weight"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(before.values().unwrap().iter().zip(&after).all(|(b, a)| f64::from(*b) != *a));
}
