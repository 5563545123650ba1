//! The throughput helpers run end to end (numbers are not checked here).

use baton_transport::{bench, NetConfig};

#[test]
fn throughput_helpers_run() -> anyhow::Result<()> {
    let quic = bench::quic_throughput(4 << 20, &NetConfig::default())?;
    let tcp = bench::tcp_throughput(4 << 20)?;
    assert!(quic > 0.0 && tcp > 0.0, "{quic} {tcp}");
    Ok(())
}
