//! Every defect a new user hit with `baton train` (issue 11), each as it was
//! reported: a clear error before any work is done, naming the flag or
//! field, exit 1 (2 for a malformed flag), no panic, nothing overwritten.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_models::io;
use common::splice::SpliceArgs;
use common::{baton, bit_identical, run_baton, run_baton_ok, run_with_watchdog, Golden};

/// Asserts a failed run: exit 1, `expected` in stderr, no panic, and no
/// training started (the "training ..." banner never printed).
fn refused(out: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{stderr}");
    assert!(stderr.contains(expected), "expected `{expected}` in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert!(!stderr.contains("training "), "training started before the error:\n{stderr}");
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn colliding_outputs_and_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.safetensors");
    let same = dir.path().join("sub/../x.safetensors");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let out = run_baton(&["train", "--steps", "1", "--save", s(&x), "--report", s(&x)]);
    refused(&out, &format!("--report {} is the file --save writes", x.display()));
    assert!(!x.exists(), "nothing may be written");
    let out = run_baton(&["train", "--steps", "1", "--save", s(&x), "--timeline", s(&same)]);
    refused(&out, "--timeline");
    refused(&out, "is the file --save writes");

    // An input checkpoint named as an output stays as it was.
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let init = dir.path().join("init.safetensors");
    std::fs::copy(&golden.path, &init).unwrap();
    let before = std::fs::read(&init).unwrap();
    for flag in ["--save", "--report", "--timeline"] {
        let mut args = vec!["train", "--init", s(&init), "--data", s(&init), "--steps", "1"];
        if flag != "--save" {
            args.extend(["--save", s(&x)]);
        }
        args.extend([flag, s(&init)]);
        refused(&run_baton(&args), &format!("{flag} {} is the file --init reads", init.display()));
    }
    assert_eq!(std::fs::read(&init).unwrap(), before, "--init was modified");
    assert!(!x.exists());
}

#[test]
fn every_output_is_checked_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let report = dir.path().join("r.json");
    std::fs::write(&report, b"an earlier report").unwrap();
    // Unwritable even for root: sysfs refuses new files.
    let out = run_baton(&["train", "--steps", "1", "--save", "/sys/baton-unwritable.safetensors"]);
    refused(&out, "--save /sys/baton-unwritable.safetensors: cannot write there");
    let missing = dir.path().join("no/such/dir/t.json");
    let args = ["train", "--steps", "1", "--save", s(&save), "--report", s(&report), "--timeline", s(&missing)];
    refused(&run_baton(&args), "--timeline");
    refused(&run_baton(&args), "does not exist");
    assert!(!save.exists(), "weights were saved although the timeline cannot be written");
    assert_eq!(std::fs::read(&report).unwrap(), b"an earlier report", "the old report was touched");
    let out = run_baton(&["train", "--steps", "1", "--save", s(&save), "--report", s(dir.path())]);
    refused(&out, "is a directory");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["r.json"], "the checks left files behind");
}

#[test]
fn baton_threads_is_checked_like_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    for value in ["0", "abc", "-1", "2x"] {
        let mut cmd = baton();
        cmd.args(["train", "--steps", "1", "--save", s(&save)]).env("BATON_THREADS", value);
        let out = run_with_watchdog(&mut cmd, Duration::from_secs(120));
        refused(&out, "BATON_THREADS=");
        assert!(!save.exists(), "BATON_THREADS={value:?} trained anyway");
    }
    let mut cmd = baton();
    cmd.args(["train", "--steps", "1", "--save", s(&save)]).env("BATON_THREADS", "2");
    assert!(run_with_watchdog(&mut cmd, Duration::from_secs(120)).status.success());
}

/// A joiner takes the layers of the only starting worker, which is then
/// preempted: allowed, and bit-identical to one process.
#[test]
fn preempting_every_starting_worker_is_allowed_when_a_joiner_holds_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (one, joined) = (dir.path().join("one.safetensors"), dir.path().join("joined.safetensors"));
    run_baton_ok(&["train", "--steps", "4", "--save", s(&one)]);
    let args = ["train", "--steps", "4", "--workers", "1", "--join", "0", "--preempt", "0@2:3", "--save", s(&joined)];
    let out = run_baton_ok(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker(s) [0] left"));
    let (a, b) = (io::load_tensors(&one, "").unwrap(), io::load_tensors(&joined, "").unwrap());
    assert!(bit_identical(&a, &b), "the joined-then-preempted run differs from one process");
    // Still refused when the joiner may not be there yet, or nobody is left.
    let out = run_baton(&[
        "train",
        "--steps",
        "4",
        "--workers",
        "1",
        "--join",
        "2",
        "--preempt",
        "0@2:3",
        "--save",
        s(&joined),
    ]);
    refused(&out, "every worker would be preempted by then");
}

#[test]
fn init_tensors_the_model_lacks_are_refused() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let mut typo = golden.params.clone();
    typo.insert("layers.3.wieght", golden.params.get("layers.3.weight").unwrap().clone());
    typo.insert("layers.12.bias", golden.params.get("layers.3.bias").unwrap().clone());
    let path = dir.path().join("typo.safetensors");
    io::save_params(&path, &typo, None).unwrap();
    let out = run_baton(&["train", "--model", "mlp12", "--init", s(&path), "--steps", "1", "--save", s(&save)]);
    refused(&out, "`layers.12.bias`, `layers.3.wieght`, which the model has no parameter for");
    // The golden file carries data.* and expect.* beside the weights: still valid.
    let file = s(&golden.path);
    run_baton_ok(&["train", "--model", "mlp12", "--init", file, "--data", file, "--steps", "1", "--save", s(&save)]);
}

#[test]
fn saved_weights_are_byte_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let path = dir.path().join(format!("{i}.safetensors"));
            run_baton_ok(&["train", "--steps", "2", "--batch", "4", "--microbatches", "2", "--save", s(&path)]);
            std::fs::read(&path).unwrap()
        })
        .collect();
    assert!(files.windows(2).all(|w| w[0] == w[1]), "identical runs wrote different files");
    let meta = io::read_metadata(&dir.path().join("0.safetensors")).unwrap();
    assert_eq!(meta["steps"], "2");
    assert!(meta["spec"].contains("linear"), "{meta:?}");
}

#[test]
fn bad_archives_say_what_is_wrong() {
    let golden = Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let (empty, junk, out) =
        (dir.path().join("empty.bin"), dir.path().join("junk.bin"), dir.path().join("o.safetensors"));
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&junk, (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    // The relocation test's splice helper (formerly `baton splice`), in process.
    let splice = |segments: &Path| {
        let args = SpliceArgs {
            params: golden.path.clone(),
            segments: segments.to_path_buf(),
            grad: "g".into(),
            out: out.clone(),
        };
        format!("{:#}", common::splice::run(args).expect_err("a bad archive is refused"))
    };
    let text = splice(&empty);
    assert!(text.contains("is empty (0 bytes): not a segment archive") && !text.contains("aligned"), "{text}");
    let text = splice(&junk);
    assert!(text.contains("--segments") && text.contains("bad segment archive"), "{text}");
    assert!(!text.contains("0x"), "an error prints heap addresses:\n{text}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn absurd_models_are_refused_with_an_estimate_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let spec = r#"{"input": 16777216, "layers": [{"type": "linear", "out": 16777216}], "loss": "mse"}"#;
    let out = run_baton(&["train", "--model", spec, "--steps", "1", "--save", s(&save)]);
    refused(&out, "--model: the model needs about 4.0 PiB");
    refused(&out, "the largest layer is layers[0] (linear, in 16777216, out 16777216)");
    assert!(!save.exists());
}
