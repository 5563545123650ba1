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
