//! `baton demo`: the seed scenario with embedded defaults, as far as it runs
//! today. mlp12 trains for a few steps on 3 worker processes over QUIC
//! (mutual TLS with an ephemeral CA, loopback), and the result is checked
//! bit for bit against the same training in one process. Then the
//! relocation at the heart of the scenario: worker 1's tape segments for
//! layers 4-7 are archived, read back by a "receiver" holding only those
//! layers' parameters, and backwarded there; the gradients must be
//! bit-identical to a local backward. Any mismatch exits non-zero.

use anyhow::{bail, Context};
use baton_engine::segment::{self, SegmentBatch};
use std::time::{Duration, Instant};

use baton_engine::pipeline::coordinator::JobPlan;
use baton_engine::pipeline::ScheduleKind;
use baton_engine::{init, Batch, Model, Optimizer, OptimizerConfig, ParamStore, Segment, SegmentKey, Tensor, Trainer};
use baton_models::cluster::{launch_local, LocalJob};
use baton_models::{io, spec};
use clap::Args;

use super::splice::{aligned_copy, backward_chain, ChainGrads};

/// Layers worker 1 holds in the scenario (0-3 | 4-7 | 8-11).
const MOVED: std::ops::RangeInclusive<u32> = 4..=7;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed of the initial weights and the synthetic data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `baton demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("baton demo: mlp12 (12 linear layers of width 64, mse), seed {}", args.seed);
    println!(
        "note: preemption and live migration (worker 1 told it dies mid-step) come with issue #4; \
         this demo shows the pipeline and the relocation it builds on."
    );
    let params = train(args.seed)?;
    relocate(&params, args.seed)
}

const STEPS: usize = 4;
const MICRO_BATCHES: usize = 4;

/// Trains on 3 worker processes and in one process; the weights must agree
/// bit for bit. Returns the trained weights.
fn train(seed: u64) -> anyhow::Result<ParamStore> {
    let model = spec::mlp12();
    let params = init::init_params(&model.param_specs(), seed);
    let batches = io::synthetic_data(&model, STEPS, 32, seed);
    let config: OptimizerConfig = "adam:lr=1e-3".parse()?;
    let plan = JobPlan {
        spec: spec::mlp_json(64, 12),
        optimizer: config,
        schedule: ScheduleKind::OneFOneB,
        micro_batches: MICRO_BATCHES,
        workers: 3,
        costs: model.layers.iter().map(|l| l.cost()).collect(),
        params: params.clone(),
        batches: batches.clone(),
        join_timeout: Duration::from_secs(60),
        notices: Vec::new(),
    };
    println!("\n1. pipeline on 3 worker processes over QUIC (1F1B, batch 32, M={MICRO_BATCHES}, {config})");
    let exe = std::env::current_exe().context("locating the baton binary to start workers")?;
    let started = Instant::now();
    let mut on_step = |step: u32, loss: f32| println!("   step {step}: loss {loss:.6}");
    let mut on_migration = |_: &baton_engine::pipeline::coordinator::MigrationRecord| {};
    let job =
        LocalJob { on_migration: &mut on_migration, plan, exe: &exe, threads_per_worker: 1, on_step: &mut on_step };
    let outcome = launch_local(job).context("the 3-worker pipeline failed")?;
    let (partition, c) = (outcome.partitions[0].partition(), outcome.counters);
    println!(
        "   partition: {} (worker 0 | worker 1 | worker 2), {:.2}s",
        partition.describe(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "   forward layer executions {} (= M x layers x steps = {MICRO_BATCHES} x 12 x {STEPS}), backward {}",
        c.forward_layer_executions, c.backward_layer_executions
    );
    let mut trainer = Trainer::new(model, params, Optimizer::new(config))?;
    for (step, batch) in batches.iter().enumerate() {
        trainer.step(step as u32, batch, MICRO_BATCHES).with_context(|| format!("in-process step {step}"))?;
    }
    let same = outcome.params.len() == trainer.params.len()
        && trainer.params.iter().all(|(n, t)| outcome.params.get(n).is_ok_and(|u| bit_compare(t, u).0));
    println!("   same training in one process: bit-identical: {}", if same { "yes" } else { "NO" });
    if !same {
        bail!("the 3-worker pipeline and the one-process run disagree");
    }
    Ok(outcome.params)
}

/// Forward of one micro-batch through every layer, recording segments;
/// returns them and the loss segment.
fn forward(model: &Model, params: &ParamStore, batch: &Batch) -> anyhow::Result<(Vec<Segment>, Segment)> {
    let key = |layer| SegmentKey { step: STEPS as u32, micro: 0, layer };
    let mut x = batch.x.clone();
    let mut segments = Vec::with_capacity(model.layers.len());
    for layer in 0..model.layers.len() as u32 {
        let (segment, out) = model.forward_layer(key(layer), params, x)?;
        segments.push(segment);
        x = out;
    }
    let (loss, _) = model.forward_loss(key(model.layers.len() as u32), x, &batch.targets)?;
    Ok((segments, loss))
}

/// The relocation check: archive layers 4-7's segments, backward them on a
/// receiver holding only their parameters, compare with local backward.
fn relocate(params: &ParamStore, seed: u64) -> anyhow::Result<()> {
    let model = spec::mlp12();
    let batch = io::synthetic_data(&model, 1, 32, seed ^ 1)[0].slice(0..8)?;
    println!("\n2. relocation of a tape: partition worker 0: layers 0-3 | worker 1: 4-7 | worker 2: 8-11");
    let (segments, loss) = forward(&model, params, &batch)?;
    // The gradient arriving from worker 2 at layer 7's output.
    let from_loss = loss.backward(params, Tensor::scalar(1.0), true)?.input_grad;
    let grad_at_8 = backward_chain(&segments[8..], params, from_loss.context("the loss gave no gradient")?)?
        .input
        .context("layer 8 gave no input gradient")?;
    let moved: Vec<Segment> = segments.iter().filter(|s| MOVED.contains(&s.key.layer)).cloned().collect();
    let local = backward_chain(&moved, params, grad_at_8.clone())?;

    let saved_bytes: usize = moved.iter().map(Segment::saved_bytes).sum();
    let archive = segment::archive(&SegmentBatch(moved))?;
    let received = aligned_copy(&archive);
    let receiver_params: ParamStore = MOVED.flat_map(|l| params.with_prefix(&format!("layers.{l}."))).collect();
    println!(
        "   worker 1 archives micro-batch 0's segments of layers 4-7: {} bytes ({saved_bytes} of saved tensors)",
        received.len()
    );
    println!(
        "   a receiver holding only {} tensors (layers 4-7's parameters) reads them zero-copy and runs backward",
        receiver_params.len()
    );
    let views = segment::access(&received).context("the receiver could not read the archive")?;
    let remote = backward_chain(&views, &receiver_params, grad_at_8)?;
    compare(&local, &remote)
}

/// Prints and checks bit-identity of parameter and input gradients.
fn compare(local: &ChainGrads, remote: &ChainGrads) -> anyhow::Result<()> {
    let mut worst = 0.0f32;
    let mut identical = local.params.len() == remote.params.len();
    for (name, a) in local.params.iter() {
        let b = remote.params.get(name).with_context(|| format!("the receiver produced no gradient for {name}"))?;
        let (same, diff) = bit_compare(a, b);
        identical &= same;
        worst = worst.max(diff);
    }
    match (&local.input, &remote.input) {
        (Some(a), Some(b)) => {
            let (same, diff) = bit_compare(a, b);
            identical &= same;
            worst = worst.max(diff);
        }
        _ => bail!("the gradient of layer 4's input is missing"),
    }
    println!(
        "   compared {} parameter gradients and the gradient into layer 4 with a local backward",
        local.params.len()
    );
    if identical {
        println!("   bit-identical: yes");
        Ok(())
    } else {
        println!("   bit-identical: NO (max |difference| {worst:e})");
        bail!("relocated backward differs from local backward (max |difference| {worst:e})")
    }
}

/// Whether two tensors have the same shape and bits, and their max |difference|.
fn bit_compare(a: &Tensor, b: &Tensor) -> (bool, f32) {
    if a.shape != b.shape {
        return (false, f32::INFINITY);
    }
    let same = a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits());
    let diff = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    (same, diff)
}
