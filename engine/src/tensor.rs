//! Dense row-major f32 tensors, and borrowed views of them.

use std::borrow::Cow;

use crate::{Error, Result};

/// A dense row-major f32 tensor. Invariant: `data.len()` is the product of
/// `shape` (checked by [`Tensor::new`] and by archive validation).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and data; errors if the element counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} holds {expected} elements but {} were given",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// A single-element tensor of shape `[]`.
    pub fn scalar(value: f32) -> Self {
        Tensor { shape: Vec::new(), data: vec![value] }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A borrowed view.
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef { shape: Cow::Borrowed(&self.shape), data: Cow::Borrowed(&self.data) }
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
        Ok(Tensor { shape, data: self.data[start * width..end * width].to_vec() })
    }
}

/// A read-only view of a tensor that may live in an archive (borrowed,
/// zero-copy) or have been decoded from compact storage (owned).
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    pub shape: Cow<'a, [usize]>,
    pub data: Cow<'a, [f32]>,
}

impl TensorRef<'_> {
    /// Rows and columns of a matrix-shaped view (`[rows, cols]`).
    pub fn matrix(&self, what: &str) -> Result<(usize, usize)> {
        match *self.shape {
            [rows, cols] => Ok((rows, cols)),
            ref other => Err(Error::Shape(format!("{what} must be a matrix, has shape {other:?}"))),
        }
    }

    /// An owned copy.
    pub fn to_tensor(&self) -> Tensor {
        Tensor { shape: self.shape.to_vec(), data: self.data.to_vec() }
    }
}
