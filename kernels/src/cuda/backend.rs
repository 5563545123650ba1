//! The real device (feature `cuda`): the only code that calls CUDA, and so
//! the only `unsafe` of the GPU path. Ops reach it through [`Device::launch`]
//! and [`Device::gemm`] after checking their lengths.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, Ptx};

use super::check::invalid;
use super::gemm::ColMajorGemm;
use super::kernel::{Arg, Kernel, Shape, BLOCK};
use super::source;
use crate::{Error, Result};

/// Context, stream, cuBLAS handle and loaded kernels of one GPU.
pub(crate) struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Indexed by `Kernel as usize` (the order of `Kernel::ALL`).
    funcs: Vec<CudaFunction>,
    name: String,
}

/// Device memory of `T`; `None` for an empty buffer (nothing is allocated,
/// and kernels get a null pointer they never dereference).
pub(crate) struct DevSlice<T> {
    inner: Option<CudaSlice<T>>,
}

impl<T> DevSlice<T> {
    pub(crate) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.len())
    }

    fn context(&self) -> Option<&Arc<CudaContext>> {
        self.inner.as_ref().map(|s| s.context())
    }
}

/// `Error::CudaUnavailable` with `why`.
fn unavailable(why: impl Into<String>) -> Error {
    Error::CudaUnavailable(why.into())
}

/// Maps a CUDA library error to `Error::CudaDriver` naming the call.
fn driver<E: std::fmt::Display>(call: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::CudaDriver(format!("{call}: {e}"))
}

impl Device {
    /// Opens GPU `ordinal`. cudarc panics when a library or symbol cannot be
    /// loaded; [`check_libraries`] rules out the usual case first, and the
    /// `catch_unwind` turns anything it misses into an error, so this never
    /// panics (the panic message still reaches stderr through the hook).
    pub(crate) fn new(ordinal: usize) -> Result<Device> {
        match catch_unwind(AssertUnwindSafe(|| Device::open(ordinal))) {
            Ok(result) => result,
            Err(panic) => {
                let text = panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
                Err(unavailable(format!("CUDA initialisation panicked: {}", text.unwrap_or("(no message)"))))
            }
        }
    }

    fn open(ordinal: usize) -> Result<Device> {
        check_libraries()?;
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("the CUDA driver did not initialise ({e}); is a GPU visible here?")))?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(unavailable(format!("no CUDA device {ordinal}: the driver sees {count} device(s)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("retaining the primary context"))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(driver("cublasCreate"))?;
        let module = ctx.load_module(ptx()?).map_err(driver("cuModuleLoadData"))?;
        let funcs = Kernel::ALL
            .iter()
            .map(|k| module.load_function(k.name()).map_err(driver("cuModuleGetFunction")))
            .collect::<Result<Vec<_>>>()?;
        let name = ctx.name().unwrap_or_else(|e| format!("CUDA device {ordinal} (name unknown: {e})"));
        Ok(Device { ctx, stream, blas, funcs, name })
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    pub(crate) fn name(&self) -> String {
        self.name.clone()
    }

    pub(crate) fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<DevSlice<T>> {
        if host.is_empty() {
            return Ok(DevSlice { inner: None });
        }
        let slice = self.stream.clone_htod(host).map_err(driver("cuMemcpyHtoD"))?;
        Ok(DevSlice { inner: Some(slice) })
    }

    pub(crate) fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<DevSlice<T>> {
        if n == 0 {
            return Ok(DevSlice { inner: None });
        }
        let slice = self.stream.alloc_zeros(n).map_err(driver("cuMemAlloc"))?;
        Ok(DevSlice { inner: Some(slice) })
    }

    /// Copies `s` to the host after every queued op (waits for the stream).
    pub(crate) fn download<T: DeviceRepr>(&self, s: &DevSlice<T>) -> Result<Vec<T>> {
        self.check_owned(s.context(), "download")?;
        let Some(slice) = &s.inner else { return Ok(Vec::new()) };
        let host = self.stream.clone_dtoh(slice).map_err(driver("cuMemcpyDtoH"))?;
        self.synchronize()?;
        Ok(host)
    }

    /// A device copy of `s` (queued on the stream).
    pub(crate) fn copy<T: DeviceRepr>(&self, s: &DevSlice<T>) -> Result<DevSlice<T>> {
        self.check_owned(s.context(), "copy")?;
        let Some(slice) = &s.inner else { return Ok(DevSlice { inner: None }) };
        let copy = self.stream.clone_dtod(slice).map_err(driver("cuMemcpyDtoD"))?;
        Ok(DevSlice { inner: Some(copy) })
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver("cuStreamSynchronize"))
    }

    /// Sets `s` to zeros (queued on the stream).
    pub(crate) fn fill_zero(&self, s: &mut DevSlice<f32>) -> Result<()> {
        self.check_owned(s.context(), "fill_zero")?;
        match &mut s.inner {
            Some(slice) => self.stream.memset_zeros(slice).map_err(driver("cuMemsetD8")),
            None => Ok(()),
        }
    }

    /// An error unless `ctx` (a buffer's context, `None` when empty) is ours.
    fn check_owned(&self, ctx: Option<&Arc<CudaContext>>, op: &str) -> Result<()> {
        match ctx {
            Some(c) if **c != *self.ctx => Err(invalid(op, "a buffer belongs to another CUDA context (device)")),
            _ => Ok(()),
        }
    }

    /// Queues kernel `k` on `shape`. The caller (`Gpu::launch`) checked
    /// `args` against `k.params()`; the op checked every length.
    pub(crate) fn launch(&self, k: Kernel, shape: Shape, args: &mut [Arg<'_>]) -> Result<()> {
        if shape.blocks == 0 {
            return Ok(());
        }
        for a in args.iter() {
            self.check_owned(arg_context(a), k.name())?;
        }
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&self.funcs[k as usize]);
        for a in args.iter_mut() {
            match a {
                Arg::In(DevSlice { inner: Some(c) }) => b.arg(c),
                Arg::Idx(DevSlice { inner: Some(c) }) => b.arg(c),
                Arg::Out(DevSlice { inner: Some(c) }) => b.arg(c),
                Arg::OutF64(DevSlice { inner: Some(c) }) => b.arg(c),
                Arg::In(_) | Arg::Idx(_) | Arg::Out(_) | Arg::OutF64(_) => b.arg(&null),
                Arg::F32(v) => b.arg(&*v),
                Arg::U32(v) => b.arg(&*v),
            };
        }
        let cfg = LaunchConfig { grid_dim: (shape.blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: (1) the arguments match `k`'s C prototype one for one in
        // type (`check_args`, and a unit test holds `Kernel::params` to the
        // source), so each parameter is read as the type it was pushed as.
        // (2) Each pointer is a live allocation of this context
        // (`check_owned`), or null for an empty buffer; the op checked every
        // buffer's length against the `u32` sizes passed with it, and the
        // kernels index only below those sizes, so no access is out of bounds
        // and a null pointer is never dereferenced (its loops are empty).
        // (3) Outputs are `&mut` borrows, so no input aliases an output, and
        // the launch is queued on `self.stream`, the stream every op and copy
        // of this context's buffers uses, after all earlier work on them; a
        // buffer dropped while the kernel runs is freed in the same stream's
        // order (cudarc's `cuMemFreeAsync`, or a sync first), never before.
        unsafe { b.launch(cfg) }.map_err(driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// `c = A·B` (`accumulate`: `c += A·B`) for the column-major `g`, with
    /// the row-major `b` as cuBLAS's first operand and `a` as its second.
    pub(crate) fn gemm(
        &self,
        g: &ColMajorGemm,
        a: &DevSlice<f32>,
        b: &DevSlice<f32>,
        c: &mut DevSlice<f32>,
        accumulate: bool,
    ) -> Result<()> {
        for ctx in [a.context(), b.context(), c.context()] {
            self.check_owned(ctx, "matmul")?;
        }
        let (Some(a), Some(b), Some(c)) = (&a.inner, &b.inner, &mut c.inner) else {
            return Err(invalid("matmul", "internal: gemm on an empty operand"));
        };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let cfg = GemmConfig {
            transa: op(g.trans_first),
            transb: op(g.trans_second),
            m: g.m,
            n: g.n,
            k: g.k,
            alpha: 1.0f32,
            lda: g.ld_first,
            ldb: g.ld_second,
            beta: if accumulate { 1.0 } else { 0.0 },
            ldc: g.ldc,
        };
        // SAFETY: `Gpu::matmul` checked a.len() == m·k, b.len() == k·n,
        // c.len() == m·n (all > 0, all <= i32::MAX); `ColMajorGemm` gives
        // leading dimensions with which cuBLAS reads exactly those stored
        // matrices (unit-tested against a reference column-major sgemm) and
        // writes the m·n elements of `c`, which is `&mut` and so aliases
        // neither input. All three are live allocations of this context
        // (checked above) and the handle runs on `self.stream`, after all
        // earlier work on them. With beta = 0 cuBLAS does not read `c`.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(driver("cublasSgemm"))
    }
}

impl Device {
    /// `batch` products `c[i] = A[i]·B[i]` of `g`'s shape, operands
    /// `strides` (a, b, c) elements apart: one strided-batched cuBLAS call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_batched(
        &self,
        g: &ColMajorGemm,
        batch: u32,
        strides: (i64, i64, i64),
        a: &DevSlice<f32>,
        b: &DevSlice<f32>,
        c: &mut DevSlice<f32>,
        accumulate: bool,
    ) -> Result<()> {
        for ctx in [a.context(), b.context(), c.context()] {
            self.check_owned(ctx, "matmul_batched")?;
        }
        let (Some(a), Some(b), Some(c)) = (&a.inner, &b.inner, &mut c.inner) else {
            return Err(invalid("matmul_batched", "internal: gemm on an empty operand"));
        };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let gemm = GemmConfig {
            transa: op(g.trans_first),
            transb: op(g.trans_second),
            m: g.m,
            n: g.n,
            k: g.k,
            alpha: 1.0f32,
            lda: g.ld_first,
            ldb: g.ld_second,
            beta: if accumulate { 1.0 } else { 0.0 },
            ldc: g.ldc,
        };
        let batch_size = i32::try_from(batch).map_err(|_| invalid("matmul_batched", "batch > i32::MAX"))?;
        // cuBLAS's first operand is our `b`, its second our `a` (row-major
        // via swapped operands), so their strides swap too.
        let cfg =
            StridedBatchedConfig { gemm, batch_size, stride_a: strides.1, stride_b: strides.0, stride_c: strides.2 };
        // SAFETY: `Gpu::matmul_batched` checked a.len() == batch·m·k,
        // b.len() == batch·k·n and c.len() == batch·m·n (all > 0 and
        // <= i32::MAX); matrix i of each operand starts i strides in and
        // `ColMajorGemm` gives leading dimensions with which cuBLAS reads
        // exactly that stored matrix (as for `gemm`), so every access stays
        // inside its buffer. `c` is `&mut` and aliases neither input; all are
        // live allocations of this context and the handle runs on
        // `self.stream`, after all earlier work on them.
        unsafe { self.blas.gemm_strided_batched(cfg, b, a, c) }.map_err(driver("cublasSgemmStridedBatched"))
    }
}

/// The context of the buffer in `a`, if it is a non-empty buffer.
fn arg_context<'a>(a: &'a Arg<'_>) -> Option<&'a Arc<CudaContext>> {
    match a {
        Arg::In(s) => s.context(),
        Arg::Out(s) => s.context(),
        Arg::Idx(s) => s.context(),
        Arg::OutF64(s) => s.context(),
        Arg::F32(_) | Arg::U32(_) => None,
    }
}

/// Errors unless the driver, NVRTC and cuBLAS libraries can be loaded; the
/// message says which is missing and what to install.
fn check_libraries() -> Result<()> {
    // SAFETY: each `is_culib_present` dlopens the usual file names of one
    // NVIDIA library and closes it again without using any symbol. Loading
    // runs the library's initialisers, which these vendor libraries allow at
    // any time, in any thread.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(unavailable(
            "the CUDA driver library (libcuda.so) was not found: this machine has no NVIDIA driver \
             (run on a machine with an NVIDIA GPU and driver)",
        ));
    }
    let missing = |lib: &str| {
        unavailable(format!(
            "{lib} (CUDA 12) was not found: install the CUDA 12 runtime libraries and add them to LD_LIBRARY_PATH"
        ))
    };
    if !nvrtc {
        return Err(missing("NVRTC (libnvrtc.so)"));
    }
    if !cublas {
        return Err(missing("cuBLAS (libcublas.so)"));
    }
    Ok(())
}

/// The kernels' PTX, compiled by NVRTC once per process.
fn ptx() -> Result<Ptx> {
    static PTX: OnceLock<std::result::Result<Ptx, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        compile_ptx_with_opts(source::source(), source::options()).map_err(|e| match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        })
    });
    compiled
        .clone()
        .map_err(|log| Error::CudaDriver(format!("NVRTC rejected kernels/src/cuda/source.rs (a bug): {log}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles the CUDA source wherever NVRTC is installed, GPU or not.
    #[test]
    fn kernels_compile_with_nvrtc_when_present() {
        // SAFETY: as in `check_libraries`.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            let test = "kernels_compile_with_nvrtc_when_present";
            super::super::skip_gpu_test(test, &"libnvrtc.so not found").unwrap_or_else(|e| panic!("{e}"));
            return;
        }
        let ptx = ptx().unwrap_or_else(|e| panic!("{e}")).to_src();
        if let Ok(path) = std::env::var("BATON_DUMP_PTX") {
            std::fs::write(path, &ptx).unwrap();
        }
        for &k in Kernel::ALL {
            let body = entry(&ptx, k.name());
            // With --fmad=false only the libm-like calls (erff, expf, tanhf,
            // log) may use FMA; the exact kernels must have none.
            let fused = body.contains("fma.rn.f") || body.contains("mad.rn.f") || body.contains("mad.f");
            assert!(!(k.exact() && fused), "{} contains a fused multiply-add", k.name());
        }
    }

    /// The PTX of kernel `name`, up to the next entry.
    fn entry<'a>(ptx: &'a str, name: &str) -> &'a str {
        let start = ptx.find(&format!(".entry {name}(")).unwrap_or_else(|| panic!("{name} missing from the PTX"));
        let rest = &ptx[start + 1..];
        &rest[..rest.find(".entry ").unwrap_or(rest.len())]
    }
}
