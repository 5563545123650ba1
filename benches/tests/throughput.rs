//! The loopback throughput helpers of `baton-bench transport` run end to end
//! and deliver every byte (the rates are not checked here: speed belongs to
//! the bench's table).

use baton_benches::{quic_throughput, tcp_throughput};
use baton_transport::NetConfig;

#[test]
fn throughput_helpers_run() -> anyhow::Result<()> {
    let quic = quic_throughput(4 << 20, &NetConfig::default())?;
    let tcp = tcp_throughput(4 << 20)?;
    assert!(quic.is_finite() && quic > 0.0 && tcp.is_finite() && tcp > 0.0, "{quic} {tcp}");
    Ok(())
}
