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

/// `x Wᵀ + b` with the parameters `{prefix}weight` and `{prefix}bias`.
pub fn dense(rec: &mut Recorder<'_>, x: TensorId, prefix: &str) -> Result<TensorId> {
    let (w, b) = (rec.param(&format!("{prefix}weight"))?, rec.param(&format!("{prefix}bias"))?);
    rec.linear(x, w, Some(b))
}

/// LayerNorm with the parameters `{prefix}weight` and `{prefix}bias`.
pub fn norm(rec: &mut Recorder<'_>, x: TensorId, prefix: &str) -> Result<TensorId> {
    let (g, b) = (rec.param(&format!("{prefix}weight"))?, rec.param(&format!("{prefix}bias"))?);
    rec.layernorm(x, g, b, LAYERNORM_EPS)
}

/// `y = act(x Wᵀ + b)` on the last dimension.
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
        let y = dense(rec, x, "")?;
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
        let h = norm(rec, x, "norm.")?;
        let h = dense(rec, h, "fc1.")?;
        let h = rec.activation(h, Activation::Gelu)?;
        let h = dense(rec, h, "fc2.")?;
        rec.add(x, h)
    }
}

/// Layer normalisation over the last dimension with elementwise affine parameters.
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
        norm(rec, x, "")
    }
}

/// `out[r, t] = tok.weight[id[r, t]] + pos.weight[t]`: token ids `[rows, T]`
/// to `[rows, T, dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    pub vocab: usize,
    pub seq: usize,
    pub dim: usize,
}

impl Layer for Embedding {
    fn kind(&self) -> &str {
        "embedding"
    }
    fn takes_tokens(&self) -> bool {
        true
    }
    fn in_features(&self) -> usize {
        self.vocab
    }
    fn out_features(&self) -> usize {
        self.dim
    }
    fn params(&self) -> Vec<ParamSpec> {
        let init = Init::Normal { std: 1.0 };
        vec![
            ParamSpec { name: "tok.weight".into(), shape: vec![self.vocab, self.dim], init },
            ParamSpec { name: "pos.weight".into(), shape: vec![self.seq, self.dim], init },
        ]
    }
    fn forward(&self, rec: &mut Recorder<'_>, ids: TensorId) -> Result<TensorId> {
        let (tok, pos) = (rec.param("tok.weight")?, rec.param("pos.weight")?);
        let x = rec.embedding(ids, tok)?;
        rec.add(x, pos)
    }
    fn cost(&self) -> f64 {
        // A lookup and an add per element, not a product per parameter.
        (self.seq * self.dim) as f64
    }
}

/// A pre-LN GPT-2 block: `x = x + proj(attn(ln1(x)))`, then
/// `x = x + fc2(gelu(fc1(ln2(x))))`, causal self-attention over `heads`
/// contiguous chunks of the width, optional dropout on the attention
/// probabilities and on both residual branches.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerBlock {
    pub width: usize,
    pub heads: usize,
    pub hidden: usize,
    pub seq: usize,
    pub dropout: f32,
}

impl TransformerBlock {
    /// Causal self-attention of `h` (`[rows, T, d]`), before the output projection.
    fn attention(&self, rec: &mut Recorder<'_>, h: TensorId) -> Result<TensorId> {
        let (d, heads) = (self.width, self.heads);
        let hd = d / heads;
        let qkv = dense(rec, h, "attn.qkv.")?;
        let rows = rec.value(qkv)?.shape()[0];
        let t = rec.value(qkv)?.shape()[1];
        let mut split = Vec::with_capacity(3);
        for part in rec.split(qkv, &[d, d, d])? {
            let p = rec.reshape(part, &[rows, t, heads, hd])?;
            split.push(rec.transpose(p, 1, 2)?);
        }
        let scores = rec.matmul(split[0], split[1], false, true)?;
        let scores = rec.scale(scores, 1.0 / (hd as f32).sqrt())?;
        let mut probs = rec.softmax(scores, true)?;
        if self.dropout > 0.0 {
            probs = rec.dropout(probs, self.dropout)?;
        }
        let out = rec.matmul(probs, split[2], false, false)?;
        let out = rec.transpose(out, 1, 2)?;
        rec.reshape(out, &[rows, t, d])
    }

    fn residual(&self, rec: &mut Recorder<'_>, x: TensorId, branch: TensorId) -> Result<TensorId> {
        let branch = if self.dropout > 0.0 { rec.dropout(branch, self.dropout)? } else { branch };
        rec.add(x, branch)
    }
}

impl Layer for TransformerBlock {
    fn kind(&self) -> &str {
        "transformer_block"
    }
    fn in_features(&self) -> usize {
        self.width
    }
    fn out_features(&self) -> usize {
        self.width
    }
    fn params(&self) -> Vec<ParamSpec> {
        let d = self.width;
        let mut specs = layernorm_params("ln1.", d).to_vec();
        specs.extend(linear_params("attn.qkv.", d, 3 * d));
        specs.extend(linear_params("attn.proj.", d, d));
        specs.extend(layernorm_params("ln2.", d));
        specs.extend(linear_params("fc1.", d, self.hidden));
        specs.extend(linear_params("fc2.", self.hidden, d));
        specs
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId> {
        let h = norm(rec, x, "ln1.")?;
        let a = self.attention(rec, h)?;
        let a = dense(rec, a, "attn.proj.")?;
        let x = self.residual(rec, x, a)?;
        let h = norm(rec, x, "ln2.")?;
        let h = dense(rec, h, "fc1.")?;
        let h = rec.activation(h, Activation::Gelu)?;
        let h = dense(rec, h, "fc2.")?;
        self.residual(rec, x, h)
    }
    fn cost(&self) -> f64 {
        // Per row: the parameters' multiply-adds for each of T positions plus
        // attention's two T x T x d products.
        let params: usize = self.params().iter().map(|p| p.shape.iter().product::<usize>()).sum();
        (self.seq * params + 2 * self.seq * self.seq * self.width) as f64
    }
}
