//! The node's table of live connections, shared by the facade and the tokio
//! tasks. The lock is held only for map operations, never across an await.
//!
//! Invariants:
//! - a connection enters the table only after its hello succeeded, and
//!   `Event::Connected` is sent under the lock as it enters, so no message or
//!   disconnect of that peer can be seen before its `Connected`;
//! - at most one connection per peer name: when a second one arrives,
//!   the same rule on both nodes picks the survivor (see [`Shared::register`]),
//!   or, with `NetConfig::refuse_duplicate_names`, a second incoming one is
//!   refused while the first is live;
//! - exactly one `Event::Disconnected` per `Connected`: sent by the
//!   connection's watcher task when quinn reports it closed, or, for a
//!   connection replaced by a newer one, just before the newer `Connected`.

use crate::frame::Outbound;
use crate::node::{Event, Lane, NetConfig, PeerId};
use crate::{Error, Result};
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Application close codes.
pub(crate) mod code {
    use quinn::VarInt;
    /// Orderly: `disconnect()` or shutdown.
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The peer broke framing or the hello protocol.
    pub const PROTOCOL: VarInt = VarInt::from_u32(1);
    /// The hello was refused (version, name).
    pub const REJECTED: VarInt = VarInt::from_u32(2);
    /// Another connection between the same two nodes survives.
    pub const DUPLICATE: VarInt = VarInt::from_u32(3);
}

/// The refusal of a second connection claiming a connected node's name.
fn duplicate_name(name: &str) -> String {
    format!(
        "duplicate identity: `{name}` is already connected here, and a second connection \
         claiming to be `{name}` is refused (the member keeps its connection); \
         give this process another identity, or stop the other one"
    )
}

/// Where a send's outcome goes when the caller waits for it.
pub(crate) type Done = Option<oneshot::Sender<Result<()>>>;

/// One frame queued for the control stream.
pub(crate) struct Outgoing {
    pub bytes: Outbound,
    pub done: Done,
}

/// What the per-connection tasks share. Holds no sender of the control
/// queue, so the writer task ends once the table drops its entry.
#[derive(Clone)]
pub(crate) struct Link {
    pub id: PeerId,
    pub conn: quinn::Connection,
    /// Why *we* closed the connection, if we did; the first reason wins.
    closing: Arc<Mutex<Option<String>>>,
    /// Set once `Disconnected` has been sent for this connection.
    reported: Arc<AtomicBool>,
}

impl Link {
    pub fn new(id: PeerId, conn: quinn::Connection) -> Self {
        Link { id, conn, closing: Arc::default(), reported: Arc::default() }
    }

    /// Closes the connection; `reason` is what both sides' events will say.
    pub fn close(&self, code: quinn::VarInt, reason: &str) {
        self.closing.lock().expect("close reason lock").get_or_insert_with(|| reason.to_string());
        self.conn.close(code, reason.as_bytes());
    }

    /// The peer broke the protocol: close and say what it did.
    pub fn violation(&self, error: &Error) {
        tracing::warn!(peer = %self.id, "closing: {error}");
        self.close(code::PROTOCOL, &error.to_string());
    }

    pub fn local_reason(&self) -> Option<String> {
        self.closing.lock().expect("close reason lock").clone()
    }
}

/// A connection in the table.
#[derive(Clone)]
pub(crate) struct PeerEntry {
    pub link: Link,
    pub name: String,
    pub addr: SocketAddr,
    pub control: mpsc::UnboundedSender<Outgoing>,
    /// Whether this node opened the connection.
    pub we_dialed: bool,
}

/// How tasks and the facade tell the node's [`crate::drive::Drive`] what
/// happened: an event was emitted (`ready`), a frame was queued (`queued`).
pub(crate) struct Signals {
    pub ready: Arc<tokio::sync::Notify>,
    pub queued: Arc<AtomicBool>,
}

/// State shared by the facade and every task of a node.
pub(crate) struct Shared {
    pub name: String,
    pub config: NetConfig,
    pub client_config: quinn::ClientConfig,
    pub runtime: tokio::runtime::Handle,
    events: Sender<Event>,
    signals: Signals,
    peers: Mutex<HashMap<PeerId, PeerEntry>>,
    next_id: AtomicU64,
    /// Woken whenever a connection enters the table.
    registered: tokio::sync::Notify,
}

/// The outcome of [`Shared::register`].
pub(crate) enum Registered {
    /// The new connection is live under this id.
    Kept(PeerId),
    /// An existing connection to the same node survives; the new one was closed.
    Duplicate(PeerId),
}

impl Shared {
    pub fn new(
        name: String,
        config: NetConfig,
        client_config: quinn::ClientConfig,
        runtime: tokio::runtime::Handle,
        events: Sender<Event>,
        signals: Signals,
    ) -> Self {
        Shared {
            name,
            config,
            client_config,
            runtime,
            events,
            signals,
            peers: Mutex::default(),
            next_id: AtomicU64::new(1),
            registered: tokio::sync::Notify::new(),
        }
    }

    pub fn next_id(&self) -> PeerId {
        PeerId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn emit(&self, event: Event) {
        // The receiver lives in the Node; it is gone only while dropping.
        let _ = self.events.send(event);
        self.signals.ready.notify_one();
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerEntry>> {
        self.peers.lock().expect("peer table lock")
    }

    pub fn peer(&self, id: PeerId) -> Result<PeerEntry> {
        self.table().get(&id).cloned().ok_or(Error::UnknownPeer(id.0))
    }

    /// A live connection to `addr`, whichever side opened it (a node's
    /// outgoing connections leave from its listening socket).
    pub fn peer_at(&self, addr: SocketAddr) -> Option<(PeerId, String)> {
        self.table().values().find(|p| p.addr == addr).map(|p| (p.link.id, p.name.clone()))
    }

    /// Waits until a connection to `addr` is in the table (the caller
    /// bounds the wait).
    pub async fn wait_for_peer_at(&self, addr: SocketAddr) -> Result<(PeerId, String)> {
        loop {
            let notified = self.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.peer_at(addr) {
                return Ok(found);
            }
            notified.await;
        }
    }

    /// Drops a closed connection from the table and sends its
    /// `Disconnected`, unless that was done already.
    pub fn report_closed(&self, link: &Link, reason: String) {
        let mut table = self.table();
        table.remove(&link.id);
        if !link.reported.swap(true, Ordering::SeqCst) {
            tracing::info!(peer = %link.id, "disconnected: {reason}");
            self.emit(Event::Disconnected { peer: link.id, reason });
        }
    }

    /// Every live connection (for shutdown).
    pub fn links(&self) -> Vec<Link> {
        self.table().values().map(|p| p.link.clone()).collect()
    }

    /// Enters a connection whose hello succeeded and emits `Connected`.
    ///
    /// If a connection to a node of the same name exists: one opened in the
    /// same direction is stale (the peer restarted or we dialed twice), and
    /// the new one replaces it; one opened in the other direction means both
    /// nodes dialed each other, and the connection opened by the node with
    /// the smaller name survives. Both nodes apply the same rule, so they
    /// agree on the survivor without talking.
    pub fn register(&self, entry: PeerEntry) -> Registered {
        let mut table = self.table();
        let old = table.values().find(|p| p.name == entry.name).cloned();
        if let Some(old) = &old {
            // Two hellos of one name raced past `refuses_duplicate`.
            let refused = self.refuses(old, &entry);
            if refused || !self.new_wins(old, &entry) {
                drop(table);
                let reason = if refused { duplicate_name(&entry.name) } else { self.duplicate_reason(&entry) };
                entry.link.close(code::DUPLICATE, &reason);
                return Registered::Duplicate(old.link.id);
            }
            table.remove(&old.link.id);
            let reason = format!("replaced by a newer connection to {}", entry.name);
            old.link.close(code::DUPLICATE, &reason);
            if !old.link.reported.swap(true, Ordering::SeqCst) {
                self.emit(Event::Disconnected { peer: old.link.id, reason });
            }
        }
        let id = entry.link.id;
        self.emit(Event::Connected { peer: id, name: entry.name.clone(), addr: entry.addr });
        table.insert(id, entry);
        self.registered.notify_waiters();
        Registered::Kept(id)
    }

    /// Why a hello from `name` is refused: with `refuse_duplicate_names`,
    /// while an incoming connection from that name is live.
    pub fn refuses_duplicate(&self, name: &str) -> Option<String> {
        let table = self.table();
        let live = table.values().any(|p| p.name == name && !p.we_dialed);
        (self.config.refuse_duplicate_names && live).then(|| duplicate_name(name))
    }

    fn refuses(&self, old: &PeerEntry, new: &PeerEntry) -> bool {
        self.config.refuse_duplicate_names && !old.we_dialed && !new.we_dialed
    }

    fn opener<'a>(&'a self, entry: &'a PeerEntry) -> &'a str {
        if entry.we_dialed {
            &self.name
        } else {
            &entry.name
        }
    }

    fn new_wins(&self, old: &PeerEntry, new: &PeerEntry) -> bool {
        if old.we_dialed == new.we_dialed {
            return true;
        }
        let smaller = self.name.as_str().min(new.name.as_str());
        self.opener(new) == smaller
    }

    fn duplicate_reason(&self, entry: &PeerEntry) -> String {
        let smaller = self.name.as_str().min(entry.name.as_str());
        format!("duplicate connection between {} and {}: keeping the one {smaller} opened", self.name, entry.name)
    }

    /// Queues a frame; bulk frames get their own task and stream.
    pub fn send(&self, id: PeerId, lane: Lane, bytes: Outbound, done: Done) -> Result<()> {
        let max = self.config.max_frame_bytes;
        if bytes.len() > max {
            return Err(Error::FrameTooLarge { size: bytes.len() as u64, max: max as u64 });
        }
        let entry = self.peer(id)?;
        self.signals.queued.store(true, Ordering::Release);
        match lane {
            Lane::Control => entry
                .control
                .send(Outgoing { bytes, done })
                .map_err(|_| Error::NotDelivered(format!("the connection to {id} is closing"))),
            Lane::Bulk => {
                let conn = entry.link.conn.clone();
                self.runtime.spawn(crate::peer::send_bulk(conn, id, bytes, done));
                Ok(())
            }
        }
    }
}
