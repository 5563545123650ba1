//! `baton train --eval-data ... --plot ...` as a user runs it: a byte-level
//! language model trained on text every checkout has, on 3 worker
//! processes with a preemption and evaluations, against one process; the
//! flag errors; and a multi-GiB token file trained with small memory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_models::io;
use common::{baton, bit_identical, run_baton, run_baton_ok, Proc};

/// A tiny byte-level GPT (T = 8).
const GPT: &str = r#"{"input": {"tokens": 256, "seq": 8}, "layers": [{"type": "embedding", "dim": 16},
    {"type": "transformer_block", "heads": 2, "hidden": 32}, {"type": "transformer_block", "heads": 2, "hidden": 32},
    {"type": "layernorm"}, {"type": "linear", "out": 256}], "loss": "cross_entropy"}"#;

fn checkout(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The training arguments both runs share (outputs in `dir`, named `tag`).
fn args(dir: &Path, tag: &str, train: &str, held_out: &str) -> Vec<String> {
    let out = |ext: &str| s(&dir.join(format!("{tag}.{ext}"))).to_string();
    let mut v: Vec<String> = ["train", "--model", GPT, "--steps", "4", "--batch", "4", "--microbatches", "2"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    v.extend(["--optimizer".into(), "adamw:lr=3e-3".into(), "--seed".into(), "3".into()]);
    v.extend(["--data".into(), format!("text:{train}"), "--eval-data".into(), format!("text:{held_out}")]);
    v.extend(["--eval-every".into(), "2".into(), "--eval-batches".into(), "2".into()]);
    v.extend(["--save".into(), out("safetensors"), "--report".into(), out("json"), "--plot".into(), out("svg")]);
    v
}

/// The points of the `<polyline class="CLASS">` of an SVG.
fn polyline_points(svg: &str, class: &str) -> Vec<(f64, f64)> {
    let marker = format!(r#"<polyline class="{class}" points=""#);
    let start = svg.find(&marker).unwrap_or_else(|| panic!("no {class} polyline in:\n{svg}")) + marker.len();
    let points = svg[start..].split('"').next().unwrap();
    points
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

#[test]
fn text_on_three_workers_with_a_preemption_and_evaluations_is_bit_identical_to_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held_out) = (checkout("README.md"), checkout("engine/src/lib.rs"));
    let one = args(dir.path(), "one", s(&train), s(&held_out));
    let out = run_baton_ok(&one.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eval after step 2/4  loss"), "{stderr}");
    assert!(
        stderr.contains("step 3/4  loss") && stderr.lines().any(|l| l.starts_with("step 3/4") && l.contains("eval "))
    );

    let mut three = args(dir.path(), "three", s(&train), s(&held_out));
    three.extend(["--workers", "3", "--preempt", "1@2:1,grace=60s"].map(String::from));
    three.extend(["--timeline".into(), s(&dir.path().join("three.trace.json")).to_string()]);
    let out = run_baton_ok(&three.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migration to generation 1: worker(s) [1] left"), "{stderr}");

    let load = |tag: &str| io::load_tensors(&dir.path().join(format!("{tag}.safetensors")), "layers.").unwrap();
    assert!(bit_identical(&load("one"), &load("three")), "3 workers with a preemption != 1 process");
    let (a, b) = (report(&dir.path().join("one.json")), report(&dir.path().join("three.json")));
    assert_eq!(a["losses"], b["losses"]);
    assert_eq!(a["eval"], b["eval"], "held-out losses differ");
    let steps: Vec<u64> = a["eval"].as_array().unwrap().iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 3], "evaluations after steps s with (s + 1) % 2 == 0");
    assert!(a["eval"].as_array().unwrap().iter().all(|e| e["loss"].as_f64().unwrap().is_finite()));
    assert_eq!(b["migrations"].as_array().unwrap().len(), 1);

    let svg = std::fs::read_to_string(dir.path().join("three.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    let train_points = polyline_points(&svg, "train");
    assert_eq!(train_points.len(), 4, "one point per step");
    assert!(train_points.windows(2).all(|w| w[0].0 < w[1].0), "steps run left to right");
    assert_eq!(polyline_points(&svg, "eval").len(), 2, "one point per evaluation");
}

/// Asserts a refused run: `code`, `expected` on stderr, no panic, no training.
fn refused(out: &std::process::Output, code: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "expected exit {code}:\n{stderr}");
    assert!(stderr.contains(expected), "expected `{expected}` in:\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("training "), "{stderr}");
}

#[test]
fn eval_flags_are_checked_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("w.safetensors");
    let readme = format!("text:{}", s(&checkout("README.md")));
    let base = |extra: &[&str]| {
        let mut v = vec!["train", "--model", GPT, "--steps", "2", "--batch", "2", "--save", s(&save)];
        v.extend(extra);
        run_baton(&v)
    };
    refused(&base(&["--eval-data", &readme, "--eval-every", "0"]), 2, "--eval-every");
    refused(&base(&["--eval-every", "3"]), 2, "--eval-data");
    refused(&base(&["--eval-data", &readme, "--eval-batches", "0"]), 2, "--eval-batches");
    let missing = dir.path().join("missing.txt");
    refused(&base(&["--eval-data", &format!("text:{}", s(&missing))]), 1, "--eval-data");
    refused(&base(&["--eval-data", &readme, "--plot", s(&dir.path().join("no/such/dir/p.svg"))]), 1, "--plot");
    refused(&base(&["--eval-data", &format!("text:{}", s(&save)), "--plot", s(&save)]), 1, "--plot");
    // Bytes need a vocabulary of 256.
    let small = GPT.replace("\"tokens\": 256", "\"tokens\": 17").replace("\"out\": 256", "\"out\": 17");
    let out = run_baton(&["train", "--model", &small, "--steps", "1", "--save", s(&save), "--eval-data", &readme]);
    refused(&out, 1, "vocabulary is 17");
    assert!(!save.exists(), "nothing was written");
}

/// `baton train --data tokens:FILE` on a 6 GiB sparse file: the peak
/// resident memory (VmHWM, in the report) exceeds that of the same run on
/// a 64 KiB file by a few MiB, not by the file.
#[test]
fn a_multi_gib_token_file_trains_with_small_peak_rss() {
    let dir = tempfile::tempdir().unwrap();
    let small = GPT.replace("\"tokens\": 256", "\"tokens\": 17").replace("\"out\": 256", "\"out\": 17");
    let peak = |size: u64| {
        let path = dir.path().join(format!("tokens-{size}.bin"));
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let report_path = dir.path().join(format!("r-{size}.json"));
        let data = format!("tokens:{},dtype=u16", s(&path));
        let mut cmd = baton();
        cmd.args(["train", "--model", &small, "--data", &data, "--steps", "3", "--batch", "4"]);
        cmd.args(["--save", s(&dir.path().join(format!("w-{size}.safetensors"))), "--report", s(&report_path)]);
        Proc::start(&mut cmd, Duration::from_secs(120)).finish();
        std::fs::remove_file(&path).unwrap();
        report(&report_path)["peak_rss_kib"].as_u64().expect("the report gives the peak RSS on Linux")
    };
    let (tiny, huge) = (peak(64 << 10), peak(6 << 30));
    assert!(huge < tiny + 32 * 1024, "peak RSS {huge} KiB with a 6 GiB file, {tiny} KiB with 64 KiB");
}

/// `--eval-data FILE.safetensors` (the golden mlp12 run's data: its first K
/// batches are held out) on 2 workers: each evaluation equals the loss the
/// recording training forward gives the same weights and batches.
#[test]
fn safetensors_held_out_data_matches_the_training_forward() {
    let golden = common::Golden::load("mlp12_sgd", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("r.json");
    let mut args = golden.train_args(&dir.path().join("w.safetensors"));
    let file = s(&golden.path).to_string();
    args.extend(["--eval-data", &file, "--eval-every", "1", "--eval-batches", "2", "--workers", "2"].map(String::from));
    args.extend(["--report".to_string(), s(&report_path).to_string()]);
    common::run_baton_ok_owned(&args);
    let evals = report(&report_path)["eval"].as_array().unwrap().clone();
    assert_eq!(evals.len(), golden.steps, "one evaluation after every step");
    let model = baton_models::spec::parse(&golden.spec).unwrap();
    let optimizer = baton_engine::Optimizer::new(golden.optimizer);
    let mut trainer = baton_engine::Trainer::new(model, golden.params.clone(), optimizer).unwrap();
    for (step, batch) in golden.data.iter().enumerate() {
        trainer.step(step as u32, batch, golden.micro_batches).unwrap();
        let losses: Vec<f32> = golden.data[..2].iter().map(|b| trainer.gradients(0, b, 1).unwrap().0).collect();
        let expected = losses.iter().sum::<f32>() / 2.0;
        assert_eq!(evals[step]["step"].as_u64(), Some(step as u64));
        let got = evals[step]["loss"].as_f64().unwrap() as f32;
        assert_eq!(got.to_bits(), expected.to_bits(), "after step {step}: {got} != {expected}");
    }
}
