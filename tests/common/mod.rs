//! Helpers shared by the workspace's integration tests: the PyTorch golden
//! runs in `../shared/golden`, and running the built `baton` binary.
#![allow(dead_code)]

pub mod splice;
mod watchdog;
pub use watchdog::run_with_watchdog;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use baton_engine::{Batch, Model, OptimizerConfig, ParamStore};
use baton_kernels::optim::{AdamConfig, SgdConfig};
use baton_models::{io, spec};
use serde_json::Value;

/// The golden directory: `BATON_GOLDEN_DIR`, else `shared/golden` beside the checkout.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("BATON_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    }
}

/// One PyTorch run recorded in a golden file.
pub struct Golden {
    pub path: PathBuf,
    pub spec: String,
    pub model: Model,
    pub params: ParamStore,
    pub data: Vec<Batch>,
    pub steps: usize,
    pub micro_batches: usize,
    pub optimizer: OptimizerConfig,
    pub losses: Vec<f32>,
    /// Tolerance on final parameters (max |Δ|).
    pub final_tolerance: f32,
}

pub const GOLDEN_FILES: [(&str, f32); 3] = [("mlp12_sgd", 1e-4), ("mlp12_adam", 1e-4), ("resmlp12_ce", 1e-3)];

impl Golden {
    /// The in-memory job of this golden run on `workers` with schedule
    /// `kind`: its spec, optimizer, parameters and data, nothing planned
    /// (no notices, joins, clipping, evaluation or checkpoints). Tests set
    /// what they vary with struct update syntax.
    pub fn job_plan(
        &self,
        workers: usize,
        kind: baton_engine::pipeline::ScheduleKind,
    ) -> baton_engine::pipeline::coordinator::JobPlan {
        baton_engine::pipeline::coordinator::JobPlan {
            spec: self.spec.clone(),
            optimizer: self.optimizer,
            lr_schedule: Default::default(),
            schedule: kind,
            micro_batches: self.micro_batches,
            workers,
            costs: self.model.layers.iter().map(|l| l.cost()).collect(),
            params: self.params.clone(),
            batches: self.data.clone(),
            join_timeout: Duration::from_secs(60),
            notices: Vec::new(),
            joins: Vec::new(),
            ship_bf16: false,
            clip_grad_norm: None,
            seed: 0,
            eval: None,
            checkpoint: Default::default(),
            faults: Default::default(),
        }
    }

    pub fn load(name: &str, final_tolerance: f32) -> Golden {
        let path = golden_dir().join(format!("{name}.safetensors"));
        assert!(path.exists(), "golden file {} is missing (set BATON_GOLDEN_DIR)", path.display());
        let meta = io::read_metadata(&path).unwrap();
        let spec = meta["spec"].clone();
        let model = spec::parse(&spec).unwrap();
        let steps: usize = meta["steps"].parse().unwrap();
        Golden {
            params: io::load_params(&path, &model).unwrap(),
            data: io::load_data(&path, &model, steps).unwrap(),
            micro_batches: meta["microbatches"].parse().unwrap(),
            optimizer: optimizer_from_metadata(&meta["optimizer"]),
            losses: io::load_f32(&path, "expect.loss").unwrap().into_values().unwrap().1,
            spec,
            model,
            steps,
            path,
            final_tolerance,
        }
    }

    /// `baton train` arguments that replay this run (model, weights, data,
    /// steps, micro-batches, optimizer) and save to `save`; add the layout.
    pub fn train_args(&self, save: &Path) -> Vec<String> {
        let file = self.path.to_str().unwrap();
        [
            "train",
            "--model",
            &self.spec,
            "--init",
            file,
            "--data",
            file,
            "--steps",
            &self.steps.to_string(),
            "--microbatches",
            &self.micro_batches.to_string(),
            "--optimizer",
            &self.optimizer.to_string(),
            "--save",
            save.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The same training in one process, through the library: final
    /// parameters and per-step losses.
    pub fn train_in_process(&self) -> (ParamStore, Vec<f32>) {
        let model = spec::parse(&self.spec).unwrap();
        let mut trainer =
            baton_engine::Trainer::new(model, self.params.clone(), baton_engine::Optimizer::new(self.optimizer))
                .unwrap();
        let losses =
            self.data.iter().enumerate().map(|(s, b)| trainer.step(s as u32, b, self.micro_batches).unwrap()).collect();
        (trainer.params, losses)
    }

    /// PyTorch's gradients of step 0 (before any update).
    pub fn grad0(&self) -> ParamStore {
        io::load_tensors(&self.path, "expect.grad0.").unwrap()
    }

    /// PyTorch's parameters after the last step.
    pub fn final_params(&self) -> ParamStore {
        io::load_tensors(&self.path, "expect.final.").unwrap()
    }
}

/// `{"name": "adam", "lr": .., "betas": [..], "eps": ..}` as written by the golden script.
fn optimizer_from_metadata(json: &str) -> OptimizerConfig {
    let v: Value = serde_json::from_str(json).unwrap();
    let f = |key: &str, default: f64| v.get(key).and_then(Value::as_f64).unwrap_or(default) as f32;
    match v["name"].as_str().unwrap() {
        "sgd" => OptimizerConfig::Sgd(SgdConfig {
            lr: f("lr", 0.0),
            momentum: f("momentum", 0.0),
            dampening: f("dampening", 0.0),
            weight_decay: f("weight_decay", 0.0),
            nesterov: v.get("nesterov").and_then(Value::as_bool).unwrap_or(false),
        }),
        name @ ("adam" | "adamw") => {
            let cfg = AdamConfig {
                lr: f("lr", 1e-3),
                beta1: v["betas"][0].as_f64().unwrap() as f32,
                beta2: v["betas"][1].as_f64().unwrap() as f32,
                eps: f("eps", 1e-8),
                weight_decay: f("weight_decay", if name == "adamw" { 0.01 } else { 0.0 }),
            };
            if name == "adamw" {
                OptimizerConfig::AdamW(cfg)
            } else {
                OptimizerConfig::Adam(cfg)
            }
        }
        other => panic!("unknown optimizer {other} in golden metadata"),
    }
}

/// Max |a - b| of every tensor of `expected` against `actual`, asserting
/// `max |Δ| <= tolerance(expected tensor)` per tensor.
pub fn assert_params_close(what: &str, actual: &ParamStore, expected: &ParamStore, tolerance: impl Fn(&[f32]) -> f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: tensor count");
    for (name, want) in expected.iter() {
        let got = actual.get(name).unwrap_or_else(|_| panic!("{what}: {name} missing"));
        assert_eq!(got.shape(), want.shape(), "{what}: {name} shape");
        let (got, want) = (got.values().unwrap(), want.values().unwrap());
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let tol = tolerance(want);
        assert!(diff <= tol, "{what}: {name} max |Δ| = {diff:e} > {tol:e}");
    }
}

pub fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// True when both stores hold the same names with bit-identical tensors.
pub fn bit_identical(a: &ParamStore, b: &ParamStore) -> bool {
    a.len() == b.len()
        && a.iter().all(|(name, t)| {
            b.get(name).is_ok_and(|u| {
                u.shape() == t.shape()
                    && u.values().unwrap().iter().zip(t.values().unwrap()).all(|(x, y)| x.to_bits() == y.to_bits())
            })
        })
}

/// The built `baton` binary.
pub fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

/// Runs baton with `args` (watchdog 300 s) and returns the output.
pub fn run_baton(args: &[&str]) -> Output {
    run_with_watchdog(baton().args(args), Duration::from_secs(300))
}

/// Runs baton with owned arguments, expecting success.
pub fn run_baton_ok_owned(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_baton_ok(&args)
}

/// Runs baton expecting success; panics with its stderr otherwise.
pub fn run_baton_ok(args: &[&str]) -> Output {
    let out = run_baton(args);
    assert!(out.status.success(), "baton {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A `baton` process whose stderr is read line by line; killed on drop, so
/// a failing test leaves nothing running. Every wait is bounded by `limit`.
pub struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    limit: Duration,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Proc {
    /// Starts `cmd` with stderr piped; waits below take at most `limit`.
    pub fn start(cmd: &mut Command, limit: Duration) -> Proc {
        use std::io::BufRead;
        let cmd = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            std::io::BufReader::new(pipe).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
        });
        Proc { child, lines, seen: Vec::new(), limit }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a stderr line containing `text` and returns it.
    pub fn wait_for_line(&mut self, text: &str) -> String {
        self.wait_until(text, |line| line.contains(text))
    }

    /// Waits for a stderr line starting with `prefix` and returns it.
    pub fn wait_for_prefix(&mut self, prefix: &str) -> String {
        self.wait_until(prefix, |line| line.starts_with(prefix))
    }

    fn wait_until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + self.limit;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if wanted(&line) => {
                    self.seen.push(line.clone());
                    return line;
                }
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("no `{what}` on stderr ({e}):\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits at most `limit` for the exit; returns the status and all of stderr.
    pub fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}:\n{}", self.seen.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }

    /// Waits (at most the start's `limit`) for a successful exit; returns stderr.
    pub fn finish(&mut self) -> String {
        let (status, stderr) = self.wait_exit(self.limit);
        assert!(status.success(), "failed ({status}):\n{stderr}");
        stderr
    }
}
