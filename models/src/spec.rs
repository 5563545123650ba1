//! The JSON model spec (DESIGN.md) and the built-in `mlp12`.
//!
//! Every rejection names the offending field (`layers[3].activation`).

use serde_json::{Map, Value};

use baton_engine::{Activation, Layer, Loss, Model};

use crate::layers::{Embedding, LayerNorm, Linear, ResidualMlp, TransformerBlock};
use crate::{Error, Result};

/// JSON of a plain MLP: `depth` linear layers of width `width`, relu on all
/// but the last, mse loss.
pub fn mlp_json(width: usize, depth: usize) -> String {
    let relu = format!(r#"{{"type": "linear", "out": {width}, "activation": "relu"}}"#);
    let mut layers = vec![relu; depth.saturating_sub(1)];
    layers.push(format!(r#"{{"type": "linear", "out": {width}, "activation": "none"}}"#));
    format!(r#"{{"input": {width}, "layers": [{}], "loss": "mse"}}"#, layers.join(", "))
}

/// The built-in seed model: 12 linear layers of width 64 ([`mlp_json`]).
pub fn mlp12() -> Model {
    mlp(64, 12)
}

/// A plain MLP ([`mlp_json`]); used by `mlp12` and the benchmarks.
pub fn mlp(width: usize, depth: usize) -> Model {
    parse(&mlp_json(width, depth)).expect("a plain MLP spec with positive sizes is valid")
}

/// A model from `mlp12`, inline JSON (starting with `{`), or a JSON file path.
pub fn load(model: &str) -> Result<Model> {
    let model = model.trim();
    if model == "mlp12" {
        return Ok(mlp12());
    }
    if model.starts_with('{') {
        return parse(model);
    }
    let text = std::fs::read_to_string(model).map_err(|cause| Error::Io { path: model.into(), cause })?;
    parse(&text).map_err(|e| match e {
        Error::Spec(detail) => Error::Spec(format!("{model}: {detail}")),
        other => other,
    })
}

/// Builds a layer type the spec does not know from its JSON entry, the width
/// it receives and the entry's location (`layers[3]`, for error messages).
pub type LayerBuilder = fn(&Map<String, Value>, usize, &str) -> Result<Box<dyn Layer>>;

/// Layer types a user's own binary adds to the spec: a coordinator and its
/// workers built from the same registry build the same model from the same
/// JSON, so a custom layer runs across processes like the built-ins.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    builders: Vec<(String, LayerBuilder)>,
}

impl Registry {
    /// The built-in layer types only.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds layer type `kind` (a built-in's name keeps its built-in meaning).
    pub fn with(mut self, kind: &str, build: LayerBuilder) -> Registry {
        self.builders.push((kind.to_string(), build));
        self
    }

    fn get(&self, kind: &str) -> Option<LayerBuilder> {
        self.builders.iter().find(|(k, _)| k == kind).map(|(_, b)| *b)
    }

    fn names(&self) -> String {
        self.builders.iter().map(|(k, _)| format!(", {k}")).collect()
    }
}

/// A model from spec JSON text.
pub fn parse(json: &str) -> Result<Model> {
    parse_with(json, &Registry::new())
}

/// A model from spec JSON text whose layers may also be of `registry`'s types.
pub fn parse_with(json: &str, registry: &Registry) -> Result<Model> {
    let value: Value = serde_json::from_str(json).map_err(|e| spec_err(format!("not valid JSON: {e}")))?;
    let root = value.as_object().ok_or_else(|| spec_err("the spec must be a JSON object".into()))?;
    check_fields(root, &["input", "layers", "loss"], "the spec")?;
    let (input, seq) = parse_input(root)?;
    let loss = match root.get("loss").and_then(Value::as_str) {
        Some("mse") => Loss::Mse,
        Some("cross_entropy") => Loss::CrossEntropy,
        Some(other) => return Err(spec_err(format!("loss: unknown loss `{other}` (mse, cross_entropy)"))),
        None => return Err(spec_err("loss: missing; use \"mse\" or \"cross_entropy\"".into())),
    };
    let entries =
        root.get("layers").and_then(Value::as_array).ok_or_else(|| spec_err("layers: missing or not a list".into()))?;
    if entries.is_empty() {
        return Err(spec_err("layers: the list is empty".into()));
    }
    let mut layers: Vec<Box<dyn Layer>> = Vec::with_capacity(entries.len());
    let mut width = input;
    for (i, entry) in entries.iter().enumerate() {
        let layer = parse_layer(entry, i, width, seq, registry)?;
        width = layer.out_features();
        layers.push(layer);
    }
    if seq.is_some() && loss != Loss::CrossEntropy {
        return Err(spec_err("loss: a token model trains with \"cross_entropy\" over next tokens".into()));
    }
    let model = match seq {
        Some(seq) => Model::tokens(input, seq, layers, loss),
        None => Model::new(input, layers, loss),
    };
    model.map_err(|e| spec_err(e.to_string()))
}

/// `input`: a feature width, or `{"tokens": V, "seq": T}` for a token model.
fn parse_input(root: &Map<String, Value>) -> Result<(usize, Option<usize>)> {
    match root.get("input") {
        Some(Value::Object(obj)) => {
            check_fields(obj, &["tokens", "seq"], "input")?;
            Ok((positive(obj, "tokens", "input.tokens")?, Some(positive(obj, "seq", "input.seq")?)))
        }
        _ => Ok((positive(root, "input", "input")?, None)),
    }
}

fn parse_layer(
    entry: &Value,
    i: usize,
    width: usize,
    seq: Option<usize>,
    registry: &Registry,
) -> Result<Box<dyn Layer>> {
    let at = format!("layers[{i}]");
    let obj = entry.as_object().ok_or_else(|| spec_err(format!("{at}: must be an object")))?;
    let kind = obj.get("type").and_then(Value::as_str).ok_or_else(|| spec_err(format!("{at}.type: missing")))?;
    Ok(match kind {
        "linear" => {
            check_fields(obj, &["type", "out", "activation"], &at)?;
            let out = positive(obj, "out", &format!("{at}.out"))?;
            let activation = parse_activation(obj.get("activation"), &at)?;
            Box::new(Linear { inp: width, out, activation })
        }
        "residual_mlp" => {
            check_fields(obj, &["type", "hidden"], &at)?;
            let hidden = positive(obj, "hidden", &format!("{at}.hidden"))?;
            Box::new(ResidualMlp { width, hidden })
        }
        "layernorm" => {
            check_fields(obj, &["type"], &at)?;
            Box::new(LayerNorm { width })
        }
        "embedding" => {
            check_fields(obj, &["type", "dim"], &at)?;
            let seq = match (i, seq) {
                (0, Some(seq)) => seq,
                _ => {
                    return Err(spec_err(format!(
                        "{at}: an embedding must be layer 0 of a model whose input is tokens"
                    )))
                }
            };
            Box::new(Embedding { vocab: width, seq, dim: positive(obj, "dim", &format!("{at}.dim"))? })
        }
        "transformer_block" => parse_block(obj, &at, width, seq)?,
        other => match registry.get(other) {
            Some(build) => build(obj, width, &at)?,
            None => {
                return Err(spec_err(format!(
                    "{at}.type: unknown layer type `{other}` (linear, residual_mlp, layernorm, embedding, \
                     transformer_block{})",
                    registry.names()
                )))
            }
        },
    })
}

fn parse_block(obj: &Map<String, Value>, at: &str, width: usize, seq: Option<usize>) -> Result<Box<dyn Layer>> {
    check_fields(obj, &["type", "heads", "hidden", "dropout"], at)?;
    let Some(seq) = seq else {
        return Err(spec_err(format!("{at}: a transformer_block needs a token input ({{\"tokens\": V, \"seq\": T}})")));
    };
    let heads = positive(obj, "heads", &format!("{at}.heads"))?;
    if !width.is_multiple_of(heads) {
        return Err(spec_err(format!("{at}.heads: {heads} heads do not divide the width {width}")));
    }
    let hidden = positive(obj, "hidden", &format!("{at}.hidden"))?;
    let dropout = match obj.get("dropout") {
        None => 0.0,
        Some(v) => match v.as_f64() {
            Some(p) if (0.0..1.0).contains(&p) => p as f32,
            _ => return Err(spec_err(format!("{at}.dropout: must be a number in [0, 1)"))),
        },
    };
    Ok(Box::new(TransformerBlock { width, heads, hidden, seq, dropout }))
}

fn parse_activation(value: Option<&Value>, at: &str) -> Result<Option<Activation>> {
    match value.map(|v| v.as_str()) {
        None | Some(Some("none")) => Ok(None),
        Some(Some("relu")) => Ok(Some(Activation::Relu)),
        Some(Some("gelu")) => Ok(Some(Activation::Gelu)),
        Some(Some("tanh")) => Ok(Some(Activation::Tanh)),
        Some(Some(other)) => {
            Err(spec_err(format!("{at}.activation: unknown activation `{other}` (none, relu, gelu, tanh)")))
        }
        Some(None) => Err(spec_err(format!("{at}.activation: must be a string"))),
    }
}

/// `obj[key]` as a positive integer (at most 2^24), or an error naming `at`;
/// for custom layer builders too.
pub fn positive(obj: &Map<String, Value>, key: &str, at: &str) -> Result<usize> {
    match obj.get(key).and_then(Value::as_u64) {
        Some(n) if n > 0 && n <= 1 << 24 => Ok(n as usize),
        _ => Err(spec_err(format!("{at}: must be a positive integer (at most 16777216)"))),
    }
}

/// Refuses fields of `obj` outside `allowed`, naming `at`; for custom layer builders too.
pub fn check_fields(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(spec_err(format!("{at}: unknown field `{k}` (allowed: {})", allowed.join(", ")))),
        None => Ok(()),
    }
}

fn spec_err(detail: String) -> Error {
    Error::Spec(detail)
}

/// Builds models from spec JSON for pipeline workers, which receive the
/// spec from the coordinator. They run on the process's default backend.
pub fn factory() -> baton_engine::pipeline::worker::ModelFactory {
    Box::new(|json: &str| parse(json).map_err(|e| baton_engine::Error::Model(e.to_string())))
}

/// Like [`factory`], with every model running on `backend` (opened, and so
/// checked, before the worker starts: building a model cannot fail on it)
/// and layers of `registry`'s types as well as the built-ins.
pub fn factory_on(backend: baton_engine::Backend, registry: Registry) -> baton_engine::pipeline::worker::ModelFactory {
    Box::new(move |json: &str| {
        let model = parse_with(json, &registry).map_err(|e| baton_engine::Error::Model(e.to_string()))?;
        Ok(model.with_backend(backend.clone()))
    })
}

/// Like [`factory`], knowing `registry`'s layer types too (for in-memory jobs).
pub fn factory_with(registry: Registry) -> baton_engine::pipeline::worker::ModelFactory {
    Box::new(move |json: &str| parse_with(json, &registry).map_err(|e| baton_engine::Error::Model(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn mlp12_has_pytorch_names_and_shapes() {
        let model = mlp12();
        let specs = model.param_specs();
        assert_eq!(specs.len(), 24);
        assert_eq!(specs[0].name, "layers.0.weight");
        assert_eq!(specs[0].shape, vec![64, 64]);
        assert_eq!(specs[23].name, "layers.11.bias");
        assert_eq!(model.loss, Loss::Mse);
    }

    #[test]
    fn residual_mlp_names_follow_pytorch() {
        let model =
            parse(r#"{"input": 8, "layers": [{"type": "residual_mlp", "hidden": 16}], "loss": "mse"}"#).unwrap();
        let names: Vec<String> = model.param_specs().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
                .map(|n| format!("layers.0.{n}"))
        );
    }

    #[test]
    fn errors_name_the_offending_field() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err(r#"{"input": 4, "layers": [], "loss": "mse"}"#).contains("layers: the list is empty"));
        let bad_act =
            r#"{"input": 4, "layers": [{"type": "linear", "out": 2, "activation": "sigmoid"}], "loss": "mse"}"#;
        assert!(err(bad_act).contains("layers[0].activation: unknown activation `sigmoid`"));
        let bad_type = r#"{"input": 4, "layers": [{"type": "linear", "out": 2}, {"type": "conv"}], "loss": "mse"}"#;
        assert!(err(bad_type).contains("layers[1].type: unknown layer type `conv`"));
        let bad_out = r#"{"input": 4, "layers": [{"type": "linear", "out": 0}], "loss": "mse"}"#;
        assert!(err(bad_out).contains("layers[0].out: must be a positive integer"));
        let bad_loss = r#"{"input": 4, "layers": [{"type": "linear", "out": 2}], "loss": "hinge"}"#;
        assert!(err(bad_loss).contains("loss: unknown loss `hinge`"));
        let extra = r#"{"input": 4, "layers": [{"type": "layernorm", "eps": 1}], "loss": "mse"}"#;
        assert!(err(extra).contains("layers[0]: unknown field `eps`"));
        assert!(
            err(r#"{"layers": [{"type": "layernorm"}], "loss": "mse"}"#).contains("input: must be a positive integer")
        );
    }

    #[test]
    fn load_reports_missing_file() {
        let msg = load("/nonexistent/spec.json").unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/spec.json"), "{msg}");
    }
}
