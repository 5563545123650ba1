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
//! shapes first, so an assertion firing is a caller bug. (The GPU versions in
//! [`cuda`] return errors instead.)
//!
//! # GPU
//!
//! [`cuda`] has the same ops on an NVIDIA GPU behind the `cuda` cargo feature
//! (off by default). The module and its API exist either way; without the
//! feature [`cuda::Gpu::new`] returns [`Error::CudaNotCompiled`].

pub mod activation;
pub mod broadcast;
pub mod cuda;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
mod reduce;
pub mod softmax;
pub mod threads;

pub use matmul::{matmul, Trans};

/// Result alias for fallible kernel-crate operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors from the kernels crate: thread-pool configuration and the [`cuda`]
/// module (the CPU kernels themselves never fail; they assert).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A thread count of zero was requested; ask for at least one thread.
    #[error("invalid thread count {0}: the kernel thread pool needs at least 1 thread")]
    InvalidThreadCount(usize),
    /// The rayon thread pool could not be built (usually the OS refused to spawn threads).
    #[error("could not build the kernel thread pool: {0}")]
    ThreadPool(String),
    /// [`cuda::Gpu::new`] in a build without the `cuda` cargo feature.
    #[error("this build has no CUDA support; rebuild with --features cuda")]
    CudaNotCompiled,
    /// The `cuda` feature is on but no GPU can be used here: the driver,
    /// NVRTC or cuBLAS library is missing, or there is no device with that
    /// ordinal. The text names what is missing.
    #[error("no usable CUDA device: {0}")]
    CudaUnavailable(String),
    /// A GPU op was given buffers whose lengths do not fit its shape
    /// arguments, or a buffer that lives in another CUDA context; the text
    /// names the op and the lengths (a caller bug, as a CPU assertion would be).
    #[error("invalid GPU op arguments: {0}")]
    CudaInvalidArgument(String),
    /// A CUDA driver, cuBLAS or NVRTC call failed; the text names the call
    /// and the library's error. Usually out of device memory or a lost device.
    #[error("CUDA call failed: {0}")]
    CudaDriver(String),
}
