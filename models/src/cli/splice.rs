//! `baton splice`: the receiving half of a relocation. Reads archived
//! segments (as shipped by a dying worker), runs their backward here against
//! parameters loaded from a file, and writes the gradients out, so a test can
//! compare them bit-for-bit with a local backward of the same segments.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context};
use baton_engine::pipeline::protocol::without_addresses;
use baton_engine::segment::{self, SegmentView};
use baton_engine::{BackwardOutput, ParamStore, Segment, SegmentKey, Tensor};
use baton_models::io;
use clap::Args;
use rkyv::util::AlignedVec;

/// Name of the output gradient in the --grad file.
pub const GRAD_TENSOR: &str = "grad";
/// Name of the gradient of the first segment's input in the --out file.
pub const INPUT_GRAD_TENSOR: &str = "input_grad";

#[derive(Debug, Args)]
pub struct SpliceArgs {
    /// Parameters the receiver holds (safetensors; every F32 tensor, names as-is).
    #[arg(long, value_name = "FILE")]
    params: PathBuf,
    /// The segment archive (bytes of `baton_engine::segment::archive`): one
    /// micro-batch's segments of consecutive layers.
    #[arg(long, value_name = "FILE")]
    segments: PathBuf,
    /// safetensors holding `grad`, the gradient of the last segment's output.
    #[arg(long, value_name = "FILE")]
    grad: PathBuf,
    /// Where to write the parameter gradients and `input_grad`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Runs `baton splice`.
pub fn run(args: SpliceArgs) -> anyhow::Result<()> {
    let params = io::load_tensors(&args.params, "").context("--params")?;
    let bytes = read_aligned(&args.segments).context("--segments")?;
    let views = segment::access(&bytes)
        .map_err(|e| anyhow!("{}", without_addresses(&e.to_string(), &bytes)))
        .with_context(|| format!("--segments {}", args.segments.display()))?;
    let grad = io::load_f32(&args.grad, GRAD_TENSOR).context("--grad")?;
    let result = backward_chain(&views, &params, grad)?;
    let mut out = result.params;
    let grads = out.len();
    if let Some(input) = result.input {
        out.insert(INPUT_GRAD_TENSOR, input);
    }
    io::save_params(&args.out, &out, None).context("--out")?;
    eprintln!(
        "backwarded {} segments ({} archive bytes): {grads} parameter gradients{} written to {}",
        views.len(),
        bytes.len(),
        if out.contains(INPUT_GRAD_TENSOR) { " and input_grad" } else { "" },
        args.out.display()
    );
    Ok(())
}

/// Reads a file into a 16-byte aligned buffer, as [`segment::access`] needs.
pub fn read_aligned(path: &Path) -> anyhow::Result<AlignedVec> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(!data.is_empty(), "{} is empty (0 bytes): not a segment archive", path.display());
    Ok(aligned_copy(&data))
}

/// Copies bytes into a fresh 16-byte aligned buffer (what a receiver does
/// with bytes off the wire).
pub fn aligned_copy(data: &[u8]) -> AlignedVec {
    let mut buf = AlignedVec::with_capacity(data.len());
    buf.extend_from_slice(data);
    buf
}

/// Something backward can run on: an owned segment or an archived view.
pub trait Backward {
    fn key(&self) -> SegmentKey;
    fn run(&self, params: &ParamStore, grad: Tensor, input_grad: bool) -> baton_engine::Result<BackwardOutput>;
}

impl Backward for Segment {
    fn key(&self) -> SegmentKey {
        self.key
    }
    fn run(&self, params: &ParamStore, grad: Tensor, input_grad: bool) -> baton_engine::Result<BackwardOutput> {
        self.backward(params, grad, input_grad)
    }
}

impl Backward for SegmentView<'_> {
    fn key(&self) -> SegmentKey {
        self.key
    }
    fn run(&self, params: &ParamStore, grad: Tensor, input_grad: bool) -> baton_engine::Result<BackwardOutput> {
        self.backward(params, grad, input_grad)
    }
}

/// Gradients of a chain of segments.
#[derive(Debug)]
pub struct ChainGrads {
    /// Every parameter gradient of every segment, by name.
    pub params: ParamStore,
    /// Gradient of the first segment's input (None when that is layer 0).
    pub input: Option<Tensor>,
}

/// Backward from the last segment (highest layer) to the first, feeding each
/// segment's input gradient to the one before. The segments must be one
/// micro-batch of one step over consecutive layers, in any order.
pub fn backward_chain<S: Backward>(segments: &[S], params: &ParamStore, grad: Tensor) -> anyhow::Result<ChainGrads> {
    let order = chain_order(segments)?;
    let mut grads = ParamStore::new();
    let mut grad = Some(grad);
    for &i in order.iter().rev() {
        let key = segments[i].key();
        let dy = grad.take().ok_or_else(|| anyhow!("segment {key} received no gradient"))?;
        let out = segments[i].run(params, dy, key.layer > 0).with_context(|| format!("backward of segment ({key})"))?;
        for (name, g) in out.param_grads {
            if grads.contains(&name) {
                grads.accumulate(&name, g.view())?;
            } else {
                grads.insert(name, g);
            }
        }
        grad = out.input_grad;
    }
    Ok(ChainGrads { params: grads, input: grad })
}

/// Indices of `segments` by ascending layer; errors unless they form one chain.
fn chain_order<S: Backward>(segments: &[S]) -> anyhow::Result<Vec<usize>> {
    ensure!(!segments.is_empty(), "the archive holds no segments");
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| segments[i].key().layer);
    for pair in order.windows(2) {
        let (a, b) = (segments[pair[0]].key(), segments[pair[1]].key());
        if (a.step, a.micro) != (b.step, b.micro) {
            bail!("segments ({a}) and ({b}) belong to different micro-batches; splice one micro-batch at a time");
        }
        if b.layer != a.layer + 1 {
            bail!("segments ({a}) and ({b}) are not consecutive layers");
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use baton_engine::{init, SegmentBatch};
    use baton_models::spec;

    use super::*;

    /// Forward of one micro-batch through mlp12 and the loss, locally.
    fn forward() -> (ParamStore, Vec<Segment>, Segment) {
        let model = spec::mlp12();
        let params = init::init_params(&model.param_specs(), 3);
        let batch = &io::synthetic_data(&model, 1, 4, 3)[0];
        let key = |layer| SegmentKey { step: 0, micro: 0, layer };
        let mut x = batch.x.clone();
        let mut segments = Vec::new();
        for layer in 0..12 {
            let (seg, out) = model.forward_layer(key(layer), &params, x).unwrap();
            segments.push(seg);
            x = out;
        }
        let (loss, _) = model.forward_loss(key(12), x, &batch.targets).unwrap();
        (params, segments, loss)
    }

    #[test]
    fn archived_chain_matches_local_backward_bit_for_bit() {
        let (params, segments, loss) = forward();
        let grad = loss.backward(&params, Tensor::scalar(1.0), true).unwrap().input_grad.unwrap();
        let local = backward_chain(&segments, &params, grad.clone()).unwrap();
        let bytes = aligned_copy(&segment::archive(&SegmentBatch(segments.iter().rev().cloned().collect())).unwrap());
        let views = segment::access(&bytes).unwrap();
        let remote = backward_chain(&views, &params, grad).unwrap();
        assert_eq!(local.params, remote.params);
        assert_eq!(local.params.len(), 24);
        assert!(local.input.is_none() && remote.input.is_none());
    }

    #[test]
    fn gaps_and_missing_parameters_are_refused() {
        let (params, segments, _) = forward();
        let gap = [segments[3].clone(), segments[5].clone()];
        let err = backward_chain(&gap, &params, Tensor::zeros(&[4, 64])).unwrap_err();
        assert!(err.to_string().contains("not consecutive"), "{err:#}");
        let few = params.with_prefix("layers.5.");
        let err = backward_chain(&segments[4..6], &few, Tensor::zeros(&[4, 64])).unwrap_err();
        assert!(format!("{err:#}").contains("layers.4.weight"), "{err:#}");
    }

    /// Files for a splice of layers 4-7 of micro-batch 0; returns the local result.
    fn write_inputs(dir: &Path) -> (SpliceArgs, ChainGrads) {
        let (params, segments, loss) = forward();
        let mut grad = loss.backward(&params, Tensor::scalar(1.0), true).unwrap().input_grad.unwrap();
        grad = backward_chain(&segments[8..], &params, grad).unwrap().input.unwrap();
        let local = backward_chain(&segments[4..8], &params, grad.clone()).unwrap();
        let held: ParamStore = (4..8).flat_map(|l| params.with_prefix(&format!("layers.{l}."))).collect();
        let args = SpliceArgs {
            params: dir.join("params.safetensors"),
            segments: dir.join("segments.rkyv"),
            grad: dir.join("grad.safetensors"),
            out: dir.join("out.safetensors"),
        };
        io::save_params(&args.params, &held, None).unwrap();
        let archive = segment::archive(&SegmentBatch(segments[4..8].to_vec())).unwrap();
        std::fs::write(&args.segments, &archive[..]).unwrap();
        io::save_params(&args.grad, &[(GRAD_TENSOR.to_string(), grad)].into_iter().collect(), None).unwrap();
        (args, local)
    }

    #[test]
    fn splice_command_writes_bit_identical_gradients() {
        let dir = tempfile::tempdir().unwrap();
        let (args, local) = write_inputs(dir.path());
        let out = args.out.clone();
        run(args).unwrap();
        let mut written = io::load_tensors(&out, "").unwrap();
        assert_eq!(written.remove(INPUT_GRAD_TENSOR), local.input);
        assert_eq!(written, local.params);
    }

    #[test]
    fn corrupt_archive_is_refused_with_the_flag_named() {
        let dir = tempfile::tempdir().unwrap();
        let (args, _) = write_inputs(dir.path());
        let mut bytes = std::fs::read(&args.segments).unwrap();
        let n = bytes.len();
        bytes[n - 40..].fill(0xff);
        std::fs::write(&args.segments, &bytes).unwrap();
        let err = format!("{:#}", run(args).unwrap_err());
        assert!(err.contains("--segments") && err.contains("archive"), "{err}");
    }
}
