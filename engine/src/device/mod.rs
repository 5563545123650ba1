//! Where the engine's ops run: the CPU kernels, or an NVIDIA GPU through
//! `baton_kernels::cuda`.
//!
//! # Per-op staging, not GPU-resident tensors
//!
//! Tensors in the engine stay host `Vec<f32>`: the tape, segments, saved
//! tensors and archives are host data, so a segment can be archived, shipped
//! and backwarded wherever it goes, whatever device recorded it. A CUDA
//! [`Backend`] runs each op by uploading its inputs, launching the kernel
//! and downloading its outputs. That is simple and correct, not fast: tensors
//! do not stay on the GPU between ops, and transfers do not overlap compute.
//!
//! # What follows the backend
//!
//! Every forward op of a [`Recorder`](crate::Recorder), every backward rule
//! and every optimizer update. Gradient sums (fan-in inside a backward,
//! [`ParamStore::accumulate`](crate::ParamStore::accumulate), the per-layer
//! accumulator) stay on the CPU: they are exact IEEE additions, the same
//! bits on either device, and staging them would cost more than the add.
//!
//! # Which backend
//!
//! [`Model::on_device`](crate::Model::on_device),
//! [`Optimizer::with_backend`](crate::Optimizer::with_backend),
//! [`Recorder::with_backend`](crate::Recorder::with_backend) and
//! [`Segment::backward_on`](crate::Segment::backward_on) choose one
//! explicitly. The entry points that take none ([`crate::Model::new`],
//! [`crate::Optimizer::new`], [`crate::Recorder::new`],
//! [`crate::Segment::backward`]) use the [`process_default`]: the CPU unless
//! the process chose another device once with [`set_process_default`]. A
//! worker process computes on one device, and this is how the pipeline's
//! stage, which calls those entry points, runs on it.

mod ops;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use baton_kernels::cuda::{self, Gpu};

use crate::{Error, Result};

/// A device a model can run on. Parses from `cpu`, `cuda` (= `cuda:0`) and
/// `cuda:N`, and prints in the same form.
///
/// It is also the tag a [`Segment`](crate::Segment) carries of the device
/// that recorded it (plain data; backward may run on any other device).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum Device {
    /// The CPU kernels.
    #[default]
    Cpu,
    /// CUDA GPU with this ordinal (0-based, as `nvidia-smi` numbers them
    /// unless `CUDA_VISIBLE_DEVICES` renumbers them).
    Cuda(u32),
}

impl Device {
    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda` or `cuda:N`; anything else names itself and the choices.
    fn from_str(text: &str) -> Result<Device> {
        let unknown = || Error::Device(format!("`{text}` is unknown: use cpu, cuda or cuda:N (N = GPU ordinal)"));
        match text.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => {
                let ordinal = other.strip_prefix("cuda:").ok_or_else(unknown)?;
                ordinal.parse().map(Device::Cuda).map_err(|_| unknown())
            }
        }
    }
}

/// How a model's ops run: on the CPU, or on one opened GPU. Cheap to clone
/// (the GPU handle is shared), `Send + Sync`.
#[derive(Clone, Default)]
pub struct Backend {
    inner: Inner,
}

#[derive(Clone, Default)]
enum Inner {
    #[default]
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Backend {
    /// The CPU kernels.
    pub fn cpu() -> Backend {
        Backend { inner: Inner::Cpu }
    }

    /// Opens `device`. A GPU is opened once per process and shared by every
    /// backend that names it (opening compiles the kernels, about a second).
    ///
    /// # Errors
    /// [`Error::Device`] when the build has no CUDA support (saying how to
    /// build with it), or when no such GPU can be used here (no driver,
    /// NVRTC or cuBLAS library, no device with that ordinal). Never panics.
    pub fn open(device: Device) -> Result<Backend> {
        match device {
            Device::Cpu => Ok(Backend::cpu()),
            Device::Cuda(ordinal) => Ok(Backend { inner: Inner::Cuda(open_gpu(ordinal)?) }),
        }
    }

    /// The device this backend runs on.
    pub fn device(&self) -> Device {
        match &self.inner {
            Inner::Cpu => Device::Cpu,
            // Ordinals come from a `Device::Cuda(u32)`, so they fit.
            Inner::Cuda(gpu) => Device::Cuda(u32::try_from(gpu.ordinal()).unwrap_or(u32::MAX)),
        }
    }

    /// A human-readable description (`cpu`, `cuda:0 (NVIDIA H100 ...)`).
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Cpu => "cpu".into(),
            Inner::Cuda(gpu) => format!("{} ({})", self.device(), gpu.name()),
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.device())
    }
}

/// What a build without the `cuda` feature says when asked for a GPU.
const NOT_COMPILED: &str = "cannot be used: this binary was built without CUDA support; build it with \
     `--features cuda` (e.g. `cargo build --release -p baton-models --features cuda`; the build needs \
     no CUDA toolkit, a GPU and its driver are needed only to run)";

/// The GPU `ordinal`, opened on first use and kept for the process.
fn open_gpu(ordinal: u32) -> Result<Arc<Gpu>> {
    /// Opened GPUs by ordinal. A lock, not a `OnceLock` per ordinal, so that
    /// two threads opening the same GPU get one context, not two.
    static OPEN: Mutex<BTreeMap<u32, Arc<Gpu>>> = Mutex::new(BTreeMap::new());
    let device = Device::Cuda(ordinal);
    if !cuda::COMPILED {
        return Err(Error::Device(format!("{device} {NOT_COMPILED}")));
    }
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(gpu) = open.get(&ordinal) {
        return Ok(gpu.clone());
    }
    let gpu = Gpu::new(ordinal as usize).map_err(|e| Error::Device(format!("{device} cannot be used: {e}")))?;
    let gpu = Arc::new(gpu);
    open.insert(ordinal, gpu.clone());
    Ok(gpu)
}

static PROCESS: OnceLock<Backend> = OnceLock::new();

/// The backend of the entry points that take none: the one given to
/// [`set_process_default`], else the CPU.
pub fn process_default() -> Backend {
    PROCESS.get().cloned().unwrap_or_default()
}

/// Makes `backend` the process's default, once: a later call with the same
/// device is a no-op, with another device an error (the process's earlier
/// work ran on the first one, and silently switching would mix them).
pub fn set_process_default(backend: Backend) -> Result<()> {
    let wanted = backend.device();
    let set = PROCESS.get_or_init(|| backend);
    if set.device() != wanted {
        return Err(Error::Device(format!(
            "{wanted} cannot become this process's device: it already computes on {}",
            set.device()
        )));
    }
    Ok(())
}
