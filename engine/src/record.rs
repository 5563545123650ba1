//! Forward execution that records a segment.
//!
//! A [`Recorder`] runs ops eagerly on one (micro-batch, layer) and appends
//! them to the segment's tape. Layers written by users call only its
//! methods (each op family adds its own, in [`crate::ops`]), so whatever they
//! build is relocatable like the built-ins.
//!
//! Parameters are tape nodes like any tensor: [`Recorder::param`] records a
//! read of a parameter by name and returns its id, which any op accepts.

use std::collections::BTreeMap;

use crate::device::{self, Backend};
use crate::ops::param::{Constant, Param};
use crate::segment::{SavedTensor, Storage};
use crate::{Error, Op, ParamStore, Result, Segment, SegmentKey, Tensor, TensorId};

/// Records the forward of one segment.
pub struct Recorder<'p> {
    key: SegmentKey,
    prefix: String,
    params: &'p ParamStore,
    values: BTreeMap<TensorId, Tensor>,
    param_values: BTreeMap<TensorId, &'p Tensor>,
    ops: Vec<Op>,
    next_slot: u32,
    backend: Backend,
    seed: u64,
    input_meta: (Vec<usize>, crate::DType),
    /// Evaluation (PyTorch's `model.eval()`): dropout is the identity.
    inference: bool,
    /// A failed upload of the input, reported by [`Recorder::finish`].
    pending: Option<Error>,
}

impl<'p> Recorder<'p> {
    /// Starts recording `key` with `input` as its boundary tensor. Parameter
    /// names given to [`Recorder::param`] are relative to `prefix`
    /// (`layers.3.`). Ops run on the process's default backend.
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
        let input_meta = (input.shape().to_vec(), input.dtype());
        let mut values = BTreeMap::new();
        values.insert(TensorId::boundary(key), input);
        let mut rec = Recorder {
            key,
            prefix,
            params,
            values,
            param_values: BTreeMap::new(),
            ops: Vec::new(),
            next_slot: 1,
            backend,
            seed: 0,
            input_meta,
            inference: false,
            pending: None,
        };
        // An f32 input enters the device once, here; token ids wait for the
        // op that checks them (embedding, cross-entropy).
        if rec.input_meta.1 == crate::DType::F32 {
            rec.pending = rec.make_resident(TensorId::boundary(key)).err();
        }
        rec
    }

    /// Moves the recorded value of `id` (not a parameter) onto the
    /// recorder's device, once (counted): later ops and the saved tensors
    /// then use the resident copy. A no-op on the CPU or when resident.
    pub(crate) fn make_resident(&mut self, id: TensorId) -> Result<()> {
        if !self.backend.device().is_device() {
            return Ok(());
        }
        let Some(value) = self.values.remove(&id) else {
            return Ok(());
        };
        let resident = self.backend.adopt(value)?;
        self.values.insert(id, resident);
        Ok(())
    }

    /// The run's seed, which keys counter-based randomness (dropout masks).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same recorder in evaluation mode: dropout passes its input
    /// through unchanged, as in PyTorch's `model.eval()`.
    pub fn with_inference(mut self, inference: bool) -> Self {
        self.inference = inference;
        self
    }

    /// True in evaluation mode ([`Recorder::with_inference`]).
    pub fn inference(&self) -> bool {
        self.inference
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The segment being recorded.
    pub fn key(&self) -> SegmentKey {
        self.key
    }

    /// The backend the ops run on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The id of the segment's boundary input.
    pub fn input(&self) -> TensorId {
        TensorId::boundary(self.key)
    }

    /// The value of a tensor recorded so far (parameters included).
    pub fn value(&self, id: TensorId) -> Result<&Tensor> {
        if let Some(v) = self.values.get(&id) {
            return Ok(v);
        }
        self.param_values.get(&id).copied().ok_or(Error::UnknownTensor { id, segment: self.key })
    }

    /// Records a read of parameter `name` (relative to the layer's prefix)
    /// and returns its id. Backward deposits its gradient under the full name.
    pub fn param(&mut self, name: &str) -> Result<TensorId> {
        let name = format!("{}{name}", self.prefix);
        let value = self.params.get(&name)?;
        let out = self.alloc();
        self.param_values.insert(out, value);
        self.ops.push(Op::Param(Param { name, shape: value.shape().to_vec(), out }));
        Ok(out)
    }

    /// Records a data tensor (targets, a mask, a constant) that travels with
    /// the segment; it gets no gradient.
    pub fn constant(&mut self, value: Tensor) -> TensorId {
        let out = self.alloc();
        self.ops.push(Op::Constant(Constant { shape: value.shape().to_vec(), dtype: value.dtype(), out }));
        let f32 = value.dtype() == crate::DType::F32;
        self.values.insert(out, value);
        if f32 {
            if let Err(e) = self.make_resident(out) {
                self.pending.get_or_insert(e);
            }
        }
        out
    }

    /// A fresh id for a tensor of this segment.
    pub(crate) fn alloc(&mut self) -> TensorId {
        let id = TensorId::local(self.key, self.next_slot);
        self.next_slot += 1;
        id
    }

    /// Appends `op`, whose outputs have the given values.
    pub(crate) fn record(&mut self, op: Op, outputs: Vec<(TensorId, Tensor)>) {
        self.ops.push(op);
        self.values.extend(outputs);
    }

    /// An error naming this segment.
    pub(crate) fn shape_err(&self, detail: String) -> Error {
        Error::Shape(format!("segment {}: {detail}", self.key))
    }

    /// Ends recording: returns the segment (holding exactly the tensors its
    /// backward reads, parameters excepted, tagged with the recording
    /// device) and the value of `output`.
    pub fn finish(mut self, output: TensorId) -> Result<(Segment, Tensor)> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        let mut ids: Vec<TensorId> =
            self.ops.iter().flat_map(Op::saved).filter(|id| !self.param_values.contains_key(id)).collect();
        ids.sort();
        ids.dedup();
        let out_value = match ids.binary_search(&output) {
            Ok(_) => self.value(output)?.clone(),
            Err(_) => match self.values.remove(&output) {
                Some(v) => v,
                None => self.value(output)?.clone(),
            },
        };
        let mut saved = Vec::with_capacity(ids.len());
        for id in ids {
            let tensor = self.values.remove(&id).ok_or(Error::UnknownTensor { id, segment: self.key })?;
            saved.push(SavedTensor::from_tensor(id, tensor));
        }
        let (input_shape, input_dtype) = self.input_meta;
        let segment = Segment {
            key: self.key,
            input: TensorId::boundary(self.key),
            input_shape,
            input_dtype,
            output,
            ops: self.ops,
            saved,
            device: self.backend.device(),
        };
        Ok((segment, out_value))
    }
}

impl SavedTensor {
    /// A saved tensor holding `tensor`'s elements at full precision; a
    /// resident tensor stays resident (archiving needs
    /// [`Segment::to_host`] first).
    pub fn from_tensor(id: TensorId, tensor: Tensor) -> SavedTensor {
        let shape = tensor.shape().to_vec();
        if let Some(buf) = tensor.device_buf() {
            let storage = match tensor.dtype() {
                crate::DType::Ids => Storage::Ids(Vec::new()),
                crate::DType::F32 => Storage::F32(Vec::new()),
            };
            return SavedTensor { id, shape, storage, resident: Some(buf.clone()) };
        }
        let storage = match tensor.ids() {
            Ok(ids) => Storage::Ids(ids.to_vec()),
            Err(_) => Storage::F32(tensor.into_values().map(|(_, v)| v).unwrap_or_default()),
        };
        SavedTensor { id, shape, storage, resident: None }
    }
}
