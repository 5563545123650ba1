//! A CUDA GPU behind [`DeviceMem`]: a table of its buffers and the
//! dispatch of each [`Call`] to `baton_kernels::cuda` (cuBLAS and NVRTC
//! kernels), all on the GPU's one stream. Never run on a GPU by its authors
//! (none was available); the simulated device exercises the same engine
//! paths in CI.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use baton_kernels::cuda::{Gpu, GpuBuf, GpuU32Buf};

use super::call::{Call, HostIn};
use super::mem::{DeviceMem, HostData, TransferCounters};
use super::Device;
use crate::{Error, Result};

enum Buf {
    F32(GpuBuf),
    Ids(GpuU32Buf),
}

/// One opened GPU and its buffers.
pub(crate) struct CudaMem {
    gpu: Gpu,
    ordinal: u32,
    buffers: Mutex<HashMap<u64, Buf>>,
    next: AtomicU64,
    counters: TransferCounters,
}

impl CudaMem {
    pub(crate) fn new(gpu: Gpu, ordinal: u32) -> CudaMem {
        CudaMem { gpu, ordinal, buffers: Mutex::default(), next: AtomicU64::new(0), counters: Default::default() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Buf>> {
        self.buffers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, buf: Buf) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.table().insert(id, buf);
        id
    }

    fn err(&self, e: baton_kernels::Error) -> Error {
        Error::Device(format!("cuda:{}: {e}", self.ordinal))
    }
}

fn missing(id: u64) -> Error {
    Error::Internal(format!("cuda: buffer #{id} does not exist (freed or never allocated)"))
}

/// A call input: f32 or ids.
#[derive(Clone, Copy)]
pub(crate) enum In<'a> {
    F32(&'a GpuBuf),
    Ids(&'a GpuU32Buf),
}

impl<'a> In<'a> {
    pub(crate) fn f32(self, call: &Call) -> Result<&'a GpuBuf> {
        match self {
            In::F32(b) => Ok(b),
            In::Ids(_) => Err(Error::Internal(format!("{}: an f32 input was given token ids", call.name()))),
        }
    }
    pub(crate) fn ids(self, call: &Call) -> Result<&'a GpuU32Buf> {
        match self {
            In::Ids(b) => Ok(b),
            In::F32(_) => Err(Error::Internal(format!("{}: an id input was given f32 values", call.name()))),
        }
    }
}

impl DeviceMem for CudaMem {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn describe(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.gpu.name())
    }

    fn upload(&self, data: HostIn<'_>) -> Result<u64> {
        let buf = match data {
            HostIn::F32(v) => Buf::F32(self.gpu.upload(v).map_err(|e| self.err(e))?),
            HostIn::Ids(v) => Buf::Ids(self.gpu.upload_u32(v).map_err(|e| self.err(e))?),
        };
        let bytes = match data {
            HostIn::F32(v) => v.len() * 4,
            HostIn::Ids(v) => v.len() * 4,
        };
        self.counters.upload(bytes as u64);
        Ok(self.insert(buf))
    }

    fn download(&self, id: u64) -> Result<HostData> {
        let table = self.table();
        let data = match table.get(&id).ok_or_else(|| missing(id))? {
            Buf::F32(b) => HostData::F32(self.gpu.download(b).map_err(|e| self.err(e))?),
            Buf::Ids(b) => HostData::Ids(self.gpu.download_u32(b).map_err(|e| self.err(e))?),
        };
        self.counters.download(data.bytes());
        Ok(data)
    }

    fn zeros(&self, len: usize) -> Result<u64> {
        let buf = self.gpu.zeros(len).map_err(|e| self.err(e))?;
        Ok(self.insert(Buf::F32(buf)))
    }

    fn copy(&self, id: u64) -> Result<u64> {
        let copied = match self.table().get(&id).ok_or_else(|| missing(id))? {
            Buf::F32(b) => Buf::F32(self.gpu.copy(b).map_err(|e| self.err(e))?),
            Buf::Ids(b) => Buf::Ids(self.gpu.copy_u32(b).map_err(|e| self.err(e))?),
        };
        Ok(self.insert(copied))
    }

    fn free(&self, id: u64) {
        self.table().remove(&id);
    }

    fn launch(&self, call: &Call, ins: &[u64], outs: &[u64]) -> Result<()> {
        if outs.iter().any(|o| ins.contains(o)) {
            return Err(Error::Internal(format!("{}: an output buffer is also an input", call.name())));
        }
        let mut table = self.table();
        let mut taken = Vec::with_capacity(outs.len());
        for &o in outs {
            match table.remove(&o) {
                Some(Buf::F32(b)) => taken.push((o, b)),
                Some(Buf::Ids(b)) => {
                    table.insert(o, Buf::Ids(b));
                    return Err(Error::Internal(format!("{}: writes a token buffer", call.name())));
                }
                None => return Err(missing(o)),
            }
        }
        let result = (|| {
            let inputs: Vec<In<'_>> = ins
                .iter()
                .map(|i| match table.get(i) {
                    Some(Buf::F32(b)) => Ok(In::F32(b)),
                    Some(Buf::Ids(b)) => Ok(In::Ids(b)),
                    None => Err(missing(*i)),
                })
                .collect::<Result<_>>()?;
            let mut outputs: Vec<&mut GpuBuf> = taken.iter_mut().map(|(_, b)| b).collect();
            super::cuda_calls::run(&self.gpu, call, &inputs, &mut outputs).map_err(|e| match e {
                super::cuda_calls::CallError::Kernel(e) => self.err(e),
                super::cuda_calls::CallError::Engine(e) => e,
            })
        })();
        for (o, b) in taken {
            table.insert(o, Buf::F32(b));
        }
        result
    }

    fn counters(&self) -> &TransferCounters {
        &self.counters
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize().map_err(|e| self.err(e))
    }
}
