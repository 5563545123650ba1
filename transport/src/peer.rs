//! The tokio side of a connection: handshake and hello, then four tasks per
//! live connection (control writer, control reader, bulk acceptor, watcher).
//!
//! No task blocks: events go out on an unbounded crossbeam channel (a
//! non-blocking send), and the facade waits on oneshot channels.

use crate::frame::{self, FrameDecoder, Outbound, HEADER_LEN};
use crate::hello::{self, Hello, Reply, MAX_HELLO_BYTES, PROTOCOL_VERSION};
use crate::node::{Event, Lane, PeerId};
use crate::registry::{code, Done, Link, Outgoing, PeerEntry, Registered, Shared};
use crate::{pki, tls, Error, Result};
use quinn::{ConnectionError, RecvStream, SendStream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a refusing server waits for its reject reply to be delivered
/// before it closes the connection anyway.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Accepts connections until the endpoint closes; each handshake runs in
/// its own task, bounded by `connect_timeout`.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let limit = shared.config.connect_timeout;
            match tokio::time::timeout(limit, accept_one(&shared, incoming)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%addr, "refused a connection: {e}"),
                Err(_) => tracing::warn!(%addr, "refused a connection: no hello within {limit:?}"),
            }
        });
    }
}

/// Server side of one connection: TLS (client certificate required), then
/// the hello, then registration.
async fn accept_one(shared: &Arc<Shared>, incoming: quinn::Incoming) -> Result<()> {
    let addr = incoming.remote_address();
    let conn = incoming.await.map_err(|e| conn_error(addr, &e))?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| conn_error(addr, &e))?;
    let hello = read_hello_frame(&mut recv, addr).await.and_then(|bytes| hello::decode_hello(&bytes));
    let verdict = match hello {
        Ok(hello) => check_hello(shared, &conn, hello),
        Err(e) => Err(e.to_string()),
    };
    let name = match verdict {
        Ok(name) => name,
        Err(reason) => {
            reject(&conn, send, &reason).await;
            return Err(Error::Rejected { addr, reason });
        }
    };
    let reply = Reply::Accept { version: PROTOCOL_VERSION, name: shared.name.clone() };
    write_frame(&mut send, hello::encode_reply(&reply).into())
        .await
        .map_err(|e| Error::Connect { addr, reason: e.to_string() })?;
    start_peer(shared, conn, send, recv, name, addr, false);
    Ok(())
}

/// The peer's name if its hello is acceptable, else why not.
fn check_hello(shared: &Shared, conn: &quinn::Connection, hello: Hello) -> std::result::Result<String, String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version mismatch: {} speaks baton protocol {PROTOCOL_VERSION}, \
             {} speaks protocol {}; run the same baton release on every node",
            shared.name, hello.name, hello.version
        ));
    }
    if hello.name == shared.name {
        return Err(format!("{} cannot connect to itself", hello.name));
    }
    pki::validate_name(&hello.name).map_err(|e| e.to_string())?;
    tls::verify_peer_name(conn, &hello.name).map_err(|e| e.to_string())?;
    if let Some(reason) = shared.refuses_duplicate(&hello.name) {
        return Err(reason);
    }
    Ok(hello.name)
}

/// Sends the reject reply, waits briefly for it to arrive, and closes with
/// the same reason (so the client learns it from either).
async fn reject(conn: &quinn::Connection, mut send: SendStream, reason: &str) {
    let reply = Reply::Reject { version: PROTOCOL_VERSION, reason: reason.to_string() };
    if write_frame(&mut send, hello::encode_reply(&reply).into()).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(REJECT_LINGER, send.stopped()).await;
    }
    conn.close(code::REJECTED, reason.as_bytes());
}

/// Client side: handshake, hello, wait for the reply, register.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<(PeerId, String)> {
    let connecting = endpoint
        .connect_with(shared.client_config.clone(), addr, tls::SERVER_NAME)
        .map_err(|e| Error::Connect { addr, reason: e.to_string() })?;
    let conn = connecting.await.map_err(|e| conn_error(addr, &e))?;
    let (send, recv, name) = match hello_exchange(shared, &conn, addr).await {
        Ok(done) => done,
        // We lost a race with the peer dialing us: use its connection.
        Err(_) if closed_as_duplicate(&conn) => return shared.wait_for_peer_at(addr).await,
        Err(e) => return Err(e),
    };
    let id = start_peer(shared, conn, send, recv, name.clone(), addr, true);
    Ok((id, name))
}

/// Client side of the hello: the control streams and the server's name.
async fn hello_exchange(
    shared: &Shared,
    conn: &quinn::Connection,
    addr: SocketAddr,
) -> Result<(SendStream, RecvStream, String)> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| conn_error(addr, &e))?;
    let hello = Hello { version: PROTOCOL_VERSION, name: shared.name.clone() };
    write_frame(&mut send, hello::encode_hello(&hello).into()).await.map_err(|e| write_error(addr, e))?;
    let reply = hello::decode_reply(&read_hello_frame(&mut recv, addr).await?)?;
    let name = match reply {
        Reply::Accept { version, name } if version == PROTOCOL_VERSION => name,
        Reply::Accept { version, .. } => {
            let reason = format!(
                "protocol version mismatch: we speak baton protocol {PROTOCOL_VERSION}, \
                 the peer speaks protocol {version}"
            );
            conn.close(code::REJECTED, reason.as_bytes());
            return Err(Error::Rejected { addr, reason });
        }
        Reply::Reject { reason, .. } => return Err(Error::Rejected { addr, reason }),
    };
    if let Err(e) = pki::validate_name(&name).and_then(|()| tls::verify_peer_name(conn, &name)) {
        conn.close(code::PROTOCOL, e.to_string().as_bytes());
        return Err(e);
    }
    Ok((send, recv, name))
}

fn closed_as_duplicate(conn: &quinn::Connection) -> bool {
    matches!(conn.close_reason(),
        Some(ConnectionError::ApplicationClosed(c)) if c.error_code == code::DUPLICATE)
}

/// Registers a connection whose hello succeeded and starts its tasks.
fn start_peer(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    name: String,
    addr: SocketAddr,
    we_dialed: bool,
) -> PeerId {
    let (control, queue) = mpsc::unbounded_channel();
    let link = Link::new(shared.next_id(), conn);
    let entry = PeerEntry { link: link.clone(), name, addr, control, we_dialed };
    match shared.register(entry) {
        Registered::Duplicate(existing) => existing,
        Registered::Kept(id) => {
            tokio::spawn(control_writer(send, queue));
            tokio::spawn(control_reader(shared.clone(), recv, link.clone()));
            tokio::spawn(accept_bulk(shared.clone(), link.clone()));
            tokio::spawn(watch(shared.clone(), link));
            id
        }
    }
}

/// At most this many queued control frames go to quinn in one write.
const MAX_BATCH_FRAMES: usize = 64;

/// Writes queued control frames in order; ends when the table drops the
/// connection (queue closed) or a write fails.
///
/// The frames already queued when the writer wakes (at most
/// [`MAX_BATCH_FRAMES`]) go to quinn in one write, so frames sent in the
/// same instant share packets and one wake of the connection driver; each
/// frame's `done` is told the outcome of that write.
async fn control_writer(mut send: SendStream, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::with_capacity(MAX_BATCH_FRAMES);
    while queue.recv_many(&mut batch, MAX_BATCH_FRAMES).await > 0 {
        let mut chunks = Vec::with_capacity(2 * batch.len());
        let mut dones = Vec::with_capacity(batch.len());
        for out in batch.drain(..) {
            chunks.extend(out.bytes.with_header());
            dones.push(out.done);
        }
        let result = send.write_all_chunks(&mut chunks).await.map_err(|e| format!("control stream: {e}"));
        for done in dones.into_iter().flatten() {
            let _ = done.send(result.clone().map_err(Error::NotDelivered));
        }
        if result.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Reads the peer's control frames; a framing error closes the connection.
async fn control_reader(shared: Arc<Shared>, mut recv: RecvStream, link: Link) {
    let mut decoder = FrameDecoder::new(shared.config.max_frame_bytes);
    let mut emit = |bytes| shared.emit(Event::Message { peer: link.id, lane: Lane::Control, bytes });
    loop {
        let result = match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => decoder.feed(&chunk.bytes, &mut emit),
            // The peer finished its side: it is shutting down.
            Ok(None) => {
                if let Err(e) = decoder.finish() {
                    link.violation(&e);
                }
                return;
            }
            // The connection is gone; the watcher reports why.
            Err(_) => return,
        };
        if let Err(e) = result {
            link.violation(&e);
            return;
        }
    }
}

/// Accepts the peer's bulk streams, one task each.
async fn accept_bulk(shared: Arc<Shared>, link: Link) {
    while let Ok(recv) = link.conn.accept_uni().await {
        tokio::spawn(read_bulk(shared.clone(), recv, link.clone()));
    }
}

/// Reads exactly one frame from a bulk stream and emits it once the stream
/// has ended cleanly. A stream the sender reset is dropped quietly.
async fn read_bulk(shared: Arc<Shared>, mut recv: RecvStream, link: Link) {
    match read_one_frame(&mut recv, shared.config.max_frame_bytes).await {
        Ok(Some(bytes)) => shared.emit(Event::Message { peer: link.id, lane: Lane::Bulk, bytes }),
        Ok(None) => tracing::debug!(peer = %link.id, "a bulk stream was reset by its sender"),
        Err(e) => link.violation(&e),
    }
}

async fn read_one_frame(recv: &mut RecvStream, max: usize) -> Result<Option<frame::Frame>> {
    let mut decoder = FrameDecoder::new(max);
    let mut frame = None;
    let mut extra = false;
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => decoder.feed(&chunk.bytes, &mut |f| match frame {
                None => frame = Some(f),
                Some(_) => extra = true,
            })?,
            Ok(None) => break,
            Err(quinn::ReadError::ConnectionLost(_)) | Err(quinn::ReadError::Reset(_)) => return Ok(None),
            Err(e) => return Err(Error::Protocol(format!("bulk stream: {e}"))),
        }
        if extra || (frame.is_some() && !decoder.is_between_frames()) {
            return Err(Error::Protocol("a bulk stream carried more than one frame".into()));
        }
    }
    decoder.finish()?;
    frame.map(Some).ok_or(Error::TruncatedFrame { received: 0, expected: HEADER_LEN as u64 })
}

/// Sends one bulk frame on a fresh stream; with `done`, waits until the
/// peer has acknowledged all of it.
pub(crate) async fn send_bulk(conn: quinn::Connection, peer: PeerId, bytes: Outbound, done: Done) {
    let wait = done.is_some();
    let result = async {
        let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
        stream.set_priority(tls::BULK_PRIORITY).map_err(|e| e.to_string())?;
        write_frame(&mut stream, bytes).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())?;
        if wait {
            match stream.stopped().await {
                Ok(None) => {}
                Ok(Some(code)) => return Err(format!("the peer stopped the stream ({code})")),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
    .await
    .map_err(|e| Error::NotDelivered(format!("bulk frame to {peer}: {e}")));
    match done {
        Some(done) => {
            let _ = done.send(result);
        }
        None => {
            if let Err(e) = result {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Waits for the connection to end, then reports it exactly once.
async fn watch(shared: Arc<Shared>, link: Link) {
    let error = link.conn.closed().await;
    let reason = link.local_reason().unwrap_or_else(|| describe_close(&error, &shared));
    shared.report_closed(&link, reason);
}

fn describe_close(error: &ConnectionError, shared: &Shared) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            format!("the peer closed the connection: {}", String::from_utf8_lossy(&close.reason))
        }
        ConnectionError::TimedOut => format!(
            "no packets from the peer for {:?} (idle timeout): it died or the network failed",
            shared.config.idle_timeout
        ),
        ConnectionError::Reset => "the peer reset the connection (did it restart?)".into(),
        ConnectionError::LocallyClosed => "closed by this node".into(),
        other => format!("the connection failed: {other}"),
    }
}

/// QUIC uses 0x100 + TLS alert for handshake failures.
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Maps a handshake-time connection error to what the user must fix.
fn conn_error(addr: SocketAddr, error: &ConnectionError) -> Error {
    match error {
        ConnectionError::TransportError(e) if is_tls_alert(e.code) => {
            Error::UntrustedPeer { addr, detail: e.to_string() }
        }
        ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => {
            Error::CertificateRefused { addr, detail: c.to_string() }
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == code::REJECTED => {
            Error::Rejected { addr, reason: String::from_utf8_lossy(&c.reason).into_owned() }
        }
        ConnectionError::TimedOut => {
            Error::Connect { addr, reason: "no answer (is a baton node listening there?)".into() }
        }
        other => Error::Connect { addr, reason: other.to_string() },
    }
}

fn write_error(addr: SocketAddr, error: quinn::WriteError) -> Error {
    match error {
        quinn::WriteError::ConnectionLost(e) => conn_error(addr, &e),
        other => Error::Connect { addr, reason: other.to_string() },
    }
}

/// Header and payload chunks: the payload is not copied.
async fn write_frame(send: &mut SendStream, payload: Outbound) -> std::result::Result<(), quinn::WriteError> {
    send.write_all_chunks(&mut payload.with_header()).await
}

/// Reads exactly one small frame (never past it: later frames on the same
/// stream belong to the control reader).
async fn read_hello_frame(recv: &mut RecvStream, addr: SocketAddr) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(recv, &mut header, addr).await?;
    let len = frame::check_header(header, MAX_HELLO_BYTES)?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body, addr).await?;
    Ok(body)
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8], addr: SocketAddr) -> Result<()> {
    let wanted = buf.len();
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => conn_error(addr, &e),
        quinn::ReadExactError::FinishedEarly(n) => {
            Error::Protocol(format!("the peer ended the hello stream after {n} of {wanted} bytes"))
        }
        other => Error::Connect { addr, reason: other.to_string() },
    })
}
