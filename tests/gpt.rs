//! The 12-layer GPT of `../shared/golden/gpt12_adamw.safetensors` (AdamW,
//! clip_grad_norm 1.0) against PyTorch: step-0 loss and gradients, per-step
//! losses and final weights, through the library and through `baton train`
//! on 1-4 worker processes, both schedules, with one and two preemptions
//! and with a join, every pipeline bit-identical to one process.

mod common;

use baton_engine::{Optimizer, ParamStore, Trainer};
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

/// `baton train` on the golden GPT with `extra` flags and `env`; returns the
/// saved weights and the report.
fn train_gpt(
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (ParamStore, serde_json::Value) {
    let (golden, clip) = golden();
    let (out, report) = (dir.join(format!("{name}.safetensors")), dir.join(format!("{name}.json")));
    let mut args = golden.train_args(&out);
    if extra.contains(&"--model") {
        // The caller's model replaces the golden one.
        let at = args.iter().position(|a| a == "--model").unwrap();
        args.drain(at..at + 2);
    }
    args.extend(["--clip-grad-norm".to_string(), clip.to_string(), "--report".into(), report.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = common::run_with_watchdog(
        common::baton().args(&args).envs(env.iter().copied()),
        std::time::Duration::from_secs(300),
    );
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    let report = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (io::load_tensors(&out, "").unwrap(), report)
}

#[test]
fn gpt_recompute_fallback_and_bf16_shipping_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (reference, _) = train_gpt(dir.path(), "plain", &["--workers", "1"], &[]);
    // A 2 s grace at a pretended 20 kB/s: the block segments stay behind and
    // are recomputed from kept activations, still bit-identical.
    let tight = ["--workers", "3", "--preempt", "1@2:5,grace=2s"];
    let (params, report) = train_gpt(dir.path(), "tight", &tight, &[("BATON_SHIP_BANDWIDTH", "20000")]);
    assert!(bit_identical(&params, &reference), "the fallback changed the weights");
    let m = &report["migrations"][0];
    assert!(m["bytes"]["unshipped_segments"].as_u64().unwrap() > 0, "{m}");
    assert!(report["counters"]["recomputed_forward_layers"].as_u64().unwrap() > 0);
    assert_eq!(report["counters"]["lost_microbatches"], 0);
    // bf16 shipping halves the segment bytes and says the run is no longer exact.
    let (f32_params, f32_report) = train_gpt(dir.path(), "f32", &["--workers", "3", "--preempt", "1@2:5"], &[]);
    assert!(bit_identical(&f32_params, &reference));
    let bf16 = ["--workers", "3", "--preempt", "1@2:5", "--ship-dtype", "bf16"];
    let (bf16_params, bf16_report) = train_gpt(dir.path(), "bf16", &bf16, &[]);
    assert_eq!(bf16_report["bit_identical_to_uninterrupted"], false);
    let segments = |r: &serde_json::Value| r["migrations"][0]["bytes"]["segments"].as_u64().unwrap();
    assert!(segments(&bf16_report) * 2 <= segments(&f32_report) + 64, "bf16 did not halve the segments");
    assert_params_close("gpt12 with bf16 shipping", &bf16_params, &reference, |_| 1e-2);
}

#[test]
fn gpt_with_dropout_is_bit_identical_across_processes() {
    let (golden, _) = golden();
    let spec = golden.spec.replace(r#""hidden": 256}"#, r#""hidden": 256, "dropout": 0.1}"#);
    assert!(spec.contains("dropout"), "{spec}");
    let dir = tempfile::tempdir().unwrap();
    let model = ["--model", spec.as_str(), "--seed", "7"];
    let (one, _) = train_gpt(dir.path(), "one", &[&model[..], &["--workers", "1"]].concat(), &[]);
    let (three, _) =
        train_gpt(dir.path(), "three", &[&model[..], &["--workers", "3", "--preempt", "2@1:3"]].concat(), &[]);
    assert!(bit_identical(&one, &three), "dropout masks differ between workers");
    let (plain, _) = train_gpt(dir.path(), "plain", &["--workers", "1"], &[]);
    assert!(!bit_identical(&one, &plain), "dropout 0.1 changed nothing");
}

#[test]
fn bad_token_models_are_clear_errors() {
    let spec = r#"{"input": {"tokens": 65, "seq": 32}, "layers": [{"type": "embedding", "dim": 64},
        {"type": "transformer_block", "heads": 3, "hidden": 256}, {"type": "linear", "out": 65}], "loss": "cross_entropy"}"#;
    let err = baton_models::spec::parse(spec).unwrap_err().to_string();
    assert!(err.contains("layers[1].heads: 3 heads do not divide the width 64"), "{err}");
    let no_tokens =
        r#"{"input": 8, "layers": [{"type": "transformer_block", "heads": 2, "hidden": 16}], "loss": "mse"}"#;
    let err = baton_models::spec::parse(no_tokens).unwrap_err().to_string();
    assert!(err.contains("layers[0]: a transformer_block needs a token input"), "{err}");
    // A token id past the vocabulary, named by step, row and position.
    let (golden, _) = golden();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let bytes = std::fs::read(&golden.path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (x, y) = (st.tensor("data.x").unwrap(), st.tensor("data.y").unwrap());
    let mut xs = x.data().to_vec();
    xs[(32 + 5) * 8..(32 + 6) * 8].copy_from_slice(&65i64.to_le_bytes()); // step 0, row 1, position 5
    let views = [
        ("data.x", safetensors::tensor::TensorView::new(x.dtype(), x.shape().to_vec(), &xs).unwrap()),
        ("data.y", safetensors::tensor::TensorView::new(y.dtype(), y.shape().to_vec(), y.data()).unwrap()),
    ];
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let model = baton_models::spec::parse(&golden.spec).unwrap();
    let err = io::load_data(&path, &model, 1).unwrap_err().to_string();
    assert!(err.contains("step 0 row 1 position 5") && err.contains("65"), "{err}");
}

/// A small GPT over bytes (`tokens` 256), trained on the project's own
/// README as text (`--data text:FILE`), 1 process against 3 worker
/// processes with a preemption.
#[test]
fn a_gpt_trains_on_text_across_processes_bit_identically() {
    let block = r#"{"type": "transformer_block", "heads": 2, "hidden": 64}"#;
    let spec = format!(
        r#"{{"input": {{"tokens": 256, "seq": 16}}, "layers": [{{"type": "embedding", "dim": 32}}, {block}, {block},
            {{"type": "layernorm"}}, {{"type": "linear", "out": 256}}], "loss": "cross_entropy"}}"#
    );
    let text = format!("text:{}", concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let (out, report) = (dir.path().join(format!("{name}.safetensors")), dir.path().join(format!("{name}.json")));
        let mut args = vec!["train", "--model", &spec, "--data", &text, "--steps", "8", "--batch", "8"];
        args.extend(["--microbatches", "2", "--optimizer", "adamw:lr=3e-3", "--seed", "3"]);
        args.extend(["--save", out.to_str().unwrap(), "--report", report.to_str().unwrap()]);
        args.extend(extra);
        common::run_baton_ok(&args);
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        (io::load_tensors(&out, "").unwrap(), report)
    };
    let (one, report) = run("one", &["--workers", "1"]);
    let (three, _) = run("three", &["--workers", "3", "--preempt", "1@3:2"]);
    assert!(bit_identical(&one, &three), "text training differs across processes");
    let losses: Vec<f64> = report["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(losses[7] < losses[0], "the loss did not fall: {losses:?}");
    let mlp = common::run_baton(&[
        "train",
        "--model",
        "mlp12",
        "--data",
        &text,
        "--save",
        dir.path().join("x").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&mlp.stderr);
    assert!(!mlp.status.success() && stderr.contains("a token stream needs a token model"), "{stderr}");
}
