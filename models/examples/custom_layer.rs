//! A layer type defined in Rust, outside the engine, trained across
//! processes exactly like the built-ins.
//!
//! `PreNormTanhResidual` computes `y = x + tanh(layernorm(x) Wᵀ + b)` using
//! only the public `Layer` trait and `Recorder` ops, and registers itself
//! as the spec type `prenorm_tanh_residual`. This binary is both the
//! coordinator and its workers: it launches itself three times as worker
//! processes (`worker_if_requested` recognises those), trains a model mixing
//! the custom layer with built-ins, preempts worker 1 in step 2 (its layers,
//! custom ones included, migrate with their unfinished tape segments), and
//! checks the final weights against one-process training bit for bit.
//!
//! Run: `cargo run --release -p baton-models --example custom_layer`

use std::time::Duration;

use anyhow::ensure;
use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan, MigrationRecord};
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::ScheduleKind;
use baton_engine::{init, Init, Layer, Optimizer, OptimizerConfig, ParamSpec, ParamStore, Recorder, TensorId, Trainer};
use baton_models::cluster::{launch_local, LocalJob};
use baton_models::spec::{self, Registry};
use baton_models::{io, runtime};
use serde_json::{Map, Value};

/// `y = x + tanh(layernorm(x) Wᵀ + b)`.
#[derive(Debug)]
pub struct PreNormTanhResidual {
    width: usize,
}

impl Layer for PreNormTanhResidual {
    fn kind(&self) -> &str {
        "prenorm_tanh_residual"
    }
    fn in_features(&self) -> usize {
        self.width
    }
    fn out_features(&self) -> usize {
        self.width
    }
    fn params(&self) -> Vec<ParamSpec> {
        let w = self.width;
        let bound = Init::Uniform { bound: 1.0 / (w as f32).sqrt() };
        vec![
            ParamSpec { name: "norm.weight".into(), shape: vec![w], init: Init::Constant(1.0) },
            ParamSpec { name: "norm.bias".into(), shape: vec![w], init: Init::Constant(0.0) },
            ParamSpec { name: "proj.weight".into(), shape: vec![w, w], init: bound },
            ParamSpec { name: "proj.bias".into(), shape: vec![w], init: bound },
        ]
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> baton_engine::Result<TensorId> {
        let (g, b) = (rec.param("norm.weight")?, rec.param("norm.bias")?);
        let h = rec.layernorm(x, g, b, 1e-5)?;
        let (w, b) = (rec.param("proj.weight")?, rec.param("proj.bias")?);
        let h = rec.linear(h, w, Some(b))?;
        let h = rec.activation(h, baton_engine::Activation::Tanh)?;
        rec.add(x, h)
    }
}

/// `{"type": "prenorm_tanh_residual"}` in a spec.
fn build(obj: &Map<String, Value>, width: usize, at: &str) -> baton_models::Result<Box<dyn Layer>> {
    spec::check_fields(obj, &["type"], at)?;
    Ok(Box::new(PreNormTanhResidual { width }))
}

/// The layer types this binary adds to the spec.
pub fn registry() -> Registry {
    Registry::new().with("prenorm_tanh_residual", build)
}

pub const SPEC: &str = r#"{"input": 16, "loss": "mse", "layers": [
    {"type": "linear", "out": 32, "activation": "gelu"},
    {"type": "prenorm_tanh_residual"}, {"type": "prenorm_tanh_residual"},
    {"type": "prenorm_tanh_residual"}, {"type": "prenorm_tanh_residual"},
    {"type": "linear", "out": 16}]}"#;

const STEPS: usize = 4;
const MICRO: usize = 4;

/// What the example produced: the pipeline's outcome and one process's weights.
pub struct Run {
    pub outcome: JobOutcome,
    pub reference: ParamStore,
}

/// Trains [`SPEC`] on 3 worker processes (this binary) with worker 1
/// preempted in step 2, and in this process for reference.
pub fn run() -> anyhow::Result<Run> {
    let model = spec::parse_with(SPEC, &registry())?;
    let params = init::init_params(&model.param_specs(), 1);
    let data = io::synthetic_data(&model, STEPS, 32, 2);
    let optimizer: OptimizerConfig = "adam:lr=3e-3".parse()?;
    let mut trainer = Trainer::new(spec::parse_with(SPEC, &registry())?, params.clone(), Optimizer::new(optimizer))?;
    for (step, batch) in data.iter().enumerate() {
        trainer.step(step as u32, batch, MICRO)?;
    }
    let plan = JobPlan {
        spec: SPEC.to_string(),
        optimizer,
        lr_schedule: Default::default(),
        schedule: ScheduleKind::OneFOneB,
        micro_batches: MICRO,
        workers: 3,
        costs: model.layers.iter().map(|l| l.cost()).collect(),
        params,
        batches: data,
        join_timeout: Duration::from_secs(60),
        notices: vec![(1, PlannedNotice { step: 2, actions: 3, grace_ms: 120_000 })],
        joins: Vec::new(),
        ship_bf16: false,
        clip_grad_norm: None,
        seed: 0,
        eval: None,
        checkpoint: Default::default(),
        faults: Default::default(),
    };
    let exe = std::env::current_exe()?;
    let mut on_step = |step: u32, loss: f32| println!("step {step}: loss {loss:.6}");
    let mut on_migration = |m: &MigrationRecord| {
        println!("worker(s) {:?} preempted: layers {} -> {}", m.leaving, m.before.describe(), m.after.describe())
    };
    let job = LocalJob {
        plan,
        exe: &exe,
        threads_per_worker: 1,
        on_step: &mut on_step,
        on_eval: None,
        on_migration: &mut on_migration,
        admin_dir: None,
        kernel_isas: Vec::new(),
        checkpoints: None,
    };
    Ok(Run { outcome: launch_local(job)?, reference: trainer.params })
}

/// Bitwise equality of two parameter stores.
pub fn same_bits(a: &ParamStore, b: &ParamStore) -> bool {
    a.len() == b.len()
        && a.iter().all(|(name, t)| {
            b.get(name).is_ok_and(|u| {
                t.shape() == u.shape()
                    && t.values()
                        .ok()
                        .zip(u.values().ok())
                        .is_some_and(|(x, y)| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()))
            })
        })
}

#[allow(dead_code)] // the test that includes this file has its own main
fn main() -> anyhow::Result<()> {
    if let Some(worker) = runtime::worker_if_requested(&registry()) {
        return Ok(worker?);
    }
    let run = run()?;
    let same = same_bits(&run.outcome.params, &run.reference);
    println!("3 worker processes with a preemption vs one process: bit-identical: {}", if same { "yes" } else { "NO" });
    ensure!(same, "the pipeline's weights differ from one process");
    Ok(())
}
