//! `BATON_REQUIRE_GPU=1` turns a GPU test's skip into a failure: the probe
//! below (a GPU test like every other: it asks for a CUDA device and skips
//! through `cuda::skip_gpu_test` when there is none) is run in a child
//! process of this test binary with and without the variable.

use std::process::Command;

use baton_kernels::cuda::{self, Gpu};

/// A GPU test: opens the GPU, or skips through the shared helper.
#[test]
#[ignore = "run by a_required_gpu_turns_a_skip_into_a_failure in a child process"]
fn probe_gpu_or_skip() {
    if let Err(why) = Gpu::new(0) {
        cuda::skip_gpu_test("probe_gpu_or_skip", &why).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Runs the probe in a child process with `BATON_REQUIRE_GPU` set to `value` (or unset).
fn probe(value: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "probe_gpu_or_skip", "--test-threads=1"]);
    match value {
        Some(v) => cmd.env(cuda::REQUIRE_GPU, v),
        None => cmd.env_remove(cuda::REQUIRE_GPU),
    };
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_required_gpu_turns_a_skip_into_a_failure() {
    let gpu = Gpu::new(0).is_ok();
    let (ok, text) = probe(None);
    assert!(ok, "without the variable the probe passes:\n{text}");
    assert_eq!(
        text.contains("SKIPPED probe_gpu_or_skip"),
        !gpu,
        "it says SKIPPED exactly when there is no GPU:\n{text}"
    );
    let (ok, text) = probe(Some("1"));
    assert_eq!(ok, gpu, "with BATON_REQUIRE_GPU=1 the probe fails exactly when there is no GPU:\n{text}");
    if !gpu {
        assert!(text.contains("BATON_REQUIRE_GPU=1 but no GPU can be used"), "{text}");
        assert!(!text.contains("SKIPPED probe_gpu_or_skip"), "{text}");
    }
}
