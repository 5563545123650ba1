//! `baton-bench transport`: loopback MB/s of one bulk frame over QUIC, with
//! the settings the cluster uses (`baton_models::cluster::net_config`), next
//! to the same bytes over one plain TCP connection, in the same run.
//!
//! Each transfer starts fresh endpoints (set-up untimed, congestion-window
//! growth timed; see [`quic_throughput`]). QUIC and TCP alternate, so
//! load from elsewhere on the machine hits both alike.
//!
//! Both transfers time from the first byte sent to the last byte received,
//! and both end with the bytes in a fresh 16-aligned buffer of the full size
//! (`baton_transport::frame::receive_buffer`, the kind a received frame
//! gets), so both pay what a real receiver pays.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_transport::frame::Aligned;
use baton_transport::{ClusterCa, Event, Lane, NetConfig, Node};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use super::{median, write_json};

/// Transfers per size and protocol; the table shows their median.
const REPEATS: usize = 3;
const MIB: usize = 1 << 20;

#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Transfer sizes in MiB, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "MIB,MIB,..", default_values_t = [1, 16, 256])]
    sizes: Vec<usize>,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The QUIC settings measured, as printed above the table.
#[derive(Debug, Serialize)]
struct Settings {
    mtu: u16,
    stream_window_bytes: u64,
    /// The send window is 4x the stream window (`NetConfig::stream_window`).
    send_window_bytes: u64,
    socket_buffer_bytes: usize,
    /// Linux caps the socket buffers at these (`/proc/sys/net/core/*mem_max`).
    rmem_max: Option<u64>,
    wmem_max: Option<u64>,
}

impl Settings {
    fn of(config: &NetConfig) -> Settings {
        let sysctl = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).ok().and_then(|s| s.trim().parse().ok())
        };
        Settings {
            mtu: config.mtu,
            stream_window_bytes: config.stream_window,
            send_window_bytes: config.stream_window.saturating_mul(4),
            socket_buffer_bytes: config.socket_buffer,
            rmem_max: sysctl("rmem_max"),
            wmem_max: sysctl("wmem_max"),
        }
    }

    fn describe(&self) -> String {
        let caps = match (self.rmem_max, self.wmem_max) {
            (Some(r), Some(w)) => format!(" (kernel caps: net.core.rmem_max {r}, wmem_max {w})"),
            _ => String::new(),
        };
        format!(
            "QUIC settings (cluster::net_config): MTU {} B, stream window {}, send window {}, \
             connection window unbounded, UDP socket buffers {} requested{caps}",
            self.mtu,
            human_bytes(self.stream_window_bytes),
            human_bytes(self.send_window_bytes),
            human_bytes(self.socket_buffer_bytes as u64),
        )
    }
}

/// One size: the medians, their ratio and every run.
#[derive(Debug, Serialize)]
struct Row {
    mib: usize,
    quic_mb_s: f64,
    tcp_mb_s: f64,
    /// QUIC MB/s over TCP MB/s (below 1: QUIC is slower).
    quic_over_tcp: f64,
    quic_runs_mb_s: Vec<f64>,
    tcp_runs_mb_s: Vec<f64>,
}

/// The whole result, as written by --json.
#[derive(Debug, Serialize)]
struct Table {
    settings: Settings,
    repeats: usize,
    /// MB here is 10^6 bytes; sizes are MiB (2^20 bytes).
    unit: &'static str,
    rows: Vec<Row>,
}

/// Runs `baton-bench transport`.
pub fn run(args: TransportArgs) -> anyhow::Result<()> {
    let config = baton_models::cluster::net_config();
    check_sizes(&args.sizes, config.max_frame_bytes)?;
    let settings = Settings::of(&config);
    let mut rows = Vec::with_capacity(args.sizes.len());
    for &mib in &args.sizes {
        eprintln!("transferring {mib} MiB {REPEATS} times over QUIC and over TCP...");
        rows.push(measure(mib, &config)?);
    }
    let table = Table { settings, repeats: REPEATS, unit: "MB/s, MB = 10^6 bytes", rows };
    print_table(&table);
    if let Some(path) = &args.json {
        write_json(path, &table)?;
    }
    Ok(())
}

fn check_sizes(sizes: &[usize], max_frame_bytes: usize) -> anyhow::Result<()> {
    if sizes.is_empty() {
        bail!("--sizes: give at least one size in MiB");
    }
    for &mib in sizes {
        if mib == 0 || mib.saturating_mul(MIB) > max_frame_bytes {
            bail!("--sizes {mib}: sizes must be 1..={} MiB (the largest frame)", max_frame_bytes / MIB);
        }
    }
    Ok(())
}

/// `REPEATS` alternating QUIC and TCP transfers of `mib` MiB.
fn measure(mib: usize, config: &NetConfig) -> anyhow::Result<Row> {
    let bytes = mib * MIB;
    let (mut quic, mut tcp) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        quic.push(quic_throughput(bytes, config).with_context(|| format!("QUIC transfer of {mib} MiB"))?);
        tcp.push(tcp_throughput(bytes).with_context(|| format!("TCP transfer of {mib} MiB"))?);
    }
    let (quic_mb_s, tcp_mb_s) = (median(&mut quic.clone()), median(&mut tcp.clone()));
    Ok(Row { mib, quic_mb_s, tcp_mb_s, quic_over_tcp: quic_mb_s / tcp_mb_s, quic_runs_mb_s: quic, tcp_runs_mb_s: tcp })
}

/// Longest a single transfer may take.
const DEADLINE: Duration = Duration::from_secs(300);

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// MB/s of one `bytes`-long bulk frame between two fresh nodes on loopback
/// (connection set-up not timed).
pub fn quic_throughput(bytes: usize, config: &NetConfig) -> anyhow::Result<f64> {
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
                    bail!("received {} bytes, sent {bytes}", frame.len());
                }
                return Ok(mb_per_s(bytes, elapsed));
            }
            Ok(Event::Disconnected { reason, .. }) => bail!("disconnected: {reason}"),
            Ok(Event::Connected { .. }) => {}
            Err(_) => bail!("no frame within {DEADLINE:?}"),
        }
    }
}

/// MB/s of `bytes` over one fresh loopback TCP connection, written in 1 MiB writes.
pub fn tcp_throughput(bytes: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("bind")?;
    let addr = listener.local_addr().context("bind")?;
    let receiver = std::thread::spawn(move || -> std::io::Result<Instant> {
        let (mut stream, _) = listener.accept()?;
        let mut frame = baton_transport::frame::receive_buffer(bytes);
        read_into(&mut stream, &mut frame, bytes)?;
        Ok(Instant::now())
    });
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.set_nodelay(true).context("connect")?;
    let payload = vec![0xA5u8; bytes];
    let start = Instant::now();
    for chunk in payload.chunks(MIB) {
        stream.write_all(chunk).context("write")?;
    }
    let end = receiver.join().map_err(|_| anyhow::anyhow!("the TCP receiver thread panicked"))?.context("read")?;
    Ok(mb_per_s(bytes, end.duration_since(start)))
}

/// Appends the next `len` bytes of `stream` to `frame`, read in pieces of
/// at most 1 MiB; the end of the stream before that is an error.
pub(crate) fn read_into(stream: &mut impl Read, frame: &mut Aligned, len: usize) -> std::io::Result<()> {
    let mut scratch = vec![0u8; MIB.min(len.max(1))];
    let end = frame.len() + len;
    while frame.len() < end {
        let want = (end - frame.len()).min(scratch.len());
        let n = stream.read(&mut scratch[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        frame.extend_from_slice(&scratch[..n]);
    }
    Ok(())
}

const HEADER: [&str; 4] = ["size", "QUIC MB/s", "TCP MB/s", "QUIC/TCP"];

fn format_header() -> String {
    let [size, quic, tcp, ratio] = HEADER;
    format!("{size:>8} {quic:>10} {tcp:>10} {ratio:>9}")
}

fn format_row(row: &Row) -> String {
    format!(
        "{:>8} {:>10.0} {:>10.0} {:>9.2}",
        format!("{} MiB", row.mib),
        row.quic_mb_s,
        row.tcp_mb_s,
        row.quic_over_tcp
    )
}

fn print_table(table: &Table) {
    println!("{}", table.settings.describe());
    println!(
        "one bulk frame on loopback, fresh endpoints per transfer; median of {} transfers each ({})",
        table.repeats, table.unit
    );
    println!("{}", format_header());
    for row in &table.rows {
        println!("{}", format_row(row));
    }
}

/// `n` bytes in the largest binary unit that divides it (`16 MiB`, `6000 B`).
fn human_bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        // `size` is a power of two: the mask tests divisibility.
        if n >= size && n & (size - 1) == 0 {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_line_up_under_the_header() {
        let row = Row {
            mib: 256,
            quic_mb_s: 812.4,
            tcp_mb_s: 2450.0,
            quic_over_tcp: 812.4 / 2450.0,
            quic_runs_mb_s: vec![],
            tcp_runs_mb_s: vec![],
        };
        let line = format_row(&row);
        assert_eq!(line, " 256 MiB        812       2450      0.33");
        assert_eq!(line.len(), format_header().len());
    }

    #[test]
    fn sizes_must_fit_a_frame() {
        assert!(check_sizes(&[1, 16, 256], 1 << 30).is_ok());
        assert!(check_sizes(&[], 1 << 30).is_err());
        let err = check_sizes(&[0], 1 << 30).unwrap_err().to_string();
        assert!(err.contains("--sizes 0"), "{err}");
        assert!(check_sizes(&[2048], 1 << 30).is_err());
    }

    #[test]
    fn byte_counts_print_in_binary_units() {
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(6000), "6000 B");
        assert_eq!(human_bytes(4 << 10), "4 KiB");
    }
}
