//! The CPU kernels' ops on an NVIDIA GPU (cargo feature `cuda`, off by default).
//!
//! # Always present
//!
//! This module and its whole API exist with or without the feature (candle's
//! dummy-backend pattern), so callers need no `cfg`:
//! - without the feature, [`Gpu::new`] returns [`Error::CudaNotCompiled`] and
//!   no [`Gpu`] or [`GpuBuf`] can exist (their insides are uninhabited);
//! - with it, nothing CUDA is needed at build time: the driver, NVRTC and
//!   cuBLAS are loaded by [`Gpu::new`], which returns
//!   [`Error::CudaUnavailable`] naming what is missing (library, device
//!   ordinal) and never panics.
//!
//! # API
//!
//! Every CPU kernel has a [`Gpu`] method of the same name taking the same
//! arguments in the same order, with [`GpuBuf`] for `&[f32]`/`&mut [f32]` and
//! [`GpuU32Buf`] for the cross-entropy targets, and the same semantics
//! (accumulate flags, stats layout, optimizer formulas). Ops are queued on the
//! [`Gpu`]'s stream and return at once; [`Gpu::download`], [`Gpu::mse`] and
//! [`Gpu::cross_entropy`] (which return host values) wait for them.
//!
//! # Errors, not panics
//!
//! Unlike the CPU kernels, which assert, every op here checks its lengths
//! against its shape arguments, and every launch checks that each buffer lives
//! in this [`Gpu`]'s CUDA context, before anything is queued. A mismatch is
//! [`Error::CudaInvalidArgument`] naming the op and the lengths; a failed CUDA
//! call is [`Error::CudaDriver`]. A buffer holds at most `i32::MAX` elements
//! (the limit of cuBLAS's `int` dimensions), so kernel index arithmetic in
//! 32-bit unsigned integers cannot overflow.
//!
//! # Determinism
//!
//! No kernel uses atomics, and every reduction has a fixed order that depends
//! only on the shape, never on scheduling, on the number of SMs or on the
//! GPU model. The orders are the CPU kernels' own:
//! - [`Gpu::sum_rows`] and the `dgamma`/`dbeta` of [`Gpu::layernorm_backward`]:
//!   one thread per column adds the rows strictly in order 0, 1, 2, …;
//! - the row sums of [`Gpu::layernorm`] and [`Gpu::layernorm_backward`]: 8
//!   threads per row, thread `l` adding elements `l, l+8, l+16, …` in order,
//!   the 8 partial sums combined in the CPU's fixed tree
//!   `((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7))` (the private `reduce` module);
//! - [`Gpu::mse`]: the CPU's 4096-element blocks with the same 8-lane sums,
//!   the block sums added in order in `f64` on the host;
//! - [`Gpu::cross_entropy`]: one thread per row walks its classes in order
//!   (slow for very wide rows; exactness first), row losses added in row
//!   order in `f64` on the host.
//!
//! The kernels are compiled with `--fmad=false` (no `a*b + c` contraction,
//! as Rust never contracts), `--prec-div=true --prec-sqrt=true --ftz=false`
//! (IEEE division, square root and subnormals). Every op built only from
//! `+ − × ÷ sqrt max` therefore gives the *same bits as the CPU kernels* on
//! any GPU: `add_bias_rows`, `sum_rows`, `add`, `add_assign`, `scale`, `relu`,
//! `relu_backward`, `tanh_backward`, `layernorm`, `layernorm_backward`, `mse`,
//! `mse_backward`, `cross_entropy_backward`, `sgd_step` and `adam_step`.
//! `gelu`, `gelu_backward`, `tanh` and `cross_entropy` call CUDA's
//! `erff`/`expf`/`tanhf`/`log`, which differ from `libm` by a few ulps: same
//! bits run to run, close to (not equal to) the CPU.
//!
//! [`Gpu::matmul`] is cuBLAS `sgemm` (row-major via swapped operands, default
//! math mode, which never uses TF32 for `f32`). NVIDIA documents its results
//! as bit-identical run to run for one toolkit version on GPUs of the same
//! architecture and SM count while one stream uses the handle; each [`Gpu`]
//! binds its own handle to its one stream, so `CUBLAS_WORKSPACE_CONFIG` (which
//! matters only when several streams share a handle) is irrelevant. It is not
//! bit-identical to the CPU [`crate::matmul()`] (cuBLAS does not promise its
//! fma chain), and may differ between GPU models.
//!
//! [`Error::CudaNotCompiled`]: crate::Error::CudaNotCompiled
//! [`Error::CudaUnavailable`]: crate::Error::CudaUnavailable
//! [`Error::CudaInvalidArgument`]: crate::Error::CudaInvalidArgument
//! [`Error::CudaDriver`]: crate::Error::CudaDriver

#[cfg(feature = "cuda")]
mod backend;
#[cfg(not(feature = "cuda"))]
#[path = "dummy.rs"]
mod backend;
mod check;
mod gemm;
mod kernel;
mod math;
mod resident;
mod resident_rows;
#[cfg(feature = "cuda")]
mod source;
#[cfg(feature = "cuda")]
mod source_resident;
mod train;

use backend::{DevSlice, Device};
use kernel::{Arg, Kernel, Shape};

use crate::Result;

/// One GPU: a CUDA context, its stream, a cuBLAS handle bound to that stream
/// and the module of kernels compiled by NVRTC (compiled once per process,
/// loaded once per `Gpu`). All ops run in order on the one stream (the
/// context's default stream, shared by every `Gpu` of the same device).
/// `Send + Sync`: ops from several threads interleave on that stream.
pub struct Gpu {
    dev: Device,
}

/// `f32` elements in GPU memory (a `CudaSlice<f32>` and its length), made by
/// [`Gpu::upload`] or [`Gpu::zeros`]. Usable with any [`Gpu`] on the same
/// CUDA context (the same device).
pub struct GpuBuf {
    slice: DevSlice<f32>,
}

/// `u32` elements in GPU memory: cross-entropy targets, made by
/// [`Gpu::upload_u32`]. Immutable; it remembers its largest value so that
/// target range checks need no device round trip.
pub struct GpuU32Buf {
    slice: DevSlice<u32>,
    max: Option<u32>,
}

impl GpuBuf {
    /// Number of `f32` elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GpuU32Buf {
    /// Number of `u32` elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Largest element count of one GPU buffer (`i32::MAX`, cuBLAS's limit).
pub const MAX_ELEMS: usize = i32::MAX as usize;

impl Gpu {
    /// Opens GPU `ordinal` (0-based): creates the context, stream and cuBLAS
    /// handle and loads the kernels (NVRTC compiles them on first use in the
    /// process, about a second).
    ///
    /// # Errors
    /// [`Error::CudaNotCompiled`] in a build without the `cuda` feature;
    /// [`Error::CudaUnavailable`] when the driver, NVRTC or cuBLAS library is
    /// missing or there is no device `ordinal`; [`Error::CudaDriver`] if a
    /// CUDA call fails after that. Never panics.
    ///
    /// [`Error::CudaNotCompiled`]: crate::Error::CudaNotCompiled
    /// [`Error::CudaUnavailable`]: crate::Error::CudaUnavailable
    /// [`Error::CudaDriver`]: crate::Error::CudaDriver
    pub fn new(ordinal: usize) -> Result<Gpu> {
        Ok(Gpu { dev: Device::new(ordinal)? })
    }

    /// The device ordinal this `Gpu` was opened with.
    pub fn ordinal(&self) -> usize {
        self.dev.ordinal()
    }

    /// The device's name as the driver reports it (e.g. "NVIDIA H100").
    pub fn name(&self) -> String {
        self.dev.name()
    }

    /// Copies `host` into a new GPU buffer.
    pub fn upload(&self, host: &[f32]) -> Result<GpuBuf> {
        check::capacity("upload", host.len())?;
        Ok(GpuBuf { slice: self.dev.upload(host)? })
    }

    /// Copies cross-entropy targets into a new GPU buffer.
    pub fn upload_u32(&self, host: &[u32]) -> Result<GpuU32Buf> {
        check::capacity("upload_u32", host.len())?;
        let max = host.iter().copied().max();
        Ok(GpuU32Buf { slice: self.dev.upload(host)?, max })
    }

    /// A new buffer of `n` zeros.
    pub fn zeros(&self, n: usize) -> Result<GpuBuf> {
        check::capacity("zeros", n)?;
        Ok(GpuBuf { slice: self.dev.zeros(n)? })
    }

    /// Waits for every queued op, then copies `buf` to the host.
    pub fn download(&self, buf: &GpuBuf) -> Result<Vec<f32>> {
        self.dev.download(&buf.slice)
    }

    /// Waits until every op queued on this `Gpu`'s stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Checks `args` against `k`'s parameter list, then queues `k`.
    fn launch(&self, k: Kernel, shape: Shape, args: &mut [Arg<'_>]) -> Result<()> {
        kernel::check_args(k, args)?;
        self.dev.launch(k, shape, args)
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("ordinal", &self.ordinal()).field("name", &self.name()).finish()
    }
}

impl std::fmt::Debug for GpuBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBuf").field("len", &self.len()).finish()
    }
}

impl std::fmt::Debug for GpuU32Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuU32Buf").field("len", &self.len()).field("max", &self.max).finish()
    }
}

/// Whether this build has the `cuda` feature (a GPU may still be absent).
pub const COMPILED: bool = cfg!(feature = "cuda");

/// The variable that turns every GPU test's skip into a failure: set it
/// (to `1`) on a machine that has a GPU, so no test passes by skipping.
pub const REQUIRE_GPU: &str = "BATON_REQUIRE_GPU";

/// What a GPU test does when it cannot get a GPU (`why`): prints `SKIPPED
/// {test}: {why}` straight to stderr (past the harness's capture) and
/// returns `Ok`, or, when [`REQUIRE_GPU`] is `1`, returns the message the
/// test must fail with. Every GPU test skips through this one function.
pub fn skip_gpu_test(test: &str, why: &dyn std::fmt::Display) -> std::result::Result<(), String> {
    if std::env::var(REQUIRE_GPU).is_ok_and(|v| v.trim() == "1") {
        return Err(format!("{test}: {REQUIRE_GPU}=1 but no GPU can be used: {why}"));
    }
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {why}\n").as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync_in_every_build() {
        fn check<T: Send + Sync>() {}
        check::<Gpu>();
        check::<GpuBuf>();
        check::<GpuU32Buf>();
    }

    #[test]
    fn without_the_feature_opening_says_how_to_get_it() {
        if !COMPILED {
            let e = Gpu::new(0).unwrap_err();
            assert_eq!(e.to_string(), "this build has no CUDA support; rebuild with --features cuda");
        }
    }
}
