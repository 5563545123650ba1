//! How many bytes a noticed worker can still ship before its deadline.
//!
//! The estimate is QUIC's own view of each path to the peers (congestion
//! window over smoothed round-trip time, the slowest path counting), times
//! a third of the time left: the rest covers the drain, the coordinator's
//! round trips and the error of the estimate. On a link shaped with
//! `tc ... tbf` (tests/multihost.rs) cwnd/RTT read 1.4-1.75x the rate QUIC
//! then achieved, which ate a half share's whole margin: shipping overran
//! the deadline about once in six runs. What does not fit is left to the
//! recompute fallback (`baton_engine::pipeline::recompute`).

use std::time::{Duration, Instant};

use super::error::{refuse as bail, Context, Result};
use baton_transport::{Node, PeerId};

/// Overrides the measured bandwidth, in bytes per second (tests, and paths
/// whose QUIC estimate is known to be wrong).
pub const BANDWIDTH_ENV: &str = "BATON_SHIP_BANDWIDTH";

/// Share of the time left that shipping may take (at the estimated bandwidth).
const SHARE_OF_TIME_LEFT: f64 = 1.0 / 3.0;

/// Used when no path has a measured round trip yet (bytes per second).
const FALLBACK_BANDWIDTH: f64 = 50e6;

/// A noticed worker's deadline and how it estimates bandwidth.
#[derive(Clone, Copy, Debug)]
pub struct ShipBudget {
    deadline: Instant,
    fixed_bandwidth: Option<f64>,
}

impl ShipBudget {
    /// The budget of a worker told at `noticed` that it has `grace` left.
    pub fn new(noticed: Instant, grace: Duration) -> Result<ShipBudget> {
        Ok(ShipBudget { deadline: noticed + grace, fixed_bandwidth: bandwidth_from_env()? })
    }

    /// Bytes that can still be shipped to `peers` at time `now`.
    pub fn bytes(&self, node: &Node, peers: impl Iterator<Item = PeerId>, now: Instant) -> u64 {
        let bandwidth = self.fixed_bandwidth.unwrap_or_else(|| measured_bandwidth(node, peers));
        budget_bytes(bandwidth, self.deadline.saturating_duration_since(now))
    }
}

/// What `bandwidth` bytes/s moves in the share of `left` that shipping may take.
fn budget_bytes(bandwidth: f64, left: Duration) -> u64 {
    (bandwidth * left.as_secs_f64() * SHARE_OF_TIME_LEFT) as u64
}

/// The slowest path's `cwnd / rtt`, or a default before any round trip.
fn measured_bandwidth(node: &Node, peers: impl Iterator<Item = PeerId>) -> f64 {
    peers
        .filter_map(|p| node.path(p).and_then(|e| e.bytes_per_second()))
        .min_by(f64::total_cmp)
        .unwrap_or(FALLBACK_BANDWIDTH)
}

/// The bandwidth set in [`BANDWIDTH_ENV`], if any; a malformed value is an error.
pub fn bandwidth_from_env() -> Result<Option<f64>> {
    std::env::var(BANDWIDTH_ENV).ok().map(|text| parse_bandwidth(&text)).transpose()
}

fn parse_bandwidth(text: &str) -> Result<f64> {
    let value: f64 = text.trim().parse().what_with(|| format!("{BANDWIDTH_ENV}={text}: not a number"))?;
    if !(value.is_finite() && value > 0.0) {
        bail!("{BANDWIDTH_ENV}={text}: must be a positive number of bytes/s");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_of_the_time_left_at_the_bandwidth() {
        let near = |got: u64, want: u64| assert!(got.abs_diff(want) <= 1, "{got} bytes, not {want}");
        near(budget_bytes(1000.0, Duration::from_secs(3)), 1000);
        near(budget_bytes(100e6, Duration::from_millis(15)), 500_000);
        assert_eq!(budget_bytes(100e6, Duration::ZERO), 0);
    }

    #[test]
    fn bandwidth_overrides_must_be_positive_numbers() {
        assert_eq!(parse_bandwidth(" 1e6 ").unwrap(), 1e6);
        for bad in ["fast", "-5", "0", "inf", ""] {
            let err = parse_bandwidth(bad).unwrap_err().to_string();
            assert!(err.contains(BANDWIDTH_ENV), "{bad}: {err}");
        }
    }
}
