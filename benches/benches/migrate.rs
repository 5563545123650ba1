//! Migration of 4 layers (W=256, Adam, 4 micro-batches of 32 rows in
//! flight) in memory, no network: (a) baton's segment shipping (release,
//! encode, decode, adopt, re-plan) against (b) shipping the inputs instead
//! of the tape and recomputing the forwards. `baton bench migrate` measures
//! the same over QUIC, with checkpoint-restart and raw transfers beside.
//!
//! The set-up mirrors `models/src/cli/bench/migrate/fixture.rs` (which the
//! binary owns): stage 0 holds layer 0, stage 1 layers 1-4; step 0 runs
//! completely, step 1 runs its forwards; then stage 1's layers move to stage 0.

use std::hint::black_box;
use std::sync::Arc;

use baton_engine::init::{self, SplitMix64};
use baton_engine::pipeline::migrate::Handover;
use baton_engine::pipeline::protocol::{self, Message};
use baton_engine::pipeline::{Action, Effect, Phase, ScheduleKind, Stage, StageEvent, Work};
use baton_engine::{Model, Optimizer, ParamStore, Tensor};
use baton_models::spec;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const WIDTH: usize = 256;
const ROWS: usize = 32;
const IN_FLIGHT: u32 = 4;
const MOVING: [u32; 4] = [1, 2, 3, 4];

/// The model, its weights and the data of steps 0 and 1.
struct Fixture {
    model: Arc<Model>,
    params: ParamStore,
    inputs: [Vec<Tensor>; 2],
    top_grads: Vec<Tensor>,
}

impl Fixture {
    fn new() -> Fixture {
        let model = Arc::new(spec::mlp(WIDTH, 6));
        let params = init::init_params(&model.param_specs(), 0);
        let mut rng = SplitMix64::new(7);
        let mut batch = |scale: f32| -> Vec<Tensor> {
            let tensor = |rng: &mut SplitMix64| {
                let data = (0..ROWS * WIDTH).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
                Tensor::new(vec![ROWS, WIDTH], data).expect("ROWS x WIDTH values")
            };
            (0..IN_FLIGHT).map(|_| tensor(&mut rng)).collect()
        };
        let inputs = [batch(1.0), batch(1.0)];
        Fixture { model, params, inputs, top_grads: batch(1e-3) }
    }

    fn stage(&self, layers: std::ops::Range<u32>, position: (u32, u32)) -> Stage {
        let prefixes: Vec<String> = layers.clone().map(|l| format!("layers.{l}.")).collect();
        let params = self.params.iter().filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)));
        let params = params.map(|(n, t)| (n.clone(), t.clone())).collect();
        let adam = Optimizer::new("adam:lr=1e-3".parse().expect("valid optimizer"));
        Stage::new(self.model.clone(), layers, position, ScheduleKind::Gpipe, params, adam).expect("stage fits")
    }

    /// (receiver, leaving stage, activations that entered layer 1 in step 1).
    fn prepare(&self) -> (Stage, Stage, Vec<(u32, Tensor)>) {
        let (mut front, mut back) = (self.stage(0..1, (0, 3)), self.stage(1..5, (1, 3)));
        self.drive(&mut front, &mut back, 0, true);
        let entered = self.drive(&mut front, &mut back, 1, false);
        (front, back, entered)
    }

    fn drive(&self, front: &mut Stage, back: &mut Stage, step: u32, backward: bool) -> Vec<(u32, Tensor)> {
        let rows = vec![ROWS as u32; IN_FLIGHT as usize];
        for stage in [&mut *front, &mut *back] {
            let start = StageEvent::StepStart { step, rows: rows.clone(), inputs: vec![], targets: vec![] };
            stage.handle(start).expect("step starts");
        }
        for (micro, x) in (0..).zip(&self.inputs[step as usize]) {
            front.handle(StageEvent::Activation { step, micro, layer: 0, tensor: x.clone() }).expect("input");
        }
        for (micro, g) in (0..).zip(&self.top_grads).filter(|_| backward) {
            back.handle(StageEvent::Gradient { step, micro, layer: 4, tensor: g.clone() }).expect("gradient");
        }
        let mut entered = Vec::new();
        while front.ready().is_some() || back.ready().is_some() {
            run_one(front, back, &mut entered);
            run_one(back, front, &mut entered);
        }
        entered
    }
}

/// Runs `stage`'s next work if ready and delivers what it sends to `other`.
fn run_one(stage: &mut Stage, other: &mut Stage, entered: &mut Vec<(u32, Tensor)>) {
    let effects = if stage.ready().is_some() { stage.run_next().expect("work runs") } else { vec![] };
    for effect in effects {
        match effect {
            Effect::SendActivation { step, micro, layer: 1, tensor } => {
                entered.push((micro, tensor.clone()));
                other.handle(StageEvent::Activation { step, micro, layer: 1, tensor }).expect("activation");
            }
            Effect::SendGradient { step, micro, layer: 0, tensor } => {
                other.handle(StageEvent::Gradient { step, micro, layer: 0, tensor }).expect("gradient");
            }
            _ => {}
        }
    }
}

/// Encode, decode, and install in the receiver as stage 0 of 2 (layers 0-4).
fn hand_over(receiver: &mut Stage, handover: Handover) {
    let frame = protocol::encode(&Message::Handover { generation: 1, handover }).expect("encodes");
    let Message::Handover { handover, .. } = protocol::decode(&frame).expect("decodes") else {
        panic!("not a handover");
    };
    receiver.reassign(0..5, (0, 2)).expect("layers fit");
    receiver.adopt(handover).expect("adopts");
    receiver.resume();
}

fn bench_migrate(c: &mut Criterion) {
    let fixture = Fixture::new();
    let mut group = c.benchmark_group("migrate");
    group.sample_size(20);
    group.bench_function(format!("segments_w{WIDTH}_m{IN_FLIGHT}"), |bench| {
        bench.iter_batched(
            || fixture.prepare(),
            |(mut receiver, mut leaving, _)| {
                let handover = leaving.release(&MOVING).expect("releases");
                hand_over(&mut receiver, handover);
                black_box(receiver)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function(format!("recompute_w{WIDTH}_m{IN_FLIGHT}"), |bench| {
        bench.iter_batched(
            || fixture.prepare(),
            |(mut receiver, mut leaving, entered)| {
                let mut handover = leaving.release(&MOVING).expect("releases");
                handover.layers.iter_mut().for_each(|l| l.segments.clear());
                handover.activations.extend(entered.into_iter().map(|(m, t)| (1, m, 1, t)));
                hand_over(&mut receiver, handover);
                while let Some(Work::Compute(Action { phase: Phase::Forward, .. })) = receiver.ready() {
                    receiver.run_next().expect("forward runs");
                }
                black_box(receiver)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_migrate);
criterion_main!(benches);
