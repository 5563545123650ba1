//! The coordinator's membership rules in memory: workers that join by
//! themselves, joiners that vanish, and a stop by signal.

use std::time::Duration;

use super::{CoordEffect, CoordEvent, Coordinator, JobPlan};
use crate::pipeline::protocol::{decode, encode, Message, Report, PROTOCOL_VERSION};
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
        eval: None,
        checkpoint: Default::default(),
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

/// Finishes step 0 of [`running`]'s job: both micro-batch losses and every
/// layer's update.
fn finish_step0(c: &mut Coordinator) -> Vec<CoordEffect> {
    let mut effects = Vec::new();
    for micro in 0..2 {
        effects.extend(from(c, 1, Message::Loss { step: 0, micro, value: 1.0 }));
    }
    for layer in 0..4 {
        effects.extend(from(c, layer / 2, Message::LayerUpdated { step: 0, layer, replica: None }));
    }
    effects
}

fn part(first: u32) -> crate::pipeline::checkpoint::SavedPart {
    let file = format!("layers-{first}");
    crate::pipeline::checkpoint::SavedPart { file, first, end: first + 2, sha256: "00".into(), bytes: 1 }
}

#[test]
fn a_stop_with_checkpoints_ends_the_step_writes_its_checkpoint_then_fails() {
    let mut p = plan(2);
    p.checkpoint.dir = Some("/ckpt".into());
    let mut c = Coordinator::new(p, Duration::ZERO).unwrap();
    register(&mut c, 0);
    register(&mut c, 1);
    from(&mut c, 0, Message::Ready { worker: 0 });
    from(&mut c, 1, Message::Ready { worker: 1 });
    assert!(c.handle(CoordEvent::Stop { reason: "SIGTERM".into() }, Duration::ZERO).is_empty(), "waits for the step");
    assert!(c.stopping());
    // The step ends: a snapshot instead of the next step.
    let effects = finish_step0(&mut c);
    assert_eq!(sends(&effects), vec![(0, "snapshot"), (1, "snapshot")]);
    assert_eq!(sends(&from(&mut c, 0, Message::Snapshotted { worker: 0, step: 1 })), vec![]);
    assert_eq!(sends(&from(&mut c, 1, Message::Snapshotted { worker: 1, step: 1 })), vec![], "no step 1");
    let saved = |w: u32| Message::Saved { worker: w, step: 1, part: Some(part(2 * w)), error: None };
    assert_eq!(sends(&from(&mut c, 1, saved(1))), vec![]);
    let effects = from(&mut c, 0, saved(0));
    let Some(CoordEffect::Checkpoint { step: 1, parts }) = effects.first() else { panic!("{effects:?}") };
    assert_eq!(parts.iter().map(|p| p.first).collect::<Vec<_>>(), vec![0, 2], "parts in layer order");
    assert_eq!(effects.last(), Some(&CoordEffect::Failed("SIGTERM".into())));
}

#[test]
fn periodic_snapshots_hold_the_next_step_until_every_member_answered() {
    let mut p = plan(2);
    p.checkpoint =
        crate::pipeline::checkpoint::CheckpointPlan { dir: Some("/c".into()), every: 1, ..Default::default() };
    let mut c = Coordinator::new(p, Duration::ZERO).unwrap();
    register(&mut c, 0);
    register(&mut c, 1);
    from(&mut c, 0, Message::Ready { worker: 0 });
    from(&mut c, 1, Message::Ready { worker: 1 });
    assert_eq!(sends(&finish_step0(&mut c)), vec![(0, "snapshot"), (1, "snapshot")]);
    assert_eq!(sends(&from(&mut c, 1, Message::Snapshotted { worker: 1, step: 1 })), vec![]);
    let next = from(&mut c, 0, Message::Snapshotted { worker: 0, step: 1 });
    assert_eq!(sends(&next), vec![(0, "step-start"), (1, "step-start")]);
    // A second answer of one worker is a protocol error.
    let again = from(&mut c, 0, Message::Snapshotted { worker: 0, step: 1 });
    assert!(matches!(again.last(), Some(CoordEffect::Failed(r)) if r.contains("out of turn")), "{again:?}");
}

#[test]
fn checkpoints_are_committed_in_step_order_whatever_order_parts_arrive_in() {
    let mut p = plan(2);
    p.batches.push(p.batches[0].clone());
    p.checkpoint =
        crate::pipeline::checkpoint::CheckpointPlan { dir: Some("/c".into()), every: 1, ..Default::default() };
    let mut c = Coordinator::new(p, Duration::ZERO).unwrap();
    register(&mut c, 0);
    register(&mut c, 1);
    from(&mut c, 0, Message::Ready { worker: 0 });
    from(&mut c, 1, Message::Ready { worker: 1 });
    for step in 0..2u32 {
        for micro in 0..2 {
            from(&mut c, 1, Message::Loss { step, micro, value: 1.0 });
        }
        for layer in 0..4 {
            from(&mut c, layer / 2, Message::LayerUpdated { step, layer, replica: None });
        }
        for w in 0..2 {
            from(&mut c, w, Message::Snapshotted { worker: w, step: step + 1 });
        }
    }
    let saved = |w: u32, step: u32| Message::Saved { worker: w, step, part: Some(part(2 * w)), error: None };
    // Step 2's parts are all in before step 1's: nothing is committed yet.
    assert!(from(&mut c, 0, saved(0, 2)).is_empty());
    assert!(from(&mut c, 1, saved(1, 2)).is_empty());
    assert!(from(&mut c, 0, saved(0, 1)).is_empty());
    let effects = from(&mut c, 1, saved(1, 1));
    let committed: Vec<u32> = effects
        .iter()
        .filter_map(|e| match e {
            CoordEffect::Checkpoint { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(committed, vec![1, 2], "{effects:?}");
}

/// A batch of reports, through the wire format (encoded and decoded).
fn reports(c: &mut Coordinator, worker: u32, reports: Vec<Report>) -> Vec<CoordEffect> {
    let message = decode(&encode(&Message::Reports { reports }).unwrap()).unwrap();
    from(c, worker, message)
}

#[test]
fn batched_reports_count_each_layer_and_loss_as_single_messages_do() {
    let updated = |layer| Report::LayerUpdated { step: 0, layer, replica: None };
    let loss = |micro| Report::Loss { step: 0, micro, value: 0.5 };
    // Batched: worker 1 holds layers 2-3 and the loss, worker 0 layers 0-1.
    let mut batched = running();
    assert_eq!(sends(&reports(&mut batched, 1, vec![loss(0), loss(1), updated(2), updated(3)])), vec![]);
    assert_eq!(sends(&reports(&mut batched, 0, vec![updated(0)])), vec![]);
    // The step ends with the last layer, whichever batch brings it.
    let next = reports(&mut batched, 0, vec![updated(1)]);
    assert_eq!(sends(&next), vec![(0, "step-start"), (1, "step-start")]);
    // One message per report gives the same effects.
    let mut single = running();
    from(&mut single, 1, Message::Loss { step: 0, micro: 0, value: 0.5 });
    from(&mut single, 1, Message::Loss { step: 0, micro: 1, value: 0.5 });
    for (worker, layer) in [(1, 2), (1, 3), (0, 0)] {
        from(&mut single, worker, Message::LayerUpdated { step: 0, layer, replica: None });
    }
    assert_eq!(from(&mut single, 0, Message::LayerUpdated { step: 0, layer: 1, replica: None }), next);
}

#[test]
fn a_bad_report_in_a_batch_fails_the_job_naming_it() {
    let failure = |effects: Vec<CoordEffect>| match effects.last() {
        Some(CoordEffect::Failed(reason)) => reason.clone(),
        other => panic!("the job went on: {other:?}"),
    };
    let twice = vec![
        Report::LayerUpdated { step: 0, layer: 2, replica: None },
        Report::LayerUpdated { step: 0, layer: 2, replica: None },
    ];
    let reason = failure(reports(&mut running(), 1, twice));
    assert!(reason.contains("worker 1") && reason.contains("updated layer 2 for step 0 out of turn"), "{reason}");
    let reason = failure(reports(&mut running(), 1, vec![Report::Loss { step: 3, micro: 0, value: 1.0 }]));
    assert!(reason.contains("its loss of step 3 arrived out of turn"), "{reason}");
    let reason = failure(reports(&mut running(), 0, Vec::new()));
    assert!(reason.contains("an empty batch of reports"), "{reason}");
}

/// Kinds of the messages sent to `worker`.
fn sent_to(effects: &[CoordEffect], worker: u32) -> Vec<&'static str> {
    sends(effects).into_iter().filter(|(w, _)| *w == worker).map(|(_, k)| k).collect()
}

#[test]
fn a_silent_worker_is_lost_at_its_deadline_but_not_for_the_coordinators_own_stall() {
    let secs = Duration::from_secs;
    // Called on time (the peer timeout is 5 s): worker 0, silent since 0 s, is lost.
    let mut on_time = running();
    on_time.handle(CoordEvent::Message { worker: 1, message: Message::Heartbeat { worker: 1 } }, secs(3));
    let due = on_time.poll_timeout().unwrap();
    assert!(due > secs(5) && due < secs(6), "{due:?}");
    assert_eq!(sent_to(&on_time.handle_timeout(due), 1), vec!["rollback"]);
    assert!(on_time.stalls().is_empty());

    // The coordinator itself did not run from 0 s to 20 s: nobody was silent.
    let mut stalled = running();
    assert_eq!(sends(&stalled.handle_timeout(secs(20))), vec![]);
    assert_eq!(stalled.stalls(), &[(Duration::ZERO, secs(20))]);
    // Worker 1 is heard again; worker 0 stays silent for a whole peer
    // timeout of the coordinator's running time, and is lost.
    stalled.handle(CoordEvent::Message { worker: 1, message: Message::Heartbeat { worker: 1 } }, secs(22));
    let due = stalled.poll_timeout().unwrap();
    assert!(due > secs(25) && due < secs(26), "{due:?}");
    assert_eq!(sends(&stalled.handle_timeout(secs(24))), vec![]);
    assert_eq!(sent_to(&stalled.handle_timeout(due), 1), vec!["rollback"]);
}
