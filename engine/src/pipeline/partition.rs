//! Contiguous layer ranges per worker, balanced by per-layer cost.

use std::ops::Range;

use crate::{Error, Result};

/// Which worker owns which contiguous layers; stage i is `stages[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub stages: Vec<Range<u32>>,
}

impl Partition {
    /// Splits layers with `costs` into `workers` contiguous stages minimising
    /// the most expensive stage; among equally good splits the one whose
    /// earlier stages are largest is chosen (so 12 equal layers on 3 workers
    /// give 0-3, 4-7, 8-11).
    pub fn balanced(costs: &[f64], workers: usize) -> Result<Partition> {
        let layers = costs.len();
        if workers == 0 || workers > layers {
            return Err(Error::Partition(format!("cannot place {layers} layers on {workers} workers")));
        }
        let bottleneck = min_bottleneck(costs, workers);
        let mut stages = Vec::with_capacity(workers);
        let mut start = 0;
        for w in 0..workers {
            let left = workers - w - 1;
            let mut end = start + 1;
            let mut sum = costs[start];
            while end < layers - left && sum + costs[end] <= bottleneck * (1.0 + 1e-12) {
                sum += costs[end];
                end += 1;
            }
            stages.push(start as u32..end as u32);
            start = end;
        }
        Ok(Partition { stages })
    }

    /// The stage holding `layer`.
    pub fn stage_of(&self, layer: u32) -> Option<usize> {
        self.stages.iter().position(|r| r.contains(&layer))
    }

    /// Formats as `0-3 / 4-7 / 8-11`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.stages.iter().map(|r| format!("{}-{}", r.start, r.end - 1)).collect();
        parts.join(" / ")
    }
}

/// The partition of one generation with the worker holding each stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub generation: u32,
    /// (worker, layers) in stage order.
    pub stages: Vec<(u32, Range<u32>)>,
}

impl Layout {
    /// Stage i of `partition` on `workers[i]`.
    pub fn new(generation: u32, partition: &Partition, workers: &[u32]) -> Layout {
        Layout { generation, stages: workers.iter().copied().zip(partition.stages.iter().cloned()).collect() }
    }
}

/// The smallest achievable maximum stage cost (dynamic programme over
/// prefixes; layer counts are small).
fn min_bottleneck(costs: &[f64], workers: usize) -> f64 {
    let n = costs.len();
    let prefix: Vec<f64> = std::iter::once(0.0)
        .chain(costs.iter().scan(0.0, |s, c| {
            *s += c;
            Some(*s)
        }))
        .collect();
    // best[k][i]: min bottleneck of the first i layers on k workers.
    let mut best = vec![vec![f64::INFINITY; n + 1]; workers + 1];
    best[0][0] = 0.0;
    for k in 1..=workers {
        for i in k..=n {
            for j in (k - 1)..i {
                let cand = best[k - 1][j].max(prefix[i] - prefix[j]);
                if cand < best[k][i] {
                    best[k][i] = cand;
                }
            }
        }
    }
    best[workers][n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp12_on_three_workers_is_the_seed_partition() {
        let p = Partition::balanced(&[1.0; 12], 3).unwrap();
        assert_eq!(p.describe(), "0-3 / 4-7 / 8-11");
        assert_eq!(Partition::balanced(&[1.0; 12], 2).unwrap().describe(), "0-5 / 6-11");
        assert_eq!(p.stage_of(5), Some(1));
    }

    #[test]
    fn costs_not_counts_decide() {
        // One heavy layer gets a stage of its own.
        let p = Partition::balanced(&[1.0, 1.0, 8.0, 1.0, 1.0, 1.0], 3).unwrap();
        assert_eq!(p.describe(), "0-1 / 2-2 / 3-5");
    }

    #[test]
    fn every_stage_gets_a_layer_and_all_layers_are_covered() {
        for layers in 1..=12 {
            for workers in 1..=layers {
                let costs: Vec<f64> = (0..layers).map(|i| 1.0 + (i % 3) as f64).collect();
                let p = Partition::balanced(&costs, workers).unwrap();
                assert_eq!(p.stages.len(), workers);
                assert_eq!(p.stages[0].start, 0);
                assert_eq!(p.stages.last().unwrap().end, layers as u32);
                assert!(p.stages.windows(2).all(|w| w[0].end == w[1].start && !w[1].is_empty()));
                let worst =
                    p.stages.iter().map(|r| r.clone().map(|l| costs[l as usize]).sum::<f64>()).fold(0.0, f64::max);
                assert!((worst - min_bottleneck(&costs, workers)).abs() < 1e-9);
            }
        }
        assert!(Partition::balanced(&[1.0; 2], 3).is_err());
    }
}
