//! Control frames queued in the same instant go to quinn in one write (the
//! control writer's batches): they still arrive whole, in order, each
//! tracked send learns its outcome, and a connection closed in the middle
//! of a batch leaves the receiver an in-order prefix.

mod common;

use anyhow::{ensure, Result};
use baton_transport::{ClusterCa, Event, Lane, Node, PeerId};
use bytes::Bytes;
use common::*;

/// Frame `i`: its index, then `i % 7` kilobytes of a pattern of `i` (sizes
/// 4 B to 6 KiB, so batches mix frames smaller and larger than a packet).
fn frame(i: u32) -> Bytes {
    let mut bytes = i.to_le_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(i as u8, (i as usize % 7) * 1024));
    Bytes::from(bytes)
}

fn connected_pair(ca: &ClusterCa) -> Result<(Node, Node, PeerId, PeerId)> {
    let a = node(ca, "worker-0")?;
    let b = node(ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let (peer_a, _) = wait_connected(&b)?;
    Ok((a, b, peer_b, peer_a))
}

/// The next control frame from `from`, or None once `from` disconnected.
fn next_frame(node: &Node, from: PeerId) -> Result<Option<Vec<u8>>> {
    wait_for(node, WAIT, |e| match e {
        Event::Message { peer, lane: Lane::Control, bytes } if peer == from => Some(Some(bytes.to_vec())),
        Event::Disconnected { peer, .. } if peer == from => Some(None),
        _ => None,
    })
}

#[test]
fn frames_queued_together_arrive_whole_and_in_order_and_every_tracked_send_completes() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let (a, b, peer_b, peer_a) = connected_pair(&ca)?;
    // 300 frames queued without waiting: several batches of up to 64.
    let mut tracked = Vec::new();
    for i in 0u32..300 {
        if i % 10 == 0 {
            tracked.push(a.send_tracked(peer_b, Lane::Control, frame(i))?);
        } else {
            a.send(peer_b, Lane::Control, frame(i))?;
        }
    }
    for delivery in tracked {
        delivery.wait()?;
    }
    for i in 0u32..300 {
        let got = next_frame(&b, peer_a)?;
        ensure!(got.as_deref() == Some(&frame(i)[..]), "frame {i}: got {:?} bytes", got.map(|g| g.len()));
    }
    Ok(())
}

#[test]
fn a_connection_closed_mid_batch_leaves_an_in_order_prefix() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let (a, b, peer_b, peer_a) = connected_pair(&ca)?;
    // Half the frames, and the connection is seen flowing; then the rest,
    // closed at once, most of them still queued.
    for i in 0u32..250 {
        a.send(peer_b, Lane::Control, frame(i))?;
    }
    ensure!(next_frame(&b, peer_a)?.as_deref() == Some(&frame(0)[..]), "the first frame is not frame 0");
    for i in 250u32..500 {
        a.send(peer_b, Lane::Control, frame(i))?;
    }
    a.disconnect(peer_b, "closing in the middle of the queue");
    let mut next = 1u32;
    while let Some(got) = next_frame(&b, peer_a)? {
        ensure!(got == frame(next)[..], "after {next} frames in order, a frame of {} bytes out of order", got.len());
        next += 1;
        ensure!(next <= 500, "more frames than were sent");
    }
    // Once the sender saw the close, its queue is gone with the connection.
    wait_disconnected(&a, peer_b, WAIT)?;
    ensure!(a.send(peer_b, Lane::Control, frame(0)).is_err(), "sending on a closed connection succeeded");
    Ok(())
}
