//! Admin requests to a running job (`baton preempt`): the coordinator's
//! side (one frame in, one `Reply` out; the engine decides), the client's
//! side, and the admin directory a local job writes so that a user can
//! reach it.
//!
//! An admin is a peer whose certificate, issued by the cluster CA, names
//! [`ADMIN_NAME`]. Nothing an admin sends or fails to send can fail the job:
//! a bad request is answered with an error, a vanished admin is forgotten.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{bail, ensure, Context, Result};
use baton_engine::pipeline::coordinator::{CoordEffect, Coordinator};
use baton_engine::pipeline::protocol::{self, Message};
use baton_transport::frame::Frame;
use baton_transport::{ClusterCa, Event, Identity, Node, PeerId};
use crossbeam_channel::RecvTimeoutError;

use super::{net_config, send, ADMIN_NAME, COORDINATOR_NAME};

/// The file of an admin directory that holds the coordinator's address
/// (`HOST:PORT` and a newline). Written last: once it exists, the admin
/// identity beside it is complete.
pub const COORDINATOR_ADDR_FILE: &str = "coordinator.addr";

/// The files an admin directory holds: the admin identity, the CA
/// certificate and the coordinator's address (no CA key).
const ADMIN_FILES: [&str; 4] = ["admin.pem", "admin.key.pem", "ca.pem", COORDINATOR_ADDR_FILE];

/// Answers one frame from an admin peer. A `Preempt` request goes to the
/// coordinator state machine, which accepts it (its effects are returned
/// for the I/O loop to carry out) or refuses it; either way the admin gets
/// a `Reply`. Anything else is refused. Never fails: the job goes on.
pub(super) fn serve(node: &Node, coordinator: &Coordinator, peer: PeerId, frame: &Frame) -> Vec<CoordEffect> {
    let (effects, error) = match protocol::decode(frame) {
        Ok(Message::Preempt { worker, grace_ms }) => {
            let grace = Duration::from_millis(grace_ms);
            match coordinator.preempt(worker, grace) {
                Ok(effects) => {
                    eprintln!("admin: preempting worker {worker} with grace {grace:?}");
                    (effects, None)
                }
                Err(e) => (Vec::new(), Some(e.to_string())),
            }
        }
        Ok(other) => (Vec::new(), Some(format!("an admin may send only a preempt request, not {}", other.kind()))),
        Err(e) => (Vec::new(), Some(format!("unreadable request: {e}"))),
    };
    if let Some(reason) = &error {
        eprintln!("admin: request refused: {reason}");
    }
    if let Err(e) = send(node, peer, &Message::Reply { error }) {
        tracing::warn!(%peer, "could not answer the admin (it may have left): {e:#}");
    }
    effects
}

/// Asks the coordinator at `coordinator` to preempt `worker` with `grace`,
/// as `identity` (which must be the cluster's `admin`), and waits up to
/// `timeout` for the answer. Ok once the coordinator accepted (the worker
/// is then told; the migration follows); an error with the coordinator's
/// reason if it refused.
pub fn request_preempt(
    identity: Identity,
    coordinator: SocketAddr,
    (worker, grace): (u32, Duration),
    timeout: Duration,
) -> Result<()> {
    let bind = match coordinator {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    };
    let config = baton_transport::NetConfig { connect_timeout: timeout, ..net_config() };
    let node = Node::start(bind.parse().what("the admin's bind address")?, identity, config)
        .what("starting the admin's endpoint")?;
    let (peer, name) =
        node.connect(coordinator).what_with(|| format!("connecting to the coordinator at {coordinator}"))?;
    ensure!(name == COORDINATOR_NAME, "{coordinator} is `{name}`, not the coordinator of a baton job");
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    send(&node, peer, &Message::Preempt { worker, grace_ms }).what("sending the preempt request")?;
    let reply = wait_for_reply(&node, peer, timeout)
        .what_with(|| format!("waiting for the coordinator at {coordinator} to answer"))?;
    match reply {
        None => Ok(()),
        Some(reason) => bail!("the coordinator refused: {reason}"),
    }
}

/// The `error` of the coordinator's `Reply` (None: accepted).
fn wait_for_reply(node: &Node, coordinator: PeerId, timeout: Duration) -> Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.events().recv_timeout(left) {
            Ok(Event::Message { peer, bytes, .. }) if peer == coordinator => match protocol::decode(&bytes)? {
                Message::Reply { error } => return Ok(error),
                other => bail!("it sent {} instead of a reply", other.kind()),
            },
            Ok(Event::Disconnected { peer, reason }) if peer == coordinator => {
                bail!("it closed the connection ({reason}): the job ended, or this is not the cluster's `{ADMIN_NAME}`")
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no answer within {timeout:?} (raise --timeout)"),
            Err(RecvTimeoutError::Disconnected) => bail!("the admin's endpoint stopped"),
        }
    }
}

/// Writes the admin identity of `ca`, its certificate and the coordinator's
/// address into `dir` (created if missing), replacing those files of an
/// earlier job. Refuses a directory holding a CA key: that is a cluster
/// directory, whose `ca.pem` must not be replaced.
pub fn write_admin_dir(ca: &ClusterCa, coordinator: SocketAddr, dir: &Path) -> Result<()> {
    ensure!(
        !dir.join("ca.key.pem").exists(),
        "--admin-dir {}: holds a CA key (a `baton cluster init` directory); use a directory of its own",
        dir.display()
    );
    for file in ADMIN_FILES {
        match std::fs::remove_file(dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).what_with(|| format!("--admin-dir: replacing {}", dir.join(file).display()));
            }
            _ => {}
        }
    }
    let identity = ca.issue(ADMIN_NAME).what("issuing the admin certificate")?;
    identity.save(dir).what_with(|| format!("--admin-dir {}", dir.display()))?;
    let (path, partial) = (dir.join(COORDINATOR_ADDR_FILE), dir.join(format!("{COORDINATOR_ADDR_FILE}.part")));
    std::fs::write(&partial, format!("{coordinator}\n")).what_with(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).what_with(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads what [`write_admin_dir`] wrote: the admin identity and the
/// coordinator's address.
pub fn read_admin_dir(dir: &Path) -> Result<(Identity, SocketAddr)> {
    let path = dir.join(COORDINATOR_ADDR_FILE);
    let text = std::fs::read_to_string(&path)
        .what_with(|| format!("reading {} (is the job started with --admin-dir {}?)", path.display(), dir.display()))?;
    let coordinator = resolve(text.trim()).what_with(|| path.display().to_string())?;
    let identity =
        Identity::load(dir, ADMIN_NAME).what_with(|| format!("{}: the `{ADMIN_NAME}` certificate", dir.display()))?;
    Ok((identity, coordinator))
}

/// `HOST:PORT` (a name or an IP address) as a socket address.
pub fn resolve(text: &str) -> Result<SocketAddr> {
    let mut found = text.to_socket_addrs().what_with(|| format!("`{text}` is not a reachable HOST:PORT"))?;
    found.next().what_with(|| format!("`{text}` resolves to no address"))
}
