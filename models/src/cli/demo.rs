//! `baton demo`: the seed scenario with embedded defaults. mlp12 (or, with
//! `--model gpt`, a 12-layer GPT on synthetic tokens) trains on
//! 3 worker processes over QUIC (mutual TLS, an ephemeral CA, loopback);
//! in the middle of step 2, worker 1 is told it dies in 120 s. It ships its
//! layers (parameters, optimizer state, gradient sums) and its unfinished
//! tape segments to workers 0 and 2, which splice them in and finish the
//! backward; worker 1 exits. The final weights are compared bit for bit
//! with an uninterrupted one-process run; a mismatch exits non-zero.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_engine::pipeline::coordinator::{JobOutcome, JobPlan, MigrationRecord};
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::ScheduleKind;
use baton_engine::{init, Batch, Optimizer, OptimizerConfig, ParamStore, Trainer};
use baton_models::cluster::{launch_local, timeline, LocalJob};
use baton_models::{io, spec};
use clap::{Args, ValueEnum};

use super::report::{self, Report};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed of the initial weights and the synthetic data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the report, the timeline (Chrome trace) and its SVG picture.
    #[arg(long, value_name = "DIR", default_value = "baton-demo")]
    out: PathBuf,
    /// Which model: the seed's mlp12, or a GPT (embedding, 9 pre-LN
    /// transformer blocks, layernorm, head: d=64, 4 heads, T=32, 65 tokens).
    #[arg(long, value_enum, default_value_t = DemoModel::Mlp12)]
    model: DemoModel,
}

/// The model `baton demo` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DemoModel {
    /// 12 linear layers of width 64, mse, Adam.
    Mlp12,
    /// A 12-layer GPT on synthetic next-token data, AdamW, clip_grad_norm 1.
    Gpt,
}

/// What the demo trains: spec, optimizer, clipping, and how to name it.
struct Scenario {
    label: &'static str,
    description: &'static str,
    spec: String,
    optimizer: OptimizerConfig,
    clip: Option<f32>,
}

impl Scenario {
    fn of(model: DemoModel) -> anyhow::Result<Scenario> {
        Ok(match model {
            DemoModel::Mlp12 => Scenario {
                label: "mlp12",
                description: "mlp12 (12 linear layers of width 64, mse)",
                spec: spec::mlp_json(64, 12),
                optimizer: "adam:lr=1e-3".parse()?,
                clip: None,
            },
            DemoModel::Gpt => Scenario {
                label: "gpt",
                description: "a 12-layer GPT (embedding, 9 transformer blocks, layernorm, head; d=64, 4 heads, T=32)",
                spec: gpt_spec(),
                optimizer: "adamw:lr=3e-3,beta1=0.9,beta2=0.95,weight_decay=0.1".parse()?,
                clip: Some(1.0),
            },
        })
    }

    fn model(&self) -> anyhow::Result<baton_engine::Model> {
        Ok(spec::parse(&self.spec)?)
    }
}

/// The GPT of `baton demo --model gpt`: the golden file's shape (12 layers,
/// as mlp12), trained on synthetic tokens.
fn gpt_spec() -> String {
    let block = r#"{"type": "transformer_block", "heads": 4, "hidden": 256}"#;
    let blocks = [block; 9].join(", ");
    format!(
        r#"{{"input": {{"tokens": 65, "seq": 32}}, "layers": [{{"type": "embedding", "dim": 64}}, {blocks},
            {{"type": "layernorm"}}, {{"type": "linear", "out": 65}}], "loss": "cross_entropy"}}"#
    )
}

const STEPS: usize = 5;
const MICRO_BATCHES: usize = 4;
const BATCH: usize = 32;
/// Worker 1 gets its notice in step 2 after 5 compute actions, 120 s grace.
const NOTICE: (u32, PlannedNotice) = (1, PlannedNotice { step: 2, actions: 5, grace_ms: 120_000 });

/// Runs `baton demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let scenario = Scenario::of(args.model)?;
    let model = scenario.model()?;
    let params = init::init_params(&model.param_specs(), args.seed);
    let batches = io::synthetic_data(&model, STEPS, BATCH, args.seed);
    let optimizer = scenario.optimizer;
    println!("baton demo: {} on 3 worker processes over QUIC", scenario.description);
    let clip = scenario.clip.map_or(String::new(), |c| format!(", clip_grad_norm {c}"));
    println!("  {STEPS} steps of batch {BATCH}, M={MICRO_BATCHES} micro-batches, 1F1B, {optimizer}{clip}");
    println!("  worker 1 is told in step 2, after 5 of its actions, that it dies in 120 s\n");
    let started = Instant::now();
    let outcome = pipeline(&scenario, &params, &batches)?;
    let wall = started.elapsed();
    let reference = uninterrupted(&scenario, params, &batches)?;
    summarise(&outcome, wall)?;
    write_outputs(&args.out, &scenario, &outcome, wall)?;
    compare(&outcome.params, &reference)
}

fn pipeline(scenario: &Scenario, params: &ParamStore, batches: &[Batch]) -> anyhow::Result<JobOutcome> {
    let model = scenario.model()?;
    let plan = JobPlan {
        spec: scenario.spec.clone(),
        optimizer: scenario.optimizer,
        lr_schedule: Default::default(),
        schedule: ScheduleKind::OneFOneB,
        micro_batches: MICRO_BATCHES,
        workers: 3,
        costs: model.layers.iter().map(|l| l.cost()).collect(),
        params: params.clone(),
        batches: batches.to_vec(),
        join_timeout: Duration::from_secs(60),
        notices: vec![NOTICE],
        joins: Vec::new(),
        ship_bf16: false,
        clip_grad_norm: scenario.clip,
        seed: 0,
        eval: None,
        checkpoint: Default::default(),
        faults: Default::default(),
    };
    let exe = std::env::current_exe().context("locating the baton binary to start workers")?;
    let mut on_step = |step: u32, loss: f32| println!("  step {step}: loss {loss:.6}");
    let mut on_migration = |m: &MigrationRecord| println!("  -- worker(s) {:?} preempted: layers moved --", m.leaving);
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
    launch_local(job).context("the 3-worker pipeline failed")
}

/// The same training in one process, never interrupted.
fn uninterrupted(scenario: &Scenario, params: ParamStore, batches: &[Batch]) -> anyhow::Result<ParamStore> {
    let mut trainer = Trainer::new(scenario.model()?, params, Optimizer::new(scenario.optimizer))?
        .with_clip_grad_norm(scenario.clip)?;
    for (step, batch) in batches.iter().enumerate() {
        trainer.step(step as u32, batch, MICRO_BATCHES).with_context(|| format!("uninterrupted step {step}"))?;
    }
    Ok(trainer.params)
}

fn summarise(outcome: &JobOutcome, wall: Duration) -> anyhow::Result<()> {
    let m = outcome.migrations.first().context("the notice did not lead to a migration")?;
    let kib = |b: u64| b as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\npartition before: {}", m.before.describe());
    println!("partition after:  {}  (worker 1 gone)", m.after.describe());
    let b = &m.bytes;
    println!(
        "shipped {:.1} KiB: parameters {:.1}, optimizer state {:.1}, gradient sums {:.1}, \
         tape segments {:.1}, queued tensors {:.1}, kept activations {:.1}",
        kib(b.total()),
        kib(b.parameters),
        kib(b.optimizer_state),
        kib(b.gradients),
        kib(b.segments),
        kib(b.queued_messages),
        kib(b.kept_activations)
    );
    println!(
        "time to ship: {:.1} ms; from notice until training resumed: {:.1} ms",
        ms(m.ship_time),
        ms(m.resumed_after)
    );
    println!("deadline was {:.0} s after the notice", (m.deadline - m.notice_at).as_secs_f64());
    let c = outcome.counters;
    let expected = (12 * STEPS * MICRO_BATCHES) as u64;
    let lost = ((STEPS * MICRO_BATCHES) as u64).saturating_sub(outcome.microbatch_losses);
    println!(
        "forward layer executions {} (M x layers x steps = {expected}), recomputed forwards {}, lost micro-batches {lost}",
        c.forward_layer_executions, c.recomputed_forward_layers
    );
    if c.forward_layer_executions != expected || c.backward_layer_executions != expected || lost != 0 {
        bail!("work was redone or lost: {c:?}");
    }
    println!("whole run: {:.2} s", wall.as_secs_f64());
    Ok(())
}

fn write_outputs(dir: &Path, scenario: &Scenario, outcome: &JobOutcome, wall: Duration) -> anyhow::Result<()> {
    let counters = report::Counters::new(&outcome.counters, outcome.microbatch_losses, (STEPS * MICRO_BATCHES) as u64);
    let report = Report {
        model: scenario.label.into(),
        layers: 12,
        steps: STEPS,
        microbatches: MICRO_BATCHES,
        batch: BATCH,
        optimizer: scenario.optimizer.to_string(),
        lr_schedule: "constant".into(),
        workers: 3,
        schedule: "1f1b".into(),
        ship_dtype: "f32".into(),
        kernel_isa: baton_kernels::isa::current().to_string(),
        bit_identical_to_uninterrupted: true,
        losses: outcome.losses.clone(),
        partitions: Report::partitions(&outcome.partitions),
        migrations: outcome.migrations.iter().map(report::Migration::from).collect(),
        crashes: outcome.crashes.iter().map(report::Crash::from).collect(),
        counters,
        grad_norms: outcome.grad_norms.clone(),
        eval: Vec::new(),
        peak_rss_kib: None,
        wall_seconds: wall.as_secs_f64(),
    };
    report.write(&dir.join("report.json"))?;
    timeline::write_chrome_trace(&dir.join("timeline.json"), &outcome.spans)?;
    let svg = dir.join("timeline.svg");
    std::fs::write(&svg, timeline::svg(&outcome.spans)).with_context(|| format!("writing {}", svg.display()))?;
    println!("wrote {0}/report.json, {0}/timeline.json (Perfetto) and {0}/timeline.svg", dir.display());
    Ok(())
}

fn compare(pipeline: &ParamStore, reference: &ParamStore) -> anyhow::Result<()> {
    let mut worst = 0.0f32;
    let mut identical = pipeline.len() == reference.len();
    for (name, want) in reference.iter() {
        let got = pipeline.get(name).with_context(|| format!("the pipeline lost {name}"))?;
        for (a, b) in got.values()?.iter().zip(want.values()?) {
            identical &= a.to_bits() == b.to_bits();
            worst = worst.max((a - b).abs());
        }
    }
    if identical {
        println!("final weights vs an uninterrupted run: bit-identical: yes");
        return Ok(());
    }
    println!("final weights vs an uninterrupted run: bit-identical: NO (max |difference| {worst:e})");
    bail!("the preempted run and the uninterrupted run disagree")
}
