//! `baton-bench` on bad input: a GPU that cannot be used fails fast and
//! clearly (exit 1, naming `--device` and CUDA, no panic), a malformed
//! device or bench flag names the flag (exit 2 for clap's, 1 for the
//! bench's own checks), and nothing is measured.

#[path = "../../tests/common/watchdog.rs"]
mod watchdog;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use baton_engine::{Backend, Device};
use watchdog::run_with_watchdog;

fn run_bench(args: &[&str]) -> (Option<i32>, String) {
    let out: Output =
        run_with_watchdog(Command::new(env!("CARGO_BIN_EXE_baton-bench")).args(args), Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "baton-bench {args:?} panicked:\n{text}");
    assert!(out.stdout.is_empty(), "baton-bench {args:?} printed a table:\n{}", String::from_utf8_lossy(&out.stdout));
    (out.status.code(), text)
}

#[test]
fn an_unusable_gpu_fails_clearly() {
    if Backend::open(Device::Cuda(0)).is_ok() {
        let _ = std::io::stderr().write_all(b"SKIPPED an_unusable_gpu_fails_clearly: a GPU is present\n");
        return;
    }
    let (code, text) = run_bench(&["step", "--device", "cuda:0", "--steps", "1"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--device") && text.contains("CUDA"), "{text}");
}

#[test]
fn malformed_flags_are_named() {
    let (code, text) = run_bench(&["step", "--device", "cuda:x"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--device") && text.contains("cuda:x") && text.contains("cpu, cuda or cuda:N"), "{text}");
    for (args, flag) in [
        (&["migrate", "--widths", "0"][..], "--widths"),
        (&["transport", "--sizes", "0"], "--sizes 0"),
        (&["pipeline", "--steps", "0"], "--steps 0"),
    ] {
        let (code, text) = run_bench(args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains(flag), "{args:?}: {text}");
    }
}
