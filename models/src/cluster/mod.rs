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

use baton_engine::pipeline::protocol::{self, Message};
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

/// Encodes `message` and queues it to `peer` on the lane its size calls for.
fn send(node: &Node, peer: PeerId, message: &Message) -> Result<()> {
    let lane = if message.is_bulk() { Lane::Bulk } else { Lane::Control };
    node.send(peer, lane, frame_of(message)?)?;
    Ok(())
}

/// Like [`send`] but waits until the peer received it (for the last message).
fn send_wait(node: &Node, peer: PeerId, message: &Message) -> Result<()> {
    node.send_wait(peer, Lane::Bulk, frame_of(message)?)?;
    Ok(())
}
