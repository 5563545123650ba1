//! Deterministic CPU math on row-major `f32` buffers for baton.
//!
//! # Determinism guarantee
//!
//! Every kernel gives bit-identical results for any thread count: work is
//! split into pieces whose boundaries depend only on the data's shape, and
//! every reduction runs in a fixed order (`sum_rows` and the LayerNorm
//! parameter gradients sum each column over rows strictly in row order; other
//! sums use fixed lanes and fixed blocks, see the private `reduce` module).
//!
//! Across machines:
//! - everything except [`matmul()`] uses only IEEE-exact operations (`+ − × ÷`,
//!   `sqrt`) and `libm` transcendentals (`erff`, `expf`, `tanhf`, `log`),
//!   never the system C library, and Rust never fuses `a*b + c` into an FMA,
//!   so these kernels give the same bits on every machine;
//! - [`matmul()`] uses `gemm`, which picks its K-block size from the cache
//!   sizes it detects at run time and its micro-kernel from the CPU's
//!   instruction set (FMA, AVX-512, NEON). Products are therefore
//!   bit-identical across runs, thread counts and machines of the same kind,
//!   but not guaranteed across machine kinds.
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
mod reduce;
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
