//! `baton bench crash`: what a worker lost without notice costs, with
//! in-memory replicas against a restart from the last checkpoint, in one run.
//!
//! One job (a 12-layer MLP of width W on 3 worker processes, Adam, M=4, a
//! checkpoint every N steps, one kernel thread per worker) is trained four
//! times, one after the other: uninterrupted with replicas on and off; with
//! replicas, a worker SIGKILLed from outside (by pid) once K steps are done,
//! so the job redoes the step in progress from the replicas; and without
//! replicas, the same kill, which fails the job, then at once `--resume`
//! from the last checkpoint, as a user would. Times are this process's
//! clock at the kill and at the runs' stderr lines (each stamped as it is
//! read), plus the report's crash record: detection is the stamp of the
//! coordinator's "lost worker(s)" line (printed once the layers are
//! restored) minus the record's restore time. Every run's final weights are
//! compared bit for bit with the uninterrupted run's. Each worker's peak
//! resident memory (`VmHWM`) is sampled every [`SAMPLE`] while it runs and
//! shown next to an estimate of what replicas hold.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use baton_engine::init::SplitMix64;
use baton_engine::{ParamStore, Tensor};
use baton_models::{checkpoint, io, spec};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::write_json;

mod watch;

use watch::{step_of, Finished, Watched};

const WORKERS: u32 = 3;
const MICROBATCHES: usize = 4;
const OPTIMIZER: &str = "adam:lr=1e-4";
/// Adam keeps two buffers per parameter (`exp_avg`, `exp_avg_sq`).
const OPTIMIZER_BUFFERS: u64 = 2;
/// How often the workers' peak memory is read while a run goes on.
const SAMPLE: Duration = Duration::from_millis(20);
/// `--peer-timeout` of every run.
const PEER_TIMEOUT: &str = "30s";
/// The longest any one run of the bench may take.
const RUN_LIMIT: Duration = Duration::from_secs(1800);

#[derive(Debug, Args)]
pub struct CrashArgs {
    /// Width of the 12-layer MLP (input, hidden and output).
    #[arg(long, value_name = "W", default_value_t = 512)]
    width: usize,
    /// Layers of the MLP.
    #[arg(long, value_name = "L", default_value_t = 12)]
    layers: usize,
    /// Rows per step.
    #[arg(long, value_name = "B", default_value_t = 128)]
    batch: usize,
    /// Steps of the job.
    #[arg(long, value_name = "S", default_value_t = 200)]
    steps: usize,
    /// Steps between checkpoints (`--checkpoint-every`).
    #[arg(long, value_name = "N", default_value_t = 25)]
    checkpoint_every: usize,
    /// Kill the victim once this many steps are reported done.
    #[arg(long, value_name = "K", default_value_t = 88)]
    kill_after: usize,
    /// The worker killed (0, 1 or 2).
    #[arg(long, value_name = "WORKER", default_value_t = 1)]
    victim: u32,
    /// Milliseconds to wait after step K's line before the kill.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl CrashArgs {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.width >= 1 && self.layers >= WORKERS as usize, "--width >= 1 and --layers >= {WORKERS}");
        ensure!(self.batch >= MICROBATCHES, "--batch {}: at least {MICROBATCHES} rows", self.batch);
        ensure!(self.checkpoint_every >= 1, "--checkpoint-every 0: give a number of steps >= 1");
        ensure!(
            self.kill_after > self.checkpoint_every && self.kill_after + 1 < self.steps,
            "--kill-after {}: must be after the first checkpoint (--checkpoint-every {}) and leave \
             at least two steps of --steps {}",
            self.kill_after,
            self.checkpoint_every,
            self.steps
        );
        ensure!(self.victim < WORKERS, "--victim {}: the job has workers 0..{WORKERS}", self.victim);
        Ok(())
    }
}

/// Where one benchmark's files live, and the job.
struct Bench<'a> {
    exe: PathBuf,
    dir: &'a Path,
    data: PathBuf,
    args: &'a CrashArgs,
}

impl Bench<'_> {
    fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}{ext}"))
    }

    /// The `baton train` command line of run `name` (its checkpoint
    /// directory is `name-ckpt`, or `resume`'s when resuming).
    fn train_args(&self, name: &str, replicas: bool, resume: Option<&str>) -> Vec<OsString> {
        let a = self.args;
        let mut args: Vec<OsString> = vec!["train".into(), "--model".into(), spec::mlp_json(a.width, a.layers).into()];
        let checkpoints = self.path(resume.unwrap_or(name), "-ckpt");
        for (flag, value) in [
            ("--data", self.data.as_os_str().to_owned()),
            ("--steps", a.steps.to_string().into()),
            ("--batch", a.batch.to_string().into()),
            ("--microbatches", MICROBATCHES.to_string().into()),
            ("--optimizer", OPTIMIZER.into()),
            ("--workers", WORKERS.to_string().into()),
            ("--threads", "1".into()),
            ("--replicas", if replicas { "on" } else { "off" }.into()),
            // A kill is found by the process's exit; a long peer timeout
            // keeps a worker slowed by a loaded machine from being "lost".
            ("--peer-timeout", PEER_TIMEOUT.into()),
            ("--checkpoint-dir", checkpoints.as_os_str().to_owned()),
            ("--checkpoint-every", a.checkpoint_every.to_string().into()),
            ("--save", self.path(name, ".safetensors").into_os_string()),
            ("--report", self.path(name, ".json").into_os_string()),
        ] {
            args.extend([flag.into(), value]);
        }
        if resume.is_some() {
            args.extend(["--resume".into(), checkpoints.into_os_string()]);
        }
        args
    }

    fn weights(&self, name: &str) -> anyhow::Result<ParamStore> {
        io::load_tensors(&self.path(name, ".safetensors"), "").with_context(|| format!("the weights of run {name}"))
    }

    fn report(&self, name: &str) -> anyhow::Result<Value> {
        let bytes = std::fs::read(self.path(name, ".json")).with_context(|| format!("the report of run {name}"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("the report of run {name}"))
    }
}

/// An uninterrupted run.
#[derive(Debug, Serialize)]
struct Plain {
    replicas: bool,
    wall_s: f64,
    /// Each worker's peak resident memory, KiB, by worker number.
    worker_peak_rss_kib: BTreeMap<u32, u64>,
    /// The coordinator's (the report's `peak_rss_kib`).
    coordinator_peak_rss_kib: Option<u64>,
    /// Layers of each worker, by worker number (the report's first partition).
    #[serde(skip)]
    stages: BTreeMap<u32, [usize; 2]>,
}

fn plain(bench: &Bench, name: &str, replicas: bool) -> anyhow::Result<(Plain, ParamStore)> {
    eprintln!("{name}: {} steps uninterrupted, replicas {}...", bench.args.steps, on_off(replicas));
    let run = Watched::start(&bench.exe, &bench.train_args(name, replicas, None))?.finish()?;
    ensure!(run.status.success(), "run {name} failed ({}): {}", run.status, run.tail());
    let report = bench.report(name)?;
    let stages = report["partitions"][0]["stages"]
        .as_array()
        .context("the report's partitions")?
        .iter()
        .filter_map(|s| {
            Some((s["worker"].as_u64()? as u32, [s["layers"][0].as_u64()? as usize, s["layers"][1].as_u64()? as usize]))
        })
        .collect();
    let plain = Plain {
        replicas,
        wall_s: seconds(run.ended - run.started),
        worker_peak_rss_kib: run.peak_kib,
        coordinator_peak_rss_kib: report["peak_rss_kib"].as_u64(),
        stages,
    };
    Ok((plain, bench.weights(name)?))
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// A crashed run and its recovery, measured from the kill.
#[derive(Debug, Default, Serialize)]
struct Recovery {
    /// How the job got going again.
    how: &'static str,
    /// Steps reported done when the victim was killed.
    steps_done_at_kill: usize,
    /// Kill until the loss was noticed (replicas) or the job exited (restart).
    detected_ms: f64,
    /// Restoring the lost layers on survivors (replicas), or the restarted
    /// process's start until its first step (restart: start-up, loading the checkpoint).
    restore_ms: f64,
    /// The report's `resumed_after_ms`: detection until the redone step's first loss (replicas only).
    resumed_after_ms: Option<f64>,
    /// Kill until the first step finished again.
    first_step_after_ms: f64,
    /// Kill until the step in progress at the kill finished (caught up).
    caught_up_after_ms: f64,
    /// Steps trained twice, the one in progress at the kill included.
    redone_steps: usize,
    /// The restart's checkpoint: steps it held (restart only).
    checkpoint_steps: Option<u32>,
    /// Start of the first run until the end of the last, seconds.
    wall_s: f64,
    bit_identical: bool,
}

/// With replicas: kill, the job recovers by itself.
fn with_replicas(bench: &Bench, reference: &ParamStore) -> anyhow::Result<Recovery> {
    let a = bench.args;
    eprintln!("replicas: SIGKILL worker {} after step {}...", a.victim, a.kill_after);
    let mut run = Watched::start(&bench.exe, &bench.train_args("replicas", true, None))?;
    run.wait_for_step(a.kill_after)?;
    std::thread::sleep(Duration::from_millis(a.delay_ms));
    let killed = run.kill_worker(a.victim)?;
    let run = run.finish()?;
    ensure!(run.status.success(), "the run with replicas failed ({}): {}", run.status, run.tail());
    let report = bench.report("replicas")?;
    let crash = &report["crashes"][0];
    let step = crash["step"].as_u64().context("the report has no crash record")? as usize;
    let restore_ms = crash["restore_ms"].as_f64().unwrap_or(f64::NAN);
    let lost_line = run.line_with("lost worker(s)").context("no `lost worker(s)` line")?;
    let caught_up = run.step_line(step + 1).context("the redone step's line")?;
    Ok(Recovery {
        how: "replicas: redo the step in progress",
        steps_done_at_kill: done_before(&run, killed),
        detected_ms: ms_between(killed, lost_line) - restore_ms,
        restore_ms,
        resumed_after_ms: crash["resumed_after_ms"].as_f64(),
        first_step_after_ms: ms_between(killed, caught_up),
        caught_up_after_ms: ms_between(killed, caught_up),
        redone_steps: report["counters"]["redone_steps"].as_u64().unwrap_or(0) as usize,
        checkpoint_steps: None,
        wall_s: seconds(run.ended - run.started),
        bit_identical: bit_identical(&bench.weights("replicas")?, reference),
    })
}

/// Steps the lines read before `at` reported done.
fn done_before(run: &Finished, at: Instant) -> usize {
    run.lines.iter().filter(|(t, _)| *t <= at).filter_map(|(_, l)| step_of(l)).max().unwrap_or(0)
}

/// Without replicas: kill, the job fails, the user resumes from the last checkpoint at once.
fn with_restart(bench: &Bench, reference: &ParamStore) -> anyhow::Result<Recovery> {
    let a = bench.args;
    eprintln!("restart: --replicas off, SIGKILL worker {} after step {}, then --resume...", a.victim, a.kill_after);
    let mut run = Watched::start(&bench.exe, &bench.train_args("failed", false, None))?;
    run.wait_for_step(a.kill_after)?;
    std::thread::sleep(Duration::from_millis(a.delay_ms));
    let killed = run.kill_worker(a.victim)?;
    let failed = run.finish()?;
    ensure!(!failed.status.success(), "the run without replicas survived the kill: {}", failed.tail());
    let checkpoint = checkpoint::load(&bench.path("failed", "-ckpt")).context("the last checkpoint")?;
    let from = checkpoint.manifest.next_step;
    let restarted = Watched::start(&bench.exe, &bench.train_args("restart", false, Some("failed")))?.finish()?;
    ensure!(restarted.status.success(), "the resumed run failed ({}): {}", restarted.status, restarted.tail());
    let lost = failed.last_step();
    let first = restarted.step_line(from as usize + 1).context("the resumed run's first step")?;
    let caught_up = restarted.step_line(lost + 1).context("the resumed run's step in progress at the kill")?;
    Ok(Recovery {
        how: "restart: the job fails, --resume from the last checkpoint",
        steps_done_at_kill: done_before(&failed, killed),
        detected_ms: ms_between(killed, failed.ended),
        restore_ms: ms_between(restarted.started, first),
        resumed_after_ms: None,
        first_step_after_ms: ms_between(killed, first),
        caught_up_after_ms: ms_between(killed, caught_up),
        redone_steps: (lost + 1).saturating_sub(from as usize),
        checkpoint_steps: Some(from),
        wall_s: seconds(restarted.ended - failed.started),
        bit_identical: bit_identical(&bench.weights("restart")?, reference),
    })
}

/// True when both stores hold the same names with bit-identical tensors.
fn bit_identical(a: &ParamStore, b: &ParamStore) -> bool {
    let same = |t: &Tensor, u: &Tensor| match (t.values(), u.values()) {
        (Ok(x), Ok(y)) => t.shape() == u.shape() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
        _ => false,
    };
    a.len() == b.len() && a.iter().all(|(name, t)| b.get(name).is_ok_and(|u| same(t, u)))
}

/// What replicas should hold on each worker, MiB: the previous worker's
/// layers (the ring's holder is the next worker) with their optimizer
/// state and one pending step gradient, plus the step-start snapshots of
/// its own layers with their optimizer state.
fn estimate_mib(args: &CrashArgs, stages: &BTreeMap<u32, [usize; 2]>) -> anyhow::Result<BTreeMap<u32, f64>> {
    let model = spec::parse(&spec::mlp_json(args.width, args.layers)).context("the benchmark's model")?;
    let floats = |layers: [usize; 2]| -> u64 {
        let in_range = |name: &str| {
            let layer = name.strip_prefix("layers.").and_then(|r| r.split('.').next()).and_then(|l| l.parse().ok());
            layer.is_some_and(|l: usize| (layers[0]..=layers[1]).contains(&l))
        };
        model.param_specs().iter().filter(|s| in_range(&s.name)).map(|s| s.shape.iter().product::<usize>() as u64).sum()
    };
    let workers: Vec<u32> = stages.keys().copied().collect();
    let mut out = BTreeMap::new();
    for (i, w) in workers.iter().enumerate() {
        let previous = workers[(i + workers.len() - 1) % workers.len()];
        let (own, held) = (floats(stages[w]), floats(stages[&previous]));
        let total = held * (1 + OPTIMIZER_BUFFERS + 1) + own * (1 + OPTIMIZER_BUFFERS);
        out.insert(*w, total as f64 * 4.0 / (1024.0 * 1024.0));
    }
    Ok(out)
}

/// Uniform random inputs and targets for every step of the job.
fn write_data(path: &Path, args: &CrashArgs) -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(0xC2A5);
    let shape = vec![args.steps, args.batch, args.width];
    let mut uniform = |scale: f32| {
        let data = (0..shape.iter().product()).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
        Tensor::new(shape.clone(), data).expect("steps x batch x width values")
    };
    let mut tensors = ParamStore::new();
    tensors.insert(io::DATA_X, uniform(1.0));
    tensors.insert(io::DATA_Y, uniform(0.5));
    io::save_params(path, &tensors, None).context("writing the benchmark data")
}

/// Everything measured, as written by --json.
#[derive(Debug, Serialize)]
struct Table {
    model: String,
    steps: usize,
    workers: u32,
    microbatches: usize,
    optimizer: &'static str,
    checkpoint_every: usize,
    kill_after: usize,
    victim: u32,
    cores: usize,
    uninterrupted: [Plain; 2],
    recoveries: [Recovery; 2],
    /// Estimated replica memory per worker, MiB.
    replica_estimate_mib: BTreeMap<u32, f64>,
}

/// Runs `baton bench crash`.
pub fn run(args: CrashArgs) -> anyhow::Result<()> {
    args.check()?;
    let exe = crate::sibling_exe("baton")?;
    let dir = tempfile::Builder::new().prefix("baton-crash-").tempdir().context("creating a scratch directory")?;
    let bench = Bench { exe, dir: dir.path(), data: dir.path().join("data.safetensors"), args: &args };
    write_data(&bench.data, &args)?;
    let (on, reference) = plain(&bench, "plain-on", true)?;
    let (off, _) = plain(&bench, "plain-off", false)?;
    let recoveries = [with_replicas(&bench, &reference)?, with_restart(&bench, &reference)?];
    let table = Table {
        model: format!("mlp W={} x{} B={}", args.width, args.layers, args.batch),
        steps: args.steps,
        workers: WORKERS,
        microbatches: MICROBATCHES,
        optimizer: OPTIMIZER,
        checkpoint_every: args.checkpoint_every,
        kill_after: args.kill_after,
        victim: args.victim,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        replica_estimate_mib: estimate_mib(&args, &on.stages)?,
        uninterrupted: [on, off],
        recoveries,
    };
    print_table(&table);
    match &args.json {
        Some(path) => write_json(path, &table),
        None => Ok(()),
    }
}

fn print_table(t: &Table) {
    println!(
        "a worker lost without notice: {}, {} steps, {} workers (1 kernel thread each), {}, M={}, \
         a checkpoint every {} steps; worker {} SIGKILLed once {} steps were done; {} cores",
        t.model, t.steps, t.workers, t.optimizer, t.microbatches, t.checkpoint_every, t.victim, t.kill_after, t.cores
    );
    let [on, off] = &t.uninterrupted;
    println!(
        "uninterrupted: {:.2} s with replicas, {:.2} s without ({:.3}x)",
        on.wall_s,
        off.wall_s,
        on.wall_s / off.wall_s
    );
    println!("ms from the kill; redone: steps trained twice, the one in progress at the kill included");
    println!(
        "{:<10} {:>9} {:>9} {:>10} {:>11} {:>11} {:>9} {:>7} {:>8} {:>8} {:>6}",
        "recovery",
        "detected",
        "restore",
        "resumed",
        "first step",
        "caught up",
        "ckpt at",
        "redone",
        "wall s",
        "vs plain",
        "bits"
    );
    for (r, plain) in t.recoveries.iter().zip([on, off]) {
        println!("{}", format_recovery(r, plain.wall_s));
    }
    println!("peak resident memory per worker (VmHWM sampled every {SAMPLE:?}), MiB: replicas on / off / difference / estimate");
    for (w, est) in &t.replica_estimate_mib {
        let mib = |p: &Plain| p.worker_peak_rss_kib.get(w).map_or(f64::NAN, |k| *k as f64 / 1024.0);
        let (a, b) = (mib(on), mib(off));
        println!("worker {w}: {a:.1} / {b:.1} / {:+.1} / {est:.1}", a - b);
    }
}

fn format_recovery(r: &Recovery, plain_wall_s: f64) -> String {
    let name = if r.checkpoint_steps.is_some() { "restart" } else { "replicas" };
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    format!(
        "{:<10} {:>9.1} {:>9.1} {:>10} {:>11.1} {:>11.1} {:>9} {:>7} {:>8.2} {:>8.3} {:>6}",
        name,
        r.detected_ms,
        r.restore_ms,
        opt(r.resumed_after_ms),
        r.first_step_after_ms,
        r.caught_up_after_ms,
        r.checkpoint_steps.map_or("-".to_string(), |s| s.to_string()),
        r.redone_steps,
        r.wall_s,
        r.wall_s / plain_wall_s,
        if r.bit_identical { "same" } else { "DIFFER" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> CrashArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CrashArgs,
        }
        let argv = std::iter::once("crash").chain(argv.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn progress_lines_give_the_steps_done() {
        assert_eq!(step_of("step 12/200  loss 0.5  elapsed 1.00s  10 rows/s"), Some(12));
        assert_eq!(step_of("eval after step 3/10  loss 0.1"), None);
        assert_eq!(step_of("lost worker(s) [1] without notice"), None);
    }

    #[test]
    fn impossible_kill_points_are_refused_naming_the_flag() {
        assert!(args(&[]).check().is_ok());
        let early = args(&["--kill-after", "10", "--checkpoint-every", "25"]).check().unwrap_err();
        assert!(early.to_string().contains("--kill-after 10"), "{early}");
        let late = args(&["--kill-after", "199"]).check().unwrap_err();
        assert!(late.to_string().contains("--steps 200"), "{late}");
        assert!(args(&["--victim", "3"]).check().unwrap_err().to_string().contains("--victim 3"));
    }

    #[test]
    fn the_estimate_counts_the_previous_workers_layers_and_own_snapshots() {
        let a = args(&["--width", "4", "--layers", "3"]);
        let stages = BTreeMap::from([(0, [0, 0]), (1, [1, 1]), (2, [2, 2])]);
        let est = estimate_mib(&a, &stages).unwrap();
        // Every layer has 4x4 + 4 = 20 floats: held x 4 (params, 2 Adam
        // buffers, a pending gradient) + own x 3 (the snapshot).
        let mib = (20.0 * 4.0 + 20.0 * 3.0) * 4.0 / (1024.0 * 1024.0);
        assert_eq!(est, BTreeMap::from([(0, mib), (1, mib), (2, mib)]));
        let uneven = estimate_mib(&a, &BTreeMap::from([(0, [0, 1]), (2, [2, 2])])).unwrap();
        assert_eq!(uneven[&0], (20.0 * 4.0 + 40.0 * 3.0) * 4.0 / (1024.0 * 1024.0));
        assert_eq!(uneven[&2], (40.0 * 4.0 + 20.0 * 3.0) * 4.0 / (1024.0 * 1024.0));
    }

    #[test]
    fn bit_identity_sees_one_flipped_bit() {
        let mut a = ParamStore::new();
        a.insert("w", Tensor::new(vec![2], vec![1.0, -0.5]).unwrap());
        let mut b = ParamStore::new();
        b.insert("w", Tensor::new(vec![2], vec![1.0, f32::from_bits((-0.5f32).to_bits() ^ 1)]).unwrap());
        assert!(bit_identical(&a, &a));
        assert!(!bit_identical(&a, &b));
    }
}
