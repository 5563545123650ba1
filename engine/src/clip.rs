//! Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_`.
//!
//! Each parameter's gradient norm is computed where the parameter lives;
//! the total combines them in a fixed order (the model's parameter order:
//! layer by layer, the layer's parameters by name), so it is the same bits
//! for any partition of the layers over workers.

use crate::device::Call;
use crate::{Backend, ParamStore, Result, Tensor};

/// `‖g‖₂` of one gradient: squares summed in f64 in element order, where
/// the gradient lives (a resident one's norm is downloaded: 4 bytes).
pub fn param_norm(grad: &Tensor) -> Result<f32> {
    let norm = Backend::of(grad).launch1(&Call::Norm, &[grad.operand()], Vec::new())?.into_host()?;
    Ok(norm.values()?[0])
}

/// The norms of `grads`, in name order (a layer's share of the total).
pub fn norms(grads: &ParamStore) -> Result<Vec<f32>> {
    grads.iter().map(|(_, g)| param_norm(g)).collect()
}

/// The total norm of per-parameter `norms` (given in model order) and the
/// factor the gradients are multiplied by: `min(1, max / (total + 1e-6))`,
/// as PyTorch computes it in f32.
pub fn scale(norms: impl IntoIterator<Item = f32>, max_norm: f32) -> (f32, f32) {
    let total = norms.into_iter().fold(0.0f64, |acc, n| acc + f64::from(n) * f64::from(n)).sqrt() as f32;
    let coef = max_norm / (total + 1e-6);
    (total, coef.min(1.0))
}

/// Multiplies every gradient by `factor` (f32, as `torch._foreach_mul_`).
pub fn apply(grads: &mut ParamStore, factor: f32) -> Result<()> {
    for name in grads.names().cloned().collect::<Vec<_>>() {
        let grad = grads.get_mut(&name)?;
        let scaled = Backend::of(grad).launch1(&Call::Scale { factor }, &[grad.operand()], grad.shape().to_vec())?;
        *grad = scaled;
    }
    Ok(())
}

/// Checks a `--clip-grad-norm` value: positive and finite, as PyTorch needs
/// for clipping to mean anything.
pub fn check_max_norm(max_norm: f32) -> Result<()> {
    if max_norm.is_finite() && max_norm > 0.0 {
        Ok(())
    } else {
        Err(crate::Error::Optimizer(format!("clip_grad_norm must be a positive finite number, got {max_norm}")))
    }
}
