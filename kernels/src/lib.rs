//! Deterministic CPU math on row-major `f32` buffers for baton.
//!
//! # Determinism guarantee
//!
//! Every kernel produces bit-identical results for any thread count on a
//! given machine: reductions run in a fixed order that never depends on how
//! work is split between threads. Matrix products go through `gemm`, whose
//! K-blocking is derived from the cache sizes it detects and whose
//! micro-kernel depends on the CPU's instruction set, so bits are only
//! guaranteed identical across machines of the same type.
//!
//! Transcendental functions come from `libm`, so results do not depend on the
//! system's C library.
//!
//! # Panics
//!
//! Kernels assert buffer lengths before touching memory. Callers validate
//! shapes first, so an assertion firing is a caller bug.

pub mod activation;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod threads;

pub use matmul::{matmul, Trans};

/// Result alias for fallible kernel-crate operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors from the kernels crate (only thread-pool configuration can fail).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A thread count of zero was requested; ask for at least one thread.
    #[error("invalid thread count {0}: the kernel thread pool needs at least 1 thread")]
    InvalidThreadCount(usize),
    /// The rayon thread pool could not be built (usually the OS refused to spawn threads).
    #[error("could not build the kernel thread pool: {0}")]
    ThreadPool(String),
}
