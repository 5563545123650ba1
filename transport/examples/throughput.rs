//! Loopback throughput, QUIC against TCP: `cargo run --release -p
//! baton-transport --example throughput [MTU] [STREAM_WINDOW_MIB]`.
//! Prints the median of 3 runs per size, in MB/s.

use baton_transport::{bench, NetConfig};

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = NetConfig::default();
    if let Some(mtu) = args.next() {
        config.mtu = mtu.parse()?;
    }
    if let Some(window) = args.next() {
        config.stream_window = window.parse::<u64>()? << 20;
    }
    println!("config: mtu {} stream window {} MiB", config.mtu, config.stream_window >> 20);
    println!("| size | QUIC MB/s | TCP MB/s |");
    println!("|---|---|---|");
    for mib in [1usize, 16, 256] {
        let bytes = mib << 20;
        let quic: anyhow::Result<Vec<f64>> = (0..3).map(|_| Ok(bench::quic_throughput(bytes, &config)?)).collect();
        let tcp: anyhow::Result<Vec<f64>> = (0..3).map(|_| Ok(bench::tcp_throughput(bytes)?)).collect();
        println!("| {mib} MiB | {:.0} | {:.0} |", median(quic?), median(tcp?));
    }
    Ok(())
}
