//! The checkpoint format: one safetensors file per stage, a JSON manifest
//! with their SHA-256, and a `latest` pointer switched last.
//!
//! ```text
//! DIR/latest                          "ckpt-00000003" (atomically replaced)
//! DIR/ckpt-00000003/manifest.json     next step, run settings, data position, parts
//! DIR/ckpt-00000003/layers-0000-0004.safetensors
//! DIR/ckpt-00000003/layers-0004-0012.safetensors
//! ```
//!
//! Each part holds its layers' weights under their PyTorch names
//! (`layers.3.weight`) and their optimizer state: `optim.exp_avg.<param>`,
//! `optim.exp_avg_sq.<param>` (Adam, AdamW), `optim.momentum_buffer.<param>`
//! (SGD with momentum), all F32 of the parameter's shape, and
//! `optim.step.<param>`, an I64 scalar (updates applied). The metadata
//! holds `spec`, `optimizer`, `next_step` and `layers`.
//!
//! Invariant (atomicity): parts are written into `ckpt-N.tmp`, the manifest
//! last, the directory renamed to `ckpt-N`, and only then `latest` is
//! replaced by a rename; older generations are pruned after. A reader that
//! follows `latest` sees a complete checkpoint whatever moment a writer
//! was killed at. The bytes of a part depend only on the run's state at
//! that step, so a killed run's leftovers and a resumed run's files agree.

mod load;

pub use load::{load, load_layers, Loaded};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use baton_engine::pipeline::checkpoint::{CheckpointStore, SavedPart, Snapshot};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The manifest's name inside a generation's directory.
pub const MANIFEST: &str = "manifest.json";
/// The pointer file naming the current generation.
pub const LATEST: &str = "latest";
/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;

/// What a resumed run must agree on to continue bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The model spec (JSON).
    pub spec: String,
    pub optimizer: String,
    pub lr_schedule: String,
    pub microbatches: usize,
    pub batch: usize,
    pub seed: u64,
    pub clip_grad_norm: Option<f32>,
    /// The `--data` source (its text, or "synthetic").
    pub data: String,
    /// The run's total `--steps` (a non-constant learning-rate schedule
    /// depends on it).
    pub steps: usize,
}

/// Where a token stream stands: windows drawn so far from the stream of `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPosition {
    pub seed: u64,
    pub windows: u64,
}

/// One part's entry in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    pub file: String,
    pub first: u32,
    pub end: u32,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`: the generation's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The next step to run: steps `0..next_step` are in the weights.
    pub next_step: u32,
    pub run: RunSettings,
    /// With token data: the sampler's position after `next_step` steps;
    /// otherwise the data position is the step index itself.
    pub tokens: Option<TokenPosition>,
    pub parts: Vec<PartEntry>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |cause| Error::Io { path: path.display().to_string(), cause }
}

/// The directory name of the generation whose next step is `step`.
pub fn generation_name(step: u32) -> String {
    format!("ckpt-{step:08}")
}

fn pending_dir(dir: &Path, step: u32) -> PathBuf {
    dir.join(format!("{}.tmp", generation_name(step)))
}

/// Writes `snapshot` (one stage's layers) into the pending generation of
/// `dir`; returns the part's entry with its SHA-256.
pub fn write_part(dir: &Path, spec: &str, optimizer: &str, snapshot: &Snapshot) -> Result<SavedPart> {
    let pending = pending_dir(dir, snapshot.step);
    std::fs::create_dir_all(&pending).map_err(io_error(&pending))?;
    let file = format!("layers-{:04}-{:04}.safetensors", snapshot.first, snapshot.end);
    let path = pending.join(&file);
    let bytes = encode_part(&path, spec, optimizer, snapshot)?;
    crate::io::write_atomically(&path, &bytes)?;
    let sha256 = sha256_hex(&bytes);
    let (first, end, bytes) = (snapshot.first, snapshot.end, bytes.len() as u64);
    Ok(SavedPart { file, first, end, sha256, bytes })
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The part's safetensors bytes: weights, optimizer buffers and step counts.
fn encode_part(path: &Path, spec: &str, optimizer: &str, snapshot: &Snapshot) -> Result<Vec<u8>> {
    let file_error = |detail: String| Error::File { path: path.display().to_string(), detail };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (name, t) in &snapshot.params {
        let values = t.values().map_err(|e| file_error(format!("cannot save `{name}`: {e}")))?;
        tensors.push((name.clone(), Dtype::F32, t.shape().to_vec(), f32_bytes(values)));
    }
    let adam = !optimizer.starts_with("sgd");
    for (name, state) in &snapshot.optim {
        let shape = snapshot.params.iter().find(|(n, _)| n == name).map(|(_, t)| t.shape().to_vec());
        let shape = shape.ok_or_else(|| file_error(format!("optimizer state of `{name}`, which it does not hold")))?;
        let kinds: &[&str] = if adam { &["exp_avg", "exp_avg_sq"] } else { &["momentum_buffer"] };
        for (kind, buffer) in kinds.iter().zip(&state.buffers) {
            tensors.push((format!("optim.{kind}.{name}"), Dtype::F32, shape.clone(), f32_bytes(buffer)));
        }
        let step = i64::try_from(state.step).map_err(|_| file_error(format!("`{name}`: step count overflows")))?;
        tensors.push((format!("optim.step.{name}"), Dtype::I64, Vec::new(), step.to_le_bytes().to_vec()));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = TensorView::new(*dtype, shape.clone(), data);
            view.map(|v| (name.as_str(), v)).map_err(|e| file_error(format!("cannot encode `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let plain = safetensors::serialize(views, None).map_err(|e| file_error(format!("cannot encode: {e}")))?;
    let metadata = HashMap::from([
        ("spec".to_string(), spec.to_string()),
        ("optimizer".to_string(), optimizer.to_string()),
        ("next_step".to_string(), snapshot.step.to_string()),
        ("layers".to_string(), format!("{}..{}", snapshot.first, snapshot.end)),
    ]);
    crate::io::with_sorted_metadata(&plain, Some(metadata)).map_err(file_error)
}

/// Makes the pending generation of `step` (whose parts are all written)
/// the current checkpoint of `dir`: manifest, rename, `latest`, prune.
/// Returns the generation's directory.
pub fn commit(
    dir: &Path,
    step: u32,
    parts: &[SavedPart],
    run: &RunSettings,
    tokens: Option<TokenPosition>,
) -> Result<PathBuf> {
    let pending = pending_dir(dir, step);
    let parts = parts
        .iter()
        .map(|p| PartEntry {
            file: p.file.clone(),
            first: p.first,
            end: p.end,
            sha256: p.sha256.clone(),
            bytes: p.bytes,
        })
        .collect();
    let manifest = Manifest { format: FORMAT, next_step: step, run: run.clone(), tokens, parts };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::File {
        path: pending.join(MANIFEST).display().to_string(),
        detail: format!("cannot encode the manifest: {e}"),
    })?;
    crate::io::write_atomically(&pending.join(MANIFEST), text.as_bytes())?;
    let name = generation_name(step);
    let done = dir.join(&name);
    if done.exists() {
        // A complete generation of this step from a run killed before it
        // switched `latest`: not current, so it may go.
        std::fs::remove_dir_all(&done).map_err(io_error(&done))?;
    }
    std::fs::rename(&pending, &done).map_err(io_error(&pending))?;
    sync_dir(dir)?;
    crate::io::write_atomically(&dir.join(LATEST), format!("{name}\n").as_bytes())?;
    sync_dir(dir)?;
    prune(dir, step)?;
    Ok(done)
}

/// Flushes a directory's entries (renames) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Removes generations older than `step` (complete or pending).
fn prune(dir: &Path, step: u32) -> Result<()> {
    for (path, gen_step, _) in generations(dir)? {
        if gen_step < step {
            std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// Every `ckpt-N` and `ckpt-N.tmp` directory in `dir`: (path, N, pending).
fn generations(dir: &Path) -> Result<Vec<(PathBuf, u32, bool)>> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ckpt-") else { continue };
        let (digits, pending) = match rest.strip_suffix(".tmp") {
            Some(d) => (d, true),
            None => (rest, false),
        };
        if let Ok(step) = digits.parse::<u32>() {
            out.push((entry.path(), step, pending));
        }
    }
    Ok(out)
}

/// Prepares `dir` for a run: creates it, and removes pending generations a
/// killed run left (never the current one).
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for (path, _, pending) in generations(dir)? {
        if pending {
            std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// Checkpoints on a local disk (or shared storage), for in-memory jobs:
/// the same writes and commits the process drivers make.
pub struct DiskStore {
    pub dir: PathBuf,
    pub run: RunSettings,
    /// With token data: the sampler's position before each step (empty
    /// for other data).
    pub tokens: BTreeMap<u32, TokenPosition>,
}

impl CheckpointStore for DiskStore {
    fn write_part(
        &mut self,
        dir: &str,
        spec: &str,
        optimizer: &str,
        snapshot: &Snapshot,
    ) -> std::result::Result<SavedPart, String> {
        write_part(Path::new(dir), spec, optimizer, snapshot).map_err(|e| e.to_string())
    }

    fn commit(&mut self, step: u32, parts: &[SavedPart]) -> baton_engine::Result<()> {
        let tokens = self.tokens.get(&step).copied();
        commit(&self.dir, step, parts, &self.run, tokens)
            .map(drop)
            .map_err(|e| baton_engine::Error::Usage(format!("writing the checkpoint: {e}")))
    }

    fn load(
        &mut self,
        dir: &str,
        optimizer: &str,
        step: u32,
        layers: std::ops::Range<u32>,
        parts: &[SavedPart],
    ) -> std::result::Result<baton_engine::pipeline::checkpoint::Restored, String> {
        load_layers(Path::new(dir), step, layers, parts, optimizer).map_err(|e| e.to_string())
    }
}
