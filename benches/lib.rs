//! Shared set-up for the criterion benches in `benches/`.

use baton_engine::{Batch, Optimizer, Trainer};
use baton_models::{io, spec};

/// A trainer for a plain `depth`-layer MLP of `width` with Adam, and one
/// synthetic batch of `batch` rows.
pub fn mlp_trainer(width: usize, depth: usize, batch: usize) -> (Trainer, Batch) {
    let model = spec::mlp(width, depth);
    let params = baton_engine::init::init_params(&model.param_specs(), 0);
    let data = io::synthetic_data(&model, 1, batch, 0).remove(0);
    let optimizer = Optimizer::new("adam:lr=1e-4".parse().expect("valid optimizer"));
    (Trainer::new(model, params, optimizer).expect("parameters fit the model"), data)
}

/// Multiply-adds of one forward+backward of a plain MLP, times two (flops).
pub fn mlp_step_flops(width: usize, depth: usize, batch: usize) -> u64 {
    6 * (batch * width * width * depth) as u64
}
