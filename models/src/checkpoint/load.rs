//! Reading a checkpoint back: `latest`, the manifest, every part checked
//! against its SHA-256 before it is parsed.

use std::ops::Range;
use std::path::{Path, PathBuf};

use baton_engine::optim::OptState;
use baton_engine::pipeline::checkpoint::{Restored, SavedPart};
use baton_engine::{ParamStore, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::{Manifest, FORMAT, LATEST, MANIFEST};
use crate::{Error, Result};

/// A checkpoint read back: its manifest, every parameter, and the optimizer
/// state of every parameter updated so far.
#[derive(Debug)]
pub struct Loaded {
    /// The generation's directory.
    pub path: PathBuf,
    pub manifest: Manifest,
    pub params: ParamStore,
    pub optim: Vec<(String, OptState)>,
}

fn refuse(dir: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { dir: dir.display().to_string(), detail: detail.into() }
}

fn damaged(path: &Path, detail: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), detail: detail.into() }
}

/// Reads the current checkpoint of `dir`. A missing pointer or manifest is
/// an error saying so; a part whose bytes do not match the manifest's
/// SHA-256 is an error naming the file.
pub fn load(dir: &Path) -> Result<Loaded> {
    let pointer = dir.join(LATEST);
    let name = std::fs::read_to_string(&pointer).map_err(|e| {
        refuse(
            dir,
            format!("no checkpoint to resume from: cannot read `{LATEST}` ({e}); was --checkpoint-dir this directory?"),
        )
    })?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(damaged(&pointer, format!("names `{name}`, not a checkpoint generation")));
    }
    let path = dir.join(name);
    let manifest_path = path.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        damaged(&manifest_path, format!("the manifest of the current checkpoint is missing or unreadable ({e})"))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| damaged(&manifest_path, format!("not a valid checkpoint manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(damaged(&manifest_path, format!("format {}, this baton reads {FORMAT}", manifest.format)));
    }
    let (mut params, mut optim) = (ParamStore::new(), Vec::new());
    for part in &manifest.parts {
        let file = path.join(&part.file);
        let bytes = std::fs::read(&file)
            .map_err(|e| damaged(&file, format!("a part of the checkpoint is unreadable ({e})")))?;
        let sum = super::sha256_hex(&bytes);
        if sum != part.sha256 || bytes.len() as u64 != part.bytes {
            return Err(damaged(
                &file,
                format!(
                    "damaged: {} bytes with SHA-256 {sum}, the manifest says {} bytes with {}",
                    bytes.len(),
                    part.bytes,
                    part.sha256
                ),
            ));
        }
        read_part(&file, &bytes, &manifest.run.optimizer, &mut params, &mut optim)?;
    }
    Ok(Loaded { path, manifest, params, optim })
}

/// Reads layers `layers` of the checkpoint before `step` in `dir` from
/// `parts` (a fallback after a crash: the coordinator names the parts it
/// handed over to commit). A part is read from the committed generation,
/// else from the pending one (its commit may still be under way; the
/// rename between them is atomic, so the committed one is tried again
/// last). Each part is checked against its SHA-256; the layers must be
/// covered by the parts. Only the parameters of `layers` are kept.
///
/// With no `parts` named (the checkpoint a resumed run started from), the
/// manifest of the committed generation names them.
pub fn load_layers(
    dir: &Path,
    step: u32,
    layers: Range<u32>,
    parts: &[SavedPart],
    optimizer: &str,
) -> Result<Restored> {
    let listed = match parts.is_empty() {
        true => manifest_parts(dir, step)?,
        false => parts.to_vec(),
    };
    let parts = &listed[..];
    if let Some(gap) = layers.clone().find(|l| !parts.iter().any(|p| (p.first..p.end).contains(l))) {
        return Err(refuse(dir, format!("no part of the checkpoint before step {step} holds layer {gap}")));
    }
    let (mut params, mut optim) = (ParamStore::new(), Vec::new());
    let done = dir.join(super::generation_name(step));
    let pending = dir.join(format!("{}.tmp", super::generation_name(step)));
    for part in parts {
        let candidates = [done.join(&part.file), pending.join(&part.file), done.join(&part.file)];
        let read = candidates.iter().find_map(|f| std::fs::read(f).ok().map(|b| (f.clone(), b)));
        let (file, bytes) = read.ok_or_else(|| {
            damaged(&done.join(&part.file), "a part of the checkpoint to fall back to is missing or unreadable")
        })?;
        let sum = super::sha256_hex(&bytes);
        if sum != part.sha256 || bytes.len() as u64 != part.bytes {
            return Err(damaged(&file, format!("damaged: SHA-256 {sum}, the coordinator recorded {}", part.sha256)));
        }
        read_part(&file, &bytes, optimizer, &mut params, &mut optim)?;
    }
    let mine = |name: &str| layers.clone().any(|l| name.starts_with(&format!("layers.{l}.")));
    let params = params.into_iter().filter(|(n, _)| mine(n)).collect();
    optim.retain(|(n, _)| mine(n));
    Ok(Restored { step, first: layers.start, end: layers.end, params, optim })
}

/// The parts the manifest of the committed generation before `step` lists.
fn manifest_parts(dir: &Path, step: u32) -> Result<Vec<SavedPart>> {
    let path = dir.join(super::generation_name(step)).join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        damaged(&path, format!("the checkpoint to fall back to is not in the checkpoint directory ({e})"))
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| damaged(&path, format!("not a valid checkpoint manifest: {e}")))?;
    let part = |p: &super::PartEntry| SavedPart {
        file: p.file.clone(),
        first: p.first,
        end: p.end,
        sha256: p.sha256.clone(),
        bytes: p.bytes,
    };
    Ok(manifest.parts.iter().map(part).collect())
}

/// Adds a part's weights and optimizer state.
fn read_part(
    file: &Path,
    bytes: &[u8],
    optimizer: &str,
    params: &mut ParamStore,
    optim: &mut Vec<(String, OptState)>,
) -> Result<()> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| damaged(file, format!("not a valid safetensors file: {e}")))?;
    let kinds: &[&str] = if optimizer.starts_with("sgd") { &["momentum_buffer"] } else { &["exp_avg", "exp_avg_sq"] };
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names.iter().filter(|n| n.starts_with("layers.")) {
        params.insert(name.clone(), f32_tensor(file, &st, name)?);
    }
    for name in names.iter().filter_map(|n| n.strip_prefix("optim.step.")) {
        let view = st.tensor(&format!("optim.step.{name}")).map_err(|e| damaged(file, e.to_string()))?;
        if view.dtype() != Dtype::I64 || view.data().len() != 8 {
            return Err(damaged(file, format!("`optim.step.{name}` must be one I64")));
        }
        let step = i64::from_le_bytes(view.data().try_into().expect("8 bytes"));
        let step = u64::try_from(step).map_err(|_| damaged(file, format!("`optim.step.{name}` is negative")))?;
        let mut buffers = Vec::new();
        for kind in kinds {
            let key = format!("optim.{kind}.{name}");
            if names.contains(&key) {
                buffers.push(f32_tensor(file, &st, &key)?.values()?.to_vec());
            }
        }
        optim.push((name.to_string(), OptState { step, buffers }));
    }
    Ok(())
}

fn f32_tensor(file: &Path, st: &SafeTensors<'_>, name: &str) -> Result<Tensor> {
    let view = st.tensor(name).map_err(|e| damaged(file, format!("`{name}`: {e}")))?;
    if view.dtype() != Dtype::F32 {
        return Err(damaged(file, format!("`{name}` has dtype {}, expected F32", view.dtype())));
    }
    let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Tensor::new(view.shape().to_vec(), values).map_err(|e| damaged(file, format!("`{name}`: {e}")))
}
