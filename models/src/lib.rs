//! baton's models: the built-in layers, the JSON model spec, safetensors I/O
//! of weights and data, and the `baton` binary's building blocks.
//!
//! Writing a new layer type needs only [`baton_engine::Layer`] and the
//! [`baton_engine::Recorder`] ops; see `examples/custom_layer.rs`.

pub mod alloc;
pub mod checkpoint;
pub mod cluster;
pub mod data;
pub mod io;
pub mod layers;
pub mod runtime;
pub mod seed_question;
pub mod spec;

pub use baton_engine as engine;

/// Everything the models crate can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model spec that cannot be parsed or built; names the offending field.
    #[error("bad model spec: {0}")]
    Spec(String),
    /// A weights or data file that cannot be read or does not fit the model.
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    /// A checkpoint directory that cannot be resumed from, or that does not
    /// fit the run asked for (names the file or the field).
    #[error("checkpoint {dir}: {detail}")]
    Checkpoint { dir: String, detail: String },
    /// The engine refused (shapes, parameters, data).
    #[error(transparent)]
    Engine(#[from] baton_engine::Error),
}

/// The models crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
