//! Mutual TLS: the happy path on both lanes, and nodes of another cluster
//! refused in both directions.

mod common;

use anyhow::Result;
use baton_transport::{ClusterCa, Error, Event, Identity, Lane, Node};
use bytes::Bytes;
use common::*;
use std::time::Duration;

/// FNV-1a over the whole buffer: cheap, and order-sensitive.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

#[test]
fn both_lanes_deliver_in_order_and_intact() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, name) = a.connect(b.local_addr())?;
    assert_eq!(name, "worker-1");
    assert_eq!(wait_connected(&a)?, (peer_b, "worker-1".to_string()));
    let (peer_a, name) = wait_connected(&b)?;
    assert_eq!(name, "worker-0");

    let big = pattern(64 << 20);
    let big_sum = checksum(&big);
    a.send(peer_b, Lane::Bulk, Bytes::from(big))?;
    for i in 0u32..200 {
        a.send(peer_b, Lane::Control, Bytes::from(i.to_le_bytes().to_vec()))?;
    }
    b.send_wait(peer_a, Lane::Control, Bytes::from_static(b"pong"))?;

    let mut next = 0u32;
    let mut got_big = false;
    while next < 200 || !got_big {
        let (lane, bytes) = wait_for(&b, WAIT, |e| match e {
            Event::Message { peer, lane, bytes } if peer == peer_a => Some((lane, bytes)),
            _ => None,
        })?;
        assert_eq!(bytes.as_ptr() as usize % 16, 0, "frame not 16-aligned");
        match lane {
            Lane::Control => {
                assert_eq!(bytes.as_slice(), next.to_le_bytes(), "control out of order");
                next += 1;
            }
            Lane::Bulk => {
                assert_eq!(bytes.len(), 64 << 20);
                assert_eq!(checksum(&bytes), big_sum, "bulk frame corrupted");
                got_big = true;
            }
        }
    }
    let pong = wait_for(&a, WAIT, |e| match e {
        Event::Message { bytes, lane: Lane::Control, .. } => Some(bytes),
        _ => None,
    })?;
    assert_eq!(pong.as_slice(), b"pong");
    Ok(())
}

#[test]
fn send_wait_bulk_returns_after_delivery() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    a.send_wait(peer_b, Lane::Bulk, Bytes::from(vec![7u8; 1 << 20]))?;
    a.send_wait(peer_b, Lane::Bulk, Bytes::new())?;
    let mut sizes = Vec::new();
    while sizes.len() < 2 {
        sizes.push(wait_for(&b, WAIT, |e| match e {
            Event::Message { bytes, .. } => Some(bytes.len()),
            _ => None,
        })?);
    }
    sizes.sort();
    assert_eq!(sizes, [0, 1 << 20]);
    Ok(())
}

/// A node that trusts our CA but holds a certificate from another one.
fn intruder(ours: &ClusterCa) -> Result<Node> {
    let dir = tempfile::tempdir()?;
    ClusterCa::generate("theirs")?.issue("worker-0")?.save(dir.path())?;
    let ours_dir = tempfile::tempdir()?;
    ours.save(ours_dir.path())?;
    std::fs::copy(ours_dir.path().join("ca.pem"), dir.path().join("ca.pem"))?;
    let identity = Identity::load(dir.path(), "worker-0")?;
    Ok(Node::start(local(), identity, fast_config())?)
}

#[test]
fn client_from_another_ca_is_refused() -> Result<()> {
    let ours = ClusterCa::generate("ours")?;
    let server = node(&ours, "coordinator")?;
    let intruder = intruder(&ours)?;
    let err = intruder.connect(server.local_addr()).unwrap_err();
    assert!(matches!(err, Error::CertificateRefused { .. }), "{err}");
    assert!(err.to_string().contains("not signed by this cluster's CA"), "{err}");
    assert_no_connected(&server, Duration::from_millis(500))?;
    assert_no_connected(&intruder, Duration::ZERO)?;
    Ok(())
}

#[test]
fn nodes_of_two_clusters_refuse_each_other() -> Result<()> {
    let ours = ClusterCa::generate("ours")?;
    let theirs = ClusterCa::generate("theirs")?;
    let server = node(&ours, "coordinator")?;
    let stranger = node(&theirs, "worker-0")?;
    assert!(stranger.connect(server.local_addr()).is_err());
    assert_no_connected(&server, Duration::from_millis(300))
}

#[test]
fn server_from_another_ca_is_refused() -> Result<()> {
    let ours = ClusterCa::generate("ours")?;
    let theirs = ClusterCa::generate("theirs")?;
    let impostor = node(&theirs, "coordinator")?;
    let client = node(&ours, "worker-0")?;
    let err = client.connect(impostor.local_addr()).unwrap_err();
    assert!(matches!(err, Error::UntrustedPeer { .. }), "{err}");
    assert!(err.to_string().contains("not signed by the cluster CA"), "{err}");
    assert_no_connected(&impostor, Duration::from_millis(500))?;
    assert_no_connected(&client, Duration::ZERO)?;
    Ok(())
}

#[test]
fn nothing_listening_times_out_cleanly() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let config = baton_transport::NetConfig { connect_timeout: Duration::from_millis(300), ..fast_config() };
    let client = node_with(&ca, "worker-0", config)?;
    let silent = std::net::UdpSocket::bind(local())?;
    let err = client.connect(silent.local_addr()?).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    Ok(())
}
