//! The built-in layer types of the model spec, written against the same
//! public [`Layer`] API a user's own layer would use.

use baton_engine::{Activation, Init, Layer, ParamSpec, Recorder, Result, TensorId};

/// LayerNorm epsilon, as in PyTorch's default.
pub const LAYERNORM_EPS: f32 = 1e-5;

/// PyTorch's default initialisation of a linear layer's weight and bias:
/// uniform in ±1/sqrt(fan_in).
fn linear_params(prefix: &str, inp: usize, out: usize) -> [ParamSpec; 2] {
    let init = Init::Uniform { bound: 1.0 / (inp as f32).sqrt() };
    [
        ParamSpec { name: format!("{prefix}weight"), shape: vec![out, inp], init },
        ParamSpec { name: format!("{prefix}bias"), shape: vec![out], init },
    ]
}

fn layernorm_params(prefix: &str, width: usize) -> [ParamSpec; 2] {
    [
        ParamSpec { name: format!("{prefix}weight"), shape: vec![width], init: Init::Constant(1.0) },
        ParamSpec { name: format!("{prefix}bias"), shape: vec![width], init: Init::Constant(0.0) },
    ]
}

/// `y = act(x Wᵀ + b)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub inp: usize,
    pub out: usize,
    pub activation: Option<Activation>,
}

impl Layer for Linear {
    fn kind(&self) -> &str {
        "linear"
    }
    fn in_features(&self) -> usize {
        self.inp
    }
    fn out_features(&self) -> usize {
        self.out
    }
    fn params(&self) -> Vec<ParamSpec> {
        linear_params("", self.inp, self.out).to_vec()
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId> {
        let y = rec.linear(x, "weight", Some("bias"))?;
        match self.activation {
            Some(kind) => rec.activation(y, kind),
            None => Ok(y),
        }
    }
}

/// `y = x + fc2(gelu(fc1(layernorm(x))))`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualMlp {
    pub width: usize,
    pub hidden: usize,
}

impl Layer for ResidualMlp {
    fn kind(&self) -> &str {
        "residual_mlp"
    }
    fn in_features(&self) -> usize {
        self.width
    }
    fn out_features(&self) -> usize {
        self.width
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = layernorm_params("norm.", self.width).to_vec();
        specs.extend(linear_params("fc1.", self.width, self.hidden));
        specs.extend(linear_params("fc2.", self.hidden, self.width));
        specs
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId> {
        let h = rec.layernorm(x, "norm.weight", "norm.bias", LAYERNORM_EPS)?;
        let h = rec.linear(h, "fc1.weight", Some("fc1.bias"))?;
        let h = rec.activation(h, Activation::Gelu)?;
        let h = rec.linear(h, "fc2.weight", Some("fc2.bias"))?;
        rec.add(x, h)
    }
}

/// Layer normalisation over features with elementwise affine parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub width: usize,
}

impl Layer for LayerNorm {
    fn kind(&self) -> &str {
        "layernorm"
    }
    fn in_features(&self) -> usize {
        self.width
    }
    fn out_features(&self) -> usize {
        self.width
    }
    fn params(&self) -> Vec<ParamSpec> {
        layernorm_params("", self.width).to_vec()
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId> {
        rec.layernorm(x, "weight", "bias", LAYERNORM_EPS)
    }
}
