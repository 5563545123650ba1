//! Migration of 4 layers (W=256, Adam, 4 micro-batches of 32 rows in
//! flight) in memory, no network: (a) baton's segment shipping (release,
//! encode, decode, adopt, re-plan) against (b) shipping the inputs instead
//! of the tape and recomputing the forwards. `baton-bench migrate` measures
//! the same over QUIC, with checkpoint-restart and raw transfers beside,
//! from the same fixture ([`baton_benches::migrate::fixture`]).

use std::hint::black_box;

use baton_benches::migrate::fixture::{self, Fixture, Prepared, MOVING, RECEIVER_LAYERS, RECEIVER_POSITION};
use baton_engine::pipeline::migrate::Handover;
use baton_engine::pipeline::protocol::{self, Message};
use baton_engine::pipeline::Stage;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const WIDTH: usize = 256;
const ROWS: usize = 32;
const IN_FLIGHT: u32 = 4;

/// Encode, decode, and install in the receiver as stage 0 of 2 (layers 0-4).
fn hand_over(receiver: &mut Stage, handover: Handover) {
    let frame = protocol::encode(&Message::Handover { generation: 1, handover }).expect("encodes");
    let Message::Handover { handover, .. } = protocol::decode(&frame).expect("decodes") else {
        panic!("not a handover");
    };
    receiver.reassign(RECEIVER_LAYERS, RECEIVER_POSITION).expect("layers fit");
    receiver.adopt(handover).expect("adopts");
    receiver.resume();
}

fn bench_migrate(c: &mut Criterion) {
    let fixture = Fixture::new(WIDTH, ROWS, IN_FLIGHT).expect("the benchmark fixture");
    let prepare = || fixture.prepare().expect("the stages at the notice");
    let mut group = c.benchmark_group("migrate");
    group.sample_size(20);
    group.bench_function(format!("segments_w{WIDTH}_m{IN_FLIGHT}"), |bench| {
        bench.iter_batched(
            prepare,
            |Prepared { mut receiver, mut leaving, .. }| {
                let handover = leaving.release(&MOVING).expect("releases");
                hand_over(&mut receiver, handover);
                black_box(receiver)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function(format!("recompute_w{WIDTH}_m{IN_FLIGHT}"), |bench| {
        bench.iter_batched(
            prepare,
            |Prepared { mut receiver, mut leaving, entered }| {
                let mut handover = leaving.release(&MOVING).expect("releases");
                handover.layers.iter_mut().for_each(|l| l.segments.clear());
                handover.activations.extend(entered.into_iter().map(|(m, t)| (fixture::STEP, m, MOVING[0], t)));
                hand_over(&mut receiver, handover);
                fixture::recompute(&mut receiver).expect("forwards run");
                black_box(receiver)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_migrate);
criterion_main!(benches);
