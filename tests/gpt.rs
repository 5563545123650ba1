//! The 12-layer GPT of `../shared/golden/gpt12_adamw.safetensors` against
//! PyTorch: the loss and every gradient of step 0 (before any update).

mod common;

use baton_engine::{Optimizer, Trainer};
use baton_models::{io, spec};
use common::{assert_params_close, golden_dir, max_abs};

#[test]
fn gpt_step0_loss_and_gradients_match_pytorch() {
    let path = golden_dir().join("gpt12_adamw.safetensors");
    let meta = io::read_metadata(&path).unwrap();
    let model = spec::parse(&meta["spec"]).unwrap();
    let steps: usize = meta["steps"].parse().unwrap();
    let micro: usize = meta["microbatches"].parse().unwrap();
    let params = io::load_params(&path, &model).unwrap();
    let data = io::load_data(&path, &model, steps).unwrap();
    let want_loss = io::load_f32(&path, "expect.loss").unwrap().into_values().unwrap().1;
    let mut trainer = Trainer::new(model, params, Optimizer::new("sgd:lr=0".parse().unwrap())).unwrap();
    let (loss, grads) = trainer.gradients(0, &data[0], micro).unwrap();
    let rel = ((loss - want_loss[0]) / want_loss[0]).abs();
    assert!(rel <= 1e-5, "step 0 loss {loss} vs PyTorch {} (relative error {rel:e})", want_loss[0]);
    let want = io::load_tensors(&path, "expect.grad0.").unwrap();
    assert_params_close("gpt12 step-0 gradients", &grads, &want, |g| 1e-5 * max_abs(g));
}
