//! safetensors I/O of weights, data and golden expectations.
//!
//! Weights are stored under the model's PyTorch parameter names
//! (`layers.3.weight`), so PyTorch users can bring them in and take them
//! out. Data is `data.x` `[steps, batch, input]` f32 and `data.y`
//! `[steps, batch, out]` f32 (mse) or `[steps, batch]` i64 (cross_entropy).
//! One file may hold weights, data and other tensors side by side.
//!
//! Invariant: every reader checks name, dtype and shape before touching data
//! and reports a mismatch as [`Error::File`] naming the file and the tensor,
//! never by panicking.

use std::collections::HashMap;
use std::path::Path;

use baton_engine::init::SplitMix64;
use baton_engine::{Batch, Loss, Model, ParamStore, Targets, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// Name of the input tensor in a data file.
pub const DATA_X: &str = "data.x";
/// Name of the target tensor in a data file.
pub const DATA_Y: &str = "data.y";

fn file_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), detail: detail.into() }
}

/// Appends `(hint)` to the detail of a file error.
fn hint(error: Error, hint: &str) -> Error {
    match error {
        Error::File { path, detail } => Error::File { path, detail: format!("{detail} ({hint})") },
        other => other,
    }
}

/// The whole file's bytes.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|cause| Error::Io { path: path.display().to_string(), cause })
}

/// Parses the safetensors header of `bytes` (read from `path`).
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))
}

/// The tensor called `name`, or an error saying it is missing.
fn tensor<'a>(path: &Path, st: &SafeTensors<'a>, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name).map_err(|_| file_error(path, format!("tensor `{name}` is missing")))
}

/// Checks dtype and shape of `view` (tensor `name`); `None` dims match anything.
fn check(path: &Path, name: &str, view: &TensorView<'_>, dtype: Dtype, shape: &[Option<usize>]) -> Result<()> {
    if view.dtype() != dtype {
        return Err(file_error(path, format!("tensor `{name}` has dtype {}, expected {dtype}", view.dtype())));
    }
    let fits = view.shape().len() == shape.len()
        && view.shape().iter().zip(shape).all(|(&got, want)| want.is_none_or(|w| w == got));
    if !fits {
        let expected: Vec<String> = shape.iter().map(|d| d.map_or("_".into(), |d| d.to_string())).collect();
        return Err(file_error(
            path,
            format!("tensor `{name}` has shape {:?}, expected [{}]", view.shape(), expected.join(", ")),
        ));
    }
    Ok(())
}

/// Decodes little-endian f32 data (dtype already checked).
fn f32_data(view: &TensorView<'_>) -> Vec<f32> {
    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Decodes little-endian i64 data (dtype already checked).
fn i64_data(view: &TensorView<'_>) -> Vec<i64> {
    view.data().chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect()
}

fn to_tensor(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Tensor> {
    Tensor::new(view.shape().to_vec(), f32_data(view)).map_err(|e| file_error(path, format!("tensor `{name}`: {e}")))
}

/// Reads every parameter of `model` by its PyTorch name. Each parameter
/// must be present, F32 and of the model's shape; a tensor under `layers.`
/// that the model lacks is refused, naming it, as PyTorch's
/// `load_state_dict(strict=True)` does (a typo must not go unnoticed).
/// Other tensors (`data.*`, `expect.*`) may sit beside the parameters.
pub fn load_params(path: &Path, model: &Model) -> Result<ParamStore> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let specs = model.param_specs();
    let mut unexpected: Vec<String> = st
        .names()
        .into_iter()
        .filter(|name| name.starts_with("layers.") && !specs.iter().any(|s| s.name == *name))
        .map(str::to_string)
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        let shown = unexpected.iter().take(8).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let more = if unexpected.len() > 8 { format!(" and {} more", unexpected.len() - 8) } else { String::new() };
        return Err(file_error(
            path,
            format!("holds {shown}{more}, which the model has no parameter for (check the names and the spec)"),
        ));
    }
    let mut params = ParamStore::new();
    for spec in specs {
        let view = tensor(path, &st, &spec.name)
            .map_err(|_| file_error(path, format!("parameter `{}` (shape {:?}) is missing", spec.name, spec.shape)))?;
        let shape: Vec<Option<usize>> = spec.shape.iter().copied().map(Some).collect();
        check(path, &spec.name, &view, Dtype::F32, &shape)?;
        params.insert(spec.name.clone(), to_tensor(path, &spec.name, &view)?);
    }
    Ok(params)
}

/// Writes `params` as F32 little-endian tensors under their names, with
/// optional string metadata (the CLI stores spec, steps and optimizer).
/// The bytes depend only on the tensors and the metadata: tensors in the
/// safetensors crate's order (dtype, then name), metadata keys sorted.
pub fn save_params(path: &Path, params: &ParamStore, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|(name, t)| {
            let values = t.values().map_err(|e| file_error(path, format!("cannot save `{name}`: {e}")))?;
            Ok((name.clone(), t.shape().to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.as_str(), view))
                .map_err(|e| file_error(path, format!("cannot encode tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let plain =
        safetensors::serialize(views, None).map_err(|e| file_error(path, format!("cannot encode safetensors: {e}")))?;
    let bytes = with_sorted_metadata(&plain, metadata).map_err(|detail| file_error(path, detail))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader (or a crash) sees the old file or the new one, never a
/// torn mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |cause| Error::Io { path: path.display().to_string(), cause };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// `file` (a safetensors file written without metadata) with `metadata`
/// added to its header as `__metadata__`, keys in sorted order. The crate
/// writes metadata from a `HashMap`, whose order changes from run to run;
/// the tensors' offsets are relative to the data section, so they stay valid.
pub(crate) fn with_sorted_metadata(
    file: &[u8],
    metadata: Option<HashMap<String, String>>,
) -> std::result::Result<Vec<u8>, String> {
    let Some(metadata) = metadata else { return Ok(file.to_vec()) };
    let n = u64::from_le_bytes(file[..8].try_into().map_err(|_| "short safetensors header")?) as usize;
    let header = std::str::from_utf8(&file[8..8 + n]).map_err(|_| "safetensors header is not UTF-8")?.trim_end();
    let tensors = header.strip_prefix('{').ok_or("safetensors header is not a JSON object")?;
    let sorted: std::collections::BTreeMap<String, String> = metadata.into_iter().collect();
    let sorted = serde_json::to_string(&sorted).map_err(|e| format!("cannot encode metadata: {e}"))?;
    let separator = if tensors.trim_start().starts_with('}') { "" } else { "," };
    let mut header = format!("{{\"__metadata__\":{sorted}{separator}{tensors}").into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + file.len() - 8 - n);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    out.extend(&file[8 + n..]);
    Ok(out)
}

/// Every F32 tensor whose name starts with `prefix`, stored under its name
/// with the prefix stripped (an empty prefix reads all F32 tensors).
/// Tensors of other dtypes are skipped.
pub fn load_tensors(path: &Path, prefix: &str) -> Result<ParamStore> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let mut out = ParamStore::new();
    for (name, view) in st.iter() {
        let Some(stripped) = name.strip_prefix(prefix) else {
            continue;
        };
        if view.dtype() == Dtype::F32 {
            out.insert(stripped, to_tensor(path, name, &view)?);
        }
    }
    Ok(out)
}

/// The tensor called `name`, which must be F32.
pub fn load_f32(path: &Path, name: &str) -> Result<Tensor> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let view = tensor(path, &st, name)?;
    if view.dtype() != Dtype::F32 {
        return Err(file_error(path, format!("tensor `{name}` has dtype {}, expected F32", view.dtype())));
    }
    to_tensor(path, name, &view)
}

/// The file's string metadata (empty when it has none).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = read_bytes(path)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}

/// How many steps of data the file holds (the first dimension of `data.x`).
pub fn data_steps(path: &Path) -> Result<usize> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let x = tensor(path, &st, DATA_X)?;
    let dtype = if x.dtype() == Dtype::I64 { Dtype::I64 } else { Dtype::F32 };
    check(path, DATA_X, &x, dtype, &[None, None, None])?;
    Ok(x.shape()[0])
}

/// Reads the first `steps` batches of a data file for `model`. Errors name
/// the tensor (and for bad classes the step and row) that does not fit.
pub fn load_data(path: &Path, model: &Model, steps: usize) -> Result<Vec<Batch>> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    if let Some(seq) = model.seq {
        return load_token_data(path, &st, model, seq, steps);
    }
    let x = tensor(path, &st, DATA_X)?;
    check(path, DATA_X, &x, Dtype::F32, &[None, None, Some(model.input)])?;
    let (held, batch) = (x.shape()[0], x.shape()[1]);
    if steps > held {
        return Err(file_error(path, format!("{steps} steps requested but `{DATA_X}` holds only {held}")));
    }
    if batch == 0 {
        return Err(file_error(path, format!("`{DATA_X}` has an empty batch dimension")));
    }
    let y = tensor(path, &st, DATA_Y)?;
    let xs = f32_data(&x);
    let targets = match model.loss {
        Loss::Mse => mse_targets(path, &y, held, batch, model.output(), steps)?,
        Loss::CrossEntropy => class_targets(path, &y, held, batch, model.output(), steps)?,
    };
    let row = batch * model.input;
    targets
        .into_iter()
        .enumerate()
        .map(|(s, t)| {
            let x = Tensor::new(vec![batch, model.input], xs[s * row..(s + 1) * row].to_vec())?;
            Batch::new(x, t).map_err(|e| file_error(path, format!("step {s}: {e}")))
        })
        .collect()
}

/// Token data: `data.x` and `data.y` i64 `[held, batch, seq]`, ids below
/// the vocabulary (x) and the output width (y).
fn load_token_data(path: &Path, st: &SafeTensors<'_>, model: &Model, seq: usize, steps: usize) -> Result<Vec<Batch>> {
    let (x, y) = (tensor(path, st, DATA_X)?, tensor(path, st, DATA_Y)?);
    check(path, DATA_X, &x, Dtype::I64, &[None, None, Some(seq)])
        .map_err(|e| hint(e, "a token model needs i64 token ids [steps, batch, seq]"))?;
    let (held, batch) = (x.shape()[0], x.shape()[1]);
    if steps > held {
        return Err(file_error(path, format!("{steps} steps requested but `{DATA_X}` holds only {held}")));
    }
    if batch == 0 {
        return Err(file_error(path, format!("`{DATA_X}` has an empty batch dimension")));
    }
    check(path, DATA_Y, &y, Dtype::I64, &[Some(held), Some(batch), Some(seq)])
        .map_err(|e| hint(e, "a token model needs i64 next-token targets [steps, batch, seq]"))?;
    let per = batch * seq;
    let xs = token_ids(path, DATA_X, &i64_data(&x)[..steps * per], batch, seq, model.input)?;
    let ys = token_ids(path, DATA_Y, &i64_data(&y)[..steps * per], batch, seq, model.output())?;
    (0..steps)
        .map(|s| {
            let x = Tensor::from_ids(vec![batch, seq], xs[s * per..(s + 1) * per].to_vec())?;
            let t = Tensor::from_ids(vec![batch, seq], ys[s * per..(s + 1) * per].to_vec())?;
            Batch::new(x, Targets::Classes(t)).map_err(|e| file_error(path, format!("step {s}: {e}")))
        })
        .collect()
}

/// i64 ids as u32, each in `0..limit`; the error names step, row and position.
fn token_ids(path: &Path, name: &str, values: &[i64], batch: usize, seq: usize, limit: usize) -> Result<Vec<u32>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v >= 0 && (v as u64) < limit as u64 {
                return Ok(v as u32);
            }
            let (s, r, t) = (i / (batch * seq), i / seq % batch, i % seq);
            let detail = format!("`{name}` step {s} row {r} position {t} holds token {v}, outside 0..{limit}");
            Err(file_error(path, detail))
        })
        .collect()
}

/// `data.y` as `[held, batch, out]` f32 regression targets, first `steps` steps.
fn mse_targets(
    path: &Path,
    y: &TensorView<'_>,
    held: usize,
    batch: usize,
    out: usize,
    steps: usize,
) -> Result<Vec<Targets>> {
    check(path, DATA_Y, y, Dtype::F32, &[Some(held), Some(batch), Some(out)])
        .map_err(|e| hint(e, "mse needs f32 targets [steps, batch, outputs]"))?;
    let ys = f32_data(y);
    let per = batch * out;
    (0..steps)
        .map(|s| Ok(Targets::Values(Tensor::new(vec![batch, out], ys[s * per..(s + 1) * per].to_vec())?)))
        .collect()
}

/// `data.y` as `[held, batch]` i64 class indices in `0..classes`, first `steps` steps.
fn class_targets(
    path: &Path,
    y: &TensorView<'_>,
    held: usize,
    batch: usize,
    classes: usize,
    steps: usize,
) -> Result<Vec<Targets>> {
    check(path, DATA_Y, y, Dtype::I64, &[Some(held), Some(batch)])
        .map_err(|e| hint(e, "cross_entropy needs i64 class indices [steps, batch]"))?;
    let ys = i64_data(y);
    (0..steps)
        .map(|s| {
            let row = &ys[s * batch..(s + 1) * batch];
            let mut out = Vec::with_capacity(batch);
            for (r, &class) in row.iter().enumerate() {
                if class < 0 || class as u64 >= classes as u64 {
                    let detail = format!("`{DATA_Y}` step {s} row {r} has class {class}, outside 0..{classes}");
                    return Err(file_error(path, detail));
                }
                out.push(class as u32);
            }
            Ok(Targets::Classes(Tensor::from_ids(vec![batch], out)?))
        })
        .collect()
}

/// Deterministic training data for runs without a data file: inputs uniform
/// in [-1, 1]; targets from a fixed random linear map `A x` (same for every
/// step of a seed): `tanh(A x)` for mse, `argmax(A x)` for cross-entropy.
/// Learnable by construction, and identical on every machine for a seed.
pub fn synthetic_data(model: &Model, steps: usize, batch: usize, seed: u64) -> Vec<Batch> {
    if let Some(seq) = model.seq {
        return synthetic_tokens(model.input.min(model.output()), seq, steps, batch, seed);
    }
    let (input, out) = (model.input, model.output());
    let mut rng = SplitMix64::new(seed ^ 0x5EED_DA7A_0000_0001);
    let scale = 2.0 / (input.max(1) as f32).sqrt();
    let map: Vec<f32> = (0..out * input).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
    (0..steps)
        .map(|_| {
            let x: Vec<f32> = (0..batch * input).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let z = apply_map(&map, &x, input, out);
            let targets = match model.loss {
                Loss::Mse => Targets::Values(tensor_of(vec![batch, out], z.iter().map(|&v| libm::tanhf(v)).collect())),
                Loss::CrossEntropy => {
                    let classes = z.chunks_exact(out.max(1)).map(argmax).collect();
                    Targets::Classes(Tensor::from_ids(vec![batch], classes).expect("one class per row"))
                }
            };
            Batch { x: tensor_of(vec![batch, input], x), targets }
        })
        .collect()
}

fn tensor_of(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
    Tensor::new(shape, data).expect("synthetic data has the shape's element count")
}

/// Synthetic token sequences for a token model without a data file: each
/// row is a stream where the next token is `(3 t + 1) mod vocab` with
/// probability 3/4 and a seeded random token otherwise, so a model can
/// learn it; x holds positions `0..seq` and y the next tokens.
fn synthetic_tokens(vocab: usize, seq: usize, steps: usize, batch: usize, seed: u64) -> Vec<Batch> {
    let mut rng = SplitMix64::new(seed ^ 0x5EED_70CE_0000_0002);
    let vocab = vocab.max(1) as u64;
    (0..steps)
        .map(|_| {
            let (mut xs, mut ys) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
            for _ in 0..batch {
                let mut t = rng.next_u64() % vocab;
                for _ in 0..seq {
                    let next =
                        if rng.next_u64().is_multiple_of(4) { rng.next_u64() % vocab } else { (3 * t + 1) % vocab };
                    xs.push(t as u32);
                    ys.push(next as u32);
                    t = next;
                }
            }
            let x = Tensor::from_ids(vec![batch, seq], xs).expect("batch x seq ids");
            let y = Tensor::from_ids(vec![batch, seq], ys).expect("batch x seq ids");
            Batch { x, targets: Targets::Classes(y) }
        })
        .collect()
}

/// `z[r, o] = Σ_i map[o, i] · x[r, i]`, summed in index order.
fn apply_map(map: &[f32], x: &[f32], input: usize, out: usize) -> Vec<f32> {
    let rows = x.len().checked_div(input).unwrap_or(0);
    let mut z = Vec::with_capacity(rows * out);
    for row in x.chunks_exact(input.max(1)) {
        for a in map.chunks_exact(input.max(1)) {
            z.push(a.iter().zip(row).map(|(a, x)| a * x).sum::<f32>());
        }
    }
    z
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests;
