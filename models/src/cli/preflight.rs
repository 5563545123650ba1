//! Checks `baton train` makes before any work is done: the files it reads
//! and writes (no output may overwrite an input or another output, every
//! output must be writable), and the memory the model needs.
//!
//! Invariant: these checks create nothing that was not there and change no
//! existing file. The writability probe of a file that does not exist yet
//! creates it exclusively and removes it at once; an existing file is opened
//! for writing without truncation and left as it was.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use baton_engine::{Model, OptimizerConfig};

/// A file named by a flag.
pub struct FileArg<'a> {
    pub flag: &'static str,
    pub path: &'a Path,
}

/// Collects the present `(flag, path)` pairs.
pub fn files<'a>(pairs: &[(&'static str, Option<&'a Path>)]) -> Vec<FileArg<'a>> {
    pairs.iter().filter_map(|&(flag, path)| path.map(|path| FileArg { flag, path })).collect()
}

/// Refuses outputs that name the same file as an input or another output
/// (compared after resolving `.`/`..` and symbolic links), then checks that
/// every output can be written.
pub fn check_files(inputs: &[FileArg<'_>], outputs: &[FileArg<'_>]) -> anyhow::Result<()> {
    let mut seen: Vec<(&FileArg<'_>, PathBuf, &str)> = Vec::new();
    for input in inputs {
        // A missing input is reported by whoever reads it, with its own message.
        if let Ok(path) = input.path.canonicalize() {
            seen.push((input, path, "reads"));
        }
    }
    for output in outputs {
        let path = resolved_output(output)?;
        if let Some((other, _, verb)) = seen.iter().find(|(_, p, _)| *p == path) {
            bail!(
                "{} {} is the file {} {} {}: choose another path, or it would be overwritten",
                output.flag,
                output.path.display(),
                other.flag,
                verb,
                other.path.display()
            );
        }
        seen.push((output, path, "writes"));
    }
    outputs.iter().try_for_each(check_writable)
}

/// The absolute, symlink-free path an output will have (its directory must exist).
fn resolved_output(output: &FileArg<'_>) -> anyhow::Result<PathBuf> {
    let FileArg { flag, path } = output;
    if path.is_dir() {
        bail!("{flag} {}: is a directory, expected a file name", path.display());
    }
    if let Ok(resolved) = path.canonicalize() {
        return Ok(resolved);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    ensure!(dir.is_dir(), "{flag} {}: directory {} does not exist", path.display(), dir.display());
    let name = path.file_name().with_context(|| format!("{flag} {}: expected a file name", path.display()))?;
    Ok(dir.canonicalize().with_context(|| format!("{flag} {}", path.display()))?.join(name))
}

/// Fails unless `output` can be written, leaving the file system as it was.
fn check_writable(output: &FileArg<'_>) -> anyhow::Result<()> {
    let FileArg { flag, path } = output;
    let cannot = |e: std::io::Error| anyhow::anyhow!("{flag} {}: cannot write there: {e}", path.display());
    if path.exists() {
        OpenOptions::new().write(true).open(path).map_err(cannot)?;
        return Ok(());
    }
    OpenOptions::new().write(true).create_new(true).open(path).map_err(cannot)?;
    std::fs::remove_file(path).map_err(cannot)
}

/// What a training run of `model` holds in memory, at least.
#[derive(Debug)]
pub struct MemoryEstimate {
    pub parameters: u128,
    pub optimizer: u128,
    pub gradients: u128,
    pub activations: u128,
    pub data: u128,
}

impl MemoryEstimate {
    /// Parameters, gradient sums and optimizer state (f32 each), the
    /// activations and their gradients of one `batch` through every layer
    /// boundary, and `data_rows` rows of inputs and targets. Layer-internal
    /// activations (a residual MLP's hidden layer) come on top.
    pub fn new(model: &Model, optimizer: &OptimizerConfig, batch: usize, data_rows: u128) -> MemoryEstimate {
        let params: u128 =
            model.param_specs().iter().map(|p| p.shape.iter().map(|&d| d as u128).product::<u128>()).sum();
        let buffers = match optimizer {
            OptimizerConfig::Sgd(c) if c.momentum == 0.0 => 0,
            OptimizerConfig::Sgd(_) => 1,
            OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => 2,
        };
        let widths: u128 = model.input as u128 + model.layers.iter().map(|l| l.out_features() as u128).sum::<u128>();
        MemoryEstimate {
            parameters: 4 * params,
            optimizer: 4 * params * buffers,
            gradients: 4 * params,
            activations: 2 * 4 * batch as u128 * widths,
            data: 4 * data_rows * (model.input as u128 + model.output() as u128),
        }
    }

    pub fn total(&self) -> u128 {
        self.parameters + self.optimizer + self.gradients + self.activations + self.data
    }

    /// Refuses a run that needs more than `limit` bytes, naming the layer
    /// with the most parameters (the spec field to shrink).
    pub fn check(&self, model: &Model, limit: u128) -> anyhow::Result<()> {
        if self.total() <= limit {
            return Ok(());
        }
        let largest = model.layers.iter().enumerate().max_by_key(|(_, l)| {
            l.params().iter().map(|p| p.shape.iter().map(|&d| d as u128).product::<u128>()).sum::<u128>()
        });
        let field = match largest {
            Some((i, l)) => format!(
                "; the largest layer is layers[{i}] ({}, in {}, out {})",
                l.kind(),
                l.in_features(),
                l.out_features()
            ),
            None => String::new(),
        };
        bail!(
            "the model needs about {} (parameters {}, gradients {}, optimizer state {}, activations {}, data {}) \
             but this machine has {} of memory{field}: make the spec smaller",
            bytes(self.total()),
            short(self.parameters),
            short(self.gradients),
            short(self.optimizer),
            short(self.activations),
            short(self.data),
            short(limit)
        )
    }
}

/// The machine's memory (`MemTotal` of /proc/meminfo), else 1 TiB.
pub fn memory_limit() -> u128 {
    let kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u128>().ok()
    });
    kib.map_or(1 << 40, |k| k * 1024)
}

/// `n` bytes in binary units, with the exact count.
fn bytes(n: u128) -> String {
    format!("{} ({n} bytes)", short(n))
}

/// `n` bytes in binary units.
fn short(n: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.json");
        check_files(&[], &[FileArg { flag: "--report", path: &new }]).unwrap();
        assert!(!new.exists());
        let old = dir.path().join("old.json");
        std::fs::write(&old, b"keep").unwrap();
        check_files(&[], &[FileArg { flag: "--report", path: &old }]).unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"keep");
    }

    #[test]
    fn the_same_file_under_two_names_collides() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("sub/../a.safetensors");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let err = check_files(&[], &[FileArg { flag: "--save", path: &a }, FileArg { flag: "--report", path: &b }])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--report") && err.contains("--save writes"), "{err}");
    }
}
