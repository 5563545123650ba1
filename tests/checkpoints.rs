//! Checkpoints and resume through real processes (`baton train
//! --checkpoint-dir`, then `baton train --resume`): bit-identical to an
//! uninterrupted one-process run across worker counts, token data resumed
//! at its position, SIGTERM leaving a resumable checkpoint, SIGKILL of the
//! whole job at random moments while checkpoints are written, and damaged
//! or missing files refused with errors naming them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_engine::init::SplitMix64;
use baton_engine::ParamStore;
use baton_models::{checkpoint, io};
use common::{baton, bit_identical, run_baton, run_baton_ok_owned, Golden, Proc};

/// `baton train` on a golden run's model and data, `steps` steps on `workers`.
fn golden_args(g: &Golden, steps: usize, workers: usize, save: &Path) -> Vec<String> {
    let file = g.path.to_str().unwrap();
    let args = ["train", "--model", &g.spec, "--data", file, "--steps", &steps.to_string()];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    let more = ["--microbatches", &g.micro_batches.to_string(), "--optimizer", &g.optimizer.to_string()];
    args.extend(more.map(String::from));
    args.extend(["--workers", &workers.to_string(), "--save", save.to_str().unwrap()].map(String::from));
    args
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn weights(path: &Path) -> ParamStore {
    io::load_tensors(path, "layers.").unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 3 steps with a checkpoint on `before` workers, resumed on `after`:
/// the bits of the uninterrupted one-process run.
fn resume_golden(name: &str, moves: &[(usize, usize)]) {
    let g = Golden::load(name, 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.safetensors");
    run_baton_ok_owned(&with(golden_args(&g, g.steps, 1, &reference), &["--init", path_str(&g.path)]));
    for &(before, after) in moves {
        let ckpt = dir.path().join(format!("ckpt-{before}-{after}"));
        let first = dir.path().join("first.safetensors");
        let args = with(golden_args(&g, 3, before, &first), &["--init", path_str(&g.path)]);
        run_baton_ok_owned(&with(args, &["--checkpoint-dir", path_str(&ckpt)]));
        let resumed = dir.path().join(format!("resumed-{before}-{after}.safetensors"));
        run_baton_ok_owned(&with(golden_args(&g, g.steps, after, &resumed), &["--resume", path_str(&ckpt)]));
        let what = format!("{name}: checkpoint at step 3 on {before} workers, resumed on {after}");
        assert!(bit_identical(&weights(&resumed), &weights(&reference)), "{what}: weights differ");
    }
}

#[test]
fn sgd_momentum_resumes_across_worker_counts_through_processes() {
    resume_golden("mlp12_sgd", &[(1, 3), (3, 2), (2, 1)]);
}

#[test]
fn adam_checkpointed_on_3_workers_resumes_on_2_through_processes() {
    resume_golden("mlp12_adam", &[(3, 2)]);
}

/// A small GPT over bytes of the README (`--data text:FILE`): the sampler
/// continues at the checkpoint's position, so the resumed run draws the
/// uninterrupted run's batches.
#[test]
fn token_data_resumes_at_its_position() {
    let block = r#"{"type": "transformer_block", "heads": 2, "hidden": 32}"#;
    let spec = format!(
        r#"{{"input": {{"tokens": 256, "seq": 8}}, "layers": [{{"type": "embedding", "dim": 16}}, {block},
            {{"type": "layernorm"}}, {{"type": "linear", "out": 256}}], "loss": "cross_entropy"}}"#
    );
    let text = format!("text:{}", concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let run = |name: &str, steps: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.safetensors"));
        let mut args = vec!["train", "--model", &spec, "--data", &text, "--steps", steps, "--batch", "4"];
        args.extend(["--microbatches", "2", "--optimizer", "adamw:lr=3e-3", "--seed", "7"]);
        args.extend(["--save", out.to_str().unwrap()]);
        args.extend(extra);
        run_baton_ok_owned(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        weights(&out)
    };
    let reference = run("one", "6", &["--workers", "1"]);
    run("first", "3", &["--workers", "2", "--checkpoint-dir", path_str(&ckpt)]);
    let manifest = checkpoint::load(&ckpt).unwrap().manifest;
    let tokens = manifest.tokens.expect("token data stores its position");
    assert_eq!((tokens.seed, tokens.windows), (7, 3 * 4), "3 steps of 4 windows drawn");
    let resumed = run("resumed", "6", &["--workers", "3", "--resume", path_str(&ckpt)]);
    assert!(bit_identical(&resumed, &reference), "the resumed token run differs from the uninterrupted one");
}

/// `baton train` on mlp12 with synthetic data: `steps` steps on `workers`.
fn mlp_args(steps: usize, workers: usize, save: &Path) -> Vec<String> {
    let args = ["train", "--steps", &steps.to_string(), "--workers", &workers.to_string()];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.extend(["--optimizer", "sgd:lr=0.05,momentum=0.9", "--save", path_str(save)].map(String::from));
    args
}

fn start(args: &[String]) -> Proc {
    Proc::start(baton().args(args), Duration::from_secs(120))
}

#[test]
fn sigterm_writes_a_checkpoint_that_resumes_bit_identically() {
    const STEPS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, reference) = (dir.path().join("ckpt"), dir.path().join("reference.safetensors"));
    run_baton_ok_owned(&mlp_args(STEPS, 1, &reference));
    let mut job = start(&with(mlp_args(STEPS, 2, &dir.path().join("a")), &["--checkpoint-dir", path_str(&ckpt)]));
    job.wait_for_prefix("step 20/");
    // SAFETY: kill(2) on the pid of the child this test started.
    assert_eq!(unsafe { libc::kill(job.pid(), libc::SIGTERM) }, 0);
    let (status, stderr) = job.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("its latest checkpoint is in"), "{stderr}");
    let next = checkpoint::load(&ckpt).unwrap().manifest.next_step as usize;
    assert!((20..STEPS).contains(&next), "the stop's checkpoint holds {next} steps:\n{stderr}");
    let resumed = dir.path().join("resumed.safetensors");
    run_baton_ok_owned(&with(mlp_args(STEPS, 3, &resumed), &["--resume", path_str(&ckpt)]));
    assert!(bit_identical(&weights(&resumed), &weights(&reference)), "resumed after SIGTERM: weights differ");
}

/// The pids of `pid`'s children (its worker processes).
fn children(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
    let read = |t: &std::fs::DirEntry| std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
    let text: String = tasks.unwrap_or_default().iter().map(read).collect::<Vec<_>>().join(" ");
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// SIGKILLs the job: the `baton train` process this test started, then
/// its workers (by pid), as when the machine dies.
fn kill_job(job: &mut Proc) {
    let workers = children(job.pid());
    job.kill();
    for pid in workers {
        // SAFETY: kill(2) on a worker process of the job this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[test]
fn killing_the_job_while_checkpoints_are_written_always_leaves_one_to_resume() {
    const STEPS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, reference) = (dir.path().join("ckpt"), dir.path().join("reference.safetensors"));
    run_baton_ok_owned(&mlp_args(STEPS, 1, &reference));
    let mut rng = SplitMix64::new(2026);
    let mut done = 0;
    for (i, workers) in [2, 3, 1, 2, 3].into_iter().enumerate() {
        let mut args = with(mlp_args(STEPS, workers, &dir.path().join("a")), &["--checkpoint-every", "1"]);
        args = with(args, &["--checkpoint-dir", path_str(&ckpt)]);
        if i > 0 {
            args = with(args, &["--resume", path_str(&ckpt)]);
        }
        let mut job = start(&args);
        job.wait_for_prefix("checkpoint: steps 0..");
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 150));
        kill_job(&mut job);
        let (_, log) = job.wait_exit(Duration::from_secs(5));
        assert!(!log.contains("writing the checkpoint") && !log.contains("training failed"), "kill {i}:\n{log}");
        let loaded = checkpoint::load(&ckpt).unwrap_or_else(|e| panic!("kill {i}: no complete checkpoint left: {e}"));
        let next = loaded.manifest.next_step as usize;
        assert!(next > done && next < STEPS, "kill {i}: the checkpoint holds {next} steps (before: {done})");
        done = next;
    }
    let resumed = dir.path().join("resumed.safetensors");
    run_baton_ok_owned(&with(mlp_args(STEPS, 2, &resumed), &["--resume", path_str(&ckpt)]));
    assert!(bit_identical(&weights(&resumed), &weights(&reference)), "resumed after 5 kills: weights differ");
}

fn resume_error(ckpt: &Path, extra: &[&str]) -> String {
    let save = ckpt.parent().unwrap().join("x.safetensors");
    let args = with(with(mlp_args(6, 1, &save), &["--resume", path_str(ckpt)]), extra);
    let out = run_baton(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "resuming {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn damaged_missing_or_mismatched_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    run_baton_ok_owned(&with(mlp_args(3, 2, &dir.path().join("a")), &["--checkpoint-dir", path_str(&ckpt)]));
    let generation: PathBuf = checkpoint::load(&ckpt).unwrap().path;
    let part = generation.join(&checkpoint::load(&ckpt).unwrap().manifest.parts[1].file);
    let good = std::fs::read(&part).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x40;
    std::fs::write(&part, &bad).unwrap();
    let err = resume_error(&ckpt, &[]);
    assert!(err.contains(path_str(&part)) && err.contains("damaged"), "{err}");
    std::fs::write(&part, &good).unwrap();
    let err = resume_error(&ckpt, &["--optimizer", "adam:lr=1e-3"]);
    assert!(err.contains("--optimizer"), "{err}");
    let err =
        resume_error(&ckpt, &["--model", r#"{"input": 64, "layers": [{"type": "linear", "out": 64}], "loss": "mse"}"#]);
    assert!(err.contains("`spec`"), "{err}");
    let err = resume_error(&ckpt, &["--init", path_str(&dir.path().join("a"))]);
    assert!(err.contains("--init with --resume"), "{err}");
    std::fs::remove_file(generation.join(checkpoint::MANIFEST)).unwrap();
    let err = resume_error(&ckpt, &[]);
    assert!(err.contains("manifest.json") && err.contains("missing"), "{err}");
    let err = resume_error(&dir.path().join("empty"), &[]);
    assert!(err.contains("no checkpoint to resume from"), "{err}");
}

/// `--preempt` and `--join` with `--resume` count steps of the whole run: a
/// golden run checkpointed at step 3 on 3 workers, resumed on 3 with worker
/// 1 preempted in step 4, and resumed on 2 with a worker joining in step 4,
/// both give the bits of the uninterrupted one-process run; a point before
/// the checkpoint is refused, naming the flag.
#[test]
fn preempt_and_join_work_with_resume() {
    let g = Golden::load("mlp12_adam", 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.safetensors");
    run_baton_ok_owned(&with(golden_args(&g, g.steps, 1, &reference), &["--init", path_str(&g.path)]));
    let cases: [(usize, &[&str]); 2] = [(3, &["--preempt", "1@4:3"]), (2, &["--join", "4:2"])];
    for (i, (workers, extra)) in cases.into_iter().enumerate() {
        let ckpt = dir.path().join(format!("ckpt-{i}"));
        let first = dir.path().join("first.safetensors");
        let args = with(golden_args(&g, 3, 3, &first), &["--init", path_str(&g.path)]);
        run_baton_ok_owned(&with(args, &["--checkpoint-dir", path_str(&ckpt)]));
        let resumed = dir.path().join(format!("resumed-{i}.safetensors"));
        let args = with(golden_args(&g, g.steps, workers, &resumed), &["--resume", path_str(&ckpt)]);
        let out = run_baton_ok_owned(&with(args, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("resumed on {workers} workers with {extra:?}");
        assert!(bit_identical(&weights(&resumed), &weights(&reference)), "{what}: weights differ\n{stderr}");
        assert!(stderr.contains("layers"), "{what}: no migration reported\n{stderr}");
        if i == 0 {
            let save = dir.path().join("early.safetensors");
            let args = with(golden_args(&g, g.steps, 3, &save), &["--resume", path_str(&ckpt), "--preempt", "1@2:1"]);
            let out = run_baton(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("--preempt 1@2: the run resumes at step 3"), "{err}");
        }
    }
}
