//! Loopback throughput: one bulk frame over QUIC against the same bytes over
//! plain TCP. Both time from the first byte sent to the last byte received,
//! and both end with the bytes in a fresh 16-aligned buffer of the full size
//! (the same kind a received frame gets), so both pay what a real receiver
//! pays. Each call sets up a fresh pair of endpoints (connection set-up is
//! not timed; congestion-window growth is).

use crate::{ClusterCa, Error, Event, Lane, NetConfig, Node, Result};
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Longest a single benchmark transfer may take.
const DEADLINE: Duration = Duration::from_secs(300);

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

fn bench_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Bench(format!("{what}: {e}"))
}

/// MB/s of one `bytes`-long bulk frame between two fresh nodes on loopback.
pub fn quic_throughput(bytes: usize, config: &NetConfig) -> Result<f64> {
    let ca = ClusterCa::generate("bench")?;
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let sender = Node::start(local, ca.issue("bench-sender")?, config.clone())?;
    let receiver = Node::start(local, ca.issue("bench-receiver")?, config.clone())?;
    let (peer, _) = sender.connect(receiver.local_addr())?;
    let payload = Bytes::from(vec![0xA5u8; bytes]);
    let start = Instant::now();
    sender.send(peer, Lane::Bulk, payload)?;
    let deadline = start + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.events().recv_timeout(left) {
            Ok(Event::Message { bytes: frame, .. }) => {
                let elapsed = start.elapsed();
                if frame.len() != bytes {
                    return Err(Error::Bench(format!("received {} bytes, sent {bytes}", frame.len())));
                }
                return Ok(mb_per_s(bytes, elapsed));
            }
            Ok(Event::Disconnected { reason, .. }) => return Err(Error::Bench(reason)),
            Ok(Event::Connected { .. }) => {}
            Err(_) => return Err(Error::Bench(format!("no frame within {DEADLINE:?}"))),
        }
    }
}

/// MB/s of `bytes` over one loopback TCP connection, written in 1 MiB writes.
pub fn tcp_throughput(bytes: usize) -> Result<f64> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(bench_err("bind"))?;
    let addr = listener.local_addr().map_err(bench_err("bind"))?;
    let receiver = std::thread::spawn(move || -> std::io::Result<(Instant, usize)> {
        let (mut stream, _) = listener.accept()?;
        let mut frame = crate::frame::receive_buffer(bytes);
        let mut scratch = vec![0u8; 1 << 20];
        while frame.len() < bytes {
            let want = (bytes - frame.len()).min(scratch.len());
            let n = stream.read(&mut scratch[..want])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            frame.extend_from_slice(&scratch[..n]);
        }
        Ok((Instant::now(), frame.len()))
    });
    let mut stream = TcpStream::connect(addr).map_err(bench_err("connect"))?;
    stream.set_nodelay(true).map_err(bench_err("connect"))?;
    let payload = vec![0xA5u8; bytes];
    let start = Instant::now();
    for chunk in payload.chunks(1 << 20) {
        stream.write_all(chunk).map_err(bench_err("write"))?;
    }
    let (end, got) =
        receiver.join().map_err(|_| Error::Bench("receiver thread panicked".into()))?.map_err(bench_err("read"))?;
    debug_assert_eq!(got, bytes);
    Ok(mb_per_s(bytes, end.duration_since(start)))
}
