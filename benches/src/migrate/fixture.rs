//! The moment of the notice, rebuilt for every timed run by driving real
//! pipeline stages in memory.
//!
//! The model is a plain MLP of [`DEPTH`] linear layers of width W (relu,
//! mse). Stage 0 holds layer 0 and stage 1, the worker that is told to
//! leave, holds layers 1-4 ([`MOVING`]); the last stage (layer 5 and the
//! loss) is not built: its gradients are supplied. Step 0 runs completely,
//! so Adam state exists; step 1 runs every forward and no backward, so M
//! micro-batches are in flight on layers 1-4 (their segments and saved
//! tensors wait on stage 1). Stage 0 then takes layers 0-4 as stage 0 of 2,
//! as in the demo, where worker 0 takes its neighbour's first layers.
//!
//! Invariant: every [`Fixture::prepare`] of one fixture gives the same bits
//! (seeded inputs, deterministic kernels), so every method and every run
//! moves the same state.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Context};
use baton_engine::init::{self, SplitMix64};
use baton_engine::pipeline::{Action, Effect, Phase, ScheduleKind, Stage, StageEvent, Work};
use baton_engine::{Model, Optimizer, OptimizerConfig, ParamStore, Tensor};
use baton_models::spec;

/// Layers of the benchmark model.
pub const DEPTH: usize = 6;
/// The layers the leaving worker holds, all of which move.
pub const MOVING: [u32; 4] = [1, 2, 3, 4];
/// The step in progress when the notice comes.
pub const STEP: u32 = 1;
/// The optimizer whose state moves with the layers.
pub const OPTIMIZER: &str = "adam:lr=1e-3";
/// The leaving worker: stage 1 of 3.
pub const LEAVING_POSITION: (u32, u32) = (1, 3);
/// The receiver after the migration: layers 0-4, stage 0 of 2.
pub const RECEIVER_LAYERS: Range<u32> = 0..5;
pub const RECEIVER_POSITION: (u32, u32) = (0, 2);

/// One scenario's model, initial weights and data; stages are rebuilt from
/// it for each run because a migration consumes them.
pub struct Fixture {
    pub spec: String,
    pub model: Arc<Model>,
    pub optimizer: OptimizerConfig,
    pub width: usize,
    pub rows: usize,
    pub in_flight: u32,
    params: ParamStore,
    /// Inputs entering layer 0 in steps 0 and 1, one per micro-batch.
    inputs: [Vec<Tensor>; 2],
    /// Gradients of layer 4's output in step 0 (and, for checks, step 1).
    top_grads: Vec<Tensor>,
}

/// The two stages at the notice, and what entered the moving layers.
pub struct Prepared {
    /// Stage 0 (layer 0): takes the layers.
    pub receiver: Stage,
    /// Stage 1 (layers 1-4): leaves.
    pub leaving: Stage,
    /// The activations that entered layer 1 in step [`STEP`], by micro-batch.
    pub entered: Vec<(u32, Tensor)>,
}

impl Fixture {
    /// The model at `width`, `in_flight` micro-batches of `rows` rows each.
    pub fn new(width: usize, rows: usize, in_flight: u32) -> anyhow::Result<Fixture> {
        let spec = spec::mlp_json(width, DEPTH);
        let model = Arc::new(spec::parse(&spec).context("building the benchmark model")?);
        let params = init::init_params(&model.param_specs(), 0);
        let mut rng = SplitMix64::new(0x00B1_6A7E ^ ((width as u64) << 8) ^ u64::from(in_flight));
        let mut batch = |scale: f32| (0..in_flight).map(|_| random(&mut rng, rows, width, scale)).collect::<Vec<_>>();
        let inputs = [batch(1.0), batch(1.0)];
        let top_grads = batch(1e-3);
        let optimizer = OPTIMIZER.parse().context("the benchmark optimizer")?;
        Ok(Fixture { spec, model, optimizer, width, rows, in_flight, params, inputs, top_grads })
    }

    /// Both stages at the notice: step 0 done, step 1's forwards done.
    pub fn prepare(&self) -> anyhow::Result<Prepared> {
        let mut receiver = self.stage(0..1, (0, 3))?;
        let mut leaving = self.stage(MOVING[0]..MOVING[3] + 1, LEAVING_POSITION)?;
        self.drive(&mut receiver, &mut leaving, STEP - 1, Some(&self.top_grads))?;
        if !receiver.idle() || !leaving.idle() {
            bail!("step {} of the benchmark pipeline did not finish", STEP - 1);
        }
        let entered = self.drive(&mut receiver, &mut leaving, STEP, None)?;
        if entered.len() != self.in_flight as usize {
            bail!("{} of {} micro-batches entered the moving layers", entered.len(), self.in_flight);
        }
        Ok(Prepared { receiver, leaving, entered })
    }

    /// The gradient of layer 4's output for `micro` (what the last stage would send).
    pub fn top_grad(&self, micro: u32) -> Tensor {
        self.top_grads[micro as usize % self.top_grads.len()].clone()
    }

    /// A stage holding `layers` with their initial weights and a fresh optimizer.
    fn stage(&self, layers: Range<u32>, position: (u32, u32)) -> anyhow::Result<Stage> {
        let prefixes: Vec<String> = layers.clone().map(|l| format!("layers.{l}.")).collect();
        let params = self.params.iter().filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p)));
        let params: ParamStore = params.map(|(n, t)| (n.clone(), t.clone())).collect();
        let optimizer = Optimizer::new(self.optimizer);
        Ok(Stage::new(self.model.clone(), layers, position, ScheduleKind::Gpipe, params, optimizer)?)
    }

    /// Runs `step` through both stages, routing activations and gradients
    /// between them: every forward, and with `top` every backward and
    /// update. Returns the activations that entered layer 1.
    fn drive(
        &self,
        front: &mut Stage,
        back: &mut Stage,
        step: u32,
        top: Option<&[Tensor]>,
    ) -> anyhow::Result<Vec<(u32, Tensor)>> {
        let rows = vec![self.rows as u32; self.in_flight as usize];
        for stage in [&mut *front, &mut *back] {
            stage.handle(StageEvent::StepStart { step, rows: rows.clone(), inputs: vec![], targets: vec![] })?;
        }
        for (micro, x) in (0..).zip(&self.inputs[step as usize % 2]) {
            front.handle(StageEvent::Activation { step, micro, layer: 0, tensor: x.clone() })?;
        }
        for (micro, g) in (0..).zip(top.unwrap_or_default()) {
            back.handle(StageEvent::Gradient { step, micro, layer: MOVING[3], tensor: g.clone() })?;
        }
        let mut entered = Vec::new();
        while front.ready().is_some() || back.ready().is_some() {
            for effect in run_ready(front)? {
                route(effect, back, &mut entered)?;
            }
            for effect in run_ready(back)? {
                route(effect, front, &mut entered)?;
            }
        }
        Ok(entered)
    }
}

/// The next unit of work of `stage`, if one is ready.
fn run_ready(stage: &mut Stage) -> anyhow::Result<Vec<Effect>> {
    Ok(if stage.ready().is_some() { stage.run_next()? } else { Vec::new() })
}

/// Delivers an activation into layer 1 or a gradient into layer 0 to the
/// other stage. Activations leaving layer 4 would go to the stage that is
/// not built; losses and updates need no delivery.
fn route(effect: Effect, to: &mut Stage, entered: &mut Vec<(u32, Tensor)>) -> anyhow::Result<()> {
    match effect {
        Effect::SendActivation { step, micro, layer, tensor } if layer == MOVING[0] => {
            entered.push((micro, tensor.clone()));
            to.handle(StageEvent::Activation { step, micro, layer, tensor })?;
        }
        Effect::SendGradient { step, micro, layer, tensor } if layer + 1 == MOVING[0] => {
            to.handle(StageEvent::Gradient { step, micro, layer, tensor })?;
        }
        _ => {}
    }
    Ok(())
}

/// Runs every forward that is ready (the recomputation of methods (b) and
/// (c)); stops at the first backward, which waits for a gradient. Returns
/// how many forwards ran.
pub fn recompute(stage: &mut Stage) -> anyhow::Result<u32> {
    let mut forwards = 0;
    while let Some(Work::Compute(Action { phase: Phase::Forward, .. })) = stage.ready() {
        stage.run_next()?;
        forwards += 1;
    }
    Ok(forwards)
}

/// Checks that `receiver` can run the backward of micro-batch 0 once its
/// gradient arrives, and runs it.
pub fn check_backward(receiver: &mut Stage, fixture: &Fixture) -> anyhow::Result<()> {
    let tensor = fixture.top_grad(0);
    receiver.handle(StageEvent::Gradient { step: STEP, micro: 0, layer: MOVING[3], tensor })?;
    match receiver.ready() {
        Some(Work::Compute(Action { phase: Phase::Backward, micro: 0, .. })) => {
            receiver.run_next()?;
            Ok(())
        }
        other => bail!("after the migration the receiver's next work is {other:?}, not the backward of micro-batch 0"),
    }
}

/// A `rows x width` tensor, uniform in `[-scale, scale)`.
fn random(rng: &mut SplitMix64, rows: usize, width: usize, scale: f32) -> Tensor {
    let data = (0..rows * width).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
    Tensor::new(vec![rows, width], data).expect("rows x width values")
}
