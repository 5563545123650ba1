//! Parity with PyTorch (`../shared/golden`): per-step loss, step-0
//! gradients and final parameters of three runs, through the library and
//! through `baton train`.

mod common;

use baton_engine::{Optimizer, Trainer};
use baton_models::io;
use common::{assert_params_close, max_abs, run_baton_ok_owned, Golden, GOLDEN_FILES};

fn assert_losses(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: step count");
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        let rel = ((g - w) / w).abs();
        assert!(rel <= 1e-5, "{name}: step {step} loss {g} vs PyTorch {w} (relative error {rel:e})");
    }
}

#[test]
fn library_matches_pytorch() {
    for (name, tol) in GOLDEN_FILES {
        let golden = Golden::load(name, tol);
        let params = golden.params.clone();
        let mut trainer = Trainer::new(golden.model, params, Optimizer::new(golden.optimizer)).unwrap();
        let mut losses = Vec::new();
        for (step, batch) in golden.data.iter().enumerate() {
            let (loss, grads) = trainer.gradients(step as u32, batch, golden.micro_batches).unwrap();
            if step == 0 {
                let want = io::load_tensors(&golden.path, "expect.grad0.").unwrap();
                assert_params_close(&format!("{name} step-0 gradients"), &grads, &want, |g| 1e-5 * max_abs(g));
            }
            trainer.apply(step as u32, &grads).unwrap();
            losses.push(loss);
        }
        assert_losses(name, &losses, &golden.losses);
        let want = io::load_tensors(&golden.path, "expect.final.").unwrap();
        assert_params_close(&format!("{name} final parameters"), &trainer.params, &want, |_| tol);
    }
}

#[test]
fn cli_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    for (name, tol) in GOLDEN_FILES {
        let golden = Golden::load(name, tol);
        let (out, report) = (dir.path().join(format!("{name}.safetensors")), dir.path().join(format!("{name}.json")));
        let mut args = golden.train_args(&out);
        args.extend(["--workers", "1", "--report", report.to_str().unwrap()].map(String::from));
        run_baton_ok_owned(&args);
        let saved = io::load_tensors(&out, "").unwrap();
        assert_params_close(&format!("{name} via baton train"), &saved, &golden.final_params(), |_| tol);
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let losses: Vec<f32> =
            report["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_losses(name, &losses, &golden.losses);
        let layers = golden.model.layers.len() as u64;
        let expected_executions = layers * golden.steps as u64 * golden.micro_batches as u64;
        assert_eq!(report["counters"]["forward_layer_executions"], expected_executions);
        assert_eq!(report["counters"]["backward_layer_executions"], expected_executions);
        assert_eq!(report["counters"]["recomputed_forward_layers"], 0);
        assert_eq!(report["counters"]["lost_microbatches"], 0);
    }
}
