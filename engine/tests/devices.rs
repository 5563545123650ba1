//! Devices: names, clear errors where a GPU cannot be used, and the mixed
//! fleet: segments recorded on one device, archived, and backwarded on
//! another, against the all-CPU run.
//!
//! One body per device (candle's `test_device!`): `NAME::cpu` and
//! `NAME::cuda`. The CUDA variant prints `SKIPPED NAME::cuda: <reason>` on
//! stderr (past the harness's capture) when no GPU can be opened: no GPU or
//! driver here, or a build without `baton-kernels/cuda`. `BATON_CUDA_DEVICE`
//! picks the GPU (default 0). Across device kinds results must agree within
//! float rounding (relative 2e-5 of the largest value); on the CPU they must
//! be bit-identical.

mod common;

use std::io::Write;

use baton_engine::device::{self, Backend, Device};
use baton_engine::segment::{self, SegmentBatch};
use baton_engine::{
    init, Activation, Batch, Error, Init, Layer, Loss, Model, Optimizer, ParamSpec, ParamStore, Recorder, Result,
    Segment, SegmentKey, Targets, Tensor, TensorId, Trainer,
};
use common::{bits_equal, max_diff, random};

/// Generates `NAME::cpu` and `NAME::cuda` from each `fn NAME(dev: &Backend)`.
macro_rules! test_device {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&baton_engine::Backend::cpu())
            }

            #[test]
            fn cuda() {
                if let Some(gpu) = super::cuda(concat!(stringify!($name), "::cuda")) {
                    super::$name(&gpu)
                }
            }
        }
    )*};
}

test_device!(recorded_on_device_backwarded_on_cpu, recorded_on_cpu_backwarded_on_device, optimizer_updates, training);

/// The GPU of `BATON_CUDA_DEVICE` (default 0), or `None` after printing
/// `SKIPPED <test>: <why>` straight to stderr.
fn cuda(test: &str) -> Option<Backend> {
    let ordinal = std::env::var("BATON_CUDA_DEVICE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    match Backend::open(Device::Cuda(ordinal)) {
        Ok(gpu) => Some(gpu),
        Err(why) => {
            baton_kernels::cuda::skip_gpu_test(test, &why).unwrap_or_else(|e| panic!("{e}"));
            None
        }
    }
}

const WIDTH: usize = 16;
const ROWS: usize = 6;

/// A residual block, `x + act(fc(layernorm(x)))`: every op kind but the losses.
#[derive(Debug)]
struct Block {
    act: Activation,
}

impl Layer for Block {
    fn kind(&self) -> &str {
        "block"
    }
    fn in_features(&self) -> usize {
        WIDTH
    }
    fn out_features(&self) -> usize {
        WIDTH
    }
    fn params(&self) -> Vec<ParamSpec> {
        let spec = |name: &str, shape: Vec<usize>, bound| ParamSpec {
            name: name.into(),
            shape,
            init: Init::Uniform { bound },
        };
        vec![
            spec("norm.weight", vec![WIDTH], 1.0),
            spec("norm.bias", vec![WIDTH], 0.1),
            spec("fc.weight", vec![WIDTH, WIDTH], 0.25),
            spec("fc.bias", vec![WIDTH], 0.25),
        ]
    }
    fn forward(&self, rec: &mut Recorder<'_>, x: TensorId) -> Result<TensorId> {
        let (g, b) = (rec.param("norm.weight")?, rec.param("norm.bias")?);
        let n = rec.layernorm(x, g, b, 1e-5)?;
        let (w, b) = (rec.param("fc.weight")?, rec.param("fc.bias")?);
        let h = rec.linear(n, w, Some(b))?;
        let a = rec.activation(h, self.act)?;
        rec.add(x, a)
    }
}

/// Three blocks (relu, gelu, tanh) and `loss`, on the CPU.
fn model(loss: Loss) -> Model {
    let acts = [Activation::Relu, Activation::Gelu, Activation::Tanh];
    let layers = acts.into_iter().map(|act| Box::new(Block { act }) as Box<dyn Layer>).collect();
    Model::new(WIDTH, layers, loss).unwrap().with_backend(Backend::cpu())
}

fn batch(loss: Loss, rows: usize) -> Batch {
    let targets = match loss {
        Loss::Mse => Targets::Values(random(&[rows, WIDTH], 8, 1.0)),
        Loss::CrossEntropy => Targets::Classes(
            baton_engine::Tensor::from_ids(vec![rows], (0..rows as u32).map(|r| r * 5 % WIDTH as u32).collect())
                .unwrap(),
        ),
    };
    Batch::new(random(&[rows, WIDTH], 7, 1.0), targets).unwrap()
}

/// Forward of one micro-batch: the layers' segments then the loss segment,
/// and the loss.
fn record(model: &Model, params: &ParamStore, batch: &Batch) -> (Vec<Segment>, f32) {
    let key = |layer| SegmentKey { step: 0, micro: 0, layer };
    let (mut segments, mut x) = (Vec::new(), batch.x.clone());
    for layer in 0..model.layers.len() as u32 {
        let (segment, out) = model.forward_layer(key(layer), params, x).unwrap();
        segments.push(segment);
        x = out;
    }
    let (loss_segment, loss) = model.forward_loss(key(model.layers.len() as u32), x, &batch.targets).unwrap();
    segments.push(loss_segment);
    (segments, loss)
}

/// What one backward through every segment produces.
struct Grads {
    input: Tensor,
    params: ParamStore,
}

/// Archives `segments` (checking they say `recorded_on`), reads them back
/// zero-copy and backwards them on `backend`, loss first.
fn backward_archived(backend: &Backend, segments: &[Segment], params: &ParamStore, recorded_on: Device) -> Grads {
    let bytes = segment::archive(&SegmentBatch(segments.to_vec())).unwrap();
    let views = segment::access(&bytes).unwrap();
    assert!(views.iter().all(|v| v.device == recorded_on), "the archive keeps the recording device");
    let (mut grad, mut all) = (Tensor::scalar(1.0), ParamStore::new());
    for view in views.iter().rev() {
        let out = view.backward_on(backend, params, grad, true).unwrap();
        all.extend(out.param_grads);
        grad = out.input_grad.unwrap();
    }
    Grads { input: grad, params: all }
}

/// Bit-identical when `exact`, else within 2e-5 of the largest magnitude.
fn close(what: &str, got: &[f32], want: &[f32], exact: bool) {
    if exact {
        assert!(bits_equal(got, want), "{what}: not bit-identical on one device kind");
        return;
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = max_diff(got, want);
    assert!(diff <= 2e-5 * scale, "{what}: max |Δ| {diff} exceeds 2e-5 × {scale}");
}

fn compare(got: &Grads, want: &Grads, exact: bool) {
    close("input gradient", got.input.values().unwrap(), want.input.values().unwrap(), exact);
    assert_eq!(got.params.names().collect::<Vec<_>>(), want.params.names().collect::<Vec<_>>());
    for (name, grad) in got.params.iter() {
        close(name, grad.values().unwrap(), want.params.get(name).unwrap().values().unwrap(), exact);
    }
}

/// The all-CPU reference: recorded and backwarded on the CPU.
fn reference(loss: Loss, params: &ParamStore, batch: &Batch) -> (Grads, f32) {
    let (segments, value) = record(&model(loss), params, batch);
    (backward_archived(&Backend::cpu(), &segments, params, Device::Cpu), value)
}

/// A CUDA worker's segments relocated to a CPU worker (the mixed fleet).
fn recorded_on_device_backwarded_on_cpu(dev: &Backend) {
    let exact = dev.device() == Device::Cpu;
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let params = init::init_params(&model(loss).param_specs(), 3);
        let batch = batch(loss, ROWS);
        let (want, want_loss) = reference(loss, &params, &batch);
        let (segments, value) = record(&model(loss).with_backend(dev.clone()), &params, &batch);
        let got = backward_archived(&Backend::cpu(), &segments, &params, dev.device());
        close("loss", &[value], &[want_loss], exact);
        compare(&got, &want, exact);
    }
}

/// The other way round: a CPU worker's segments backwarded on `dev`.
fn recorded_on_cpu_backwarded_on_device(dev: &Backend) {
    let exact = dev.device() == Device::Cpu;
    for loss in [Loss::Mse, Loss::CrossEntropy] {
        let params = init::init_params(&model(loss).param_specs(), 4);
        let batch = batch(loss, ROWS);
        let (want, _) = reference(loss, &params, &batch);
        let (segments, _) = record(&model(loss), &params, &batch);
        compare(&backward_archived(dev, &segments, &params, Device::Cpu), &want, exact);
    }
}

/// SGD, Adam and AdamW updates use only exact IEEE operations on every
/// device, so they give the CPU's bits everywhere.
fn optimizer_updates(dev: &Backend) {
    let configs = [
        "sgd:lr=0.1,momentum=0.9,weight_decay=0.01,nesterov=true",
        "adam:lr=1e-2,weight_decay=0.01",
        "adamw:lr=1e-2,weight_decay=0.1",
    ];
    for config in configs {
        let config = config.parse().unwrap();
        let mut on_dev = Optimizer::new(config).with_backend(dev.clone());
        let mut on_cpu = Optimizer::new(config).with_backend(Backend::cpu());
        let (mut p_dev, mut p_cpu) = (random(&[7, 5], 1, 1.0), random(&[7, 5], 1, 1.0));
        for step in 0..3 {
            let grad = random(&[7, 5], 10 + step, 1.0);
            on_dev.update(step as u32, "w", &mut p_dev, &grad).unwrap();
            on_cpu.update(step as u32, "w", &mut p_cpu, &grad).unwrap();
        }
        assert!(bits_equal(p_dev.values().unwrap(), p_cpu.values().unwrap()), "{config}: parameters");
        assert_eq!(on_dev.state("w"), on_cpu.state("w"), "{config}: optimizer state");
    }
}

/// Whole steps (M = 2) through `Trainer` on `dev` against the CPU.
fn training(dev: &Backend) {
    let exact = dev.device() == Device::Cpu;
    let loss = Loss::CrossEntropy;
    let params = init::init_params(&model(loss).param_specs(), 5);
    let config = "adam:lr=1e-2".parse().unwrap();
    let mut on_dev =
        Trainer::new(model(loss).with_backend(dev.clone()), params.clone(), Optimizer::new(config)).unwrap();
    let mut on_cpu = Trainer::new(model(loss), params, Optimizer::new(config)).unwrap();
    assert_eq!(on_dev.optimizer.backend().device(), dev.device(), "the trainer moves the optimizer to the model");
    for step in 0..2 {
        let batch = batch(loss, 2 * ROWS);
        let (a, b) = (on_dev.step(step, &batch, 2).unwrap(), on_cpu.step(step, &batch, 2).unwrap());
        close(&format!("step {step} loss"), &[a], &[b], exact);
    }
    for (name, p) in on_dev.params.iter() {
        close(name, p.values().unwrap(), on_cpu.params.get(name).unwrap().values().unwrap(), exact);
    }
}

#[test]
fn devices_parse_and_print() {
    for (text, device) in [("cpu", Device::Cpu), ("cuda", Device::Cuda(0)), ("cuda:3", Device::Cuda(3))] {
        assert_eq!(text.parse::<Device>().unwrap(), device);
        assert_eq!(device.to_string().parse::<Device>().unwrap(), device);
    }
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "", "CPU"] {
        let err = bad.parse::<Device>().unwrap_err().to_string();
        assert!(err.contains(&format!("`{bad}`")) && err.contains("cpu, cuda or cuda:N"), "{err}");
    }
}

/// Without a GPU (or without CUDA in the build) asking for one is an error
/// that says why and what to do, never a panic.
#[test]
fn an_unusable_gpu_is_a_clear_error() {
    let Err(err) = Backend::open(Device::Cuda(0)) else {
        let _ = std::io::stderr().write_all(b"SKIPPED an_unusable_gpu_is_a_clear_error: a GPU is present\n");
        return;
    };
    let text = err.to_string();
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    assert!(text.starts_with("device cuda:0 cannot be used: "), "{text}");
    if baton_kernels::cuda::COMPILED {
        assert!(text.contains("CUDA"), "{text}");
    } else {
        assert!(text.contains("built without CUDA support") && text.contains("--features cuda"), "{text}");
    }
    let err = model(Loss::Mse).on_device(Device::Cuda(0)).unwrap_err().to_string();
    assert_eq!(err, text, "Model::on_device reports the same");
}

#[test]
fn the_default_backend_is_the_cpu() {
    let model = Model::new(WIDTH, vec![Box::new(Block { act: Activation::Relu })], Loss::Mse).unwrap();
    assert_eq!(model.device(), Device::Cpu);
    assert_eq!(Optimizer::new("sgd:lr=1".parse().unwrap()).backend().device(), Device::Cpu);
    // Choosing the CPU for the process is allowed, and idempotent.
    device::set_process_default(Backend::cpu()).unwrap();
    device::set_process_default(Backend::cpu()).unwrap();
    assert_eq!(device::process_default().device(), Device::Cpu);
}

/// A segment tagged as recorded on a GPU (as a CUDA worker ships it) reads
/// back with its tag and backwards on the CPU with the same bits as the
/// CPU-tagged one: the tag is provenance, the data decide the result.
#[test]
fn the_device_tag_travels_and_is_validated() {
    let params = init::init_params(&model(Loss::Mse).param_specs(), 6);
    let (segments, _) = record(&model(Loss::Mse), &params, &batch(Loss::Mse, ROWS));
    let tagged: Vec<Segment> = segments.iter().map(|s| Segment { device: Device::Cuda(7), ..s.clone() }).collect();
    let cpu = Backend::cpu();
    let (a, b) = (
        backward_archived(&cpu, &tagged, &params, Device::Cuda(7)),
        backward_archived(&cpu, &segments, &params, Device::Cpu),
    );
    compare(&a, &b, true);

    // The tag is the first byte that differs between two archives of one
    // segment; an unknown tag fails validation like any corrupt archive.
    let cpu_bytes = segment::archive(&SegmentBatch(vec![segments[1].clone()])).unwrap();
    let mut bytes = segment::archive(&SegmentBatch(vec![tagged[1].clone()])).unwrap();
    let at = cpu_bytes.iter().zip(bytes.iter()).position(|(x, y)| x != y).expect("the tags differ");
    bytes[at] = 0x7f;
    let err = segment::access(&bytes).err().expect("an unknown device tag is refused").to_string();
    assert!(err.contains("invalid segment archive"), "{err}");
}
