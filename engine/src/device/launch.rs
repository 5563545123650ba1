//! [`Backend::launch`]: runs one [`Call`] on host tensors (CPU) or device
//! buffers (a device), uploading host operands to a device (counted) and
//! refusing device operands on the CPU.

use std::sync::Arc;

use super::call::{run_host, Call, HostIn};
use super::mem::{DevBuf, DeviceMem};
use super::{Backend, Inner};
use crate::tensor::DType;
use crate::{Error, Result, Tensor};

/// An input of a call: host values or a device buffer.
#[derive(Clone, Copy, Debug)]
pub enum Operand<'a> {
    /// Host data (uploaded first on a device backend, counted).
    Host(HostIn<'a>),
    /// A device buffer (refused by the CPU backend: transfer it explicitly).
    Dev(&'a DevBuf),
}

/// An output of a call: zeros of a shape, or a tensor the call reads first
/// (an accumulator, a parameter, optimizer state) and overwrites.
#[derive(Debug)]
pub enum Out {
    /// f32 zeros of this shape.
    Zeros(Vec<usize>),
    /// This tensor's contents (moved onto the backend's device if needed).
    Init(Tensor),
}

impl Backend {
    /// Runs `call` on `ins`, returning its outputs as tensors on this
    /// backend: host tensors on the CPU, resident tensors on a device.
    ///
    /// # Errors
    /// [`Error::Device`] for a device operand on the CPU backend or one on
    /// another device (transfers are explicit), or what the device reports.
    pub fn launch(&self, call: &Call, ins: &[Operand<'_>], outs: Vec<Out>) -> Result<Vec<Tensor>> {
        match &self.inner {
            Inner::Cpu => launch_host(call, ins, outs),
            Inner::Dev(mem) => launch_dev(mem, call, ins, outs),
        }
    }

    /// [`Backend::launch`] of a call with one zeroed output of `shape`.
    pub fn launch1(&self, call: &Call, ins: &[Operand<'_>], shape: Vec<usize>) -> Result<Tensor> {
        let mut out = self.launch(call, ins, vec![Out::Zeros(shape)])?;
        out.pop().ok_or_else(|| Error::Internal(format!("{} returned no output", call.name())))
    }

    /// Where `tensor` lives: its device, or the CPU for a host tensor.
    pub fn of(tensor: &Tensor) -> Backend {
        match tensor.device_buf() {
            Some(buf) => Backend::on_mem(buf.mem().clone()),
            None => Backend::cpu(),
        }
    }

    /// `tensor` on this backend: uploaded to a device (counted) if it is on
    /// the host, downloaded (counted) if the backend is the CPU and it is on
    /// a device; unchanged when it already is where the backend computes.
    pub fn adopt(&self, tensor: Tensor) -> Result<Tensor> {
        match (&self.inner, tensor.device_buf()) {
            (Inner::Cpu, None) => Ok(tensor),
            (Inner::Cpu, Some(_)) => tensor.to_host(),
            (Inner::Dev(mem), Some(buf)) if same(mem, buf.mem()) => Ok(tensor),
            (Inner::Dev(mem), _) => {
                let host = tensor.to_host()?;
                let buf = DevBuf::upload(mem, host.host_in()?)?;
                Tensor::from_device(host.shape().to_vec(), buf)
            }
        }
    }
}

fn same(a: &Arc<dyn DeviceMem>, b: &Arc<dyn DeviceMem>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

fn launch_host(call: &Call, ins: &[Operand<'_>], outs: Vec<Out>) -> Result<Vec<Tensor>> {
    let inputs: Vec<HostIn<'_>> = ins
        .iter()
        .map(|op| match op {
            Operand::Host(h) => Ok(*h),
            Operand::Dev(buf) => Err(Error::Device(format!(
                "{}: an input is resident on {} but this backend computes on the CPU; \
                 transfer it explicitly (Tensor::to_host)",
                call.name(),
                buf.device()
            ))),
        })
        .collect::<Result<_>>()?;
    let mut shaped: Vec<(Vec<usize>, Vec<f32>)> = outs
        .into_iter()
        .map(|out| match out {
            Out::Zeros(shape) => Ok((shape.clone(), baton_kernels::elementwise::zeros(shape.iter().product()))),
            Out::Init(t) => t.into_values(),
        })
        .collect::<Result<_>>()?;
    let mut slices: Vec<&mut [f32]> = shaped.iter_mut().map(|(_, v)| &mut v[..]).collect();
    run_host(call, &inputs, &mut slices)?;
    shaped.into_iter().map(|(shape, v)| Tensor::new(shape, v)).collect()
}

fn launch_dev(mem: &Arc<dyn DeviceMem>, call: &Call, ins: &[Operand<'_>], outs: Vec<Out>) -> Result<Vec<Tensor>> {
    let mut uploaded = Vec::new();
    let mut in_ids = Vec::with_capacity(ins.len());
    for op in ins {
        match op {
            Operand::Dev(buf) if same(mem, buf.mem()) => in_ids.push(buf.id()),
            Operand::Dev(buf) => {
                return Err(Error::Device(format!(
                    "{}: an input is resident on {}, not on {}; transfer it explicitly",
                    call.name(),
                    buf.device(),
                    mem.device()
                )))
            }
            Operand::Host(h) => {
                let buf = DevBuf::upload(mem, *h)?;
                in_ids.push(buf.id());
                uploaded.push(buf);
            }
        }
    }
    let mut outputs = Vec::with_capacity(outs.len());
    for out in outs {
        outputs.push(match out {
            Out::Zeros(shape) => {
                let len = shape.iter().product();
                (shape, DevBuf::new(mem.clone(), mem.zeros(len)?, len, DType::F32))
            }
            Out::Init(t) => {
                let t = Backend::on_mem(mem.clone()).adopt(t)?;
                let shape = t.shape().to_vec();
                let buf = t.into_device_buf()?.into_unique()?;
                (shape, buf)
            }
        });
    }
    let out_ids: Vec<u64> = outputs.iter().map(|(_, b)| b.id()).collect();
    mem.launch(call, &in_ids, &out_ids)?;
    drop(uploaded);
    outputs.into_iter().map(|(shape, buf)| Tensor::from_device(shape, buf)).collect()
}

/// `sum += grad`, where the sum lives: on its device when resident (a host
/// `grad` is uploaded, counted), else on the host (a resident `grad` moves
/// the sum to its device). Exact IEEE adds in element order either way.
pub(crate) fn add_into(sum: &mut Tensor, grad: crate::TensorRef<'_>) -> Result<()> {
    let mem = match (sum.device_buf(), &grad.data) {
        (Some(buf), _) | (None, crate::tensor::RefData::Dev(buf)) => buf.mem().clone(),
        (None, _) => {
            baton_kernels::elementwise::add_assign(sum.values_mut()?, grad.values()?);
            return Ok(());
        }
    };
    let taken = std::mem::replace(sum, Tensor::scalar(0.0));
    let mut out = Backend::on_mem(mem).launch(&Call::AddAssign, &[grad.operand()], vec![Out::Init(taken)])?;
    *sum = out.pop().ok_or_else(|| Error::Internal("add_assign returned no output".into()))?;
    Ok(())
}

/// f32 zeros of `shape` where `like` lives (no transfer).
pub(crate) fn zeros_like(like: &crate::TensorRef<'_>, shape: &[usize]) -> Result<Tensor> {
    match &like.data {
        crate::tensor::RefData::Dev(buf) => {
            let (mem, len) = (buf.mem().clone(), shape.iter().product());
            let id = mem.zeros(len)?;
            Tensor::from_device(shape.to_vec(), DevBuf::new(mem, id, len, DType::F32))
        }
        _ => Ok(Tensor::zeros(shape)),
    }
}
