//! Running the pipeline across processes: thin I/O loops that move frames
//! between the QUIC transport and the I/O-free coordinator and worker state
//! machines of `baton_engine::pipeline`, plus launching a whole job on this
//! machine with an ephemeral certificate authority.

pub mod admin;
pub mod budget;
mod committer;
mod coordinator;
pub mod error;
pub mod fault;
pub mod handoff;
mod launch;
pub mod lifetime;
pub mod notice;
mod saves;
pub mod timeline;
mod worker;

use std::time::Duration;

use baton_engine::pipeline::adopt;
use baton_engine::pipeline::protocol::{self, Message};
use baton_transport::frame::{Frame, Outbound};
use baton_transport::{Lane, NetConfig, Node, PeerId};

pub use coordinator::{run_coordinator, CoordinatorOptions};
pub use error::{Error, Result};
pub use launch::{launch_local, launch_local_on, LocalJob};
pub use worker::{run_worker, WorkerOptions};

/// Certificate name of the coordinator.
pub const COORDINATOR_NAME: &str = "coordinator";

/// Certificate name of an administrator (`baton preempt`): a peer that may
/// send requests to the coordinator of a running job, and nothing else.
pub const ADMIN_NAME: &str = "admin";

/// Certificate name of worker `id`.
pub fn worker_name(id: u32) -> String {
    format!("worker-{id}")
}

/// The worker number in a certificate name (`worker-3` → 3).
pub fn worker_id(name: &str) -> Option<u32> {
    name.strip_prefix("worker-")?.parse().ok()
}

/// Transport settings for jobs: a lost peer is noticed within seconds, and
/// a second connection claiming a connected member's identity is refused.
pub fn net_config() -> NetConfig {
    NetConfig {
        idle_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_millis(500),
        refuse_duplicate_names: true,
        ..NetConfig::default()
    }
}

/// One message as a transport frame: archived into a buffer sized (and,
/// when large, backed by huge pages) up front, handed over without a copy.
pub fn frame_of(message: &Message) -> Result<bytes::Bytes> {
    let buffer = baton_transport::frame::receive_buffer(protocol::size_hint(message));
    Ok(bytes::Bytes::from_owner(protocol::encode_in(message, buffer)?))
}

/// One owned message as a transport frame. A handover, and any other
/// message between workers that carries more than [`SMALL_FRAME_BYTES`] of
/// tensors (activations, gradients, replica gradients and seeds:
/// [`adopt::splits`]), goes as a split frame: its element buffers are the
/// frame's parts, sent without a copy and adopted by the receiver without
/// one ([`decode_frame`]); any other message is archived as [`frame_of`]
/// does (small tensors cost less archived than as parts of their own).
pub fn frame_owned(message: Message) -> Result<Outbound> {
    let large = protocol::size_hint(&message) > SMALL_FRAME_BYTES;
    if matches!(message, Message::Handover { .. }) || (large && adopt::splits(&message)) {
        let split = adopt::encode_split(message)?;
        return Ok(Outbound::split(vec![bytes::Bytes::from_owner(split.head)], split.parts)?);
    }
    Ok(Outbound::new(vec![frame_of(&message)?]))
}

/// Decodes a received frame: a split frame's parts become its handover's
/// element buffers without a copy; any other frame as [`protocol::decode`].
pub fn decode_frame(frame: Frame) -> Result<Message> {
    if !frame.is_split() {
        return Ok(protocol::decode(&frame)?);
    }
    let (head, parts) = frame.into_split();
    Ok(adopt::decode_split(&head, parts)?)
}

/// Frames that carry tensors but are at most this large travel on the
/// control lane. A bulk frame costs a QUIC stream of its own (opened,
/// accepted by a task of its own, finished, acknowledged), which for an
/// 8 KiB activation cost more CPU than the bytes; on the ordered control
/// stream, 64 KiB delays a control message by well under a millisecond.
/// The protocol tolerates any arrival order, so the stronger order of the
/// control stream is always allowed.
pub const SMALL_FRAME_BYTES: usize = 64 << 10;

/// The lane for a frame of `len` bytes holding `message`: bulk only for
/// tensor-carrying frames larger than [`SMALL_FRAME_BYTES`].
pub fn lane_for(message: &Message, len: usize) -> Lane {
    bulk_if_large(message.is_bulk(), len)
}

/// [`lane_for`] of a message already given away: `bulk` is its
/// [`Message::is_bulk`].
fn bulk_if_large(bulk: bool, len: usize) -> Lane {
    if bulk && len > SMALL_FRAME_BYTES {
        Lane::Bulk
    } else {
        Lane::Control
    }
}

/// Encodes `message` and queues it to `peer` on the lane its size calls for.
fn send(node: &Node, peer: PeerId, message: &Message) -> Result<()> {
    let frame = frame_of(message)?;
    node.send(peer, lane_for(message, frame.len()), frame)?;
    Ok(())
}

/// Like [`send`] for a message this node gives away: a large one between
/// workers goes as a split frame ([`frame_owned`]), on the bulk lane.
fn send_owned(node: &Node, peer: PeerId, message: Message) -> Result<()> {
    let bulk = message.is_bulk();
    let frame = frame_owned(message)?;
    let lane = if frame.is_split() { Lane::Bulk } else { bulk_if_large(bulk, frame.len()) };
    node.send(peer, lane, frame)?;
    Ok(())
}

/// Like [`send`] but waits until the peer received it (for the last message).
fn send_wait(node: &Node, peer: PeerId, message: &Message) -> Result<()> {
    node.send_wait(peer, Lane::Bulk, frame_of(message)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_engine::Tensor;

    fn activation(floats: usize) -> Message {
        let tensor = Tensor::new(vec![floats], vec![0.5; floats]).unwrap();
        Message::Activation { generation: 0, step: 0, micro: 0, layer: 1, tensor }
    }

    /// A handover of one layer of width `w`: parameters, Adam state, a
    /// waiting activation and token targets.
    fn handover(w: usize) -> Message {
        use baton_engine::pipeline::migrate::{Handover, LayerState};
        let values =
            |n: usize, seed: u32| (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as f32 * 1e-9).collect();
        let t = |shape: &[usize], seed| Tensor::new(shape.to_vec(), values(shape.iter().product(), seed)).unwrap();
        let layer = LayerState {
            layer: 0,
            params: vec![("w".into(), t(&[w, w], 1)), ("b".into(), t(&[w], 2))],
            optimizer: vec![(
                "w".into(),
                baton_engine::OptState { step: 1, buffers: vec![values(w * w, 3), values(w * w, 4)] },
            )],
            grads: None,
            updated: false,
            segments: Vec::new(),
            kept: vec![(0, 0, 0, t(&[3, w], 5))],
            entries: Vec::new(),
            replays: Vec::new(),
            resends: Vec::new(),
            replica: None,
        };
        let targets = baton_engine::Targets::Classes(Tensor::from_ids(vec![7], (0..7).collect()).unwrap());
        let handover =
            Handover { layers: vec![layer], targets: vec![(0, 0, targets)], parts: 1, ..Handover::default() };
        Message::Handover { generation: 3, handover }
    }

    #[test]
    fn a_handover_crosses_the_wire_as_a_split_frame_and_decodes_bit_for_bit() {
        for w in [1, 130] {
            let message = handover(w);
            let wire = frame_owned(message.clone()).unwrap().with_header().concat();
            let mut frames = baton_transport::frame::decode_all(&wire, 1 << 24).unwrap();
            assert!(frames[0].is_split());
            assert_eq!(frames[0].parts().len(), 6, "w, b, two Adam buffers, the kept activation, the targets");
            let decoded = decode_frame(frames.remove(0)).unwrap();
            assert_eq!(protocol::encode(&decoded).unwrap().as_slice(), protocol::encode(&message).unwrap().as_slice());
            assert_eq!(decoded, message);
        }
        // Small tensors and messages for the coordinator keep the plain frame.
        let plain = frame_owned(activation(64)).unwrap().with_header().concat();
        let frames = baton_transport::frame::decode_all(&plain, 1 << 24).unwrap();
        assert!(!frames[0].is_split());
        assert_eq!(decode_frame(frames.into_iter().next().unwrap()).unwrap(), activation(64));
        let params = vec![("w".into(), Tensor::new(vec![SMALL_FRAME_BYTES], vec![0.5; SMALL_FRAME_BYTES]).unwrap())];
        let last = Message::Final { worker: 1, params, counters: Default::default(), spans: Vec::new() };
        assert!(!frame_owned(last).unwrap().is_split());
    }

    #[test]
    fn a_large_activation_is_a_split_frame_and_decodes_bit_for_bit() {
        let message = activation(SMALL_FRAME_BYTES / 4 + 1);
        let frame = frame_owned(message.clone()).unwrap();
        assert!(frame.is_split());
        let wire = frame.with_header().concat();
        let mut frames = baton_transport::frame::decode_all(&wire, 1 << 24).unwrap();
        assert_eq!(frames[0].parts().len(), 1, "the activation's values");
        assert_eq!(decode_frame(frames.remove(0)).unwrap(), message);
    }

    #[test]
    fn small_tensor_frames_take_the_control_lane_and_large_ones_a_bulk_stream() {
        let lane = |m: &Message| lane_for(m, frame_of(m).unwrap().len());
        // mlp12's 32 x 64 activation (8 KiB): the ordered control stream.
        assert_eq!(lane(&activation(32 * 64)), Lane::Control);
        // A 64-row W=1024 activation (256 KiB): a stream of its own.
        assert_eq!(lane(&activation(64 * 1024)), Lane::Bulk);
        assert_eq!(lane(&activation(SMALL_FRAME_BYTES / 4 + 1)), Lane::Bulk, "just over the limit");
        assert_eq!(lane(&Message::Pause { generation: 2 }), Lane::Control);
    }
}
