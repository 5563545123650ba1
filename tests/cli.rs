//! `baton train` and `baton bench` on bad input: a clear message naming
//! what is wrong, a non-zero exit, never a panic.

mod common;

use baton_engine::Tensor;
use baton_models::io;
use common::{run_baton, Golden};

fn fails_with(args: &[&str], expected: &str) {
    let out = run_baton(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "baton {args:?} succeeded");
    assert!(stderr.contains(expected), "baton {args:?}: expected `{expected}` in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "baton {args:?} panicked:\n{stderr}");
}

fn train_args<'a>(model: &'a str, init: &'a str, optimizer: &'a str, save: &'a str) -> Vec<&'a str> {
    let mut args = vec!["train", "--model", model, "--steps", "1", "--optimizer", optimizer, "--save", save];
    if !init.is_empty() {
        args.extend(["--init", init]);
    }
    args
}

#[test]
fn bad_specs_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let save = save.to_str().unwrap();
    let bad = r#"{"input": 4, "layers": [{"type": "linear", "out": 2, "activation": "swish"}], "loss": "mse"}"#;
    fails_with(&train_args(bad, "", "sgd:lr=0.1", save), "layers[0].activation");
    fails_with(&train_args("{not json", "", "sgd:lr=0.1", save), "not valid JSON");
    fails_with(&train_args("/no/such/spec.json", "", "sgd:lr=0.1", save), "/no/such/spec.json");
}

#[test]
fn bad_optimizers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let save = save.to_str().unwrap();
    fails_with(&train_args("mlp12", "", "rmsprop:lr=0.1", save), "unknown optimizer `rmsprop`");
    fails_with(&train_args("mlp12", "", "sgd:momentum=0.9", save), "sgd needs `lr=`");
    fails_with(&train_args("mlp12", "", "adam:lr=fast", save), "`lr` has a non-numeric value");
    fails_with(&train_args("mlp12", "", "adam:beta3=1", save), "adam has no option `beta3`");
}

#[test]
fn bad_weight_files_name_the_tensor() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let save = save.to_str().unwrap();

    let mut missing = golden.params.clone();
    missing.remove("layers.7.bias");
    let missing_path = dir.path().join("missing.safetensors");
    io::save_params(&missing_path, &missing, None).unwrap();
    fails_with(&train_args("mlp12", missing_path.to_str().unwrap(), "sgd:lr=0.1", save), "layers.7.bias");

    let mut misshaped = golden.params.clone();
    misshaped.insert("layers.3.weight", Tensor::zeros(&[64, 63]));
    let misshaped_path = dir.path().join("misshaped.safetensors");
    io::save_params(&misshaped_path, &misshaped, None).unwrap();
    fails_with(&train_args("mlp12", misshaped_path.to_str().unwrap(), "sgd:lr=0.1", save), "layers.3.weight");

    fails_with(&train_args("mlp12", "/no/such/init.safetensors", "sgd:lr=0.1", save), "/no/such/init.safetensors");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    fails_with(&train_args("mlp12", garbage.to_str().unwrap(), "sgd:lr=0.1", save), "garbage.safetensors");
}

#[test]
fn impossible_join_points_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    for (join, expected) in
        [("5:0", "steps count from 0"), ("0:9", "at most 4 micro-batch losses"), ("x", "not a number")]
    {
        let mut args = train_args("mlp12", "", "sgd:lr=0.1", save.to_str().unwrap());
        args.extend(["--workers", "2", "--join", join]);
        fails_with(&args, expected);
        assert!(!save.exists(), "--join {join} trained anyway");
    }
}

#[test]
fn impossible_preemption_points_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    for (preempt, expected) in [
        ("5@0:1", "only workers 0..2"),
        ("1@99:1", "steps count from 0"),
        ("1@0:99", "at most 8 actions"),
        ("1@0", "expected WORKER@STEP:ACTIONS"),
        ("1@0:1,grace=never", "not a duration"),
    ] {
        let mut args = train_args("mlp12", "", "sgd:lr=0.1", save.to_str().unwrap());
        args.extend(["--workers", "3", "--preempt", preempt]);
        fails_with(&args, expected);
        assert!(!save.exists(), "--preempt {preempt} trained anyway");
    }
}

#[test]
fn too_many_micro_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let mut args = train_args("mlp12", "", "sgd:lr=0.1", save.to_str().unwrap());
    args.extend(["--batch", "4", "--microbatches", "8"]);
    fails_with(&args, "micro-batches");
}

#[test]
fn demo_runs_the_seed_scenario_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_baton_ok(&["demo", "--out", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bit-identical: yes"), "{stdout}");
    assert!(stdout.contains("partition before: 0-3 / 4-7 / 8-11"), "{stdout}");
    assert!(stdout.contains("partition after:  0-5 / 6-11"), "{stdout}");
    assert!(stdout.contains("recomputed forwards 0"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["migrations"].as_array().unwrap().len(), 1);
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    assert!(svg.contains("#e15759"), "the shipping span is not in the picture");
    assert!(dir.path().join("timeline.json").exists());
}

#[test]
fn demo_runs_the_seed_scenario_on_a_gpt_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_baton_ok(&["demo", "--model", "gpt", "--out", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bit-identical: yes"), "{stdout}");
    assert!(stdout.contains("transformer blocks"), "{stdout}");
    assert!(stdout.contains("recomputed forwards 0"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let migration = &report["migrations"][0];
    assert!(migration["bytes"]["segments"].as_u64().unwrap() > 0, "{migration}");
    assert_eq!(report["grad_norms"].as_array().unwrap().len(), 5, "clipping reported per step");
}

/// `baton bench` is a thin entry point: it runs the `baton-bench` next to
/// it with the same arguments (here a bad flag that bench refuses by name),
/// or, where that binary is not built, fails saying how to build it.
#[test]
fn bench_runs_the_harness_or_says_how_to_build_it() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_baton"));
    let harness = exe.with_file_name(format!("baton-bench{}", std::env::consts::EXE_SUFFIX));
    let built = harness.is_file();
    eprintln!("{} {}", harness.display(), if built { "is built: checking it runs" } else { "is absent" });
    let expected = if built { "--widths: give one or more widths" } else { "cargo build --release -p baton-benches" };
    fails_with(&["bench", "migrate", "--widths", "0"], expected);
}
