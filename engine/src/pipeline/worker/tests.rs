//! Who may tell a worker what to do: control messages only from the coordinator.

use super::{Dest, Worker};
use crate::pipeline::protocol::Message;
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
