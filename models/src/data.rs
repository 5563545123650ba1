//! Token data sources for language models (DESIGN.md, "Data sources and
//! evaluation"): `text:FILE` (the file's bytes are the tokens, vocabulary
//! 256) and `tokens:FILE[,dtype=u16|u32]` (a flat little-endian token file,
//! nanoGPT's `train.bin`; default u16). Files are memory-mapped, so a file
//! larger than memory works: a batch touches only the pages of its windows.
//!
//! # The sampling rule
//!
//! Each step's batch is `batch` windows of `T + 1` consecutive tokens
//! (`x` = the first `T`, `y` = the last `T`, i.e. the next token of each).
//! Windows are numbered over the whole run from 0 (window `k` of step `s`
//! is number `s · batch + k`). Window number `n` starts at
//!
//! ```text
//! start(n) = u(n) mod (len − T),   u(n) = the n-th output (from 0) of SplitMix64 seeded with `seed`
//! ```
//!
//! (`len` tokens in the file, so every start leaves room for `T + 1`
//! tokens.) `u(n)` is computed directly, without drawing `u(0..n)` first:
//! SplitMix64's n-th output is its mixing function applied to
//! `seed + (n + 1) · 0x9E3779B97F4A7C15`. So the position in the stream is
//! one number, [`DataPosition::windows`], which a checkpoint stores and a
//! resumed run (on any worker) continues from. The modulo's bias is below
//! `len / 2^64`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use memmap2::Mmap;

use crate::{Error, Result};

/// How tokens are stored in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDtype {
    /// One byte per token (`text:FILE`).
    U8,
    /// Two bytes, little-endian.
    U16,
    /// Four bytes, little-endian.
    U32,
}

impl TokenDtype {
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U8 => 1,
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
}

/// Where training or evaluation data comes from (`--data`, `--eval-data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A safetensors file with `data.x` and `data.y`.
    Safetensors(PathBuf),
    /// A token stream: `text:FILE` (`U8`) or `tokens:FILE[,dtype=..]`.
    Tokens { path: PathBuf, dtype: TokenDtype },
}

impl FromStr for DataSource {
    type Err = Error;

    /// `text:FILE`, `tokens:FILE`, `tokens:FILE,dtype=u16|u32`, else a
    /// safetensors path.
    fn from_str(text: &str) -> Result<DataSource> {
        if let Some(path) = text.strip_prefix("text:") {
            return Ok(DataSource::Tokens { path: nonempty(text, path)?, dtype: TokenDtype::U8 });
        }
        let Some(rest) = text.strip_prefix("tokens:") else {
            return Ok(DataSource::Safetensors(nonempty(text, text)?));
        };
        let (path, dtype) = match rest.rsplit_once(",dtype=") {
            Some((path, "u16")) => (path, TokenDtype::U16),
            Some((path, "u32")) => (path, TokenDtype::U32),
            Some((_, other)) => {
                return Err(Error::File {
                    path: text.into(),
                    detail: format!("unknown token dtype `{other}` (use dtype=u16 or dtype=u32)"),
                })
            }
            None => (rest, TokenDtype::U16),
        };
        Ok(DataSource::Tokens { path: nonempty(text, path)?, dtype })
    }
}

fn nonempty(text: &str, path: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::File { path: text.into(), detail: "no file named".into() });
    }
    Ok(PathBuf::from(path))
}

/// A memory-mapped token file.
pub struct TokenFile {
    path: PathBuf,
    dtype: TokenDtype,
    map: Mmap,
    len: u64,
}

impl TokenFile {
    /// Maps `path`, whose size must be a whole number of `dtype` tokens.
    pub fn open(path: &Path, dtype: TokenDtype) -> Result<TokenFile> {
        let io = |cause| Error::Io { path: path.display().to_string(), cause };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; the
        // invariant is that nobody truncates or rewrites the file while it is
        // mapped (a training data file), as with every memory-mapped reader.
        // A shrunk file would raise SIGBUS on access, not read stale memory.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let bytes = map.len() as u64;
        let width = dtype.width() as u64;
        if !bytes.is_multiple_of(width) {
            let detail = format!("{bytes} bytes is not a whole number of {width}-byte tokens");
            return Err(Error::File { path: path.display().to_string(), detail });
        }
        Ok(TokenFile { path: path.to_path_buf(), dtype, map, len: bytes / width })
    }

    /// Tokens in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a file with no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i` (`i < len`).
    pub fn token(&self, i: u64) -> u32 {
        let w = self.dtype.width();
        let at = i as usize * w;
        let b = &self.map[at..at + w];
        match self.dtype {
            TokenDtype::U8 => b[0] as u32,
            TokenDtype::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
            TokenDtype::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    fn error(&self, detail: String) -> Error {
        Error::File { path: self.path.display().to_string(), detail }
    }
}

/// Where a stream of windows stands: what a checkpoint stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPosition {
    /// Seed of the window starts.
    pub seed: u64,
    /// Windows drawn so far (the next window's number).
    pub windows: u64,
}

/// One step's tokens: `x` and `y` are `[batch, T]`, row-major; `y[r, t]`
/// is the token after `x[r, t]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    pub batch: usize,
    pub context: usize,
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    /// The start of each window in the file, in tokens.
    pub starts: Vec<u64>,
}

/// Draws each step's windows from a token file (the rule is in the module
/// documentation).
pub struct WindowSampler {
    file: TokenFile,
    context: usize,
    batch: usize,
    vocab: u32,
    position: DataPosition,
}

impl WindowSampler {
    /// A sampler of `batch` windows of `context + 1` tokens per step, ids
    /// checked against `vocab`, from the start of the stream of `seed`.
    pub fn new(file: TokenFile, context: usize, batch: usize, vocab: u32, seed: u64) -> Result<WindowSampler> {
        WindowSampler::resume(file, context, batch, vocab, DataPosition { seed, windows: 0 })
    }

    /// A sampler that continues from `position` (from a checkpoint).
    pub fn resume(
        file: TokenFile,
        context: usize,
        batch: usize,
        vocab: u32,
        position: DataPosition,
    ) -> Result<WindowSampler> {
        if context == 0 || batch == 0 {
            return Err(file.error(format!("windows need T >= 1 and batch >= 1 (got T = {context}, batch = {batch})")));
        }
        if file.len() <= context as u64 {
            let detail = format!("holds {} tokens; a window needs T + 1 = {}", file.len(), context + 1);
            return Err(file.error(detail));
        }
        if file.dtype == TokenDtype::U8 && vocab < 256 {
            return Err(file.error(format!("text data has 256 byte tokens but the model's vocabulary is {vocab}")));
        }
        Ok(WindowSampler { file, context, batch, vocab, position })
    }

    /// The position of the next batch.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Where window number `n` starts.
    pub fn start(&self, n: u64) -> u64 {
        splitmix64_nth(self.position.seed, n) % (self.file.len() - self.context as u64)
    }

    /// The next step's batch; a token id outside the vocabulary is an error
    /// naming its position in the file.
    pub fn next_batch(&mut self) -> Result<TokenBatch> {
        let (batch, t) = (self.batch, self.context);
        let mut out = TokenBatch {
            batch,
            context: t,
            x: Vec::with_capacity(batch * t),
            y: Vec::with_capacity(batch * t),
            starts: Vec::with_capacity(batch),
        };
        for k in 0..batch as u64 {
            let start = self.start(self.position.windows + k);
            out.starts.push(start);
            for i in start..=start + t as u64 {
                let token = self.file.token(i);
                if token >= self.vocab {
                    let detail = format!("token {token} at position {i} is outside the vocabulary (0..{})", self.vocab);
                    return Err(self.file.error(detail));
                }
                if i < start + t as u64 {
                    out.x.push(token);
                }
                if i > start {
                    out.y.push(token);
                }
            }
        }
        self.position.windows += batch as u64;
        Ok(out)
    }
}

/// The `n`-th output (from 0) of SplitMix64 seeded with `seed`
/// ([`baton_engine::init::SplitMix64`]), without drawing the ones before.
pub fn splitmix64_nth(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
