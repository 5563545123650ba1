//! Whole golden training runs give the same bits on every CPU kernel path
//! (`BATON_KERNEL_ISA=avx512|avx2|generic`): each matmul output is one
//! fixed chain of fused multiply-adds, whatever the vector width. A path
//! this CPU lacks is skipped, and says so.

mod common;

use baton_kernels::Isa;
use baton_models::io;
use common::{bit_identical, Golden};

fn train_on(golden: &Golden, isa: Isa, dir: &std::path::Path, extra: &[&str]) -> baton_engine::ParamStore {
    let out = dir.join(format!("{isa}.safetensors"));
    let mut args = golden.train_args(&out);
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = common::run_with_watchdog(
        common::baton().args(&args).env("BATON_KERNEL_ISA", isa.to_string()),
        std::time::Duration::from_secs(600),
    );
    assert!(output.status.success(), "{isa}: {}", String::from_utf8_lossy(&output.stderr));
    io::load_tensors(&out, "").unwrap()
}

fn check(name: &str, extra: &[&str]) {
    let golden = Golden::load(name, 1e-3);
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Generic] {
        if !isa.is_available() {
            eprintln!("skipping the {isa} path: this CPU lacks it");
            continue;
        }
        runs.push((isa, train_on(&golden, isa, dir.path(), extra)));
    }
    assert!(runs.len() >= 2, "fewer than two kernel paths to compare on this CPU");
    for (isa, params) in &runs[1..] {
        assert!(bit_identical(params, &runs[0].1), "{name}: {isa} differs from {}", runs[0].0);
    }
}

#[test]
fn golden_mlp_runs_are_bit_identical_on_every_kernel_path() {
    check("mlp12_adam", &["--workers", "1"]);
    check("resmlp12_ce", &["--workers", "1"]);
}

#[test]
fn the_golden_gpt_is_bit_identical_on_every_kernel_path() {
    check("gpt12_adamw", &["--workers", "1", "--clip-grad-norm", "1"]);
}

#[test]
fn an_unknown_kernel_path_is_an_error_before_any_work() {
    let out =
        common::baton().args(["demo", "--out", "/nonexistent/never"]).env("BATON_KERNEL_ISA", "avx9").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("BATON_KERNEL_ISA") && stderr.contains("avx9"), "{stderr}");
}

/// A mixed fleet on one machine: worker 1 computes on AVX-512 and is
/// preempted mid-step; its layers and unfinished segments continue on the
/// AVX2 workers 0 and 2. The weights equal a one-process AVX2 run's.
#[test]
fn a_layer_migrating_from_avx512_to_avx2_continues_bit_for_bit() {
    if !Isa::Avx512.is_available() || !Isa::Avx2.is_available() {
        eprintln!("skipping the cross-path migration: this CPU lacks avx512 or avx2");
        return;
    }
    for name in ["mlp12_adam", "gpt12_adamw"] {
        let golden = Golden::load(name, 1e-3);
        let dir = tempfile::tempdir().unwrap();
        let clip: &[&str] = if name.starts_with("gpt") { &["--clip-grad-norm", "1"] } else { &[] };
        let reference = train_on(&golden, Isa::Avx2, dir.path(), &[clip, &["--workers", "1"]].concat());
        let mixed = [&["--workers", "3", "--kernel-isa", "avx2,avx512,avx2", "--preempt", "1@2:5"], clip].concat();
        let params = train_on(&golden, Isa::Avx512, dir.path(), &mixed);
        assert!(bit_identical(&params, &reference), "{name}: the avx512 -> avx2 migration changed the weights");
    }
}
