//! The 12-layer GPT of `../shared/golden/gpt12_adamw.safetensors` (AdamW,
//! clip_grad_norm 1.0) against PyTorch: step-0 loss and gradients, per-step
//! losses and final weights, through the library and through `baton train`
//! on 1-4 worker processes, both schedules, with one and two preemptions
//! and with a join, every pipeline bit-identical to one process.

mod common;

use baton_engine::{Optimizer, Trainer};
use baton_models::io;
use common::{assert_params_close, bit_identical, max_abs, run_baton_ok_owned, Golden};

const NAME: &str = "gpt12_adamw";
const FINAL_TOLERANCE: f32 = 1e-3;

fn golden() -> (Golden, f32) {
    let golden = Golden::load(NAME, FINAL_TOLERANCE);
    let meta = io::read_metadata(&golden.path).unwrap();
    let optimizer: serde_json::Value = serde_json::from_str(&meta["optimizer"]).unwrap();
    let clip = optimizer["clip_grad_norm"].as_f64().expect("the GPT golden run clips") as f32;
    (golden, clip)
}

fn assert_losses(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: steps");
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        let rel = ((g - w) / w).abs();
        assert!(rel <= 1e-5, "{what}: step {step} loss {g} vs PyTorch {w} (relative error {rel:e})");
    }
}

#[test]
fn gpt_training_matches_pytorch_through_the_library() {
    let (golden, clip) = golden();
    let model = baton_models::spec::parse(&golden.spec).unwrap();
    let mut trainer = Trainer::new(model, golden.params.clone(), Optimizer::new(golden.optimizer))
        .unwrap()
        .with_clip_grad_norm(Some(clip))
        .unwrap();
    let mut losses = Vec::new();
    for (step, batch) in golden.data.iter().enumerate() {
        let (loss, mut grads) = trainer.gradients(step as u32, batch, golden.micro_batches).unwrap();
        if step == 0 {
            assert_params_close("gpt12 step-0 gradients", &grads, &golden.grad0(), |g| 1e-5 * max_abs(g));
        }
        trainer.clip(&mut grads).unwrap();
        trainer.apply(step as u32, &grads).unwrap();
        losses.push(loss);
    }
    assert_losses("gpt12 library", &losses, &golden.losses);
    assert_eq!(trainer.grad_norms.len(), golden.steps);
    assert_params_close("gpt12 final parameters", &trainer.params, &golden.final_params(), |_| FINAL_TOLERANCE);
}

#[test]
fn gpt_training_matches_pytorch_through_baton_train() {
    let (golden, clip) = golden();
    let dir = tempfile::tempdir().unwrap();
    let layouts: [&[&str]; 7] = [
        &["--workers", "1"],
        &["--workers", "2"],
        &["--workers", "3"],
        &["--workers", "4", "--schedule", "gpipe"],
        &["--workers", "3", "--schedule", "gpipe", "--preempt", "1@2:3"],
        &["--workers", "3", "--preempt", "1@1:2", "--preempt", "2@2:5"],
        &["--workers", "2", "--join", "1:2"],
    ];
    let mut saved = Vec::new();
    for (i, layout) in layouts.iter().enumerate() {
        let (out, report) = (dir.path().join(format!("{i}.safetensors")), dir.path().join(format!("{i}.json")));
        let mut args = golden.train_args(&out);
        args.extend([
            "--clip-grad-norm".to_string(),
            clip.to_string(),
            "--report".into(),
            report.display().to_string(),
        ]);
        args.extend(layout.iter().map(|s| s.to_string()));
        run_baton_ok_owned(&args);
        let params = io::load_tensors(&out, "").unwrap();
        assert_params_close(&format!("gpt12 via baton train {layout:?}"), &params, &golden.final_params(), |_| {
            FINAL_TOLERANCE
        });
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let losses: Vec<f32> =
            report["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_losses(&format!("gpt12 {layout:?}"), &losses, &golden.losses);
        assert_eq!(report["grad_norms"].as_array().map(Vec::len), Some(golden.steps), "{layout:?}: grad norms");
        assert_eq!(report["counters"]["lost_microbatches"], 0);
        saved.push(params);
    }
    for (layout, params) in layouts.iter().zip(&saved).skip(1) {
        assert!(bit_identical(&saved[0], params), "{layout:?} differs from one process");
    }
}

#[test]
fn a_transformer_block_segment_saves_what_the_readme_says() {
    let (golden, _) = golden();
    let model = baton_models::spec::parse(&golden.spec).unwrap();
    let rows = 2;
    let x = golden.data[0].x.rows(0, rows).unwrap();
    let key = |layer| baton_engine::SegmentKey { step: 0, micro: 0, layer };
    let (_, h) = model.forward_layer(key(0), &golden.params, x).unwrap();
    let (block, _) = model.forward_layer(key(1), &golden.params, h).unwrap();
    let (t, d, hidden, heads) = (32, 64, 256, 4);
    let floats = rows * t * (8 * d + 2 * hidden + 4) + rows * heads * t * t;
    assert_eq!(block.saved_bytes(), 4 * floats, "saved tensors of one block segment");
    block.validate().unwrap();
}
