//! Dense row-major N-d tensors of f32 values or integer token ids, and
//! borrowed views of them.
//!
//! Storage sits behind accessors: callers ask for [`Tensor::values`] or
//! [`Tensor::ids`] and get an error, not a panic, when a tensor holds the
//! other kind (a token tensor where activations were expected, say), so
//! device-resident storage can be added without touching call sites.

use std::borrow::Cow;

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
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(n) if n == len => Ok(()),
        Some(n) => Err(Error::Shape(format!("shape {shape:?} holds {n} elements but {len} were given"))),
        None => Err(Error::Shape(format!("shape {shape:?} has more elements than memory can address"))),
    }
}

impl Tensor {
    /// An f32 tensor from its shape and values; errors if the counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        check_len(&shape, data.len())?;
        Ok(Tensor { shape, data: Data::F32(data) })
    }

    /// A tensor of token ids; errors if the counts differ.
    pub fn from_ids(shape: Vec<usize>, ids: Vec<u32>) -> Result<Self> {
        check_len(&shape, ids.len())?;
        Ok(Tensor { shape, data: Data::Ids(ids) })
    }

    /// A tensor of f32 zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: Data::F32(vec![0.0; shape.iter().product()]) }
    }

    /// A single-element tensor of shape `[]`.
    pub fn scalar(value: f32) -> Self {
        Tensor { shape: Vec::new(), data: Data::F32(vec![value]) }
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
        Tensor { shape, data: Data::F32(data) }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element kind.
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::Ids(_) => DType::Ids,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
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
        match &self.data {
            Data::F32(v) => Ok(v),
            Data::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
        }
    }

    /// Mutable f32 values, or an error if the tensor holds token ids.
    pub fn values_mut(&mut self) -> Result<&mut [f32]> {
        match &mut self.data {
            Data::F32(v) => Ok(v),
            Data::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
        }
    }

    /// The token ids, or an error if the tensor holds f32 values.
    pub fn ids(&self) -> Result<&[u32]> {
        match &self.data {
            Data::Ids(v) => Ok(v),
            Data::F32(_) => Err(wrong_kind(&self.shape, DType::Ids)),
        }
    }

    /// The shape and f32 values, or an error if the tensor holds token ids.
    pub fn into_values(self) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.data {
            Data::F32(v) => Ok((self.shape, v)),
            Data::Ids(_) => Err(wrong_kind(&self.shape, DType::F32)),
        }
    }

    /// The same elements under another shape with as many elements.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor> {
        check_len(&shape, self.len())?;
        Ok(Tensor { shape, data: self.data })
    }

    /// A borrowed view.
    pub fn view(&self) -> TensorRef<'_> {
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
        let width: usize = rest.iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let range = start * width..end * width;
        let data = match &self.data {
            Data::F32(v) => Data::F32(v[range].to_vec()),
            Data::Ids(v) => Data::Ids(v[range].to_vec()),
        };
        Ok(Tensor { shape, data })
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
        }
    }

    /// The token ids, or an error if the view holds f32 values.
    pub fn ids(&self) -> Result<&[u32]> {
        match &self.data {
            RefData::Ids(v) => Ok(v),
            RefData::F32(_) => Err(wrong_kind(&self.shape, DType::Ids)),
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
        };
        Tensor { shape: self.shape.to_vec(), data }
    }
}
