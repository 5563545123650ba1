//! Validation of a segment before backward: full shape inference over its
//! ops, and a check that the ops connect its input to its output.
//!
//! A received segment is untrusted. After validation every tensor an op
//! reads is defined before it, every saved tensor has the shape and kind
//! its defining op gives it, every op contributes to the output and the
//! output depends on the input, so backward neither panics in a kernel nor
//! silently produces an incomplete gradient. Errors name the op.

use std::collections::{BTreeMap, BTreeSet};

use crate::ops::Meta;
use crate::tensor::DType;
use crate::{Error, Op, Result, SegmentKey, TensorId};

/// Shapes of the tensors defined so far, as shape inference sees them.
pub(crate) struct Shapes {
    metas: BTreeMap<TensorId, Meta>,
}

impl Shapes {
    /// The shape and kind of `id`.
    pub(crate) fn get(&self, id: TensorId) -> Result<&Meta> {
        self.metas.get(&id).ok_or_else(|| Error::Shape(format!("reads {id}, which is not defined before it")))
    }

    /// The shape of `id`, which must hold f32 values.
    pub(crate) fn f32(&self, id: TensorId) -> Result<&[usize]> {
        let meta = self.get(id)?;
        match meta.dtype {
            DType::F32 => Ok(&meta.shape),
            DType::Ids => Err(Error::Shape(format!("{id} holds token ids where values are expected"))),
        }
    }

    /// The shape of `id`, which must hold token ids.
    pub(crate) fn ids(&self, id: TensorId) -> Result<&[usize]> {
        let meta = self.get(id)?;
        match meta.dtype {
            DType::Ids => Ok(&meta.shape),
            DType::F32 => Err(Error::Shape(format!("{id} holds values where token ids are expected"))),
        }
    }
}

/// Element count of `shape`, or an error when it overflows.
pub(crate) fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} is too large")))
}

/// A saved tensor as validation sees it: id, shape, kind and element count.
pub(crate) struct SavedMeta<'a> {
    pub id: TensorId,
    pub shape: &'a [usize],
    pub dtype: DType,
    pub len: usize,
}

/// The parts of a segment that validation checks.
pub(crate) struct Parts<'a> {
    pub key: SegmentKey,
    pub input: TensorId,
    pub input_meta: Meta,
    pub output: TensorId,
    pub ops: &'a [Op],
    pub saved: &'a [SavedMeta<'a>],
}

/// Checks everything listed in the module docs.
pub(crate) fn validate(parts: &Parts<'_>) -> Result<()> {
    let key = parts.key;
    let corrupt = |what: String| Error::Archive(format!("segment {key}: {what}"));
    if parts.input.segment() != key || parts.output.segment() != key {
        return Err(corrupt(format!("boundary ids {} / {} belong to another segment", parts.input, parts.output)));
    }
    let shapes = infer_all(parts).map_err(|e| corrupt(e.to_string()))?;
    check_saved(parts, &shapes).map_err(corrupt)?;
    check_connected(parts).map_err(corrupt)
}

/// Runs every op's shape inference in tape order.
fn infer_all(parts: &Parts<'_>) -> std::result::Result<Shapes, String> {
    let mut shapes = Shapes { metas: BTreeMap::new() };
    shapes.metas.insert(parts.input, parts.input_meta.clone());
    for (i, op) in parts.ops.iter().enumerate() {
        let rule = op.rule();
        let at = |detail: String| format!("op {i} ({}): {detail}", rule.name());
        for input in rule.inputs() {
            if !shapes.metas.contains_key(&input) {
                return Err(at(format!(
                    "reads {input}, which is neither the segment's input nor defined by an earlier op"
                )));
            }
        }
        let metas = rule.infer(&shapes).map_err(|e| at(e.to_string()))?;
        let outputs = rule.outputs();
        if metas.len() != outputs.len() {
            return Err(at("inference gave the wrong number of outputs".into()));
        }
        for (id, meta) in outputs.into_iter().zip(metas) {
            numel(&meta.shape).map_err(|e| at(e.to_string()))?;
            if id.segment() != parts.key || shapes.metas.insert(id, meta).is_some() {
                return Err(at(format!("defines {id}, which is defined twice or belongs to another segment")));
            }
        }
    }
    Ok(shapes)
}

/// Saved tensors match their definitions, and every needed one is there.
fn check_saved(parts: &Parts<'_>, shapes: &Shapes) -> std::result::Result<(), String> {
    for t in parts.saved {
        if t.id.segment() != parts.key {
            return Err(format!("saved tensor {} belongs to another segment", t.id));
        }
        let Some(meta) = shapes.metas.get(&t.id) else {
            return Err(format!("saved tensor {} is not defined by any op", t.id));
        };
        if meta.shape != t.shape || meta.dtype != t.dtype || numel(t.shape).ok() != Some(t.len) {
            return Err(format!(
                "saved tensor {} has shape {:?} ({} elements, {:?}) but its op gives {:?} ({:?})",
                t.id, t.shape, t.len, t.dtype, meta.shape, meta.dtype
            ));
        }
    }
    let params: BTreeSet<TensorId> = parts.ops.iter().filter(|op| matches!(op, Op::Param(_))).map(Op::output).collect();
    for op in parts.ops {
        for needed in op.saved() {
            if !params.contains(&needed) && !parts.saved.iter().any(|t| t.id == needed) {
                return Err(format!("saved tensor {needed} (read by the backward of {}) is missing", op.rule().name()));
            }
        }
    }
    if !shapes.metas.contains_key(&parts.output) {
        return Err(format!("no op produces the output {}", parts.output));
    }
    Ok(())
}

/// Every op contributes to the output, and the output depends on the input.
fn check_connected(parts: &Parts<'_>) -> std::result::Result<(), String> {
    let mut live: BTreeSet<TensorId> = BTreeSet::from([parts.output]);
    for (i, op) in parts.ops.iter().enumerate().rev() {
        let rule = op.rule();
        if !rule.outputs().iter().any(|id| live.contains(id)) {
            return Err(format!("op {i} ({}) does not contribute to the output {}", rule.name(), parts.output));
        }
        live.extend(rule.inputs());
    }
    if !live.contains(&parts.input) && parts.output != parts.input {
        return Err(format!("the output {} does not depend on the input {}", parts.output, parts.input));
    }
    Ok(())
}
