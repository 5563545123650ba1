//! Split frames over real QUIC connections: on both lanes, the head and
//! every part arrive intact, each part in a buffer of its own.

mod common;

use anyhow::Result;
use baton_transport::frame::Outbound;
use baton_transport::{ClusterCa, Event, Lane};
use bytes::Bytes;
use common::*;

/// `n` words of a pattern that differs per `seed` (so a misplaced part shows).
fn words(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ seed).collect()
}

fn bytes_of(words: &[u32]) -> Bytes {
    Bytes::from(words.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>())
}

#[test]
fn split_frames_arrive_as_their_head_and_parts_on_both_lanes() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let a = node(&ca, "worker-0")?;
    let b = node(&ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let (peer_a, _) = wait_connected(&b)?;
    // A 16 MiB part (huge-page advice), a ragged one, an empty one.
    let parts = [words(4 << 20, 1), words(12_345, 2), Vec::new(), words(1, 3)];
    let head = b"the head: an archive, 16-byte aligned on arrival".to_vec();
    for lane in [Lane::Bulk, Lane::Control] {
        let frame = Outbound::split(vec![Bytes::from(head.clone())], parts.iter().map(|p| bytes_of(p)).collect())?;
        a.send_wait(peer_b, lane, frame)?;
        let frame = wait_for(&b, WAIT, |e| match e {
            Event::Message { peer, bytes, lane: l } if peer == peer_a && l == lane => Some(bytes),
            _ => None,
        })?;
        assert!(frame.is_split(), "{lane:?}");
        assert_eq!(frame.as_slice(), &head[..], "{lane:?}");
        assert_eq!(frame.as_ptr() as usize % 16, 0);
        assert_eq!(frame.parts(), &parts[..], "{lane:?}");
        assert!(frame.parts().iter().all(|p| p.capacity() == p.len()), "a part grew (moved) while being filled");
    }
    // A plain frame after them is still plain.
    a.send_wait(peer_b, Lane::Bulk, Bytes::from_static(b"plain"))?;
    let frame = wait_for(&b, WAIT, |e| match e {
        Event::Message { bytes, .. } => Some(bytes),
        _ => None,
    })?;
    assert!(!frame.is_split() && frame.as_slice() == b"plain");
    Ok(())
}
