//! Who may tell a worker what to do: control messages only from the
//! coordinator; when held reports go out.

use super::{Dest, Out, Worker};
use crate::pipeline::protocol::{Message, Report};
use crate::Error;

fn worker() -> Worker {
    Worker::new(0, Box::new(|_| Err(Error::Model("no model in this test".into()))))
}

#[test]
fn control_messages_from_a_worker_are_refused_naming_the_sender() {
    let controls = [
        Message::Finish,
        Message::Retire,
        Message::Pause { generation: 1 },
        Message::Abort { reason: "a peer says stop".into() },
        Message::Preempt { worker: 0, grace_ms: 1 },
    ];
    for message in controls {
        let kind = message.kind();
        let err = worker().handle(Dest::Worker(3), message).unwrap_err().to_string();
        assert!(err.contains("worker 3") && err.contains("only the coordinator"), "{kind}: {err}");
    }
    // The same from the coordinator is heard (a retire is an exit).
    assert!(worker().handle(Dest::Coordinator, Message::Retire).is_ok());
}

#[test]
fn held_reports_go_out_when_idle_and_before_any_other_message_to_the_coordinator() {
    let data = || Out::Send {
        to: Dest::Worker(1),
        message: Message::Recompute { generation: 0, step: 0, micro: 0, layer: 1, stop: 2 },
    };
    let loss = Report::Loss { step: 0, micro: 0, value: 1.5 };
    let updated = Report::LayerUpdated { step: 0, layer: 3, replica: None };
    let batch = |reports| Out::Send { to: Dest::Coordinator, message: Message::Reports { reports } };
    // No work ready (no stage): held reports follow the data, in order made.
    let mut w = worker();
    w.hold(loss.clone());
    w.hold(updated.clone());
    assert_eq!(w.settle(vec![data()]), vec![data(), batch(vec![loss.clone(), updated.clone()])]);
    assert_eq!(w.held_reports(), 0);
    assert_eq!(w.settle(vec![data()]), vec![data()], "nothing is sent twice");
    // A notice to the coordinator never overtakes a report made before it.
    let mut w = worker();
    w.hold(updated.clone());
    let outs = w.notice(500);
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert_eq!(outs[0], batch(vec![updated]));
    assert!(matches!(&outs[1], Out::Send { message: Message::Notice { grace_ms: 500, .. }, .. }));
}

fn grads(layer: u32, value: f32) -> Vec<(String, crate::Tensor)> {
    vec![(format!("layers.{layer}.weight"), crate::Tensor::new(vec![2], vec![value, -value]).unwrap())]
}

#[test]
fn replica_gradients_go_out_as_one_message_per_holder_and_step_before_the_reports() {
    let mut w = worker();
    let updated = Report::LayerUpdated { step: 0, layer: 3, replica: Some(1) };
    w.hold_replica(1, 0, 3, grads(3, 0.5));
    w.hold(updated.clone());
    w.hold_replica(2, 0, 5, grads(5, 0.75));
    w.hold_replica(1, 0, 4, grads(4, 0.25));
    let outs = w.settle(Vec::new());
    let replica = |layers| Message::Replica { generation: 0, step: 0, layers };
    let expected = [
        Out::Send { to: Dest::Worker(1), message: replica(vec![(3, grads(3, 0.5)), (4, grads(4, 0.25))]) },
        Out::Send { to: Dest::Worker(2), message: replica(vec![(5, grads(5, 0.75))]) },
    ];
    assert_eq!(outs[..2], expected[..]);
    assert!(
        matches!(&outs[2], Out::Send { to: Dest::Coordinator, message: Message::Reports { reports } } if reports[0] == updated)
    );
    assert_eq!(outs.len(), 3);
    assert!(w.settle(Vec::new()).is_empty(), "nothing is sent twice");
}

/// A holder takes a batched message's gradients into the replicas of the
/// layers it names (each its own update) and confirms them in one message.
#[test]
fn a_batched_replica_message_updates_the_layers_it_names_and_is_confirmed_once() {
    let config: crate::OptimizerConfig = "adam:lr=0.01".parse().unwrap();
    let mut w = worker();
    w.replicas = Some(crate::pipeline::replica::Replicas::new(crate::Optimizer::new(config)));
    let start = |layer: u32| grads(layer, 1.0 + layer as f32);
    for layer in [3, 4] {
        let seed = Message::ReplicaSeed { generation: 0, step: 0, layer, params: start(layer), optimizer: Vec::new() };
        assert!(w.handle(Dest::Worker(1), seed).unwrap().is_empty());
    }
    let message = Message::Replica { generation: 0, step: 0, layers: vec![(3, grads(3, 0.5)), (4, grads(4, -0.25))] };
    let outs = w.handle(Dest::Worker(1), message).unwrap();
    let confirmed = Message::Replicated { step: 0, layers: vec![3, 4] };
    assert_eq!(outs, vec![Out::Send { to: Dest::Coordinator, message: confirmed }]);
    let replicas = w.replicas.as_mut().unwrap();
    replicas.advance(1).unwrap();
    assert_eq!(replicas.valid(1), vec![3, 4]);
    for (layer, g) in [(3, 0.5), (4, -0.25)] {
        let (mut owner, (name, mut param)) = (crate::Optimizer::new(config), start(layer).remove(0));
        owner.update(0, &name, &mut param, &grads(layer, g)[0].1).unwrap();
        let state = replicas.layer_state(layer).unwrap();
        assert_eq!(state.params, vec![(name.clone(), param)], "layer {layer}");
        assert_eq!(state.optimizer, vec![(name.clone(), owner.state(&name).unwrap().clone())], "layer {layer}");
    }
}
