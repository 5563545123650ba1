//! One test body per device (candle's `test_device!`): every op behind a
//! host-slice trait, implemented by the CPU kernels and by `cuda::Gpu`
//! (upload, op, download). The CUDA device comes from `BATON_CUDA_DEVICE`
//! (default 0); when it cannot be opened the CUDA variant says SKIPPED on
//! stderr, past the test harness's capture so it shows in `cargo test`.
#![allow(dead_code)]

use std::sync::OnceLock;

use baton_kernels::cuda::{Gpu, GpuBuf};
use baton_kernels::optim::{AdamConfig, SgdConfig};
use baton_kernels::{activation as act, elementwise as ew, loss, norm, optim, Trans};

/// Every op, on host slices, with the CPU kernels' signatures.
#[allow(clippy::too_many_arguments)]
pub trait Device {
    fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        ta: Trans,
        b: &[f32],
        tb: Trans,
        m: usize,
        k: usize,
        n: usize,
        acc: bool,
    );
    fn add_bias_rows(&self, y: &mut [f32], bias: &[f32]);
    fn sum_rows(&self, x: &[f32], cols: usize, out: &mut [f32], acc: bool);
    fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]);
    fn add_assign(&self, dst: &mut [f32], src: &[f32]);
    fn scale(&self, x: &mut [f32], s: f32);
    fn relu(&self, x: &[f32], y: &mut [f32]);
    fn relu_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]);
    fn gelu(&self, x: &[f32], y: &mut [f32]);
    fn gelu_backward(&self, x: &[f32], dy: &[f32], dx: &mut [f32]);
    fn tanh(&self, x: &[f32], y: &mut [f32]);
    fn tanh_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]);
    fn layernorm(&self, x: &[f32], g: &[f32], b: &[f32], cols: usize, eps: f32, y: &mut [f32], stats: &mut [f32]);
    fn layernorm_backward(
        &self,
        x: &[f32],
        g: &[f32],
        stats: &[f32],
        dy: &[f32],
        cols: usize,
        dx: &mut [f32],
        dg: &mut [f32],
        db: &mut [f32],
        acc: bool,
    );
    fn mse(&self, pred: &[f32], target: &[f32]) -> f32;
    fn mse_backward(&self, pred: &[f32], target: &[f32], scale: f32, dpred: &mut [f32]);
    fn cross_entropy(&self, logits: &[f32], classes: usize, targets: &[u32], probs: &mut [f32]) -> f32;
    fn cross_entropy_backward(&self, probs: &[f32], classes: usize, targets: &[u32], scale: f32, d: &mut [f32]);
    fn sgd_step(&self, p: &mut [f32], g: &[f32], buf: &mut [f32], first: bool, cfg: &SgdConfig);
    fn adam_step(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig);
    fn adamw_step(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig);
}

/// The CPU kernels.
pub struct Cpu;

impl Device for Cpu {
    fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        ta: Trans,
        b: &[f32],
        tb: Trans,
        m: usize,
        k: usize,
        n: usize,
        acc: bool,
    ) {
        baton_kernels::matmul(c, a, ta, b, tb, m, k, n, acc)
    }
    fn add_bias_rows(&self, y: &mut [f32], bias: &[f32]) {
        ew::add_bias_rows(y, bias)
    }
    fn sum_rows(&self, x: &[f32], cols: usize, out: &mut [f32], acc: bool) {
        ew::sum_rows(x, cols, out, acc)
    }
    fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) {
        ew::add(a, b, out)
    }
    fn add_assign(&self, dst: &mut [f32], src: &[f32]) {
        ew::add_assign(dst, src)
    }
    fn scale(&self, x: &mut [f32], s: f32) {
        ew::scale(x, s)
    }
    fn relu(&self, x: &[f32], y: &mut [f32]) {
        act::relu(x, y)
    }
    fn relu_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        act::relu_backward(y, dy, dx)
    }
    fn gelu(&self, x: &[f32], y: &mut [f32]) {
        act::gelu(x, y)
    }
    fn gelu_backward(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        act::gelu_backward(x, dy, dx)
    }
    fn tanh(&self, x: &[f32], y: &mut [f32]) {
        act::tanh(x, y)
    }
    fn tanh_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        act::tanh_backward(y, dy, dx)
    }
    fn layernorm(&self, x: &[f32], g: &[f32], b: &[f32], cols: usize, eps: f32, y: &mut [f32], stats: &mut [f32]) {
        norm::layernorm(x, g, b, cols, eps, y, stats)
    }
    fn layernorm_backward(
        &self,
        x: &[f32],
        g: &[f32],
        stats: &[f32],
        dy: &[f32],
        cols: usize,
        dx: &mut [f32],
        dg: &mut [f32],
        db: &mut [f32],
        acc: bool,
    ) {
        norm::layernorm_backward(x, g, stats, dy, cols, dx, dg, db, acc)
    }
    fn mse(&self, pred: &[f32], target: &[f32]) -> f32 {
        loss::mse(pred, target)
    }
    fn mse_backward(&self, pred: &[f32], target: &[f32], scale: f32, dpred: &mut [f32]) {
        loss::mse_backward(pred, target, scale, dpred)
    }
    fn cross_entropy(&self, logits: &[f32], classes: usize, targets: &[u32], probs: &mut [f32]) -> f32 {
        loss::cross_entropy(logits, classes, targets, probs)
    }
    fn cross_entropy_backward(&self, probs: &[f32], classes: usize, targets: &[u32], scale: f32, d: &mut [f32]) {
        loss::cross_entropy_backward(probs, classes, targets, scale, d)
    }
    fn sgd_step(&self, p: &mut [f32], g: &[f32], buf: &mut [f32], first: bool, cfg: &SgdConfig) {
        optim::sgd_step(p, g, buf, first, cfg)
    }
    fn adam_step(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig) {
        optim::adam_step(p, g, m, v, step, cfg)
    }
    fn adamw_step(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig) {
        optim::adamw_step(p, g, m, v, step, cfg)
    }
}

/// A `cuda::Gpu` behind host slices: every call uploads its inputs and
/// outputs, runs the op and downloads the outputs. Errors panic (test code).
pub struct Cuda(pub &'static Gpu);

/// The shared GPU of this test binary, or `None` after printing
/// `SKIPPED <test> (no CUDA device): <reason>` straight to stderr.
pub fn cuda(test: &str) -> Option<Cuda> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let ordinal = std::env::var("BATON_CUDA_DEVICE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    match GPU.get_or_init(|| Gpu::new(ordinal).map_err(|e| e.to_string())) {
        Ok(gpu) => Some(Cuda(gpu)),
        Err(why) => {
            baton_kernels::cuda::skip_gpu_test(test, why).unwrap_or_else(|e| panic!("{e}"));
            None
        }
    }
}

impl Cuda {
    fn up(&self, x: &[f32]) -> GpuBuf {
        self.0.upload(x).expect("upload")
    }
    fn down(&self, b: &GpuBuf, out: &mut [f32]) {
        out.copy_from_slice(&self.0.download(b).expect("download"));
    }
    /// Runs `op` on `out` uploaded, then downloads it back into `out`.
    fn with_out(&self, out: &mut [f32], op: impl FnOnce(&Gpu, &mut GpuBuf) -> baton_kernels::Result<()>) {
        let mut o = self.up(out);
        op(self.0, &mut o).expect("cuda op");
        self.down(&o, out);
    }
}

impl Device for Cuda {
    fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        ta: Trans,
        b: &[f32],
        tb: Trans,
        m: usize,
        k: usize,
        n: usize,
        acc: bool,
    ) {
        let (a, b) = (self.up(a), self.up(b));
        self.with_out(c, |g, c| g.matmul(c, &a, ta, &b, tb, m, k, n, acc));
    }
    fn add_bias_rows(&self, y: &mut [f32], bias: &[f32]) {
        let bias = self.up(bias);
        self.with_out(y, |g, y| g.add_bias_rows(y, &bias));
    }
    fn sum_rows(&self, x: &[f32], cols: usize, out: &mut [f32], acc: bool) {
        let x = self.up(x);
        self.with_out(out, |g, o| g.sum_rows(&x, cols, o, acc));
    }
    fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) {
        let (a, b) = (self.up(a), self.up(b));
        self.with_out(out, |g, o| g.add(&a, &b, o));
    }
    fn add_assign(&self, dst: &mut [f32], src: &[f32]) {
        let src = self.up(src);
        self.with_out(dst, |g, d| g.add_assign(d, &src));
    }
    fn scale(&self, x: &mut [f32], s: f32) {
        self.with_out(x, |g, x| g.scale(x, s));
    }
    fn relu(&self, x: &[f32], y: &mut [f32]) {
        let x = self.up(x);
        self.with_out(y, |g, y| g.relu(&x, y));
    }
    fn relu_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (y, dy) = (self.up(y), self.up(dy));
        self.with_out(dx, |g, dx| g.relu_backward(&y, &dy, dx));
    }
    fn gelu(&self, x: &[f32], y: &mut [f32]) {
        let x = self.up(x);
        self.with_out(y, |g, y| g.gelu(&x, y));
    }
    fn gelu_backward(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (x, dy) = (self.up(x), self.up(dy));
        self.with_out(dx, |g, dx| g.gelu_backward(&x, &dy, dx));
    }
    fn tanh(&self, x: &[f32], y: &mut [f32]) {
        let x = self.up(x);
        self.with_out(y, |g, y| g.tanh(&x, y));
    }
    fn tanh_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (y, dy) = (self.up(y), self.up(dy));
        self.with_out(dx, |g, dx| g.tanh_backward(&y, &dy, dx));
    }
    fn layernorm(&self, x: &[f32], g: &[f32], b: &[f32], cols: usize, eps: f32, y: &mut [f32], stats: &mut [f32]) {
        let (x, gamma, beta) = (self.up(x), self.up(g), self.up(b));
        let mut s = self.up(stats);
        self.with_out(y, |g, y| g.layernorm(&x, &gamma, &beta, cols, eps, y, &mut s));
        self.down(&s, stats);
    }
    fn layernorm_backward(
        &self,
        x: &[f32],
        g: &[f32],
        stats: &[f32],
        dy: &[f32],
        cols: usize,
        dx: &mut [f32],
        dg: &mut [f32],
        db: &mut [f32],
        acc: bool,
    ) {
        let (x, gamma, stats, dy) = (self.up(x), self.up(g), self.up(stats), self.up(dy));
        let (mut dgb, mut dbb) = (self.up(dg), self.up(db));
        self.with_out(dx, |g, dx| g.layernorm_backward(&x, &gamma, &stats, &dy, cols, dx, &mut dgb, &mut dbb, acc));
        self.down(&dgb, dg);
        self.down(&dbb, db);
    }
    fn mse(&self, pred: &[f32], target: &[f32]) -> f32 {
        self.0.mse(&self.up(pred), &self.up(target)).expect("mse")
    }
    fn mse_backward(&self, pred: &[f32], target: &[f32], scale: f32, dpred: &mut [f32]) {
        let (p, t) = (self.up(pred), self.up(target));
        self.with_out(dpred, |g, d| g.mse_backward(&p, &t, scale, d));
    }
    fn cross_entropy(&self, logits: &[f32], classes: usize, targets: &[u32], probs: &mut [f32]) -> f32 {
        let (z, t) = (self.up(logits), self.0.upload_u32(targets).expect("upload_u32"));
        let mut p = self.up(probs);
        let loss = self.0.cross_entropy(&z, classes, &t, &mut p).expect("cross_entropy");
        self.down(&p, probs);
        loss
    }
    fn cross_entropy_backward(&self, probs: &[f32], classes: usize, targets: &[u32], scale: f32, d: &mut [f32]) {
        let (p, t) = (self.up(probs), self.0.upload_u32(targets).expect("upload_u32"));
        self.with_out(d, |g, d| g.cross_entropy_backward(&p, classes, &t, scale, d));
    }
    fn sgd_step(&self, p: &mut [f32], g: &[f32], buf: &mut [f32], first: bool, cfg: &SgdConfig) {
        let (grad, mut b) = (self.up(g), self.up(buf));
        self.with_out(p, |gpu, p| gpu.sgd_step(p, &grad, &mut b, first, cfg));
        self.down(&b, buf);
    }
    fn adam_step(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig) {
        let (grad, mut mb, mut vb) = (self.up(g), self.up(m), self.up(v));
        self.with_out(p, |gpu, p| gpu.adam_step(p, &grad, &mut mb, &mut vb, step, cfg));
        self.down(&mb, m);
        self.down(&vb, v);
    }
    fn adamw_step(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig) {
        let (grad, mut mb, mut vb) = (self.up(g), self.up(m), self.up(v));
        self.with_out(p, |gpu, p| gpu.adamw_step(p, &grad, &mut mb, &mut vb, step, cfg));
        self.down(&mb, m);
        self.down(&vb, v);
    }
}

/// Generates `NAME::cpu` and `NAME::cuda` tests from each body
/// `fn NAME(dev: &dyn Device)`. Without the `cuda` feature the CUDA variant
/// is ignored with the reason; with it but no GPU it prints SKIPPED.
#[macro_export]
macro_rules! test_device {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&super::devices::Cpu)
            }

            #[test]
            #[cfg_attr(not(feature = "cuda"), ignore = "built without the `cuda` feature (cargo test --features cuda)")]
            fn cuda() {
                if let Some(dev) = super::devices::cuda(concat!(stringify!($name), "::cuda")) {
                    super::$name(&dev)
                }
            }
        }
    )*};
}
