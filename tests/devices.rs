//! `--device` on the command line: a GPU that cannot be used here fails
//! fast and clearly (non-zero exit, a message naming the flag and CUDA, no
//! panic, nothing trained), a malformed device names the flag, and `cpu`
//! trains with the same bits as no flag at all, in one process and in
//! worker processes.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use baton_engine::{Backend, Device};
use baton_models::{io, spec};
use common::{bit_identical, run_baton, run_baton_ok};

/// The longest a refused `--device` may take: it must fail before any work.
const FAST: Duration = Duration::from_secs(20);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unusable_gpu_fails_fast_and_clearly() {
    if Backend::open(Device::Cuda(0)).is_ok() {
        let _ = std::io::stderr().write_all(b"SKIPPED an_unusable_gpu_fails_fast_and_clearly: a GPU is present\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let (save_arg, cluster) = (save.to_str().unwrap(), dir.path().join("no-cluster"));
    let worker = ["worker", "--device", "cuda", "--coordinator", "127.0.0.1:9", "--id", "0", "--cluster-dir"];
    let runs: [Vec<&str>; 3] = [
        vec!["train", "--device", "cuda", "--steps", "1", "--save", save_arg],
        vec!["train", "--device", "cpu,cuda:1", "--workers", "2", "--steps", "1", "--save", save_arg],
        worker.iter().copied().chain([cluster.to_str().unwrap()]).collect(),
    ];
    for args in runs {
        let start = Instant::now();
        let out = run_baton(&args);
        let (text, took) = (stderr(&out), start.elapsed());
        assert_eq!(out.status.code(), Some(1), "baton {args:?}:\n{text}");
        assert!(text.contains("--device") && text.contains("CUDA"), "baton {args:?}:\n{text}");
        assert!(!text.contains("panicked"), "baton {args:?} panicked:\n{text}");
        assert!(took < FAST, "baton {args:?} took {took:?} to refuse the device");
        assert!(!save.exists(), "baton {args:?} trained anyway");
    }
}

#[test]
fn malformed_devices_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("o.safetensors");
    let save = save.to_str().unwrap();
    let worker = ["worker", "--coordinator", "127.0.0.1:9", "--id", "0", "--cluster-dir", "d", "--device", "gpu:0"];
    for (args, bad) in [(vec!["train", "--device", "bogus", "--save", save], "bogus"), (worker.to_vec(), "gpu:0")] {
        let out = run_baton(&args);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "baton {args:?}:\n{text}");
        assert!(text.contains("--device") && text.contains(bad) && text.contains("cpu, cuda or cuda:N"), "{text}");
    }
    let out = run_baton(&["train", "--device", "cpu,cpu", "--steps", "1", "--save", save]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("--device cpu,cpu: 2 devices for 1 worker(s)"), "{text}");
}

#[test]
fn cpu_trains_with_the_same_bits_as_no_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let common = ["train", "--steps", "2", "--optimizer", "sgd:lr=0.05,momentum=0.9"];
    let runs: [(&str, &[&str]); 3] =
        [("plain", &[]), ("cpu", &["--device", "cpu"]), ("workers", &["--device", "cpu,cpu", "--workers", "2"])];
    let mut weights = Vec::new();
    for (name, extra) in runs {
        let save = path(name);
        let args: Vec<&str> = common.iter().chain(extra).copied().chain(["--save", &save]).collect();
        let out = run_baton_ok(&args);
        if !extra.is_empty() {
            let text = stderr(&out);
            assert!(text.contains(&format!("device {}", extra[1])), "{text}");
        }
        weights.push(io::load_params(std::path::Path::new(&save), &spec::mlp12()).unwrap());
    }
    assert!(bit_identical(&weights[0], &weights[1]), "--device cpu changed the bits");
    assert!(bit_identical(&weights[0], &weights[2]), "--device cpu,cpu on 2 workers changed the bits");
}
