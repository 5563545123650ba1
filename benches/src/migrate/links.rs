//! The connections every method uses, set up once per run of the bench and
//! kept open, as between the workers of a job: two QUIC nodes on loopback
//! with certificates from one cluster CA and the cluster's settings, and one
//! plain TCP connection for the TCP limit. The CA also issues the identity
//! of the worker that checkpoint-restart starts ([`RESTARTED`]), which
//! connects to the receiver like any new member.
//!
//! Both deliver a frame as the transport does: an 8-byte length, then the
//! bytes, landing in one fresh 16-byte aligned buffer of the full size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_transport::frame::{Aligned, Frame, Outbound};
use baton_transport::{ClusterCa, Event, Lane, Node, PeerId};
use bytes::Bytes;
use crossbeam_channel::Receiver;

/// Longest one transfer may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(120);
/// TCP writes go in pieces of this size (as `crate::tcp_throughput`'s; reads
/// too, in [`crate::transport::read_into`]).
const CHUNK: usize = 1 << 20;

/// Worker number of the process checkpoint-restart starts.
pub const RESTARTED: u32 = 3;

/// Open connections from the leaving worker to the receiver.
pub struct Links {
    sender: Node,
    receiver: Node,
    /// The receiver, as the sender knows it.
    peer: PeerId,
    /// The sender, as the receiver knows it: frames from other peers (the
    /// restarted worker's connection) are not the ones being timed.
    from: PeerId,
    tcp: TcpLink,
}

impl Links {
    /// Starts both nodes, connects them (hello and certificates checked),
    /// opens the TCP connection, and writes the restarted worker's
    /// certificate and key into `cluster_dir`.
    pub fn open(cluster_dir: &Path) -> anyhow::Result<Links> {
        let ca = ClusterCa::generate("bench-migrate").context("creating an ephemeral cluster CA")?;
        let config = baton_models::cluster::net_config();
        let local: SocketAddr = ([127, 0, 0, 1], 0).into();
        let name = baton_models::cluster::worker_name;
        ca.issue(&name(RESTARTED))?.save(cluster_dir).context("writing the restarted worker's certificate")?;
        let sender = Node::start(local, ca.issue(&name(1))?, config.clone()).context("starting the sender's node")?;
        let receiver = Node::start(local, ca.issue(&name(0))?, config).context("starting the receiver's node")?;
        let (peer, _) = sender.connect(receiver.local_addr()).context("connecting the two QUIC nodes")?;
        let from = connected(&receiver, &name(1))?;
        let tcp = TcpLink::open().context("opening the loopback TCP connection")?;
        Ok(Links { sender, receiver, peer, from, tcp })
    }

    /// Where the restarted worker connects.
    pub fn receiver_addr(&self) -> SocketAddr {
        self.receiver.local_addr()
    }

    /// Sends `frame` on the bulk lane and returns it as the receiver's node delivered it.
    pub fn quic(&self, frame: Bytes) -> anyhow::Result<Frame> {
        let len = frame.len();
        self.queue(frame)?;
        self.receive(Some(len))
    }

    /// Queues `frame` from the sender on the bulk lane (as a worker ships).
    pub fn queue(&self, frame: impl Into<Outbound>) -> anyhow::Result<()> {
        let frame = frame.into();
        let len = frame.len();
        self.sender.send(self.peer, Lane::Bulk, frame).with_context(|| format!("sending {len} bytes over QUIC"))?;
        Ok(())
    }

    /// The next frame from the sender as the receiver's node delivered it
    /// (checked to be `len` bytes when given).
    pub fn receive(&self, len: Option<usize>) -> anyhow::Result<Frame> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.events().recv_timeout(left) {
                Ok(Event::Message { peer, bytes, .. }) if peer == self.from => {
                    if let Some(len) = len.filter(|&l| l != bytes.len()) {
                        bail!("QUIC delivered {} bytes, {len} were sent", bytes.len());
                    }
                    return Ok(bytes);
                }
                Ok(Event::Disconnected { peer, reason }) if peer == self.from => {
                    bail!("the QUIC connection closed: {reason}")
                }
                Ok(_) => {}
                Err(_) => bail!("no QUIC frame within {DEADLINE:?}"),
            }
        }
    }

    /// Time from the first byte written to the last byte in the receiver's buffer.
    pub fn tcp(&mut self, payload: &[u8]) -> anyhow::Result<Duration> {
        self.tcp.transfer(payload)
    }
}

/// Waits for `node` to accept the connection of the node called `name`.
fn connected(node: &Node, name: &str) -> anyhow::Result<PeerId> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match node.events().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Connected { peer, name: n, .. }) if n == name => return Ok(peer),
            Ok(_) => {}
            Err(_) => bail!("{name} did not connect within {DEADLINE:?}"),
        }
    }
}

/// One loopback TCP connection whose reading end runs on its own thread.
struct TcpLink {
    stream: TcpStream,
    /// When each frame was complete, and its length.
    arrivals: Receiver<std::io::Result<(Instant, usize)>>,
    reader: Option<JoinHandle<()>>,
}

impl TcpLink {
    fn open() -> anyhow::Result<TcpLink> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let stream = TcpStream::connect(listener.local_addr()?)?;
        stream.set_nodelay(true)?;
        let (incoming, _) = listener.accept()?;
        let (tx, arrivals) = crossbeam_channel::unbounded();
        let reader = std::thread::Builder::new().name("bench-tcp-reader".into()).spawn(move || {
            let mut incoming = incoming;
            while let Some(arrival) = read_frame(&mut incoming).transpose() {
                let failed = arrival.is_err();
                if tx.send(arrival).is_err() || failed {
                    return;
                }
            }
        })?;
        Ok(TcpLink { stream, arrivals, reader: Some(reader) })
    }

    fn transfer(&mut self, payload: &[u8]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.stream.write_all(&(payload.len() as u64).to_le_bytes())?;
        for chunk in payload.chunks(CHUNK) {
            self.stream.write_all(chunk).context("writing to the TCP connection")?;
        }
        let (end, len) = self
            .arrivals
            .recv_timeout(DEADLINE)
            .map_err(|_| anyhow::anyhow!("no TCP frame within {DEADLINE:?}"))?
            .context("reading from the TCP connection")?;
        if len != payload.len() {
            bail!("TCP delivered {len} bytes, {} were sent", payload.len());
        }
        Ok(end.duration_since(start))
    }
}

impl Drop for TcpLink {
    /// Closing our end ends the reader's loop (end of stream); wait for it.
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Reads one length-prefixed frame into a fresh aligned buffer; `None` at
/// the end of the stream.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<(Instant, usize)>> {
    let mut header = [0u8; 8];
    if let Err(e) = stream.read_exact(&mut header) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(None) } else { Err(e) };
    }
    let len = usize::try_from(u64::from_le_bytes(header)).map_err(std::io::Error::other)?;
    let mut frame = Aligned::with_capacity(len);
    crate::transport::read_into(stream, &mut frame, len)?;
    Ok(Some((Instant::now(), frame.len())))
}
