//! Residency on the simulated device (host memory behind the device
//! interface, running the CPU kernels, counting every host<->device copy):
//! a GPT step moves exactly its inputs and targets in and its losses out,
//! nothing per op; the results are bit-identical to the CPU's; segments
//! recorded on the device are archived (downloads counted) and backwarded
//! on the CPU and the other way round, bit for bit; a host read of a
//! resident tensor is refused.

mod common;

use baton_engine::segment::{self, SegmentBatch};
use baton_engine::{init, Backend, Batch, Model, Optimizer, ParamStore, SegmentKey, Tensor, Trainer};
use baton_models::{io, spec};
use common::bit_identical;

const MICRO: usize = 2;
const ROWS: usize = 4;
const SEQ: usize = 8;

/// A 5-layer GPT with dropout: embedding, 2 blocks, layernorm, head.
fn gpt() -> Model {
    let block = r#"{"type": "transformer_block", "heads": 2, "hidden": 32, "dropout": 0.1}"#;
    let text = format!(
        r#"{{"input": {{"tokens": 17, "seq": {SEQ}}}, "layers": [{{"type": "embedding", "dim": 16}}, {block}, {block},
            {{"type": "layernorm"}}, {{"type": "linear", "out": 17}}], "loss": "cross_entropy"}}"#
    );
    spec::parse(&text).unwrap().with_seed(9)
}

fn setup() -> (ParamStore, Vec<Batch>) {
    let model = gpt();
    (init::init_params(&model.param_specs(), 3), io::synthetic_data(&model, 3, ROWS, 4))
}

fn trainer(backend: Backend, params: ParamStore) -> Trainer {
    let optimizer = Optimizer::new("adamw:lr=3e-3,weight_decay=0.1".parse().unwrap());
    Trainer::new(gpt().with_backend(backend), params, optimizer).unwrap()
}

#[test]
fn a_gpt_step_moves_only_inputs_targets_and_losses() {
    let (params, data) = setup();
    let mut cpu = trainer(Backend::cpu(), params.clone());
    let sim = Backend::simulated();
    let before = sim.transfers();
    let mut dev = trainer(sim.clone(), params.clone());
    let param_bytes: u64 = params.iter().map(|(_, t)| t.bytes() as u64).sum();
    let setup = sim.transfers() - before;
    assert_eq!((setup.h2d_bytes, setup.h2d_copies, setup.d2h_copies), (param_bytes, params.len() as u64, 0));
    for (step, batch) in data.iter().enumerate() {
        let expected = cpu.step(step as u32, batch, MICRO).unwrap();
        let before = sim.transfers();
        let loss = dev.step(step as u32, batch, MICRO).unwrap();
        let moved = sim.transfers() - before;
        assert_eq!(loss.to_bits(), expected.to_bits(), "step {step}: loss {loss} on the device, {expected} on the CPU");
        // Per micro-batch: its token ids and its targets in (u32 each), its
        // loss out (one f32). Nothing else crosses: no parameter, no
        // activation, no gradient, no optimizer state, nothing per op.
        let ids = (ROWS * SEQ * 4) as u64;
        assert_eq!(moved.h2d_copies, 2 * MICRO as u64, "step {step}: {moved:?}");
        assert_eq!(moved.h2d_bytes, 2 * ids, "step {step}: {moved:?}");
        assert_eq!((moved.d2h_copies, moved.d2h_bytes), (MICRO as u64, 4 * MICRO as u64), "step {step}: {moved:?}");
    }
    assert!(dev.params.iter().all(|(_, t)| t.device_buf().is_some()), "the parameters stayed resident");
    let before = sim.transfers();
    let trained = dev.params.to_host().unwrap();
    assert_eq!((sim.transfers() - before).d2h_bytes, param_bytes, "saving downloads each parameter once");
    assert!(bit_identical(&trained, &cpu.params), "the device run gives the CPU's bits");
}

/// Pipeline stages on the simulated device upload their parameters once,
/// when built, like the one-process trainer: step 0 (before any update made
/// them resident) moves only inputs, targets and losses, as later steps do.
/// Boundary activations and gradients stay on the device between the
/// in-memory stages (no encode), so nothing else crosses.
#[test]
fn pipeline_stages_upload_their_parameters_once_not_per_op() {
    use baton_engine::pipeline::{sim, ScheduleKind};
    let (params, data) = setup();
    let optimizer = "adamw:lr=3e-3,weight_decay=0.1".parse().unwrap();
    let config = |workers| sim::SimConfig { workers, micro_batches: MICRO, kind: ScheduleKind::OneFOneB, seed: 5 };
    let cpu = sim::train(std::sync::Arc::new(gpt()), &params, optimizer, &data, config(1)).unwrap();
    let param_bytes: u64 = params.iter().map(|(_, t)| t.bytes() as u64).sum();
    let ids = (ROWS * SEQ * 4) as u64;
    for workers in [1, 3] {
        let backend = Backend::simulated();
        let model = std::sync::Arc::new(gpt().with_backend(backend.clone()));
        let run = sim::train(model, &params, optimizer, &data, config(workers)).unwrap();
        let moved = backend.transfers();
        let steps = data.len() as u64;
        // Per step: each micro-batch's token ids and targets (together 2 * ids bytes).
        let expected_in = (params.len() as u64 + 2 * MICRO as u64 * steps, param_bytes + 2 * ids * steps);
        assert_eq!((moved.h2d_copies, moved.h2d_bytes), expected_in, "{workers} workers: {moved:?}");
        assert_eq!(moved.d2h_copies, MICRO as u64 * steps, "{workers} workers: only the losses come out: {moved:?}");
        let trained = run.params.to_host().unwrap();
        assert!(bit_identical(&trained, &cpu.params), "{workers} simulated stages give the CPU's bits");
    }
}

#[test]
fn a_host_read_of_a_resident_tensor_is_refused() {
    let sim = Backend::simulated();
    let t = sim.adopt(Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap()).unwrap();
    let err = t.values().unwrap_err().to_string();
    assert!(err.contains("resident on sim") && err.contains("transfer it explicitly"), "{err}");
    assert!(t.clone().into_values().is_err() && t.rows(0, 1).is_err());
    let before = sim.transfers();
    assert_eq!(t.to_host().unwrap().values().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!((sim.transfers() - before).d2h_bytes, 16, "the explicit transfer is counted");
    let cpu_err = Backend::cpu().launch1(&baton_engine::device::Call::Sum, &[t.operand()], vec![]).unwrap_err();
    assert!(cpu_err.to_string().contains("transfer it explicitly"), "{cpu_err}");
}

/// Forward of every layer and the loss for micro-batch 0 of `batch` on
/// `backend`: the segments (layer order, loss last) and the loss.
fn record(backend: &Backend, params: &ParamStore, batch: &Batch) -> (Vec<baton_engine::Segment>, f32) {
    let model = gpt().with_backend(backend.clone());
    let mut x = batch.x.clone();
    let mut segments = Vec::new();
    for layer in 0..model.layers.len() as u32 {
        let (segment, out) = model.forward_layer(SegmentKey { step: 0, micro: 0, layer }, params, x).unwrap();
        segments.push(segment);
        x = out;
    }
    let key = SegmentKey { step: 0, micro: 0, layer: model.layers.len() as u32 };
    let (loss_segment, loss) = model.forward_loss(key, x, &batch.targets).unwrap();
    segments.push(loss_segment);
    (segments, loss)
}

/// Backward of `segments` (loss last) on `backend`; the gradients on the host.
fn backward(backend: &Backend, params: &ParamStore, segments: &[baton_engine::Segment]) -> ParamStore {
    let mut grad = Some(Tensor::scalar(1.0));
    let mut all = ParamStore::new();
    for s in segments.iter().rev() {
        let out = s.backward_on(backend, params, grad.take().unwrap(), s.key.layer > 0).unwrap();
        all.extend(out.param_grads.to_host().unwrap());
        grad = out.input_grad;
    }
    all
}

/// Archives and reads back (what a migration ships).
fn ship(segments: Vec<baton_engine::Segment>) -> Vec<baton_engine::Segment> {
    let bytes = segment::archive(&SegmentBatch(segments)).unwrap();
    segment::access(&bytes).unwrap().iter().map(|v| v.to_segment().unwrap()).collect()
}

#[test]
fn segments_move_between_the_device_and_the_cpu_bit_for_bit() {
    let (params, data) = setup();
    let batch = &data[0];
    let sim = Backend::simulated();
    let resident_params: ParamStore = params.iter().map(|(n, t)| (n.clone(), sim.adopt(t.clone()).unwrap())).collect();
    let (cpu_segments, cpu_loss) = record(&Backend::cpu(), &params, batch);
    let reference = backward(&Backend::cpu(), &params, &cpu_segments);

    // Recorded on the device, archived (every saved tensor downloaded once), backwarded on the CPU.
    let (mut dev_segments, dev_loss) = record(&sim, &resident_params, batch);
    assert_eq!(dev_loss.to_bits(), cpu_loss.to_bits());
    assert!(dev_segments.iter().all(|s| s.device == baton_engine::Device::Simulated && s.is_resident()));
    let err = segment::archive(&SegmentBatch(dev_segments.clone())).unwrap_err().to_string();
    assert!(err.contains("to_host"), "archiving resident tensors is refused: {err}");
    let saved: u64 = dev_segments.iter().map(|s| s.saved_bytes() as u64).sum();
    let before = sim.transfers();
    dev_segments.iter_mut().for_each(|s| s.to_host().unwrap());
    assert_eq!((sim.transfers() - before).d2h_bytes, saved, "archiving downloads exactly the saved tensors");
    let on_cpu = backward(&Backend::cpu(), &params, &ship(dev_segments));
    assert!(bit_identical(&on_cpu, &reference), "device-recorded segments backwarded on the CPU");

    // Recorded on the CPU, shipped, backwarded on the device against resident parameters.
    let on_dev = backward(&sim, &resident_params, &ship(cpu_segments));
    assert!(bit_identical(&on_dev, &reference), "CPU-recorded segments backwarded on the device");
}

/// A mixed fleet in processes: simulated-device workers 0 and 2 around a CPU
/// worker 1, the simulated worker 0 preempted in step 1 (its layers, sums
/// and segments land on the CPU and the other simulated worker) and the CPU
/// worker 1 in step 2 (its layers land on a device). The golden GPT's
/// weights equal the one-process CPU run's, bit for bit.
#[test]
fn a_mixed_fleet_with_preemptions_trains_the_golden_gpt_bit_for_bit() {
    let golden = common::Golden::load("gpt12_adamw", 1e-3);
    let dir = tempfile::tempdir().unwrap();
    let train = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.safetensors"));
        let mut args = golden.train_args(&out);
        args.extend(extra.iter().map(|s| s.to_string()));
        let output = common::run_with_watchdog(common::baton().args(&args), std::time::Duration::from_secs(600));
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{name}: {text}");
        (io::load_tensors(&out, "").unwrap(), text)
    };
    let (reference, _) = train("cpu", &["--workers", "1", "--clip-grad-norm", "1"]);
    let report = dir.path().join("mixed.json");
    let mixed = ["--workers", "3", "--device", "sim,cpu,sim", "--preempt", "0@1:5", "--preempt", "1@2:3"];
    let (params, text) =
        train("mixed", &[&mixed[..], &["--clip-grad-norm", "1", "--report", report.to_str().unwrap()]].concat());
    assert!(text.contains("sim"), "the workers report their devices: {text}");
    assert!(bit_identical(&params, &reference), "the mixed sim/cpu fleet changed the weights");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let moved = &report["counters"]["device_transfers"];
    for key in ["h2d_bytes", "h2d_copies", "d2h_bytes", "d2h_copies"] {
        assert!(moved[key].as_u64().is_some_and(|v| v > 0), "the simulated workers' copies are reported: {moved}");
    }
}
