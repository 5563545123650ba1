//! Connections ending: shutdown, a peer vanishing, disconnect(), and the
//! one-connection-per-pair rule.

mod common;

use anyhow::Result;
use baton_transport::{ClusterCa, Error, Event, Lane, NetConfig, PeerId};
use bytes::Bytes;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn peer_shutdown_is_reported_at_once() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    b.shutdown();
    let reason = wait_disconnected(&a, peer_b, Duration::from_secs(2))?;
    assert!(reason.contains("worker-1 shut down"), "{reason}");
    let err = a.send(peer_b, Lane::Control, Bytes::new()).unwrap_err();
    assert!(matches!(err, Error::UnknownPeer(_)), "{err}");
    Ok(())
}

#[test]
fn vanished_peer_times_out_within_seconds() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let start = Instant::now();
    b.vanish();
    let reason = wait_disconnected(&a, peer_b, Duration::from_secs(5))?;
    assert!(reason.contains("idle timeout"), "{reason}");
    assert!(start.elapsed() < Duration::from_secs(4));
    Ok(())
}

#[test]
fn keep_alive_holds_an_idle_connection() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    wait_connected(&a)?;
    // Twice the idle timeout with no traffic but keep-alives.
    let quiet = wait_for(&a, Duration::from_secs(3), |e| matches!(e, Event::Disconnected { .. }).then_some(()));
    assert!(quiet.is_err(), "an idle connection was dropped");
    a.send(peer_b, Lane::Control, Bytes::from_static(b"still here"))?;
    Ok(())
}

#[test]
fn disconnect_reports_the_reason_on_both_sides() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let (peer_a, _) = wait_connected(&b)?;
    a.disconnect(peer_b, "repartitioned");
    assert_eq!(wait_disconnected(&a, peer_b, WAIT)?, "repartitioned");
    let remote = wait_disconnected(&b, peer_a, WAIT)?;
    assert!(remote.contains("repartitioned"), "{remote}");
    a.disconnect(PeerId(999), "unknown peers are ignored");
    Ok(())
}

#[test]
fn local_send_errors_are_immediate() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let small = NetConfig { max_frame_bytes: 16, ..fast_config() };
    let a = node_with(&ca, "worker-0", small)?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let err = a.send(peer_b, Lane::Bulk, Bytes::from(vec![0; 17])).unwrap_err();
    assert!(matches!(err, Error::FrameTooLarge { size: 17, max: 16 }), "{err}");
    let err = a.send(PeerId(999), Lane::Control, Bytes::new()).unwrap_err();
    assert!(err.to_string().contains("no open connection"), "{err}");
    Ok(())
}

#[test]
fn connecting_back_reuses_the_connection() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let (peer_a, _) = wait_connected(&b)?;
    assert_eq!(b.connect(a.local_addr())?.0, peer_a);
    assert_eq!(a.connect(b.local_addr())?.0, peer_b);
    assert_no_connected(&b, Duration::from_millis(200))
}

/// Live connections per node after the events settle.
fn live(node: &baton_transport::Node, settle: Duration) -> Vec<PeerId> {
    let mut up = Vec::new();
    while let Ok(event) = node.events().recv_timeout(settle) {
        match event {
            Event::Connected { peer, .. } => up.push(peer),
            Event::Disconnected { peer, .. } => up.retain(|p| *p != peer),
            Event::Message { .. } => {}
        }
    }
    up
}

#[test]
fn simultaneous_dials_settle_on_one_connection() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (from_a, from_b) = std::thread::scope(|s| {
        let ab = s.spawn(|| a.connect(b.local_addr()));
        let ba = s.spawn(|| b.connect(a.local_addr()));
        (ab.join().unwrap(), ba.join().unwrap())
    });
    let (id_b, _) = from_a?;
    let (_, _) = from_b?;
    let settle = Duration::from_millis(500);
    let (live_a, live_b) = (live(&a, settle), live(&b, settle));
    assert_eq!((live_a.len(), live_b.len()), (1, 1), "{live_a:?} {live_b:?}");
    // The id connect() returned on the surviving dialer side works.
    let survivor = live_a[0];
    assert!(survivor == id_b || a.send(id_b, Lane::Control, Bytes::new()).is_err());
    a.send(survivor, Lane::Control, Bytes::from_static(b"hi"))?;
    let got = wait_for(&b, WAIT, |e| match e {
        Event::Message { bytes, .. } => Some(bytes),
        _ => None,
    })?;
    assert_eq!(got.as_slice(), b"hi");
    Ok(())
}

#[test]
fn restarted_peer_replaces_its_stale_connection() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = node(&ca, "coordinator")?;
    let first = node(&ca, "worker-0")?;
    first.connect(server.local_addr())?;
    let (old, _) = wait_connected(&server)?;
    first.vanish();
    let again = node(&ca, "worker-0")?;
    again.connect(server.local_addr())?;
    let reason = wait_disconnected(&server, old, WAIT)?;
    assert!(reason.contains("replaced"), "{reason}");
    let (new, name) = wait_connected(&server)?;
    assert_ne!(new, old);
    assert_eq!(name, "worker-0");
    Ok(())
}

#[test]
fn a_connected_path_has_a_bandwidth_estimate_and_an_unknown_one_none() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    a.send_wait(peer_b, Lane::Bulk, Bytes::from(vec![7u8; 1 << 20]))?;
    let path = a.path(peer_b).expect("a live connection has a path");
    assert!(path.rtt > Duration::ZERO && path.rtt < Duration::from_secs(1), "{path:?}");
    assert!(path.cwnd > 0, "{path:?}");
    let rate = path.bytes_per_second().expect("an rtt was measured");
    assert!(rate > 1e5, "loopback at {rate} bytes/s");
    assert_eq!(a.path(PeerId(u64::MAX)), None);
    Ok(())
}

fn refusing() -> NetConfig {
    NetConfig { refuse_duplicate_names: true, ..fast_config() }
}

#[test]
fn a_second_connection_claiming_a_live_name_is_refused_and_the_first_lives_on() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = node_with(&ca, "coordinator", refusing())?;
    let member = node_with(&ca, "worker-1", refusing())?;
    let (to_server, _) = member.connect(server.local_addr())?;
    let (first, _) = wait_connected(&server)?;
    let impostor = node_with(&ca, "worker-1", refusing())?;
    let err = impostor.connect(server.local_addr()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Rejected { .. }) && text.contains("duplicate identity"), "{text}");
    assert!(text.contains("`worker-1` is already connected"), "{text}");
    // The member's connection is untouched, both ways.
    assert_no_connected(&server, Duration::from_millis(300))?;
    member.send(to_server, Lane::Control, Bytes::from_static(b"still the member"))?;
    let got = wait_for(&server, WAIT, |e| match e {
        Event::Message { peer, bytes, .. } => Some((peer, bytes)),
        Event::Disconnected { peer, reason } => panic!("{peer} dropped: {reason}"),
        _ => None,
    })?;
    assert_eq!((got.0, got.1.as_slice()), (first, &b"still the member"[..]));
    Ok(())
}

#[test]
fn with_refusal_a_restarted_peer_gets_in_once_its_old_connection_timed_out() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = node_with(&ca, "coordinator", refusing())?;
    let first = node_with(&ca, "worker-0", refusing())?;
    first.connect(server.local_addr())?;
    let (old, _) = wait_connected(&server)?;
    first.vanish();
    let again = node_with(&ca, "worker-0", refusing())?;
    let deadline = Instant::now() + WAIT;
    let reason = wait_disconnected(&server, old, WAIT)?;
    assert!(reason.contains("idle timeout"), "{reason}");
    loop {
        match again.connect(server.local_addr()) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.to_string().contains("duplicate identity") => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (new, name) = wait_connected(&server)?;
    assert_ne!(new, old);
    assert_eq!(name, "worker-0");
    Ok(())
}
