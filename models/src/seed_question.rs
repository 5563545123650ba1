//! The seed question, answered with baton's Rust API in two processes.
//!
//! The question: rank A runs `y = linear(x)` and is about to die; rank B has
//! received `y`. Can B run `loss.backward()` and have `optimizer.step()`
//! update *its* copy of the linear layer? In PyTorch it cannot: the autograd
//! graph of `y` lives in A's process. In baton the tape is plain data:
//!
//! - process A runs `Linear(4, 5)` forward on `x = [[1, 2, 3, 4]]` and ships
//!   the recorded segment, the layer's parameters, the SGD(lr=0.1,
//!   momentum=0.9) state and `y` to process B (over a pipe here; workers use
//!   QUIC);
//! - process B splices the segment, records `loss = (z - y).sum() / 5` with
//!   `z = [2, 3, 4, 5, 6]` from the general ops (no built-in loss), runs
//!   backward through both, and steps the optimizer on its own copy.
//!
//! B prints its numbers as one JSON line (`receiver: {...}`); A compares
//! them with PyTorch's single-process run in
//! `../shared/golden/seed_question.safetensors` and exits 1 if any differs
//! by more than 1e-6.
//!
//! The example `models/examples/seed_question.rs` runs both halves;
//! `tests/seed_question.rs` does too, re-running its own binary as B.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::io;
use anyhow::{ensure, Context};
use baton_engine::segment::{self, SegmentBatch};
use baton_engine::{OptState, Optimizer, OptimizerConfig, ParamStore, Recorder, SegmentKey, Tensor};
use rkyv::rancor::BoxedError;

/// What A ships to B.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Shipment {
    /// `segment::archive` of the linear layer's segment.
    segment: Vec<u8>,
    /// The activation B received: `y = linear(x)`.
    y: Tensor,
    /// The layer's parameters and their optimizer state.
    params: Vec<(String, Tensor)>,
    optimizer: String,
    states: Vec<(String, OptState)>,
}

/// Process A: forward, ship to a process B started as `receiver` (with
/// the shipment on its stdin), and check what B computed against
/// `golden` (seed_question.safetensors). Returns B's JSON line.
pub fn send(golden: &Path, receiver: Command) -> anyhow::Result<String> {
    let path = golden;
    let mut params = ParamStore::new();
    for name in ["weight", "bias"] {
        params.insert(name, io::load_f32(path, name).with_context(|| format!("{}", path.display()))?);
    }
    let x = io::load_f32(path, "x")?.reshaped(vec![1, 4])?;
    let key = SegmentKey { step: 0, micro: 0, layer: 0 };
    let mut rec = Recorder::new(key, String::new(), &params, x);
    let (input, w, b) = (rec.input(), rec.param("weight")?, rec.param("bias")?);
    let y = rec.linear(input, w, Some(b))?;
    let (segment, y) = rec.finish(y)?;
    let optimizer = Optimizer::new("sgd:lr=0.1,momentum=0.9".parse()?);
    let states =
        ["weight", "bias"].iter().map(|n| (n.to_string(), optimizer.state(n).cloned().unwrap_or_default())).collect();
    let shipment = Shipment {
        segment: segment::archive(&SegmentBatch(vec![segment]))?.to_vec(),
        y,
        params: params.into_iter().collect(),
        optimizer: optimizer.config.to_string(),
        states,
    };
    let bytes = rkyv::to_bytes::<BoxedError>(&shipment)?;
    println!(
        "A: recorded Linear(4, 5) on x = [[1, 2, 3, 4]]; shipping {} bytes to process B and exiting its graph",
        bytes.len()
    );
    let reply = run_receiver(receiver, &bytes)?;
    println!("receiver: {reply}");
    check(path, &reply)?;
    Ok(reply)
}

/// Starts process B, feeds it the shipment on stdin, returns its last line.
fn run_receiver(mut receiver: Command, bytes: &[u8]) -> anyhow::Result<String> {
    let mut child = receiver.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    child.stdin.take().context("B's stdin")?.write_all(bytes)?;
    let mut out = String::new();
    child.stdout.take().context("B's stdout")?.read_to_string(&mut out)?;
    ensure!(child.wait()?.success(), "process B failed");
    // The result is the last JSON object B printed (a test harness may put
    // its own text before it on the same line).
    let line = out.lines().rev().find_map(|l| l.find("{\"").map(|at| &l[at..]));
    line.map(str::to_string).context("process B printed no result")
}

/// Process B: reads the shipment from stdin, splices the segment, runs the
/// backward of a loss written with general ops, steps the optimizer, and
/// prints its numbers as one JSON line.
pub fn receive() -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    let shipment = rkyv::from_bytes::<Shipment, BoxedError>(&bytes).context("the shipment from process A")?;
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&shipment.segment);
    let views = segment::access(&aligned)?;
    let mut params: ParamStore = shipment.params.into_iter().collect();

    let z = Tensor::new(vec![5], vec![2.0, 3.0, 4.0, 5.0, 6.0])?;
    let empty = ParamStore::new();
    let mut rec = Recorder::new(SegmentKey { step: 0, micro: 0, layer: 1 }, String::new(), &empty, shipment.y.clone());
    let (y, z) = (rec.input(), rec.constant(z));
    let d = rec.sub(z, y)?;
    let s = rec.sum(d)?;
    let loss = rec.scale(s, 1.0 / 5.0)?;
    let (loss_segment, loss_value) = rec.finish(loss)?;

    let dy = loss_segment.backward(&empty, Tensor::scalar(1.0), true)?.input_grad.context("dloss/dy")?;
    let grads = views[0].backward(&params, dy, false)?.param_grads;
    let mut optimizer = Optimizer::new(shipment.optimizer.parse::<OptimizerConfig>()?);
    for (name, state) in shipment.states {
        optimizer.insert_state(name, state);
    }
    for (name, grad) in grads.iter() {
        optimizer.update(0, name, params.get_mut(name)?, grad)?;
    }
    let values = |t: &Tensor| t.values().map(<[f32]>::to_vec);
    let report = serde_json::json!({
        "loss": loss_value.values()?[0],
        "y": values(&shipment.y)?,
        "grad.weight": values(grads.get("weight")?)?,
        "grad.bias": values(grads.get("bias")?)?,
        "after.weight": values(params.get("weight")?)?,
        "after.bias": values(params.get("bias")?)?,
    });
    println!("{report}");
    Ok(())
}

/// B's numbers against PyTorch's (`expect.*` in the golden file).
pub fn check(path: &Path, reply: &str) -> anyhow::Result<()> {
    let got: serde_json::Value = serde_json::from_str(reply)?;
    let mut worst = 0.0f32;
    for (key, tensor) in [
        ("loss", "expect.loss"),
        ("y", "expect.y"),
        ("grad.weight", "expect.grad.weight"),
        ("grad.bias", "expect.grad.bias"),
        ("after.weight", "expect.after.weight"),
        ("after.bias", "expect.after.bias"),
    ] {
        let want = io::load_f32(path, tensor)?;
        let want = want.values()?;
        let got: Vec<f32> = match &got[key] {
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_f64()).map(|v| v as f32).collect(),
            v => vec![v.as_f64().context("a number")? as f32],
        };
        ensure!(got.len() == want.len(), "{key}: {} values, PyTorch has {}", got.len(), want.len());
        worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    println!("B's loss, y, gradients and updated weights against PyTorch: max |difference| {worst:e}");
    ensure!(worst <= 1e-6, "differs from PyTorch by {worst:e} (> 1e-6)");
    println!("process B updated its own copy of the layer A recorded: the seed question's answer is yes");
    Ok(())
}
