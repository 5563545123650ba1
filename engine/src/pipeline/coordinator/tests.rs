//! The coordinator's membership rules in memory: workers that join by
//! themselves, joiners that vanish, and a stop by signal.

use std::time::Duration;

use super::{CoordEffect, CoordEvent, Coordinator, JobPlan};
use crate::pipeline::protocol::{Message, PROTOCOL_VERSION};
use crate::pipeline::ScheduleKind;
use crate::train::{Batch, Targets};
use crate::{OptimizerConfig, ParamStore, Tensor};

fn plan(workers: usize) -> JobPlan {
    let batch = Batch::new(Tensor::zeros(&[4, 2]), Targets::Values(Tensor::zeros(&[4, 2]))).unwrap();
    JobPlan {
        spec: String::new(),
        optimizer: "sgd:lr=0.1".parse::<OptimizerConfig>().unwrap(),
        schedule: ScheduleKind::OneFOneB,
        micro_batches: 2,
        workers,
        costs: vec![1.0; 4],
        params: ParamStore::new(),
        batches: vec![batch.clone(), batch],
        join_timeout: Duration::from_secs(60),
        notices: Vec::new(),
        ship_bf16: false,
        joins: Vec::new(),
        clip_grad_norm: None,
        lr_schedule: Default::default(),
        seed: 0,
        faults: Default::default(),
    }
}

fn from(c: &mut Coordinator, worker: u32, message: Message) -> Vec<CoordEffect> {
    c.handle(CoordEvent::Message { worker, message }, Duration::ZERO)
}

fn register(c: &mut Coordinator, worker: u32) -> Vec<CoordEffect> {
    let message = Message::Register { worker, protocol: PROTOCOL_VERSION, address: format!("w{worker}") };
    from(c, worker, message)
}

/// (worker, message kind) of every send, and whether the job failed.
fn sends(effects: &[CoordEffect]) -> Vec<(u32, &'static str)> {
    assert!(!effects.iter().any(|e| matches!(e, CoordEffect::Failed(_))), "the job failed: {effects:?}");
    effects
        .iter()
        .filter_map(|e| match e {
            CoordEffect::Send { worker, message } => Some((*worker, message.kind())),
            _ => None,
        })
        .collect()
}

/// A 2-worker job in its first step.
fn running() -> Coordinator {
    let mut c = Coordinator::new(plan(2), Duration::ZERO).unwrap();
    register(&mut c, 0);
    register(&mut c, 1);
    from(&mut c, 0, Message::Ready { worker: 0 });
    let started = from(&mut c, 1, Message::Ready { worker: 1 });
    assert_eq!(sends(&started), vec![(0, "step-start"), (1, "step-start")]);
    c
}

#[test]
fn a_worker_that_registers_by_itself_is_assigned_and_taken_in_at_once() {
    let mut c = running();
    assert_eq!(sends(&register(&mut c, 7)), vec![(7, "assign")]);
    // Ready (connected to every member): the migration begins with a pause.
    assert_eq!(sends(&from(&mut c, 7, Message::Ready { worker: 7 })), vec![(0, "pause"), (1, "pause")]);
}

#[test]
fn an_early_joiner_waits_for_training_and_one_joiner_comes_in_at_a_time() {
    let mut c = Coordinator::new(plan(2), Duration::ZERO).unwrap();
    assert_eq!(sends(&register(&mut c, 5)), vec![]);
    assert_eq!(sends(&register(&mut c, 0)), vec![]);
    // The early joiner does not count as one of the job's two workers.
    assert_eq!(sends(&register(&mut c, 1)), vec![(0, "assign"), (1, "assign")]);
    from(&mut c, 0, Message::Ready { worker: 0 });
    let started = sends(&from(&mut c, 1, Message::Ready { worker: 1 }));
    assert!(started.contains(&(5, "assign")), "{started:?}");
    // A second joiner waits while the first is on its way in.
    assert_eq!(sends(&register(&mut c, 6)), vec![]);
}

#[test]
fn a_joiner_that_vanishes_before_it_holds_layers_is_forgotten() {
    let mut c = running();
    register(&mut c, 7);
    register(&mut c, 8);
    let lost = c.handle(CoordEvent::Lost { worker: 7, reason: "gone".into() }, Duration::ZERO);
    // The job goes on, and the next joiner gets its turn.
    assert_eq!(sends(&lost), vec![(8, "assign")]);
}

#[test]
fn a_stop_aborts_every_worker_and_fails_the_job_with_the_reason() {
    let mut c = running();
    let effects = c.handle(CoordEvent::Stop { reason: "stopped by SIGINT".into() }, Duration::ZERO);
    let aborts = effects.iter().filter(|e| matches!(e, CoordEffect::Send { message: Message::Abort { .. }, .. }));
    assert_eq!(aborts.count(), 2, "{effects:?}");
    assert_eq!(effects.last(), Some(&CoordEffect::Failed("stopped by SIGINT".into())));
    assert!(c.handle(CoordEvent::Lost { worker: 0, reason: "x".into() }, Duration::ZERO).is_empty());
}

#[test]
fn a_joiner_that_breaks_the_protocol_is_dropped_and_the_job_goes_on() {
    let mut c = running();
    register(&mut c, 7);
    register(&mut c, 8);
    let bad = Message::Final { worker: 7, params: Vec::new(), counters: Default::default(), spans: Vec::new() };
    let effects = from(&mut c, 7, bad);
    assert_eq!(sends(&effects), vec![(7, "abort"), (8, "assign")]);
    let Some(CoordEffect::Send { message: Message::Abort { reason }, .. }) = effects.first() else { unreachable!() };
    assert!(reason.contains("worker 7 broke the protocol"), "{reason}");
}

#[test]
fn a_member_that_breaks_the_protocol_fails_the_job_naming_it() {
    let mut c = running();
    let effects = from(&mut c, 1, Message::Ready { worker: 1 });
    let Some(CoordEffect::Failed(reason)) = effects.last() else { panic!("{effects:?}") };
    assert!(reason.contains("worker 1 broke the protocol"), "{reason}");
}
