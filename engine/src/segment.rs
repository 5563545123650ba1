//! Segments: the tape of one (micro-batch, layer) with exactly the saved
//! tensors its backward needs, as plain data that archives with rkyv.
//!
//! Invariant: a segment is self-contained. Its ops name tensors by
//! [`TensorId`]s of its own [`SegmentKey`] and parameters by name, and
//! `saved` holds every tensor any op's backward reads, so the segment can be
//! backwarded on any worker that holds the named parameters.
//!
//! A segment also notes the [`Device`] that recorded it. That is provenance,
//! not a constraint: saved tensors are host data, and backward runs on
//! whatever backend the receiver chooses (a segment recorded on a CUDA worker
//! is backwarded on a CPU worker after a migration, and the other way round).
//! Results then agree within float rounding, bit for bit only when both
//! devices are of the same kind.

use std::borrow::Cow;

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use crate::device::{ArchivedDevice, Device};
use crate::device::{DevBuf, HostData};
use crate::id::{ArchivedSegmentKey, ArchivedTensorId};
use crate::ops::Meta;
use crate::tensor::{ArchivedDType, DType, RefData};
use crate::validate::{validate, Parts, SavedMeta};
use crate::{Error, Op, Result, SegmentKey, TensorId, TensorRef};

#[cfg(not(target_endian = "little"))]
compile_error!("baton's archives reinterpret little-endian f32 data in place");

/// Element storage of a saved tensor.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Storage {
    /// Full precision; what backward needs for bit-identical results.
    F32(Vec<f32>),
    /// bfloat16 bit patterns: half the bytes, no longer bit-identical.
    Bf16(Vec<u16>),
    /// Token ids and class targets.
    Ids(Vec<u32>),
}

impl Storage {
    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::Bf16(v) => v.len(),
            Storage::Ids(v) => v.len(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) | Storage::Bf16(_) => DType::F32,
            Storage::Ids(_) => DType::Ids,
        }
    }
}

/// A tensor a segment's backward reads.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SavedTensor {
    pub id: TensorId,
    pub shape: Vec<usize>,
    /// The elements, or an empty vector of the kind while `resident`.
    pub storage: Storage,
    /// The device buffer of a tensor kept on the recording device. Never
    /// archived: [`Segment::to_host`] downloads it into `storage` first.
    #[rkyv(with = rkyv::with::Skip)]
    pub resident: Option<DevBuf>,
}

impl SavedTensor {
    fn len(&self) -> usize {
        self.resident.as_ref().map_or(self.storage.len(), DevBuf::len)
    }
}

/// The recorded forward of one micro-batch through one layer (or the loss).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Segment {
    pub key: SegmentKey,
    /// The activation entering the segment.
    pub input: TensorId,
    /// Shape of the input (shape inference starts from it).
    pub input_shape: Vec<usize>,
    /// Element kind of the input (token ids for an embedding).
    pub input_dtype: DType,
    /// The tensor the segment produces (the next layer's input, or the loss).
    pub output: TensorId,
    /// Ops in recording (topological) order.
    pub ops: Vec<Op>,
    /// Exactly the tensors that `ops`' backward reads, sorted by id.
    pub saved: Vec<SavedTensor>,
    /// The device whose kernels recorded the forward (provenance: backward
    /// may run on any device).
    pub device: Device,
}

/// Segments shipped or stored together (one archive).
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SegmentBatch(pub Vec<Segment>);

/// Where backward finds the tensors a segment saved.
pub trait SavedTensors {
    /// The saved tensor `id`, or an error naming it.
    fn saved(&self, id: TensorId) -> Result<TensorRef<'_>>;
}

impl Segment {
    /// Parameter names the segment's ops read, deduplicated, in first-use order.
    pub fn params(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for name in self.ops.iter().flat_map(Op::params) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Bytes held by saved tensors.
    pub fn saved_bytes(&self) -> usize {
        self.saved
            .iter()
            .map(|t| match &t.storage {
                _ if t.resident.is_some() => t.len() * 4,
                Storage::F32(v) => v.len() * 4,
                Storage::Bf16(v) => v.len() * 2,
                Storage::Ids(v) => v.len() * 4,
            })
            .sum()
    }

    /// Whether some saved tensor is still in device memory.
    pub fn is_resident(&self) -> bool {
        self.saved.iter().any(|t| t.resident.is_some())
    }

    /// Downloads every resident saved tensor into host storage (explicit,
    /// counted transfers): what archiving, shipping or handing the segment
    /// to another device needs. A no-op for a host segment.
    pub fn to_host(&mut self) -> Result<()> {
        for tensor in &mut self.saved {
            let Some(buf) = tensor.resident.take() else { continue };
            tensor.storage = match buf.download()? {
                HostData::F32(v) => Storage::F32(v),
                HostData::Ids(v) => Storage::Ids(v),
            };
        }
        Ok(())
    }

    /// Re-stores the saved tensors as bf16 (lossy: halves the bytes, and
    /// backward is then no longer bit-identical to the f32 original).
    pub fn compact_bf16(&mut self) {
        for tensor in &mut self.saved {
            if let Storage::F32(values) = &tensor.storage {
                let bits = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
                tensor.storage = Storage::Bf16(bits);
            }
        }
    }

    /// Checks the invariants a received segment must hold before backward
    /// (see [`crate::validate`]): shape inference over every op, saved
    /// tensors that match it, and ops that connect the input to the output.
    pub fn validate(&self) -> Result<()> {
        let saved: Vec<SavedMeta<'_>> = self
            .saved
            .iter()
            .map(|t| SavedMeta { id: t.id, shape: &t.shape, dtype: t.storage.dtype(), len: t.len() })
            .collect();
        validate(&Parts {
            key: self.key,
            input: self.input,
            input_meta: Meta { shape: self.input_shape.clone(), dtype: self.input_dtype },
            output: self.output,
            ops: &self.ops,
            saved: &saved,
        })
    }
}

impl SavedTensors for Segment {
    fn saved(&self, id: TensorId) -> Result<TensorRef<'_>> {
        let tensor = self.saved.iter().find(|t| t.id == id).ok_or(Error::MissingSaved { id, segment: self.key })?;
        let data = match &tensor.storage {
            _ if tensor.resident.is_some() => {
                RefData::Dev(tensor.resident.clone().ok_or(Error::MissingSaved { id, segment: self.key })?)
            }
            Storage::F32(v) => RefData::F32(Cow::Borrowed(&v[..])),
            Storage::Bf16(bits) => RefData::F32(Cow::Owned(decode_bf16(bits.iter().copied()))),
            Storage::Ids(v) => RefData::Ids(Cow::Borrowed(&v[..])),
        };
        Ok(TensorRef { shape: Cow::Borrowed(&tensor.shape), data })
    }
}

fn decode_bf16(bits: impl Iterator<Item = u16>) -> Vec<f32> {
    bits.map(|b| half::bf16::from_bits(b).to_f32()).collect()
}

/// Magic that starts every segment archive, followed by the payload length
/// (u64 little-endian): 16 bytes, so the rkyv payload stays 16-aligned.
const MAGIC: &[u8; 8] = b"BATONSG1";
const HEADER: usize = 16;

/// Archives segments into one aligned buffer: a 16-byte header (magic and
/// payload length) then the rkyv payload. rkyv alone cannot tell a
/// truncated buffer from a shorter valid one; the header can.
pub fn archive(batch: &SegmentBatch) -> Result<AlignedVec> {
    if let Some(s) = batch.0.iter().find(|s| s.is_resident()) {
        return Err(Error::Internal(format!(
            "segment {} still holds tensors resident on {}: call Segment::to_host before archiving",
            s.key, s.device
        )));
    }
    let payload = rkyv::to_bytes::<BoxedError>(batch).map_err(|e| Error::Archive(e.to_string()))?;
    let mut out = AlignedVec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Validates an archive and returns zero-copy views of its segments: saved
/// f32 data is borrowed from `bytes`, only the small op lists are decoded.
/// Validation covers the header, the device tag and every segment's shapes
/// and connectivity ([`crate::validate`]).
/// `bytes` must be 16-byte aligned (receive into an [`AlignedVec`]).
pub fn access(bytes: &[u8]) -> Result<Vec<SegmentView<'_>>> {
    if bytes.is_empty() {
        return Err(Error::Archive("the archive is empty (0 bytes): nothing was written or received".into()));
    }
    if !is_aligned(bytes) {
        return Err(Error::Archive(
            "the archive must start on a 16-byte boundary in memory; read it into an aligned buffer".into(),
        ));
    }
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(Error::Archive("not a baton segment archive (its first bytes are not the magic)".into()));
    }
    let declared = u64::from_le_bytes(bytes[8..HEADER].try_into().expect("8 bytes"));
    let actual = (bytes.len() - HEADER) as u64;
    if declared != actual {
        return Err(Error::Archive(format!(
            "truncated or padded: the header says {declared} bytes follow, {actual} do"
        )));
    }
    let batch = rkyv::access::<ArchivedSegmentBatch, BoxedError>(&bytes[HEADER..])
        .map_err(|e| Error::Archive(format!("invalid segment archive: {e}")))?;
    batch.0.iter().map(SegmentView::new).collect()
}

/// True when `bytes` starts on a 16-byte boundary, as rkyv's validated
/// access (and reading f32 in place) needs.
pub(crate) fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(16)
}

/// A validated, zero-copy view of an archived segment.
pub struct SegmentView<'a> {
    pub key: SegmentKey,
    pub input: TensorId,
    pub input_shape: Vec<usize>,
    pub input_dtype: DType,
    pub output: TensorId,
    pub ops: Vec<Op>,
    /// The device that recorded the segment.
    pub device: Device,
    archived: &'a ArchivedSegment,
}

impl<'a> SegmentView<'a> {
    fn new(archived: &'a ArchivedSegment) -> Result<Self> {
        let key = native_key(&archived.key);
        let ops = rkyv::deserialize::<Vec<Op>, BoxedError>(&archived.ops)
            .map_err(|e| Error::Archive(format!("segment {key}: undecodable ops: {e}")))?;
        let (input, output, device) =
            (native_id(&archived.input), native_id(&archived.output), native_device(&archived.device));
        let input_shape = native_shape(&archived.input_shape);
        let input_dtype = native_dtype(&archived.input_dtype);
        let view = SegmentView { key, input, input_shape, input_dtype, output, ops, device, archived };
        let shapes: Vec<(TensorId, Vec<usize>, DType, usize)> = archived
            .saved
            .iter()
            .map(|t| (native_id(&t.id), native_shape(&t.shape), archived_dtype(&t.storage), archived_len(&t.storage)))
            .collect();
        let saved: Vec<SavedMeta<'_>> =
            shapes.iter().map(|(id, s, dtype, n)| SavedMeta { id: *id, shape: s, dtype: *dtype, len: *n }).collect();
        validate(&Parts {
            key: view.key,
            input: view.input,
            input_meta: Meta { shape: view.input_shape.clone(), dtype: view.input_dtype },
            output: view.output,
            ops: &view.ops,
            saved: &saved,
        })?;
        Ok(view)
    }

    /// An owned copy of the segment.
    pub fn to_segment(&self) -> Result<Segment> {
        rkyv::deserialize::<Segment, BoxedError>(self.archived)
            .map_err(|e| Error::Archive(format!("segment {}: {e}", self.key)))
    }
}

impl SavedTensors for SegmentView<'_> {
    fn saved(&self, id: TensorId) -> Result<TensorRef<'_>> {
        let tensor = self
            .archived
            .saved
            .iter()
            .find(|t| native_id(&t.id) == id)
            .ok_or(Error::MissingSaved { id, segment: self.key })?;
        let data = match &tensor.storage {
            ArchivedStorage::F32(v) => RefData::F32(Cow::Borrowed(bytemuck::cast_slice::<_, f32>(v.as_slice()))),
            ArchivedStorage::Bf16(bits) => RefData::F32(Cow::Owned(decode_bf16(bits.iter().map(|b| b.to_native())))),
            ArchivedStorage::Ids(v) => RefData::Ids(Cow::Owned(v.iter().map(|i| i.to_native()).collect())),
        };
        Ok(TensorRef { shape: Cow::Owned(native_shape(&tensor.shape)), data })
    }
}

fn native_id(id: &ArchivedTensorId) -> TensorId {
    TensorId {
        step: id.step.to_native(),
        micro: id.micro.to_native(),
        layer: id.layer.to_native(),
        slot: id.slot.to_native(),
    }
}

fn native_device(device: &ArchivedDevice) -> Device {
    match device {
        ArchivedDevice::Cpu => Device::Cpu,
        ArchivedDevice::Cuda(ordinal) => Device::Cuda(ordinal.to_native()),
        ArchivedDevice::Simulated => Device::Simulated,
    }
}

fn native_key(key: &ArchivedSegmentKey) -> SegmentKey {
    SegmentKey { step: key.step.to_native(), micro: key.micro.to_native(), layer: key.layer.to_native() }
}

fn native_shape(shape: &rkyv::vec::ArchivedVec<rkyv::Archived<usize>>) -> Vec<usize> {
    shape.iter().map(|d| d.to_native() as usize).collect()
}

fn archived_len(storage: &ArchivedStorage) -> usize {
    match storage {
        ArchivedStorage::F32(v) => v.len(),
        ArchivedStorage::Bf16(v) => v.len(),
        ArchivedStorage::Ids(v) => v.len(),
    }
}

fn archived_dtype(storage: &ArchivedStorage) -> DType {
    match storage {
        ArchivedStorage::F32(_) | ArchivedStorage::Bf16(_) => DType::F32,
        ArchivedStorage::Ids(_) => DType::Ids,
    }
}

fn native_dtype(dtype: &ArchivedDType) -> DType {
    match dtype {
        ArchivedDType::F32 => DType::F32,
        ArchivedDType::Ids => DType::Ids,
    }
}
