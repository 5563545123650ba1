//! What the coordinator hands each stage at the start of a step, and how it
//! adds up the micro-batch losses. The single-process trainer uses the same
//! functions, so both give the same bits.

use std::collections::BTreeMap;

use crate::train::{micro_batch_ranges, Batch};
use crate::{Error, Result, Targets, Tensor};

/// A step's micro-batches: their row counts, inputs and targets.
#[derive(Clone, Debug)]
pub struct StepInputs {
    pub rows: Vec<u32>,
    pub inputs: Vec<(u32, Tensor)>,
    pub targets: Vec<(u32, Targets)>,
}

/// Splits `batch` into `micro_batches` (see [`micro_batch_ranges`]).
pub fn split_step(batch: &Batch, micro_batches: usize) -> Result<StepInputs> {
    let ranges = micro_batch_ranges(batch.rows(), micro_batches)?;
    let mut split = StepInputs { rows: Vec::new(), inputs: Vec::new(), targets: Vec::new() };
    for (m, range) in ranges.into_iter().enumerate() {
        split.rows.push(range.len() as u32);
        let part = batch.slice(range)?;
        split.inputs.push((m as u32, part.x));
        split.targets.push((m as u32, part.targets));
    }
    Ok(split)
}

/// The weight of micro-batch `micro`'s mean loss in the minibatch mean.
pub fn loss_weight(rows: &[u32], micro: usize) -> f32 {
    rows[micro] as f32 / rows.iter().sum::<u32>() as f32
}

/// Collects the micro-batch losses of one step.
#[derive(Clone, Debug)]
pub struct StepLosses {
    rows: Vec<u32>,
    values: BTreeMap<u32, f32>,
}

impl StepLosses {
    pub fn new(rows: Vec<u32>) -> Self {
        StepLosses { rows, values: BTreeMap::new() }
    }

    /// The rows of each micro-batch.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// Records micro-batch `micro`'s loss; each counts exactly once.
    pub fn record(&mut self, micro: u32, value: f32) -> Result<()> {
        if micro as usize >= self.rows.len() || self.values.insert(micro, value).is_some() {
            let detail = format!("its loss of micro-batch {micro} is unexpected or came twice");
            return Err(Error::peer("the last stage", detail));
        }
        Ok(())
    }

    /// How many micro-batch losses were recorded.
    pub fn recorded(&self) -> usize {
        self.values.len()
    }

    /// The minibatch-mean loss once every micro-batch reported, summed in
    /// micro-batch order.
    pub fn total(&self) -> Option<f32> {
        (self.values.len() == self.rows.len()).then(|| {
            let sum: f64 =
                self.values.iter().map(|(&m, &v)| f64::from(loss_weight(&self.rows, m as usize)) * f64::from(v)).sum();
            sum as f32
        })
    }
}
