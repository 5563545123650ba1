//! Defining a new layer type in Rust, outside the engine.
//!
//! `PreNormTanhResidual` computes `y = x + tanh(layernorm(x) Wᵀ + b)` using
//! only the public `Layer` trait and `Recorder` ops, so its segments are as
//! relocatable as the built-ins'. The example trains a model that mixes it
//! with built-in layers, then ships one micro-batch's segment of the custom
//! layer through an archive and checks that backward on the "receiver" gives
//! the same bits.
//!
//! Run: `cargo run --release -p baton-models --example custom_layer`

use baton_engine::segment::{self, SegmentBatch};
use baton_engine::{
    Activation, Init, Layer, Loss, Model, Optimizer, ParamSpec, Recorder, SegmentKey, Tensor, TensorId, Trainer,
};
use baton_models::io;
use baton_models::layers::Linear;

#[derive(Debug)]
struct PreNormTanhResidual {
    width: usize,
}

impl Layer for PreNormTanhResidual {
    fn kind(&self) -> &str {
        "prenorm_tanh_residual"
    }
    fn in_features(&self) -> usize {
        self.width
    }
    fn out_features(&self) -> usize {
        self.width
    }
    fn params(&self) -> Vec<ParamSpec> {
        let w = self.width;
        let bound = Init::Uniform { bound: 1.0 / (w as f32).sqrt() };
        vec![
            ParamSpec { name: "norm.weight".into(), shape: vec![w], init: Init::Constant(1.0) },
            ParamSpec { name: "norm.bias".into(), shape: vec![w], init: Init::Constant(0.0) },
            ParamSpec { name: "proj.weight".into(), shape: vec![w, w], init: bound },
            ParamSpec { name: "proj.bias".into(), shape: vec![w], init: bound },
        ]
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> baton_engine::Result<TensorId> {
        let (g, b) = (rec.param("norm.weight")?, rec.param("norm.bias")?);
        let h = rec.layernorm(x, g, b, 1e-5)?;
        let (w, b) = (rec.param("proj.weight")?, rec.param("proj.bias")?);
        let h = rec.linear(h, w, Some(b))?;
        let h = rec.activation(h, Activation::Tanh)?;
        rec.add(x, h)
    }
}

fn main() -> anyhow::Result<()> {
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(Linear { inp: 16, out: 32, activation: Some(Activation::Gelu) }),
        Box::new(PreNormTanhResidual { width: 32 }),
        Box::new(Linear { inp: 32, out: 16, activation: None }),
    ];
    let model = Model::new(16, layers, Loss::Mse)?;
    let params = baton_engine::init::init_params(&model.param_specs(), 1);
    let data = io::synthetic_data(&model, 20, 32, 2);

    // Relocate one segment of the custom layer before training changes the weights.
    let key = SegmentKey { step: 0, micro: 0, layer: 1 };
    let (_, hidden) = model.forward_layer(SegmentKey { layer: 0, ..key }, &params, data[0].x.clone())?;
    let (segment, out) = model.forward_layer(key, &params, hidden)?;
    let dy = Tensor::new(out.shape().to_vec(), vec![0.01; out.len()])?;
    let local = segment.backward(&params, dy.clone(), true)?;
    let bytes = segment::archive(&SegmentBatch(vec![segment]))?;
    let receiver = params.with_prefix("layers.1.");
    let views = segment::access(&bytes)?;
    let remote = views[0].backward(&receiver, dy, true)?;
    let same = local.input_grad == remote.input_grad && local.param_grads == remote.param_grads;
    println!(
        "custom layer segment: {} archive bytes, backward on the receiver bit-identical: {}",
        bytes.len(),
        if same { "yes" } else { "NO" }
    );

    let mut trainer = Trainer::new(model, params, Optimizer::new("adam:lr=3e-3".parse()?))?;
    for (step, batch) in data.iter().enumerate() {
        let loss = trainer.step(step as u32, batch, 4)?;
        if step % 5 == 0 || step + 1 == data.len() {
            println!("step {step:>2}: loss {loss:.5}");
        }
    }
    anyhow::ensure!(same, "relocated backward differed");
    Ok(())
}
