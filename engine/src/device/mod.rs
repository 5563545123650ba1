//! Where the engine's ops run: the CPU kernels, or a device (a CUDA GPU, or
//! the [`SimulatedDevice`]) whose memory holds the tensors.
//!
//! # Residency
//!
//! On a device [`Backend`], every op's outputs stay in device memory: a
//! [`Tensor`](crate::Tensor) then holds a [`DevBuf`] instead of host values,
//! and so do the saved tensors of the segments it records, the gradients
//! backward produces, gradient sums and optimizer state. Host copies happen
//! only where bytes leave the device, and each is explicit and counted
//! ([`Backend::transfers`]): a host tensor given to a device op is uploaded
//! (inputs, targets), [`Tensor::to_host`](crate::Tensor::to_host) downloads
//! (a loss value, a tensor to send, a segment to archive, a file to write).
//! A host read of a resident tensor (`values()`) is an error, so a path that
//! forgets a transfer fails instead of staging silently.
//!
//! # One dispatch, three executors
//!
//! Ops launch [`Call`]s ([`Backend::launch`]). The CPU backend runs them
//! with the CPU kernels on host tensors; the simulated device runs the same
//! CPU kernels on its private memory (so it gives the same bits, and CI
//! exercises the device code paths); a CUDA GPU runs its kernels on its
//! buffers, one stream per process.
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
//! the process chose another device once with [`set_process_default`].

mod call;
mod cuda_calls;
mod cuda_mem;
mod launch;
mod mem;
mod sim;

pub use call::{run_host, Call, HostIn};
pub(crate) use launch::{add_into, zeros_like};
pub use launch::{Operand, Out};
pub use mem::{DevBuf, DeviceMem, HostData, TransferCounters, Transfers};
pub use sim::SimulatedDevice;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use baton_kernels::cuda::{self, Gpu};

use crate::{Error, Result};

/// A device a model can run on. Parses from `cpu`, `cuda` (= `cuda:0`),
/// `cuda:N` and `sim`, and prints in the same form.
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
    /// The [`SimulatedDevice`]: host memory behind the device interface,
    /// running the CPU kernels, counting transfers (tests and CI).
    Simulated,
}

impl Device {
    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Whether tensors live in device memory (CUDA or simulated).
    pub fn is_device(self) -> bool {
        self != Device::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Simulated => f.write_str("sim"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda`, `cuda:N` or `sim`; anything else names itself and the choices.
    fn from_str(text: &str) -> Result<Device> {
        let unknown = || {
            Error::Device(format!(
                "`{text}` is unknown: use cpu, cuda or cuda:N (N = GPU ordinal), or sim (simulated device)"
            ))
        };
        match text.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "sim" => Ok(Device::Simulated),
            other => {
                let ordinal = other.strip_prefix("cuda:").ok_or_else(unknown)?;
                ordinal.parse().map(Device::Cuda).map_err(|_| unknown())
            }
        }
    }
}

/// How a model's ops run: on the CPU, or on one device whose memory holds
/// the tensors. Cheap to clone (the device is shared), `Send + Sync`.
#[derive(Clone, Default)]
pub struct Backend {
    inner: Inner,
}

#[derive(Clone, Default)]
enum Inner {
    #[default]
    Cpu,
    Dev(Arc<dyn DeviceMem>),
}

impl Backend {
    /// The CPU kernels.
    pub fn cpu() -> Backend {
        Backend { inner: Inner::Cpu }
    }

    /// A fresh [`SimulatedDevice`] with its own memory and counters (tests).
    pub fn simulated() -> Backend {
        Backend { inner: Inner::Dev(Arc::new(SimulatedDevice::new())) }
    }

    /// A backend on the given device memory.
    pub fn on_mem(mem: Arc<dyn DeviceMem>) -> Backend {
        Backend { inner: Inner::Dev(mem) }
    }

    /// Opens `device`. A GPU is opened once per process and shared by every
    /// backend that names it (opening compiles the kernels, about a second);
    /// `sim` is one simulated device per process.
    ///
    /// # Errors
    /// [`Error::Device`] when the build has no CUDA support (saying how to
    /// build with it), or when no such GPU can be used here (no driver,
    /// NVRTC or cuBLAS library, no device with that ordinal). Never panics.
    pub fn open(device: Device) -> Result<Backend> {
        static SIM: OnceLock<Arc<SimulatedDevice>> = OnceLock::new();
        match device {
            Device::Cpu => Ok(Backend::cpu()),
            Device::Cuda(ordinal) => Ok(Backend { inner: Inner::Dev(open_gpu(ordinal)?) }),
            Device::Simulated => Ok(Backend { inner: Inner::Dev(SIM.get_or_init(Default::default).clone()) }),
        }
    }

    /// The device this backend runs on.
    pub fn device(&self) -> Device {
        match &self.inner {
            Inner::Cpu => Device::Cpu,
            Inner::Dev(mem) => mem.device(),
        }
    }

    /// A human-readable description (`cpu`, `cuda:0 (NVIDIA H100 ...)`).
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Cpu => "cpu".into(),
            Inner::Dev(mem) => mem.describe(),
        }
    }

    /// The host<->device copies of this backend's device so far (all zero
    /// on the CPU). Subtract two snapshots for the copies in between.
    pub fn transfers(&self) -> Transfers {
        match &self.inner {
            Inner::Cpu => Transfers::default(),
            Inner::Dev(mem) => mem.counters().snapshot(),
        }
    }

    /// Waits for every queued op of the device (a no-op on the CPU, where
    /// ops finish before they return).
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner {
            Inner::Cpu => Ok(()),
            Inner::Dev(mem) => mem.synchronize(),
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
fn open_gpu(ordinal: u32) -> Result<Arc<dyn DeviceMem>> {
    /// Opened GPUs by ordinal. A lock, not a `OnceLock` per ordinal, so that
    /// two threads opening the same GPU get one context, not two.
    static OPEN: Mutex<BTreeMap<u32, Arc<dyn DeviceMem>>> = Mutex::new(BTreeMap::new());
    let device = Device::Cuda(ordinal);
    if !cuda::COMPILED {
        return Err(Error::Device(format!("{device} {NOT_COMPILED}")));
    }
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(gpu) = open.get(&ordinal) {
        return Ok(gpu.clone());
    }
    let gpu = Gpu::new(ordinal as usize).map_err(|e| Error::Device(format!("{device} cannot be used: {e}")))?;
    let mem: Arc<dyn DeviceMem> = Arc::new(cuda_mem::CudaMem::new(gpu, ordinal));
    open.insert(ordinal, mem.clone());
    Ok(mem)
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
