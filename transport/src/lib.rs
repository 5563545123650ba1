//! baton's transport: QUIC connections with mutual TLS, framing and bulk
//! streams. It moves bytes and knows nothing of tensors: frames are opaque
//! chunks of [`bytes::Bytes`] going out ([`frame::Outbound`], never copied
//! into one buffer) and 16-byte aligned buffers coming in; what they mean is
//! decided by the crate that encodes the messages.
//!
//! - [`pki`]: the cluster's certificate authority and node identities.
//! - [`Node`]: one QUIC endpoint per process behind a blocking facade; its
//!   tokio runtime runs on the thread waiting for its events
//!   ([`Node::next_event`]) or else on a helper thread the node owns; events
//!   arrive on a crossbeam channel.
//! - [`frame`]: the wire framing (u64 LE length, then the bytes), as pure
//!   functions on byte buffers.

mod drive;
pub mod frame;
mod hello;
mod node;
mod parts;
mod peer;
pub mod pki;
mod registry;
mod tls;

pub use drive::Interrupt;
pub use hello::PROTOCOL_VERSION;
pub use node::{Delivery, Event, Lane, NetConfig, Node, PathEstimate, PeerId};
pub use pki::{init_cluster, ClusterCa, Identity};

use std::net::SocketAddr;
use std::path::PathBuf;

/// Test hooks for driving the wire protocol by hand (raw quinn clients that
/// send bad hellos or bad frames). Not part of the supported API.
#[doc(hidden)]
pub mod raw {
    pub use crate::frame::{encode_frame, encode_header};
    pub use crate::hello::MAGIC;

    /// The name a client verifies a node's certificate against.
    pub const SERVER_NAME: &str = crate::tls::SERVER_NAME;

    /// The client configuration a [`crate::Node`] dials with.
    pub fn client_config(identity: &crate::Identity, config: &crate::NetConfig) -> crate::Result<quinn::ClientConfig> {
        crate::tls::client_config(identity, config)
    }
}

/// Everything the transport can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame larger than the configured maximum (sent or announced).
    #[error(
        "frame of {size} bytes exceeds the maximum of {max} bytes; \
         split the payload or raise NetConfig::max_frame_bytes on both sides"
    )]
    FrameTooLarge { size: u64, max: u64 },
    /// A stream ended in the middle of a frame.
    #[error(
        "truncated frame: the stream ended after {received} of {expected} bytes; \
         the sender died or is not speaking baton's framing"
    )]
    TruncatedFrame { received: u64, expected: u64 },
    /// A caller asked to send a split frame with a part that is not whole
    /// 4-byte words (the caller's fault: parts are word arrays).
    #[error("part {index} of a split frame is {len} bytes, not whole 4-byte words")]
    PartNotWords { index: usize, len: usize },
    /// A caller asked to send a split frame of more parts than a receiver takes.
    #[error("a split frame of {count} parts exceeds the maximum of {max} parts; send fewer, larger parts")]
    TooManyParts { count: usize, max: usize },
    /// The peer broke the application protocol (bad hello, extra bytes, ...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Reading or writing a file failed.
    #[error("could not {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// A file that would be overwritten already exists.
    #[error(
        "{path} already exists; refusing to overwrite a cluster's keys \
         (use another directory or delete it on purpose)"
    )]
    AlreadyExists { path: PathBuf },
    /// Generating, parsing or loading a certificate or key failed.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// A node name that cannot go into a certificate.
    #[error(
        "invalid node name {0:?}: use 1-63 ASCII letters, digits, '-' or '.', \
         not starting or ending with '-' or '.', and not 'localhost' or 'baton-node'"
    )]
    InvalidName(String),
    /// Building the TLS or QUIC configuration failed.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// Starting the runtime or binding the UDP socket failed.
    #[error("could not start the node on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The peer rejected our certificate during the TLS handshake.
    #[error(
        "{addr} refused our certificate: it is not signed by this cluster's CA \
         (or we sent none); issue this node's identity from the same CA ({detail})"
    )]
    CertificateRefused { addr: SocketAddr, detail: String },
    /// The peer's certificate does not chain to our cluster CA.
    #[error(
        "{addr}'s certificate is not signed by the cluster CA, so it is not part \
         of this cluster; check which CA directory each node uses ({detail})"
    )]
    UntrustedPeer { addr: SocketAddr, detail: String },
    /// The peer refused our hello (protocol version, name ...).
    #[error("{addr} refused the connection: {reason}")]
    Rejected { addr: SocketAddr, reason: String },
    /// Connecting failed for a network reason.
    #[error("could not connect to {addr}: {reason}; check the address and that the peer runs")]
    Connect { addr: SocketAddr, reason: String },
    /// Connecting did not finish within the configured timeout.
    #[error(
        "connecting to {addr} timed out after {after:?}; check the address, \
         firewalls, and that the peer runs"
    )]
    Timeout { addr: SocketAddr, after: std::time::Duration },
    /// The peer is not (or no longer) connected.
    #[error(
        "no open connection to peer {0}: it disconnected or was never connected \
         (watch for Event::Disconnected and reconnect)"
    )]
    UnknownPeer(u64),
    /// The connection or stream closed before a frame was delivered.
    #[error("frame not delivered: {0}")]
    NotDelivered(String),
}

/// The transport's result type.
pub type Result<T> = std::result::Result<T, Error>;
