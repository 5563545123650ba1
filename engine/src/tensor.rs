//! Dense row-major N-d tensors of f32 values or integer token ids, and
//! borrowed views of them.
//!
//! Storage sits behind accessors: callers ask for [`Tensor::values`] or
//! [`Tensor::ids`] and get an error, not a panic, when a tensor holds the
//! other kind (a token tensor where activations were expected, say), so
//! device-resident tensors (a [`DevBuf`]) refuse host reads: they must be
//! transferred explicitly ([`Tensor::to_host`]), and the transfer is counted.

use std::borrow::Cow;

use crate::device::{DevBuf, Device, HostData, HostIn, Operand};
use crate::{Error, Result};

/// What a tensor's elements are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DType {
    /// 32-bit floats: activations, parameters, gradients.
    F32,
    /// Token ids and class targets (i64 in files, u32 in memory).
    Ids,
}

/// Element storage of a [`Tensor`].
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Data {
    F32(Vec<f32>),
    Ids(Vec<u32>),
}

/// A dense row-major tensor. Invariant: the element count is the product of
/// `shape` (checked by every constructor and by archive validation).
///
/// A resident tensor holds its elements in `dev` and an empty `data` of its
/// kind. `dev` is never archived: a resident tensor must be brought to the
/// host ([`Tensor::to_host`]) before it is archived, and one archived by
/// mistake arrives with no elements and fails [`Tensor::check`].
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
    #[rkyv(with = rkyv::with::Skip)]
    dev: Option<DevBuf>,
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(n) if n == len => Ok(()),
        Some(n) => Err(Error::Shape(format!("shape {shape:?} holds {n} elements but {len} were given"))),
        None => Err(Error::Shape(format!("shape {shape:?} has more elements than memory can address"))),
    }
}

/// A tensor's host element buffer, lent mutably so that a message can move
/// it out and back without copying ([`crate::pipeline::adopt`]).
pub(crate) enum BufferMut<'a> {
    F32(&'a mut Vec<f32>),
    Ids(&'a mut Vec<u32>),
}

impl Tensor {
    /// The host element buffer (empty for a resident tensor). Whoever
    /// changes its length must restore the element-count invariant before
    /// the tensor is used ([`Tensor::check`]).
    pub(crate) fn buffer_mut(&mut self) -> BufferMut<'_> {
        match &mut self.data {
            Data::F32(v) => BufferMut::F32(v),
            Data::Ids(v) => BufferMut::Ids(v),
        }
    }

    /// An f32 tensor from its shape and values; errors if the counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        check_len(&shape, data.len())?;
        Ok(Tensor { shape, data: Data::F32(data), dev: None })
    }

    /// A tensor of token ids; errors if the counts differ.
    pub fn from_ids(shape: Vec<usize>, ids: Vec<u32>) -> Result<Self> {
        check_len(&shape, ids.len())?;
        Ok(Tensor { shape, data: Data::Ids(ids), dev: None })
    }

    /// A tensor of f32 zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: Data::F32(baton_kernels::elementwise::zeros(shape.iter().product())),
            dev: None,
        }
    }

    /// A single-element tensor of shape `[]`.
    pub fn scalar(value: f32) -> Self {
        Tensor { shape: Vec::new(), data: Data::F32(vec![value]), dev: None }
    }

    /// Checks the element-count invariant; a tensor decoded from a peer's
    /// frame must pass it before use.
    pub fn check(&self) -> Result<()> {
        check_len(&self.shape, self.len())
    }

    /// A tensor that breaks the element-count invariant, for tests of the
    /// checks that guard against such tensors arriving from peers.
    #[cfg(test)]
    pub(crate) fn malformed(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Tensor { shape, data: Data::F32(data), dev: None }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element kind.
    pub fn dtype(&self) -> DType {
        if let Some(buf) = &self.dev {
            return buf.dtype();
        }
        match self.data {
            Data::F32(_) => DType::F32,
            Data::Ids(_) => DType::Ids,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        if let Some(buf) = &self.dev {
            return buf.len();
        }
        match &self.data {
            Data::F32(v) => v.len(),
            Data::Ids(v) => v.len(),
        }
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of element storage.
    pub fn bytes(&self) -> usize {
        self.len() * 4
    }

    /// The f32 values, or an error if the tensor holds token ids.
    pub fn values(&self) -> Result<&[f32]> {
        self.host_only()?;
        match &self.data {
            Data::F32(v) => Ok(v),
            Data::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
        }
    }

    /// Mutable f32 values, or an error if the tensor holds token ids.
    pub fn values_mut(&mut self) -> Result<&mut [f32]> {
        self.host_only()?;
        match &mut self.data {
            Data::F32(v) => Ok(v),
            Data::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
        }
    }

    /// The token ids, or an error if the tensor holds f32 values.
    pub fn ids(&self) -> Result<&[u32]> {
        self.host_only()?;
        match &self.data {
            Data::Ids(v) => Ok(v),
            Data::F32(_) => Err(wrong_kind(&self.shape, DType::Ids)),
        }
    }

    /// The shape and f32 values, or an error if the tensor holds token ids.
    pub fn into_values(self) -> Result<(Vec<usize>, Vec<f32>)> {
        self.host_only()?;
        match self.data {
            Data::F32(v) => Ok((self.shape, v)),
            Data::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
        }
    }

    /// The same elements under another shape with as many elements.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor> {
        check_len(&shape, self.len())?;
        Ok(Tensor { shape, data: self.data, dev: self.dev })
    }

    /// A borrowed view.
    pub fn view(&self) -> TensorRef<'_> {
        if let Some(buf) = &self.dev {
            return TensorRef { shape: Cow::Borrowed(&self.shape), data: RefData::Dev(buf.clone()) };
        }
        let data = match &self.data {
            Data::F32(v) => RefData::F32(Cow::Borrowed(v)),
            Data::Ids(v) => RefData::Ids(Cow::Borrowed(v)),
        };
        TensorRef { shape: Cow::Borrowed(&self.shape), data }
    }

    /// Rows `start..end` of a tensor whose first dimension is the batch.
    pub fn rows(&self, start: usize, end: usize) -> Result<Tensor> {
        let (&rows, rest) =
            self.shape.split_first().ok_or_else(|| Error::Shape("cannot take rows of a scalar".into()))?;
        if start > end || end > rows {
            return Err(Error::Shape(format!("rows {start}..{end} out of 0..{rows}")));
        }
        self.host_only()?;
        let width: usize = rest.iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let range = start * width..end * width;
        let data = match &self.data {
            Data::F32(v) => Data::F32(v[range].to_vec()),
            Data::Ids(v) => Data::Ids(v[range].to_vec()),
        };
        Ok(Tensor { shape, data, dev: None })
    }
}

fn wrong_kind(shape: &[usize], wanted: DType) -> Error {
    let (want, have) = match wanted {
        DType::F32 => ("f32 values", "token ids"),
        DType::Ids => ("token ids", "f32 values"),
    };
    Error::Shape(format!("expected a tensor of {want}, got one of {have} with shape {shape:?}"))
}

/// Elements of a [`TensorRef`].
#[derive(Clone, Debug)]
pub enum RefData<'a> {
    /// f32 values, borrowed (zero-copy from an archive) or decoded.
    F32(Cow<'a, [f32]>),
    /// Token ids.
    Ids(Cow<'a, [u32]>),
    /// Elements resident on a device.
    Dev(DevBuf),
}

/// A read-only view of a tensor that may live in an archive (borrowed,
/// zero-copy) or have been decoded from compact storage (owned).
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    pub shape: Cow<'a, [usize]>,
    pub data: RefData<'a>,
}

impl<'a> TensorRef<'a> {
    /// An f32 view.
    pub fn f32(shape: Cow<'a, [usize]>, values: Cow<'a, [f32]>) -> Self {
        TensorRef { shape, data: RefData::F32(values) }
    }

    /// The f32 values, or an error if the view holds token ids.
    pub fn values(&self) -> Result<&[f32]> {
        match &self.data {
            RefData::F32(v) => Ok(v),
            RefData::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
            RefData::Dev(buf) => Err(resident(&self.shape, buf)),
        }
    }

    /// The token ids, or an error if the view holds f32 values.
    pub fn ids(&self) -> Result<&[u32]> {
        match &self.data {
            RefData::Ids(v) => Ok(v),
            RefData::F32(_) => Err(wrong_kind(&self.shape, DType::Ids)),
            RefData::Dev(buf) => Err(resident(&self.shape, buf)),
        }
    }

    /// Rows and columns of a matrix-shaped view (`[rows, cols]`).
    pub fn matrix(&self, what: &str) -> Result<(usize, usize)> {
        match *self.shape {
            [rows, cols] => Ok((rows, cols)),
            ref other => Err(Error::Shape(format!("{what} must be a matrix, has shape {other:?}"))),
        }
    }

    /// An owned copy.
    pub fn to_tensor(&self) -> Tensor {
        let data = match &self.data {
            RefData::F32(v) => Data::F32(v.to_vec()),
            RefData::Ids(v) => Data::Ids(v.to_vec()),
            RefData::Dev(buf) => return Tensor::resident(self.shape.to_vec(), buf.clone()),
        };
        Tensor { shape: self.shape.to_vec(), data, dev: None }
    }

    /// The view as a kernel operand.
    pub fn operand(&self) -> Operand<'_> {
        match &self.data {
            RefData::F32(v) => Operand::Host(HostIn::F32(v)),
            RefData::Ids(v) => Operand::Host(HostIn::Ids(v)),
            RefData::Dev(buf) => Operand::Dev(buf),
        }
    }

    /// Whether the elements are token ids.
    pub fn is_ids(&self) -> bool {
        match &self.data {
            RefData::Ids(_) => true,
            RefData::F32(_) => false,
            RefData::Dev(buf) => buf.dtype() == DType::Ids,
        }
    }
}

fn resident(shape: &[usize], buf: &DevBuf) -> Error {
    Error::Device(format!(
        "a host read of a tensor {shape:?} resident on {}: transfer it explicitly (Tensor::to_host)",
        buf.device()
    ))
}

impl Tensor {
    /// A tensor resident in device buffer `buf`; errors if the counts differ.
    pub fn from_device(shape: Vec<usize>, buf: DevBuf) -> Result<Tensor> {
        check_len(&shape, buf.len())?;
        Ok(Tensor::resident(shape, buf))
    }

    fn resident(shape: Vec<usize>, buf: DevBuf) -> Tensor {
        let data = match buf.dtype() {
            DType::F32 => Data::F32(Vec::new()),
            DType::Ids => Data::Ids(Vec::new()),
        };
        Tensor { shape, data, dev: Some(buf) }
    }

    fn host_only(&self) -> Result<()> {
        match &self.dev {
            Some(buf) => Err(resident(&self.shape, buf)),
            None => Ok(()),
        }
    }

    /// The device buffer of a resident tensor.
    pub fn device_buf(&self) -> Option<&DevBuf> {
        self.dev.as_ref()
    }

    /// The device holding the elements (the CPU for a host tensor).
    pub fn device(&self) -> Device {
        self.dev.as_ref().map_or(Device::Cpu, DevBuf::device)
    }

    /// The buffer of a resident tensor, or an internal error for a host one.
    pub(crate) fn into_device_buf(self) -> Result<DevBuf> {
        self.dev.ok_or_else(|| Error::Internal("a host tensor where a resident one was expected".into()))
    }

    /// A host copy: a download (explicit, counted) when resident, a clone
    /// otherwise.
    pub fn to_host(&self) -> Result<Tensor> {
        let Some(buf) = &self.dev else {
            return Ok(self.clone());
        };
        let data = match buf.download()? {
            HostData::F32(v) => Data::F32(v),
            HostData::Ids(v) => Data::Ids(v),
        };
        let tensor = Tensor { shape: self.shape.clone(), data, dev: None };
        tensor.check()?;
        Ok(tensor)
    }

    /// The tensor on the host: itself when it is, else a download.
    pub fn into_host(self) -> Result<Tensor> {
        if self.dev.is_none() {
            return Ok(self);
        }
        self.to_host()
    }

    /// The host elements as a kernel input (errors when resident).
    pub(crate) fn host_in(&self) -> Result<HostIn<'_>> {
        self.host_only()?;
        Ok(match &self.data {
            Data::F32(v) => HostIn::F32(v),
            Data::Ids(v) => HostIn::Ids(v),
        })
    }

    /// The tensor as a kernel operand.
    pub fn operand(&self) -> Operand<'_> {
        match (&self.dev, &self.data) {
            (Some(buf), _) => Operand::Dev(buf),
            (None, Data::F32(v)) => Operand::Host(HostIn::F32(v)),
            (None, Data::Ids(v)) => Operand::Host(HostIn::Ids(v)),
        }
    }
}
