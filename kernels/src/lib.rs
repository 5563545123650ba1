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
//! Across machines (every x86-64, with or without AVX-512, and any other
//! target through the generic path), the same bits:
//! - everything except [`matmul()`] uses only IEEE-exact operations (`+ − × ÷`,
//!   `sqrt`) and `libm` transcendentals (`erff`, `expf`, `tanhf`, `log`),
//!   never the system C library, and Rust never fuses `a*b + c` into an FMA;
//! - [`matmul()`] computes each output element as one fixed chain of fused
//!   multiply-adds over k in order, on every code path ([`isa`]: AVX-512F,
//!   AVX2+FMA, generic `f32::mul_add`), for any blocking, cache size or
//!   thread count (see [`matmul`](mod@matmul)).
//!
//! `BATON_KERNEL_ISA=avx512|avx2|generic` forces a path (default: the best
//! the CPU has); [`isa::init`] validates it.
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
pub mod isa;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod memory;
pub mod norm;
pub mod optim;
mod reduce;
pub mod softmax;
pub mod threads;

pub use isa::Isa;
pub use matmul::{matmul, Trans};

/// Result alias for fallible kernel-crate operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors from the kernels crate: thread-pool and kernel-path ([`isa`])
/// configuration and the [`cuda`] module (the CPU kernels themselves never
/// fail; they assert).
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A thread count of zero was requested; ask for at least one thread.
    #[error("invalid thread count {0}: the kernel thread pool needs at least 1 thread")]
    InvalidThreadCount(usize),
    /// The rayon thread pool could not be built (usually the OS refused to spawn threads).
    #[error("could not build the kernel thread pool: {0}")]
    ThreadPool(String),
    /// `BATON_KERNEL_ISA` (or a string parsed as an [`Isa`]) names no known
    /// kernel path.
    #[error(
        "unknown kernel ISA {0:?} (BATON_KERNEL_ISA): use avx512, avx2 or generic, or unset it to use the best this CPU has"
    )]
    UnknownIsa(String),
    /// A kernel path was forced (`BATON_KERNEL_ISA` or [`isa::with_isa`]) that
    /// this CPU cannot run.
    #[error(
        "this CPU lacks the {wanted} kernel path (BATON_KERNEL_ISA={wanted}): choose one it has ({available}) or unset BATON_KERNEL_ISA"
    )]
    IsaUnavailable {
        /// The path asked for.
        wanted: Isa,
        /// The paths this CPU has, comma-separated, fastest first.
        available: String,
    },
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
