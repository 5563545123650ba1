//! The receiving half of a relocation, as a test helper: reads archived
//! segments (as shipped by a dying worker), runs their backward against
//! parameters loaded from a file, and writes the gradients out, so a test can
//! compare them bit-for-bit with a local backward of the same segments.
//!
//! A test runs it in a separate process by re-running its own test binary
//! ([`in_child`]): the test function calls [`serve_if_child`] first, which
//! in the child runs the splice from the arguments in [`CHILD_ENV`] and
//! exits (0, or 1 printing the error). It used to be `baton splice`, a
//! hidden subcommand of the product binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use baton_engine::pipeline::protocol::without_addresses;
use baton_engine::segment::{self, SegmentView};
use baton_engine::{BackwardOutput, ParamStore, Segment, SegmentKey, Tensor};
use baton_models::io;
use clap::Parser;
use rkyv::util::AlignedVec;

/// Name of the output gradient in the --grad file.
pub const GRAD_TENSOR: &str = "grad";
/// Name of the gradient of the first segment's input in the --out file.
pub const INPUT_GRAD_TENSOR: &str = "input_grad";
/// Set in the child: the splice's arguments, separated by [`SEPARATOR`].
pub const CHILD_ENV: &str = "BATON_TEST_SPLICE_ARGS";
const SEPARATOR: char = '\u{1f}';

#[derive(Debug, Parser)]
#[command(name = "splice")]
pub struct SpliceArgs {
    /// Parameters the receiver holds (safetensors; every F32 tensor, names as-is).
    #[arg(long, value_name = "FILE")]
    pub params: PathBuf,
    /// The segment archive (bytes of `baton_engine::segment::archive`): one
    /// micro-batch's segments of consecutive layers.
    #[arg(long, value_name = "FILE")]
    pub segments: PathBuf,
    /// safetensors holding `grad`, the gradient of the last segment's output.
    #[arg(long, value_name = "FILE")]
    pub grad: PathBuf,
    /// Where to write the parameter gradients and `input_grad`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs test `test` of this test binary in a child process with
/// [`CHILD_ENV`] set to `args` (the child's [`serve_if_child`] splices);
/// killed after 120 s.
pub fn in_child(test: &str, args: &[&str]) -> Output {
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"));
    child.args(["--exact", test, "--nocapture", "--test-threads", "1"]);
    child.env(CHILD_ENV, args.join(&SEPARATOR.to_string()));
    super::run_with_watchdog(&mut child, Duration::from_secs(120))
}

/// In a child started by [`in_child`]: splices and exits the process
/// (status 1 with `error: ...` on stderr when it fails). Elsewhere returns.
pub fn serve_if_child() {
    let Some(value) = std::env::var_os(CHILD_ENV) else { return };
    let value = value.to_string_lossy().into_owned();
    let argv = std::iter::once("splice").chain(value.split(SEPARATOR));
    let result = SpliceArgs::try_parse_from(argv).map_err(anyhow::Error::from).and_then(run);
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
    }
    std::process::exit(i32::from(result.is_err()));
}

/// Splices: loads the files, backwards the chain, writes the gradients.
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
