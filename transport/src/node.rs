//! The blocking facade: one QUIC endpoint per process, driven by a tokio
//! runtime the node owns (see [`Driver`]): by the thread that waits in
//! [`Node::next_event`] while it waits, by a helper thread otherwise.
//! Events are delivered on a crossbeam channel, so that synchronous loops
//! can also `select!` on them.

use crate::drive::{Drive, Interrupt};
use crate::frame::{Frame, Outbound};
use crate::registry::{code, Shared, Signals};
use crate::{peer, tls, Error, Identity, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Connection settings. Both ends should use the same values.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The largest frame this node sends or accepts; a peer announcing a
    /// larger one is disconnected before anything is allocated.
    pub max_frame_bytes: usize,
    /// Bound on `connect()`: QUIC and TLS handshakes plus the hello.
    pub connect_timeout: Duration,
    /// A connection with no packets for this long is declared dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval; must be well under `idle_timeout`.
    pub keep_alive: Duration,
    /// Initial and largest UDP payload. 6000 is safe and fast on loopback;
    /// on real links use the path MTU minus 48 (e.g. 1452 for 1500 Ethernet):
    /// a too-large value costs a black-hole fallback to 1200 bytes.
    pub mtu: u16,
    /// Per-stream receive window in bytes (the connection window is
    /// unbounded; the send window is 4x this).
    pub stream_window: u64,
    /// UDP socket send and receive buffer sizes. The kernel default (208 KiB)
    /// holds only ~35 packets of 6000 bytes and dropped a quarter of a burst
    /// on a busy 2-core machine. Linux caps it at `net.core.rmem_max` and
    /// `wmem_max`: raise those for it to take effect.
    pub socket_buffer: usize,
    /// Refuse a second incoming connection from a node name that already
    /// has a live incoming connection (the hello is rejected, saying so),
    /// instead of letting the newer one replace it. A job sets this: two
    /// processes claiming one worker's identity must not take over a
    /// member's connection. A peer that restarted is then let in once its
    /// old connection timed out (`idle_timeout`).
    pub refuse_duplicate_names: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_frame_bytes: 1 << 30,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(2),
            mtu: 6000,
            stream_window: 16 << 20,
            socket_buffer: 4 << 20,
            refuse_duplicate_names: false,
        }
    }
}

/// This node's handle for one connection. Not meaningful across nodes, and
/// never reused within a node: a reconnect gets a new id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// Which stream a frame travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// One ordered stream per direction: frames arrive in the order sent.
    Control,
    /// One stream per frame: a large payload never blocks control traffic,
    /// and bulk frames have no order among themselves.
    Bulk,
}

/// What the node reports, in arrival order (per lane, per peer).
#[derive(Debug)]
pub enum Event {
    /// A peer passed TLS and the hello: it holds a certificate from our CA
    /// for `name` and speaks our protocol version.
    Connected { peer: PeerId, name: String, addr: SocketAddr },
    /// One whole frame, 16-byte aligned; a split frame as its head and its
    /// parts, each part in a buffer of its own ([`Frame::parts`]).
    Message { peer: PeerId, lane: Lane, bytes: Frame },
    /// The connection is gone; says why (closed, timed out, violation...).
    Disconnected { peer: PeerId, reason: String },
}

/// A frame on its way, from [`Node::send_tracked`].
pub struct Delivery {
    peer: PeerId,
    done: tokio::sync::oneshot::Receiver<Result<()>>,
    drive: std::sync::Weak<Drive>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Delivery {
    /// Blocks until delivery is known, with [`Node::send_wait`]'s meaning,
    /// driving the node's runtime meanwhile. Must not be called from inside
    /// a tokio runtime.
    pub fn wait(self) -> Result<()> {
        let peer = self.peer;
        let outcome = match self.drive.upgrade() {
            Some(drive) => drive.block_on(self.done),
            None => self.done.blocking_recv(),
        };
        outcome.unwrap_or_else(|_| Err(Error::NotDelivered(format!("the connection to {peer} closed first"))))
    }
}

/// QUIC's view of one path, from [`Node::path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEstimate {
    pub rtt: Duration,
    /// Congestion window in bytes.
    pub cwnd: u64,
}

impl PathEstimate {
    /// Bytes per second the path allows now (`cwnd / rtt`); None when no
    /// round trip was measured yet.
    pub fn bytes_per_second(&self) -> Option<f64> {
        let rtt = self.rtt.as_secs_f64();
        (rtt > 0.0).then(|| self.cwnd as f64 / rtt)
    }
}

/// The node's tokio runtime and its helper thread.
///
/// Invariant: every task of the node (quinn's endpoint and connection
/// drivers, control writers and readers, bulk streams) runs on one thread
/// at a time: the caller of [`Node::next_event`] while it waits, the helper
/// thread otherwise (see [`Drive`]). A frame's way from the socket to the
/// waiting caller then wakes no other thread, and quinn's tasks hand each
/// other work without waking another: a multi-threaded runtime woke a
/// second worker for about every hand-off (the profile in the README).
struct Driver {
    drive: Arc<Drive>,
    thread: std::thread::JoinHandle<()>,
}

impl Driver {
    fn start(name: &str) -> std::io::Result<Driver> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let drive = Arc::new(Drive::new(runtime));
        let driven = drive.clone();
        let thread =
            std::thread::Builder::new().name(format!("baton-net-{name}")).spawn(move || driven.helper_loop())?;
        Ok(Driver { drive, thread })
    }

    /// Stops the helper thread; the runtime, its tasks still in it, is
    /// the caller's to shut down (None while a [`Delivery`] wait drives).
    fn stop(self) -> Option<tokio::runtime::Runtime> {
        self.drive.stop();
        // The thread only runs `helper_loop`; a panic there is already reported.
        let _ = self.thread.join();
        self.drive.into_runtime()
    }
}

/// One QUIC endpoint that both accepts and opens connections.
///
/// Must not be created, used or dropped from inside a tokio runtime: its
/// methods block on its own runtime.
pub struct Node {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    driver: Option<Driver>,
}

impl Node {
    /// Binds `bind` and accepts connections in the background.
    pub fn start(bind: SocketAddr, identity: Identity, config: NetConfig) -> Result<Node> {
        let bind_err = |source| Error::Bind { addr: bind, source };
        let driver = Driver::start(identity.name()).map_err(bind_err)?;
        let runtime = driver.drive.handle();
        let socket = std::net::UdpSocket::bind(bind).map_err(bind_err)?;
        size_buffers(&socket, config.socket_buffer);
        let server = tls::server_config(&identity, &config)?;
        let client = tls::client_config(&identity, &config)?;
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::new(tls::endpoint_config(&config)?, Some(server), socket, Arc::new(quinn::TokioRuntime))
                .map_err(bind_err)?
        };
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let (tx, events) = crossbeam_channel::unbounded();
        let name = identity.name().to_string();
        let signals = Signals { ready: driver.drive.ready.clone(), queued: driver.drive.queued.clone() };
        let shared = Arc::new(Shared::new(name, config, client, runtime.clone(), tx, signals));
        runtime.spawn(peer::accept_loop(shared.clone(), endpoint.clone()));
        Ok(Node { shared, events, endpoint, local_addr, driver: Some(driver) })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn drive(&self) -> &Arc<Drive> {
        &self.driver.as_ref().expect("runtime lives until drop").drive
    }

    /// Connects to the node at `addr` and returns its id and name.
    ///
    /// TLS verifies the server against the cluster CA and presents our
    /// certificate; then the hello (magic, [`crate::PROTOCOL_VERSION`], our
    /// name) must be accepted. Only that accept proves the server took our
    /// certificate: rustls reports a handshake as done before the server has
    /// judged it. Already connected to `addr` (either direction): returns
    /// that connection. Blocks for at most `connect_timeout`.
    pub fn connect(&self, addr: SocketAddr) -> Result<(PeerId, String)> {
        if let Some(found) = self.shared.peer_at(addr) {
            return Ok(found);
        }
        let after = self.shared.config.connect_timeout;
        let dial = peer::dial(&self.shared, &self.endpoint, addr);
        self.drive()
            .block_on(async { tokio::time::timeout(after, dial).await })
            .map_err(|_| Error::Timeout { addr, after })?
    }

    /// Queues one frame to `peer` and returns without waiting for the
    /// network. Fails if the peer is unknown or closed, or the frame is
    /// larger than `max_frame_bytes`. A frame queued just before the
    /// connection dies is lost; `Event::Disconnected` says so.
    pub fn send(&self, peer: PeerId, lane: Lane, bytes: impl Into<Outbound>) -> Result<()> {
        self.shared.send(peer, lane, bytes.into(), None)
    }

    /// Like [`Node::send`], but blocks until delivery is known.
    ///
    /// Bulk: until the peer's QUIC stack has acknowledged the whole frame
    /// (received, maybe not yet read by the application). Control: until the
    /// frame is written into the ordered stream within the peer's flow-control
    /// window (per-frame acknowledgment is not observable on a shared
    /// stream); time transfers on the bulk lane.
    pub fn send_wait(&self, peer: PeerId, lane: Lane, bytes: impl Into<Outbound>) -> Result<()> {
        self.send_tracked(peer, lane, bytes)?.wait()
    }

    /// Like [`Node::send`], returning a [`Delivery`] to wait on later, so
    /// the caller can prepare the next frame while this one travels.
    pub fn send_tracked(&self, peer: PeerId, lane: Lane, bytes: impl Into<Outbound>) -> Result<Delivery> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.send(peer, lane, bytes.into(), Some(tx))?;
        Ok(Delivery { peer, done: rx, drive: Arc::downgrade(self.drive()) })
    }

    /// What QUIC currently measures on the path to `peer`: the smoothed
    /// round-trip time and the congestion window. `cwnd / rtt` estimates the
    /// bytes per second a transfer can expect now. None for unknown peers.
    pub fn path(&self, peer: PeerId) -> Option<PathEstimate> {
        let entry = self.shared.peer(peer).ok()?;
        let stats = entry.link.conn.stats();
        Some(PathEstimate { rtt: stats.path.rtt, cwnd: stats.path.cwnd })
    }

    /// Every event of every peer. Reading only this channel, a caller gets
    /// events from the helper thread (one hand-off each); see
    /// [`Node::next_event`] for the cheaper way.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// The next event of [`Node::events`], waiting at most `timeout`, with
    /// this thread driving the node meanwhile: a frame that arrives is read
    /// and decoded here, without waking another thread, and frames queued
    /// before go out from here. [`Interrupt::interrupt`] ends the wait
    /// early (read as `Timeout`). Once a thread called this, the node's
    /// helper thread drives only while no thread did for about 2 ms, so a
    /// caller that computes between waits should call [`Node::flush`]
    /// after sending and before computing.
    pub fn next_event(&self, timeout: Duration) -> std::result::Result<Event, RecvTimeoutError> {
        self.drive().wait_event(&self.events, timeout)
    }

    /// Sends the frames queued since the node last ran, from this thread,
    /// unless another thread drives the node (then it sends them). Cheap
    /// when nothing was queued.
    pub fn flush(&self) {
        self.drive().flush();
    }

    /// A handle other threads use to end a [`Node::next_event`] early.
    pub fn interrupter(&self) -> Interrupt {
        Interrupt(Arc::downgrade(self.drive()))
    }

    /// Closes the connection to `peer`; both sides get `Disconnected` with
    /// `reason`. Unknown peers are ignored.
    pub fn disconnect(&self, peer: PeerId, reason: &str) {
        if let Ok(entry) = self.shared.peer(peer) {
            entry.link.close(code::NORMAL, reason);
        }
    }

    /// Closes every connection and stops the runtime; also done on drop.
    /// Frames still queued are not flushed: use `send_wait` for the last.
    pub fn shutdown(self) {}

    /// Test hook: stops dead without telling peers, like a killed process.
    #[doc(hidden)]
    pub fn vanish(mut self) {
        if let Some(runtime) = self.driver.take().and_then(Driver::stop) {
            runtime.shutdown_background();
        }
    }
}

/// Best effort: the kernel may cap the sizes; say so once, and go on.
fn size_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    // Linux reports double the size it granted (bookkeeping overhead).
    let granted = sock.recv_buffer_size().unwrap_or(0);
    if granted < bytes {
        tracing::info!(
            "UDP receive buffer is {granted} bytes, not {bytes}: raise net.core.rmem_max \
             to avoid packet loss in bursts"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(driver) = self.driver.take() else {
            return;
        };
        let reason = format!("node {} shut down", self.shared.name);
        for link in self.shared.links() {
            link.close(code::NORMAL, &reason);
        }
        self.endpoint.close(code::NORMAL, reason.as_bytes());
        let endpoint = self.endpoint.clone();
        driver.drive.block_on(async {
            // Bounded: lets the close packets go out, never hangs shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
        if let Some(runtime) = driver.stop() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
