//! Helpers shared by the transport's integration tests: fresh clusters,
//! nodes on 127.0.0.1:0, and event waits that always have a deadline.
#![allow(dead_code)]

use anyhow::{bail, Result};
use baton_transport::{ClusterCa, Event, NetConfig, Node, PeerId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn local() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

/// Short timeouts so that failures and vanished peers show up fast.
pub fn fast_config() -> NetConfig {
    NetConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        ..NetConfig::default()
    }
}

pub fn node(ca: &ClusterCa, name: &str) -> Result<Node> {
    node_with(ca, name, fast_config())
}

pub fn node_with(ca: &ClusterCa, name: &str, config: NetConfig) -> Result<Node> {
    Ok(Node::start(local(), ca.issue(name)?, config)?)
}

/// The next event matching `pick`, skipping others, within `within`.
pub fn wait_for<T>(node: &Node, within: Duration, mut pick: impl FnMut(Event) -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.events().recv_timeout(left) {
            Ok(event) => {
                if let Some(found) = pick(event) {
                    return Ok(found);
                }
            }
            Err(_) => bail!("{}: no matching event within {within:?}", node.name()),
        }
    }
}

pub fn wait_connected(node: &Node) -> Result<(PeerId, String)> {
    wait_for(node, WAIT, |e| match e {
        Event::Connected { peer, name, .. } => Some((peer, name)),
        _ => None,
    })
}

pub fn wait_disconnected(node: &Node, who: PeerId, within: Duration) -> Result<String> {
    wait_for(node, within, |e| match e {
        Event::Disconnected { peer, reason } if peer == who => Some(reason),
        _ => None,
    })
}

/// Fails if `node` reports a `Connected` within `within`.
pub fn assert_no_connected(node: &Node, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while let Ok(event) = node.events().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Event::Connected { name, .. } = event {
            bail!("{} accepted {name}", node.name());
        }
    }
    Ok(())
}
