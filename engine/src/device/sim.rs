//! A device made of host memory, compiled always, so that residency,
//! transfer counting and device-tagged handovers run in CI without a GPU.
//!
//! It keeps its buffers in a private table that nothing outside reads: the
//! only ways in and out are [`DeviceMem::upload`] and
//! [`DeviceMem::download`], which count bytes like a PCIe copy would, and a
//! tensor holding one of its buffers refuses a host read. Its kernels are
//! the CPU kernels ([`run_host`]) on the table's buffers, so its results
//! are bit-identical to the CPU backend's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::call::{run_host, Call, HostIn};
use super::mem::{DeviceMem, HostData, TransferCounters};
use super::Device;
use crate::{Error, Result};

/// Host memory behind the [`DeviceMem`] interface, counting transfers.
#[derive(Debug, Default)]
pub struct SimulatedDevice {
    buffers: Mutex<HashMap<u64, HostData>>,
    next: AtomicU64,
    counters: TransferCounters,
}

impl SimulatedDevice {
    /// An empty device.
    pub fn new() -> SimulatedDevice {
        SimulatedDevice::default()
    }

    /// Buffers alive now (a leak check for tests).
    pub fn live_buffers(&self) -> usize {
        self.table().len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HostData>> {
        self.buffers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, data: HostData) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.table().insert(id, data);
        id
    }
}

fn missing(id: u64) -> Error {
    Error::Internal(format!("simulated device: buffer #{id} does not exist (freed or never allocated)"))
}

impl DeviceMem for SimulatedDevice {
    fn device(&self) -> Device {
        Device::Simulated
    }

    fn describe(&self) -> String {
        "sim (host memory behind the device interface)".into()
    }

    fn upload(&self, data: HostIn<'_>) -> Result<u64> {
        let data = match data {
            HostIn::F32(v) => HostData::F32(v.to_vec()),
            HostIn::Ids(v) => HostData::Ids(v.to_vec()),
        };
        self.counters.upload(data.bytes());
        Ok(self.insert(data))
    }

    fn download(&self, id: u64) -> Result<HostData> {
        let data = self.table().get(&id).cloned().ok_or_else(|| missing(id))?;
        self.counters.download(data.bytes());
        Ok(data)
    }

    fn zeros(&self, len: usize) -> Result<u64> {
        Ok(self.insert(HostData::F32(vec![0.0; len])))
    }

    fn copy(&self, id: u64) -> Result<u64> {
        let data = self.table().get(&id).cloned().ok_or_else(|| missing(id))?;
        Ok(self.insert(data))
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
                Some(HostData::F32(v)) => taken.push((o, v)),
                Some(HostData::Ids(_)) => {
                    return Err(Error::Internal(format!("{}: writes a token buffer", call.name())))
                }
                None => return Err(missing(o)),
            }
        }
        let result = {
            let inputs: Vec<HostIn<'_>> = ins
                .iter()
                .map(|i| match table.get(i) {
                    Some(HostData::F32(v)) => Ok(HostIn::F32(v)),
                    Some(HostData::Ids(v)) => Ok(HostIn::Ids(v)),
                    None => Err(missing(*i)),
                })
                .collect::<Result<_>>()?;
            let mut outputs: Vec<&mut [f32]> = taken.iter_mut().map(|(_, v)| &mut v[..]).collect();
            run_host(call, &inputs, &mut outputs)
        };
        for (o, v) in taken {
            table.insert(o, HostData::F32(v));
        }
        result
    }

    fn counters(&self) -> &TransferCounters {
        &self.counters
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
