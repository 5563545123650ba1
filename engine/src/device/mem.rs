//! Device memory: the [`DeviceMem`] trait a device implements (the
//! [`SimulatedDevice`](super::SimulatedDevice) always, a CUDA GPU with the
//! `cuda` feature), the [`DevBuf`] handle a resident tensor holds, and the
//! host<->device transfer counters.
//!
//! Invariants:
//! - bytes cross between host and device only through [`DeviceMem::upload`]
//!   and [`DeviceMem::download`], and each call counts them; nothing else
//!   reads device memory from the host (a [`Tensor`](crate::Tensor) holding
//!   a [`DevBuf`] refuses `values()`);
//! - a buffer is freed when the last [`DevBuf`] naming it drops; clones
//!   share it, and a kernel writes only into a buffer no other handle names
//!   ([`DevBuf::into_unique`] copies on the device first).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::call::{Call, HostIn};
use super::Device;
use crate::tensor::DType;
use crate::Result;

/// A buffer's contents crossing the host<->device border.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// f32 values.
    F32(Vec<f32>),
    /// Token ids.
    Ids(Vec<u32>),
}

impl HostData {
    /// Bytes of the elements.
    pub fn bytes(&self) -> u64 {
        match self {
            HostData::F32(v) => v.len() as u64 * 4,
            HostData::Ids(v) => v.len() as u64 * 4,
        }
    }
}

/// What a device does with memory: allocate, copy in and out (counted),
/// and run [`Call`]s on its buffers. Buffer ids are the device's own.
pub trait DeviceMem: Send + Sync {
    /// The device tag (segments record it).
    fn device(&self) -> Device;
    /// A human-readable description.
    fn describe(&self) -> String;
    /// Copies host data in (counted as host→device); returns the new buffer.
    fn upload(&self, data: HostIn<'_>) -> Result<u64>;
    /// Copies a buffer out (counted as device→host).
    fn download(&self, id: u64) -> Result<HostData>;
    /// A new buffer of `len` f32 zeros.
    fn zeros(&self, len: usize) -> Result<u64>;
    /// A new buffer with a copy of `id` (device to device, not counted).
    fn copy(&self, id: u64) -> Result<u64>;
    /// Frees `id` (called once, by the last handle).
    fn free(&self, id: u64);
    /// Runs `call` reading `ins` and writing `outs` (distinct buffers),
    /// queued on the device's one stream.
    fn launch(&self, call: &Call, ins: &[u64], outs: &[u64]) -> Result<()>;
    /// The counters of host<->device copies so far.
    fn counters(&self) -> &TransferCounters;
    /// Waits until every queued kernel and copy has finished (timing).
    fn synchronize(&self) -> Result<()>;
}

/// Running counts of host<->device copies (atomics: a device is shared).
#[derive(Debug, Default)]
pub struct TransferCounters {
    h2d_bytes: AtomicU64,
    h2d_copies: AtomicU64,
    d2h_bytes: AtomicU64,
    d2h_copies: AtomicU64,
}

impl TransferCounters {
    /// Counts one host→device copy of `bytes`.
    pub fn upload(&self, bytes: u64) {
        self.h2d_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.h2d_copies.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one device→host copy of `bytes`.
    pub fn download(&self, bytes: u64) {
        self.d2h_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.d2h_copies.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Transfers {
        Transfers {
            h2d_bytes: self.h2d_bytes.load(Ordering::Relaxed),
            h2d_copies: self.h2d_copies.load(Ordering::Relaxed),
            d2h_bytes: self.d2h_bytes.load(Ordering::Relaxed),
            d2h_copies: self.d2h_copies.load(Ordering::Relaxed),
        }
    }
}

/// Host<->device copies: bytes and number of copies each way. Subtract two
/// snapshots for the copies in between (a step's, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Bytes copied host → device.
    pub h2d_bytes: u64,
    /// Host → device copies.
    pub h2d_copies: u64,
    /// Bytes copied device → host.
    pub d2h_bytes: u64,
    /// Device → host copies.
    pub d2h_copies: u64,
}

impl std::ops::Sub for Transfers {
    type Output = Transfers;
    fn sub(self, earlier: Transfers) -> Transfers {
        Transfers {
            h2d_bytes: self.h2d_bytes - earlier.h2d_bytes,
            h2d_copies: self.h2d_copies - earlier.h2d_copies,
            d2h_bytes: self.d2h_bytes - earlier.d2h_bytes,
            d2h_copies: self.d2h_copies - earlier.d2h_copies,
        }
    }
}

struct Handle {
    mem: Arc<dyn DeviceMem>,
    id: u64,
    len: usize,
    dtype: DType,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.mem.free(self.id);
    }
}

/// A shared handle to one device buffer: its device, length and element kind.
#[derive(Clone)]
pub struct DevBuf(Arc<Handle>);

impl DevBuf {
    /// Takes ownership of buffer `id` of `mem`.
    pub(crate) fn new(mem: Arc<dyn DeviceMem>, id: u64, len: usize, dtype: DType) -> DevBuf {
        DevBuf(Arc::new(Handle { mem, id, len, dtype }))
    }

    /// Uploads `data` to `mem` (counted).
    pub(crate) fn upload(mem: &Arc<dyn DeviceMem>, data: HostIn<'_>) -> Result<DevBuf> {
        let (len, dtype) = match data {
            HostIn::F32(v) => (v.len(), DType::F32),
            HostIn::Ids(v) => (v.len(), DType::Ids),
        };
        Ok(DevBuf::new(mem.clone(), mem.upload(data)?, len, dtype))
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Element kind.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The device holding it.
    pub fn device(&self) -> Device {
        self.0.mem.device()
    }

    pub(crate) fn mem(&self) -> &Arc<dyn DeviceMem> {
        &self.0.mem
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    /// Copies the contents to the host (an explicit, counted transfer).
    pub fn download(&self) -> Result<HostData> {
        self.0.mem.download(self.0.id)
    }

    /// A handle no other names: this one, or a device copy when shared.
    pub(crate) fn into_unique(self) -> Result<DevBuf> {
        match Arc::try_unwrap(self.0) {
            Ok(handle) => Ok(DevBuf(Arc::new(handle))),
            Err(shared) => {
                let id = shared.mem.copy(shared.id)?;
                Ok(DevBuf::new(shared.mem.clone(), id, shared.len, shared.dtype))
            }
        }
    }
}

impl PartialEq for DevBuf {
    /// The same buffer (contents are not compared: that would need a transfer).
    fn eq(&self, other: &DevBuf) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for DevBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevBuf({} #{}, {} x {:?})", self.device(), self.0.id, self.0.len, self.0.dtype)
    }
}
