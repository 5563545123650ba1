//! `baton-bench migrate` end to end at a tiny size: every method runs
//! (including checkpoint-restart, which starts `baton-bench restart`), the
//! table prints, the JSON has one row per scenario with every method, and
//! the checkpoint files are cleaned up. Bad checkpoints are refused by name.

#[path = "../../tests/common/watchdog.rs"]
mod watchdog;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use watchdog::run_with_watchdog;

/// The built `baton-bench` binary.
fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton-bench"))
}

fn run_bench(args: &[&str]) -> Output {
    run_with_watchdog(bench().args(args), Duration::from_secs(120))
}

#[test]
fn a_tiny_run_measures_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("migrate.json");
    let out = run_with_watchdog(
        bench().args(["migrate", "--widths", "32", "--in-flight", "1,2", "--rows", "4", "--repeats", "1"]).args([
            "--dir".as_ref(),
            dir.path().as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
        ]),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench migrate failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("a<=1.2d+20") && stdout.contains("c>=10a"), "{stdout}");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, in_flight) in rows.iter().zip([1, 2]) {
        assert_eq!(row["width"], 32);
        assert_eq!(row["in_flight"], in_flight);
        for method in ["segments", "recompute", "restart", "raw_quic", "raw_tcp"] {
            let ms = row[method]["ms"].as_f64().unwrap_or(-1.0);
            assert!(ms > 0.0, "{method}: {}", row[method]);
            assert!(row[method]["bytes"].as_u64().unwrap() > 0, "{method}");
        }
        assert_eq!(row["segments"]["bytes"], row["raw_quic"]["bytes"], "the limits move (a)'s bytes");
        assert!(row["moved_bytes"]["segments"].as_u64().unwrap() > 0);
        assert!(row["a_target_met"].is_boolean() && row["c_target_met"].is_boolean());
        assert!(row["restart"]["parts_ms"]["load"].as_f64().is_some());
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("migrate.json")], "checkpoints are removed");
}

#[test]
fn bad_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    for (path, expected) in [(garbage.to_str().unwrap(), "garbage.safetensors"), ("/no/such.safetensors", "/no/such")] {
        let out = run_bench(&["restart", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
