//! The runtime's error: what a user's binary gets from [`super::launch_local`],
//! [`super::run_coordinator`], [`super::run_worker`] and
//! [`crate::runtime::run_worker`]. The variant says whose fault it is.

use super::lifetime::Interrupted;

/// Returns a [`Error::Job`] failure with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::cluster::error::Error::Job(format!($($arg)*))) };
}

/// Returns a [`Error::Job`] failure unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { return Err($crate::cluster::error::Error::Job(format!($($arg)*))) } };
}

/// Returns a [`Error::Config`] refusal of a setting, with a formatted message.
macro_rules! refuse {
    ($($arg:tt)*) => { return Err($crate::cluster::error::Error::Config(format!($($arg)*))) };
}

pub(crate) use {bail, ensure, refuse};

/// Everything the process runtime can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network or TLS layer failed (connecting, a handshake, sending):
    /// usually a peer that went away or a certificate of another cluster.
    #[error("{what}: {source}")]
    Transport { what: String, source: baton_transport::Error },
    /// The pipeline state machines refused: a peer broke the protocol, an
    /// impossible request, or a broken invariant (the engine's variant says which).
    #[error("{what}: {source}")]
    Engine { what: String, source: baton_engine::Error },
    /// The operating system refused: starting a process, a pipe, a file, a signal handler.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A setting given to the runtime (an environment knob, an address, an
    /// identity) is unusable; the text names it and says what to do.
    #[error("{0}")]
    Config(String),
    /// The job failed while running: a worker or the coordinator went away,
    /// or the coordinator gave up; the text says who and why.
    #[error("{0}")]
    Job(String),
    /// The coordinator was stopped by a signal (SIGINT, SIGTERM).
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// One of the above, in the context of what was being done.
    #[error("{what}: {source}")]
    Context { what: String, source: Box<Error> },
}

impl Error {
    /// The signal that stopped the coordinator, if that is what happened.
    pub fn interrupted(&self) -> Option<&Interrupted> {
        match self {
            Error::Interrupted(i) => Some(i),
            Error::Context { source, .. } => source.interrupted(),
            _ => None,
        }
    }
}

/// The runtime's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to an error, keeping its kind.
pub(crate) trait Context<T> {
    /// The error, in the context `what`.
    fn what(self, what: &str) -> Result<T>;
    /// The error, in the context `what()` (built only on failure).
    fn what_with(self, what: impl FnOnce() -> String) -> Result<T>;
}

/// An error of some kind that can be put in context.
pub(crate) trait IntoRuntime {
    fn into_runtime(self, what: String) -> Error;
}

impl IntoRuntime for baton_transport::Error {
    fn into_runtime(self, what: String) -> Error {
        Error::Transport { what, source: self }
    }
}

impl IntoRuntime for baton_engine::Error {
    fn into_runtime(self, what: String) -> Error {
        Error::Engine { what, source: self }
    }
}

impl IntoRuntime for std::io::Error {
    fn into_runtime(self, what: String) -> Error {
        Error::Io { what, source: self }
    }
}

impl IntoRuntime for Error {
    fn into_runtime(self, what: String) -> Error {
        Error::Context { what, source: Box::new(self) }
    }
}

impl IntoRuntime for crate::Error {
    fn into_runtime(self, what: String) -> Error {
        match self {
            crate::Error::Engine(e) => Error::Engine { what, source: e },
            other => Error::Config(format!("{what}: {other}")),
        }
    }
}

impl<T, E: IntoRuntime> Context<T> for std::result::Result<T, E> {
    fn what(self, what: &str) -> Result<T> {
        self.map_err(|e| e.into_runtime(what.to_string()))
    }
    fn what_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.into_runtime(what()))
    }
}

impl<T> Context<T> for Option<T> {
    fn what(self, what: &str) -> Result<T> {
        self.ok_or_else(|| Error::Job(what.to_string()))
    }
    fn what_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| Error::Job(what()))
    }
}

impl From<baton_engine::Error> for Error {
    fn from(e: baton_engine::Error) -> Error {
        Error::Engine { what: "the pipeline".into(), source: e }
    }
}

impl From<baton_transport::Error> for Error {
    fn from(e: baton_transport::Error) -> Error {
        Error::Transport { what: "the transport".into(), source: e }
    }
}

/// Settings that do not parse are the user's to fix.
macro_rules! config_errors {
    ($($ty:ty),*) => {$(
        impl IntoRuntime for $ty {
            fn into_runtime(self, what: String) -> Error {
                Error::Config(format!("{what}: {self}"))
            }
        }
    )*};
}

config_errors!(
    std::num::ParseFloatError,
    std::num::ParseIntError,
    std::net::AddrParseError,
    baton_kernels::Error,
    serde_json::Error
);
