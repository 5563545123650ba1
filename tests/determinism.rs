//! Invariant 3 within one process kind: the same inputs give the same bits
//! whatever the thread count; micro-batching changes only rounding.

mod common;

use baton_engine::{Optimizer, Trainer};
use baton_models::io;
use common::{assert_params_close, bit_identical, run_baton_ok, Golden};

/// Wide enough that matmuls and reductions take the multi-threaded paths.
const WIDE_SPEC: &str = r#"{"input": 256, "layers": [
    {"type": "linear", "out": 512, "activation": "gelu"},
    {"type": "residual_mlp", "hidden": 1024},
    {"type": "layernorm"},
    {"type": "linear", "out": 256, "activation": "tanh"},
    {"type": "linear", "out": 10}], "loss": "cross_entropy"}"#;

#[test]
fn one_and_two_threads_give_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: &str| {
        let out = dir.path().join(format!("t{threads}.safetensors"));
        run_baton_ok(&[
            "train",
            "--model",
            WIDE_SPEC,
            "--steps",
            "3",
            "--batch",
            "256",
            "--microbatches",
            "2",
            "--optimizer",
            "adam:lr=1e-3",
            "--threads",
            threads,
            "--save",
            out.to_str().unwrap(),
        ]);
        io::load_tensors(&out, "").unwrap()
    };
    let (one, two) = (run("1"), run("2"));
    assert!(!one.is_empty());
    assert!(bit_identical(&one, &two), "1-thread and 2-thread runs differ");
}

#[test]
fn micro_batch_count_changes_only_rounding() {
    let golden = Golden::load("mlp12_adam", 1e-4);
    let train = |micro: usize| {
        let opt = Optimizer::new(golden.optimizer);
        let mut trainer = Trainer::new(spec_model(&golden.spec), golden.params.clone(), opt).unwrap();
        for (step, batch) in golden.data.iter().enumerate() {
            trainer.step(step as u32, batch, micro).unwrap();
        }
        trainer.params
    };
    let (m1, m4) = (train(1), train(4));
    assert!(!bit_identical(&m1, &m4), "different accumulation should round differently");
    assert_params_close("M=1 vs M=4", &m1, &m4, |_| 1e-4);
    assert_params_close("M=1 vs PyTorch", &m1, &golden.final_params(), |_| 1e-4);
    assert!(bit_identical(&m4, &train(4)), "a repeated run must give the same bits");
}

fn spec_model(spec: &str) -> baton_engine::Model {
    baton_models::spec::parse(spec).unwrap()
}
