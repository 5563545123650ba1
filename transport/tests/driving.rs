//! The caller drives the node while it waits ([`Node::next_event`]): frames
//! still arrive whole and in order on both lanes, the node's helper thread
//! keeps the connection alive (keep-alives, ACKs) while the caller does
//! not drive, and an interrupt ends a wait.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use baton_transport::{ClusterCa, Event, Lane, Node, PeerId};
use bytes::Bytes;
use common::*;
use crossbeam_channel::RecvTimeoutError;

fn connected_pair(ca: &ClusterCa) -> Result<(Node, Node, PeerId, PeerId)> {
    let a = node(ca, "worker-0")?;
    let b = node(ca, "worker-1")?;
    let (peer_b, _) = a.connect(b.local_addr())?;
    let (peer_a, _) = wait_connected(&b)?;
    // `a`'s own `Connected`, so that its next events are the frames.
    ensure!(wait_connected(&a)?.0 == peer_b, "a second connection");
    Ok((a, b, peer_b, peer_a))
}

/// The next frame from `from` read with `next_event`, within [`WAIT`].
fn next_frame(node: &Node, from: PeerId) -> Result<(Lane, Vec<u8>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        match node.next_event(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Message { peer, lane, bytes }) if peer == from => return Ok((lane, bytes.to_vec())),
            Ok(Event::Disconnected { peer, reason }) if peer == from => bail!("{from} went away: {reason}"),
            Ok(_) => {}
            Err(e) => bail!("{}: no frame from {from} within {WAIT:?}: {e:?}", node.name()),
        }
    }
}

/// Frame `i` of the ping-pong: its index, then `i * 97 % 20000` bytes of `i`.
fn frame(i: u32) -> Bytes {
    let mut bytes = i.to_le_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(i as u8, (i as usize * 97) % 20_000));
    Bytes::from(bytes)
}

#[test]
fn a_ping_pong_driven_by_both_waiting_callers_delivers_every_frame_intact() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let (a, b, peer_b, peer_a) = connected_pair(&ca)?;
    let echo = std::thread::spawn(move || -> Result<Node> {
        for _ in 0..200 {
            let (lane, bytes) = next_frame(&b, peer_a)?;
            b.send(peer_a, lane, bytes)?;
            // Sends it from here: after the last one, nobody waits on `b`.
            b.flush();
        }
        Ok(b)
    });
    for i in 0u32..200 {
        let lane = if i % 5 == 0 { Lane::Bulk } else { Lane::Control };
        a.send(peer_b, lane, frame(i))?;
        let (back, bytes) = next_frame(&a, peer_b)?;
        ensure!(back == lane && bytes == frame(i), "frame {i}: came back as {back:?}, {} bytes", bytes.len());
    }
    let _b = echo.join().expect("the echo thread")?;
    Ok(())
}

#[test]
fn the_helper_acknowledges_and_keeps_alive_while_the_caller_computes() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let (a, b, peer_b, peer_a) = connected_pair(&ca)?;
    // From here on `a`'s caller drives `a` whenever it waits.
    assert!(matches!(a.next_event(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout)));
    let computing = Arc::new(AtomicBool::new(true));
    let flag = computing.clone();
    let sender = std::thread::spawn(move || -> Result<(Node, bool)> {
        // Returns once `a`'s QUIC stack acknowledged the whole frame.
        b.send_wait(peer_a, Lane::Bulk, Bytes::from(vec![7u8; 1 << 20]))?;
        Ok((b, flag.load(Ordering::SeqCst)))
    });
    // "Computing" without driving for longer than the idle timeout (1.5 s):
    // only the helper can acknowledge the frame and answer keep-alives.
    std::thread::sleep(fast_config().idle_timeout * 2);
    computing.store(false, Ordering::SeqCst);
    let (b, acked_while_computing) = sender.join().expect("the sending thread")?;
    ensure!(acked_while_computing, "the frame was acknowledged only after the caller drove again");
    let (lane, bytes) = next_frame(&a, peer_b)?;
    ensure!(lane == Lane::Bulk && bytes == vec![7u8; 1 << 20], "the frame arrived damaged");
    ensure!(b.path(peer_a).is_some(), "the connection died while the caller computed");
    b.send(peer_a, Lane::Control, Bytes::from_static(b"still there"))?;
    ensure!(next_frame(&a, peer_b)?.1 == b"still there", "a frame after the computation was lost");
    Ok(())
}

#[test]
fn an_interrupt_ends_a_wait_and_events_still_arrive_after_it() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let (a, b, peer_b, peer_a) = connected_pair(&ca)?;
    let interrupt = a.interrupter();
    let long = Duration::from_secs(60);
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        interrupt.interrupt();
    });
    let start = Instant::now();
    let outcome = a.next_event(long);
    waker.join().expect("the interrupting thread");
    ensure!(matches!(outcome, Err(RecvTimeoutError::Timeout)), "the wait ended with {outcome:?}");
    ensure!(start.elapsed() < long, "the interrupt did not end the wait");
    b.send(peer_a, Lane::Control, Bytes::from_static(b"after"))?;
    ensure!(next_frame(&a, peer_b)?.1 == b"after", "no frame after the interrupt");
    Ok(())
}
