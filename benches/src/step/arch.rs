//! What `baton-bench step` times: the networks, their flop counts and
//! specs, and the configurations (network, batch, threads, steps) of a run.

use serde::Serialize;

/// The benchmarked network; bench_torch.py builds the same one from this
/// JSON (`"kind"` and the variant's fields).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum Arch {
    /// `layers` linear layers `input → width → .. → width`, relu on all but
    /// the last, mse.
    Mlp { input: usize, width: usize, layers: usize },
    /// Token + position embedding, `blocks` pre-LN GPT-2 blocks (`heads`
    /// contiguous heads, causal, exact-GELU MLP of `hidden`), layernorm and a
    /// linear head to `vocab`; cross-entropy over every token.
    Gpt { vocab: usize, seq: usize, dim: usize, heads: usize, hidden: usize, blocks: usize },
}

impl Arch {
    /// Floating-point operations of forward + backward for `batch` rows.
    ///
    /// Counted: every matmul, as 2 flops per multiply-add, forward once and
    /// backward twice (dx and dW, or both operands of attention's products),
    /// so 3x the forward. Left out: norms, softmax, activations, embedding,
    /// loss and the Adam update (elementwise, a few % at these shapes).
    /// So 6 · matmul parameters · tokens (B rows of an MLP, B·T for a GPT;
    /// 6·B·W²·L for these MLPs), plus for a GPT attention's two [T, T] x d
    /// products per block, 3 · 2 · 2 · T² · d · B · blocks, the causal mask's
    /// zero half included (both sides compute it).
    fn flops(&self, batch: usize) -> f64 {
        let (tokens, attention) = match *self {
            Arch::Mlp { .. } => (batch, 0),
            Arch::Gpt { seq, dim, blocks, .. } => (batch * seq, 12 * seq * seq * dim * batch * blocks),
        };
        6.0 * (self.matmul_params() * tokens) as f64 + attention as f64
    }

    /// Weights that multiply activations (not biases, norms or the
    /// embedding lookup): the per-token multiply-adds of a forward pass.
    fn matmul_params(&self) -> usize {
        match *self {
            Arch::Mlp { input, width, layers } => input * width + (layers - 1) * width * width,
            Arch::Gpt { vocab, dim, hidden, blocks, .. } => blocks * (4 * dim * dim + 2 * dim * hidden) + dim * vocab,
        }
    }

    /// The baton model spec (../shared/DESIGN.md, "Model spec").
    pub(super) fn spec_json(&self) -> String {
        match *self {
            Arch::Mlp { input, width, layers } => {
                let layer = |act: &str| format!(r#"{{"type": "linear", "out": {width}, "activation": "{act}"}}"#);
                let mut all = vec![layer("relu"); layers - 1];
                all.push(layer("none"));
                format!(r#"{{"input": {input}, "layers": [{}], "loss": "mse"}}"#, all.join(", "))
            }
            Arch::Gpt { vocab, seq, dim, heads, hidden, blocks } => {
                let block = format!(r#"{{"type": "transformer_block", "heads": {heads}, "hidden": {hidden}}}"#);
                format!(
                    r#"{{"input": {{"tokens": {vocab}, "seq": {seq}}}, "layers": [{{"type": "embedding", "dim": {dim}}},
                        {}, {{"type": "layernorm"}}, {{"type": "linear", "out": {vocab}}}], "loss": "cross_entropy"}}"#,
                    vec![block; blocks].join(", ")
                )
            }
        }
    }
}

/// One benchmarked configuration: a network, a batch (rows; sequences for
/// a GPT) and a thread count.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Config {
    pub(super) name: String,
    #[serde(flatten)]
    pub(super) arch: Arch,
    pub(super) batch: usize,
    pub(super) threads: usize,
    pub(super) warmup: usize,
    pub(super) steps: usize,
}

impl Config {
    pub(super) fn flops(&self) -> f64 {
        self.arch.flops(self.batch)
    }
}

/// Per network, at every thread count: the 12-layer MLP W=1024 B=256,
/// mlp12 (W=64 B=32), the golden GPT (d=64, 4 heads, T=32, B=8) and a wide
/// one (d=512, 8 heads, T=128, B=8); all of 12 layers (a GPT's are the
/// embedding, 9 blocks, layernorm and head). The small ones time 20x the steps.
pub(super) fn configs(threads: &[usize], steps: usize) -> Vec<Config> {
    let gpt = |dim, heads, seq| Arch::Gpt { vocab: 65, seq, dim, heads, hidden: 4 * dim, blocks: 9 };
    let nets = [
        ("mlp W=1024 B=256", Arch::Mlp { input: 1024, width: 1024, layers: 12 }, 256, 1),
        ("mlp12 W=64 B=32", Arch::Mlp { input: 64, width: 64, layers: 12 }, 32, 20),
        ("gpt d=64 T=32 B=8", gpt(64, 4, 32), 8, 20),
        ("gpt d=512 T=128 B=8", gpt(512, 8, 128), 8, 1),
    ];
    let config = |(name, arch, batch, times): &(&str, Arch, usize, usize), threads| Config {
        name: name.to_string(),
        arch: arch.clone(),
        batch: *batch,
        threads,
        warmup: 2 * times,
        steps: steps * times,
    };
    nets.iter().flat_map(|net| threads.iter().map(move |&t| config(net, t))).collect()
}

/// The GPT rows timed on a GPU (one thread count: the host only queues work).
pub(super) fn gpu_configs(steps: usize) -> Vec<Config> {
    let gpt = |dim, heads, seq| Arch::Gpt { vocab: 65, seq, dim, heads, hidden: 4 * dim, blocks: 9 };
    let nets = [
        ("gpt d=64 T=32 B=8", gpt(64, 4, 32), 20),
        ("gpt d=512 T=128 B=8", gpt(512, 8, 128), 2),
        ("gpt d=1024 T=256 B=8", gpt(1024, 16, 256), 1),
    ];
    let config = |(name, arch, times): &(&str, Arch, usize)| Config {
        name: name.to_string(),
        arch: arch.clone(),
        batch: 8,
        threads: 1,
        warmup: 2 * times,
        steps: steps * times,
    };
    nets.iter().map(config).collect()
}

#[cfg(test)]
mod tests {
    use baton_models::spec;

    use super::*;

    #[test]
    fn every_network_has_twelve_layers_and_counts_its_matmul_weights() {
        for config in configs(&[1], 1) {
            let model = spec::parse(&config.arch.spec_json()).unwrap();
            assert_eq!(model.layers.len(), 12, "{}", config.name);
            // 2-D weights outside the embedding (layer 0 of a GPT) multiply activations.
            let lookup = matches!(config.arch, Arch::Gpt { .. }).then_some("layers.0.");
            let counted: usize = model
                .param_specs()
                .iter()
                .filter(|p| p.shape.len() == 2 && lookup.is_none_or(|l| !p.name.starts_with(l)))
                .map(|p| p.shape.iter().product::<usize>())
                .sum();
            assert_eq!(counted, config.arch.matmul_params(), "{}", config.name);
        }
    }

    #[test]
    fn gpt_flops_add_attention_to_the_weights() {
        let arch = Arch::Gpt { vocab: 65, seq: 32, dim: 64, heads: 4, hidden: 256, blocks: 9 };
        // 446,528 matmul weights x 256 tokens x 6, plus 12 x 32² x 64 x 8 x 9.
        assert_eq!(arch.flops(8), 685_867_008.0 + 56_623_104.0);
    }
}
