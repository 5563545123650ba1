//! Forward execution that records a segment.
//!
//! A [`Recorder`] runs ops eagerly on one (micro-batch, layer) and appends
//! them to the segment's tape. Layers written by users call only these
//! methods, so whatever they build is relocatable like the built-ins.
//!
//! Each op runs on the recorder's [`Backend`]; the values it records stay
//! host tensors whatever the device, and the segment notes which device
//! recorded it.

use std::collections::BTreeMap;

use baton_kernels::Trans;

use crate::device::{self, Backend};
use crate::segment::{SavedTensor, Storage};
use crate::{Activation, Error, Op, ParamStore, Result, Segment, SegmentKey, Tensor, TensorId};

/// Records the forward of one segment.
pub struct Recorder<'p> {
    key: SegmentKey,
    prefix: String,
    params: &'p ParamStore,
    values: BTreeMap<TensorId, Tensor>,
    ops: Vec<Op>,
    next_slot: u32,
    backend: Backend,
}

impl<'p> Recorder<'p> {
    /// Starts recording `key` with `input` as its boundary tensor. Parameter
    /// names given to the op methods are relative to `prefix` (`layers.3.`).
    /// Ops run on the process's default backend ([`device::process_default`]).
    pub fn new(key: SegmentKey, prefix: String, params: &'p ParamStore, input: Tensor) -> Self {
        Self::with_backend(key, prefix, params, input, device::process_default())
    }

    /// Like [`Recorder::new`], with ops running on `backend`.
    pub fn with_backend(
        key: SegmentKey,
        prefix: String,
        params: &'p ParamStore,
        input: Tensor,
        backend: Backend,
    ) -> Self {
        let mut values = BTreeMap::new();
        values.insert(TensorId::boundary(key), input);
        Recorder { key, prefix, params, values, ops: Vec::new(), next_slot: 1, backend }
    }

    /// The backend the ops run on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The id of the segment's boundary input.
    pub fn input(&self) -> TensorId {
        TensorId::boundary(self.key)
    }

    /// The value of a tensor recorded so far.
    pub fn value(&self, id: TensorId) -> Result<&Tensor> {
        self.values.get(&id).ok_or(Error::UnknownTensor { id, segment: self.key })
    }

    /// `x · weightᵀ + bias`, x `[rows, in]`, weight `[out, in]`, bias `[out]`.
    pub fn linear(&mut self, x: TensorId, weight: &str, bias: Option<&str>) -> Result<TensorId> {
        let weight = self.param_name(weight);
        let bias = bias.map(|b| self.param_name(b));
        let out = self.compute_linear(x, &weight, bias.as_deref())?;
        let out_id = self.push(out);
        self.ops.push(Op::Linear { x, weight, bias, out: out_id });
        Ok(out_id)
    }

    fn compute_linear(&self, x: TensorId, weight: &str, bias: Option<&str>) -> Result<Tensor> {
        let xv = self.value(x)?;
        let w = self.params.get(weight)?;
        let (rows, inp) = xv.view().matrix("linear input")?;
        let (out, w_in) = w.view().matrix(weight)?;
        if w_in != inp {
            return Err(shape_err(format!("{weight} is [{out}, {w_in}] but the input has {inp} features")));
        }
        let mut y = Tensor::zeros(&[rows, out]);
        self.backend.matmul(&mut y.data, &xv.data, Trans::No, &w.data, Trans::Yes, rows, inp, out, false)?;
        if let Some(bias) = bias {
            let b = self.params.get(bias)?;
            if b.shape[..] != [out] {
                return Err(shape_err(format!("{bias} has shape {:?}, expected [{out}]", b.shape)));
            }
            self.backend.add_bias_rows(&mut y.data, &b.data)?;
        }
        Ok(y)
    }

    /// `act(x)`.
    pub fn activation(&mut self, x: TensorId, kind: Activation) -> Result<TensorId> {
        let xv = self.value(x)?;
        let mut y = Tensor::zeros(&xv.shape);
        self.backend.activation(kind, &xv.data, &mut y.data)?;
        let out = self.push(y);
        self.ops.push(Op::Activation { kind, x, out });
        Ok(out)
    }

    /// Layer normalisation over the last dimension with affine `weight`, `bias`.
    pub fn layernorm(&mut self, x: TensorId, weight: &str, bias: &str, eps: f32) -> Result<TensorId> {
        let (weight, bias) = (self.param_name(weight), self.param_name(bias));
        let xv = self.value(x)?;
        let (rows, cols) = xv.view().matrix("layernorm input")?;
        let (g, b) = (self.params.get(&weight)?, self.params.get(&bias)?);
        if g.shape[..] != [cols] || b.shape[..] != [cols] {
            return Err(shape_err(format!("{weight}/{bias} must have shape [{cols}]")));
        }
        let mut y = Tensor::zeros(&[rows, cols]);
        let mut stats = Tensor::zeros(&[2, rows]);
        self.backend.layernorm(&xv.data, &g.data, &b.data, cols, eps, &mut y.data, &mut stats.data)?;
        let stats = self.push(stats);
        let out = self.push(y);
        self.ops.push(Op::LayerNorm { x, weight, bias, eps, stats, out });
        Ok(out)
    }

    /// `a + b` (same shapes).
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let (av, bv) = (self.value(a)?, self.value(b)?);
        if av.shape != bv.shape {
            return Err(shape_err(format!("add of {:?} and {:?}", av.shape, bv.shape)));
        }
        let mut y = Tensor::zeros(&av.shape);
        self.backend.add(&av.data, &bv.data, &mut y.data)?;
        let out = self.push(y);
        self.ops.push(Op::Add { a, b, out });
        Ok(out)
    }

    /// Mean squared error of `pred` against `target`, a scalar.
    pub fn mse_loss(&mut self, pred: TensorId, target: Tensor) -> Result<TensorId> {
        let pv = self.value(pred)?;
        if pv.shape != target.shape {
            return Err(shape_err(format!("mse of {:?} against targets {:?}", pv.shape, target.shape)));
        }
        let value = self.backend.mse(&pv.data, &target.data)?;
        let target = self.put(TensorId::local(self.key, crate::id::TARGET_SLOT), target);
        let out = self.push(Tensor::scalar(value));
        self.ops.push(Op::MseLoss { pred, target, out });
        Ok(out)
    }

    /// Mean softmax cross-entropy of `logits` `[rows, classes]` against class indices.
    pub fn cross_entropy_loss(&mut self, logits: TensorId, classes: &[u32]) -> Result<TensorId> {
        let lv = self.value(logits)?;
        let (rows, n_classes) = lv.view().matrix("cross-entropy logits")?;
        check_classes(classes, rows, n_classes)?;
        let mut probs = Tensor::zeros(&[rows, n_classes]);
        let value = self.backend.cross_entropy(&lv.data, n_classes, classes, &mut probs.data)?;
        let as_f32 = classes.iter().map(|&c| c as f32).collect();
        let target_tensor = Tensor { shape: vec![rows], data: as_f32 };
        let target = self.put(TensorId::local(self.key, crate::id::TARGET_SLOT), target_tensor);
        let probs = self.push(probs);
        let out = self.push(Tensor::scalar(value));
        self.ops.push(Op::CrossEntropyLoss { logits, target, probs, out });
        Ok(out)
    }

    /// Ends recording: returns the segment (holding exactly the tensors its
    /// backward reads, tagged with the recording device) and the value of `output`.
    pub fn finish(mut self, output: TensorId) -> Result<(Segment, Tensor)> {
        let mut ids: Vec<TensorId> = self.ops.iter().flat_map(Op::saved).collect();
        ids.sort();
        ids.dedup();
        let out_value = match ids.binary_search(&output) {
            Ok(_) => self.value(output)?.clone(),
            Err(_) => self.values.remove(&output).ok_or(Error::UnknownTensor { id: output, segment: self.key })?,
        };
        let mut saved = Vec::with_capacity(ids.len());
        for id in ids {
            let tensor = self.values.remove(&id).ok_or(Error::UnknownTensor { id, segment: self.key })?;
            saved.push(SavedTensor { id, shape: tensor.shape, storage: Storage::F32(tensor.data) });
        }
        let (key, input, device) = (self.key, TensorId::boundary(self.key), self.backend.device());
        let segment = Segment { key, input, output, ops: self.ops, saved, device };
        Ok((segment, out_value))
    }

    fn param_name(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    fn push(&mut self, value: Tensor) -> TensorId {
        let id = TensorId::local(self.key, self.next_slot);
        self.next_slot += 1;
        self.put(id, value)
    }

    fn put(&mut self, id: TensorId, value: Tensor) -> TensorId {
        self.values.insert(id, value);
        id
    }
}

/// Class targets must match the rows and lie in `0..classes`.
pub(crate) fn check_classes(classes: &[u32], rows: usize, n_classes: usize) -> Result<()> {
    if classes.len() != rows {
        return Err(shape_err(format!("{} class targets for {rows} rows", classes.len())));
    }
    match classes.iter().find(|&&c| c as usize >= n_classes) {
        Some(bad) => Err(Error::Data(format!("class target {bad} is not below the {n_classes} classes"))),
        None => Ok(()),
    }
}

fn shape_err(detail: String) -> Error {
    Error::Shape(detail)
}
