//! Every op on every device, one body each (`test_device!` makes `NAME::cpu`
//! and `NAME::cuda`). Each body checks the device against a naive `f64`
//! reference, and against the CPU kernels: bit for bit for the ops the
//! `cuda` module documents as exact, within a few ulps for the ones that call
//! CUDA's transcendentals. On the CPU the second check is trivially true.
//!
//! The CUDA variants are ignored without `--features cuda` and print
//! `SKIPPED … (no CUDA device)` with it but without a GPU.

mod common;
#[macro_use]
mod devices;

use baton_kernels::cuda::{self, Gpu};
use baton_kernels::optim::{AdamConfig, SgdConfig};
use baton_kernels::{Error, Trans};
use common::{assert_close, bits, Rng};
use devices::{Cpu, Device};

test_device!(matmul, elementwise, sum_rows, activations, layernorm, mse, cross_entropy, optimizers);

/// Bits equal to the CPU kernel's result (the documented exact ops). NaNs
/// compare equal whatever their payload: GPUs produce one canonical NaN.
fn exact(what: &str, got: &[f32], cpu: &[f32]) {
    let canon = |x: &[f32]| -> Vec<u32> { x.iter().map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() }).collect() };
    assert_eq!(canon(got), canon(cpu), "{what}: differs from the CPU kernel");
}

/// Within a few ulps of the CPU kernel's result (CUDA vs libm
/// transcendentals); NaNs and infinities must match exactly.
fn near(what: &str, got: &[f32], cpu: &[f32]) {
    assert_eq!(got.len(), cpu.len(), "{what}: length");
    for (i, (&g, &c)) in got.iter().zip(cpu).enumerate() {
        let ok = if c.is_nan() || c.is_infinite() {
            g.is_nan() == c.is_nan() && (c.is_nan() || g == c)
        } else {
            (g as f64 - c as f64).abs() <= 1e-6 + 2e-6 * (c as f64).abs()
        };
        assert!(ok, "{what}[{i}]: got {g}, CPU {c}");
    }
}

/// Element (i, j) of op(x), `x` stored row-major with `cols` columns.
fn op_at(x: &[f32], t: Trans, cols: usize, i: usize, j: usize) -> f64 {
    (match t {
        Trans::No => x[i * cols + j],
        Trans::Yes => x[j * cols + i],
    }) as f64
}

fn matmul(dev: &dyn Device) {
    let mut rng = Rng::new(7);
    for (m, k, n) in [(1, 1, 1), (3, 5, 7), (33, 70, 17), (64, 128, 96)] {
        for (ta, tb) in
            [(Trans::No, Trans::No), (Trans::Yes, Trans::No), (Trans::No, Trans::Yes), (Trans::Yes, Trans::Yes)]
        {
            let (a, b, c0) = (rng.vec(m * k, -1.0, 1.0), rng.vec(k * n, -1.0, 1.0), rng.vec(m * n, -1.0, 1.0));
            let (acols, bcols) = (if ta == Trans::No { k } else { m }, if tb == Trans::No { n } else { k });
            let prod =
                |i: usize, j: usize| (0..k).map(|p| op_at(&a, ta, acols, i, p) * op_at(&b, tb, bcols, p, j)).sum();
            let want: Vec<f64> = (0..m * n).map(|e| prod(e / n, e % n)).collect();
            let mut got = vec![f32::NAN; m * n];
            dev.matmul(&mut got, &a, ta, &b, tb, m, k, n, false);
            assert_close(&format!("{m}x{k}x{n} {ta:?}{tb:?}"), &got, &want, 1e-4, 1e-4);
            let mut again = vec![0.0; m * n];
            dev.matmul(&mut again, &a, ta, &b, tb, m, k, n, false);
            assert_eq!(bits(&got), bits(&again), "matmul is deterministic run to run");
            let mut acc = c0.clone();
            dev.matmul(&mut acc, &a, ta, &b, tb, m, k, n, true);
            let want_acc: Vec<f64> = want.iter().zip(&c0).map(|(w, &c)| w + c as f64).collect();
            assert_close("accumulate", &acc, &want_acc, 1e-4, 1e-4);
        }
    }
    let mut c = vec![f32::NAN; 6];
    dev.matmul(&mut c, &[], Trans::No, &[], Trans::No, 2, 0, 3, false);
    assert_eq!(c, vec![0.0; 6], "k == 0 writes zeros");
    let mut c = vec![1.5; 6];
    dev.matmul(&mut c, &[], Trans::No, &[], Trans::No, 2, 0, 3, true);
    assert_eq!(c, vec![1.5; 6], "k == 0 accumulating leaves c");
    dev.matmul(&mut [], &[], Trans::No, &[1.0; 4], Trans::No, 0, 4, 1, false);
}

fn elementwise(dev: &dyn Device) {
    for n in [0, 1, 1000, 70_000] {
        let mut rng = Rng::new(n as u64 + 1);
        let (a, b) = (rng.vec(n, -2.0, 2.0), rng.vec(n, -2.0, 2.0));
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let mut out = vec![f32::NAN; n];
        dev.add(&a, &b, &mut out);
        exact("add", &out, &want);
        let mut dst = a.clone();
        dev.add_assign(&mut dst, &b);
        exact("add_assign", &dst, &want);
        dev.scale(&mut dst, -0.37);
        let scaled: Vec<f32> = want.iter().map(|v| v * -0.37).collect();
        exact("scale", &dst, &scaled);
    }
    for (rows, cols) in [(1, 1), (4, 3), (300, 700)] {
        let mut rng = Rng::new(cols as u64);
        let (y, bias) = (rng.vec(rows * cols, -1.0, 1.0), rng.vec(cols, -1.0, 1.0));
        let want: Vec<f32> = y.iter().enumerate().map(|(i, v)| v + bias[i % cols]).collect();
        let mut got = y.clone();
        dev.add_bias_rows(&mut got, &bias);
        exact("add_bias_rows", &got, &want);
    }
    dev.add_bias_rows(&mut [], &[]);
}

fn sum_rows(dev: &dyn Device) {
    for (rows, cols) in [(1, 1), (5, 3), (300, 1000), (2000, 40), (0, 5)] {
        let x = Rng::new(rows as u64).vec(rows * cols, -1.0, 1.0);
        let mut want = vec![0.25f32; cols];
        for row in x.chunks(cols) {
            for (w, v) in want.iter_mut().zip(row) {
                *w += v;
            }
        }
        let mut got = vec![0.25f32; cols];
        dev.sum_rows(&x, cols, &mut got, true);
        exact(&format!("{rows}x{cols} accumulate"), &got, &want);
        let mut fresh = vec![f32::NAN; cols];
        dev.sum_rows(&x, cols, &mut fresh, false);
        let mut cpu = vec![0.0; cols];
        Cpu.sum_rows(&x, cols, &mut cpu, false);
        exact(&format!("{rows}x{cols}"), &fresh, &cpu);
        let want: Vec<f64> = (0..cols).map(|c| (0..rows).map(|r| x[r * cols + c] as f64).sum()).collect();
        assert_close("sum_rows vs f64", &fresh, &want, 1e-3, 1e-5);
    }
}

/// Activation inputs: random, plus the special values.
fn activation_inputs() -> Vec<f32> {
    let mut x = Rng::new(3).vec(5000, -6.0, 6.0);
    x.extend([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40]);
    x
}

fn activations(dev: &dyn Device) {
    let x = activation_inputs();
    let dy = Rng::new(4).vec(x.len(), -1.0, 1.0);
    let n = x.len();
    let run = |f: &dyn Fn(&dyn Device, &mut [f32])| {
        let (mut got, mut cpu) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        f(dev, &mut got);
        f(&Cpu, &mut cpu);
        (got, cpu)
    };
    let (got, cpu) = run(&|d, y| d.relu(&x, y));
    exact("relu", &got, &cpu);
    let (got, cpu) = run(&|d, dx| d.relu_backward(&x, &dy, dx));
    exact("relu_backward", &got, &cpu);
    let (got, cpu) = run(&|d, dx| d.tanh_backward(&x, &dy, dx));
    exact("tanh_backward", &got, &cpu);
    let finite = n - 10;
    let (got, cpu) = run(&|d, y| d.gelu(&x, y));
    near("gelu", &got, &cpu);
    let want: Vec<f64> =
        x[..finite].iter().map(|&v| 0.5 * v as f64 * (1.0 + libm::erf(v as f64 / 2f64.sqrt()))).collect();
    assert_close("gelu vs f64", &got[..finite], &want, 1e-6, 1e-5);
    let (got, cpu) = run(&|d, dx| d.gelu_backward(&x[..finite], &dy[..finite], &mut dx[..finite]));
    near("gelu_backward", &got[..finite], &cpu[..finite]);
    let (got, cpu) = run(&|d, y| d.tanh(&x, y));
    near("tanh", &got, &cpu);
    assert_close(
        "tanh vs f64",
        &got[..finite],
        &x[..finite].iter().map(|&v| (v as f64).tanh()).collect::<Vec<_>>(),
        1e-6,
        1e-6,
    );
}

fn layernorm(dev: &dyn Device) {
    for (rows, cols) in [(1, 1), (3, 5), (7, 8), (33, 13), (100, 257), (2, 1000), (0, 4)] {
        let mut rng = Rng::new((rows * 1000 + cols) as u64);
        let x: Vec<f32> = rng.vec(rows * cols, -3.0, 3.0).iter().map(|v| v + 2.0).collect();
        let (g, b, dy) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5), rng.vec(rows * cols, -1.0, 1.0));
        let shape = format!("{rows}x{cols}");
        let (mut y, mut stats) = (vec![f32::NAN; rows * cols], vec![f32::NAN; 2 * rows]);
        dev.layernorm(&x, &g, &b, cols, 1e-5, &mut y, &mut stats);
        let (mut cy, mut cstats) = (vec![0.0; rows * cols], vec![0.0; 2 * rows]);
        Cpu.layernorm(&x, &g, &b, cols, 1e-5, &mut cy, &mut cstats);
        exact(&format!("layernorm y {shape}"), &y, &cy);
        exact(&format!("layernorm stats {shape}"), &stats, &cstats);
        let want: Vec<f64> = (0..rows * cols).map(|i| ln_ref(&x, &g, &b, cols, i)).collect();
        assert_close(&format!("layernorm vs f64 {shape}"), &y, &want, 1e-4, 1e-4);
        for acc in [false, true] {
            let (mut dx, mut dg, mut db) = (vec![f32::NAN; rows * cols], vec![0.5; cols], vec![-0.5; cols]);
            let (mut cdx, mut cdg, mut cdb) = (dx.clone(), dg.clone(), db.clone());
            if !acc {
                (dg, db) = (vec![f32::NAN; cols], vec![f32::NAN; cols]);
            }
            dev.layernorm_backward(&x, &g, &cstats, &dy, cols, &mut dx, &mut dg, &mut db, acc);
            Cpu.layernorm_backward(&x, &g, &cstats, &dy, cols, &mut cdx, &mut cdg, &mut cdb, acc);
            exact(&format!("dx {shape}"), &dx, &cdx);
            exact(&format!("dgamma {shape} acc={acc}"), &dg, &cdg);
            exact(&format!("dbeta {shape} acc={acc}"), &db, &cdb);
        }
    }
}

/// Element `i` of LayerNorm (eps 1e-5) in `f64`.
fn ln_ref(x: &[f32], g: &[f32], b: &[f32], cols: usize, i: usize) -> f64 {
    let row = &x[i / cols * cols..][..cols];
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
    (x[i] as f64 - mean) / (var + 1e-5).sqrt() * g[i % cols] as f64 + b[i % cols] as f64
}

fn mse(dev: &dyn Device) {
    for n in [1, 7, 4096, 4097, 20_000] {
        let mut rng = Rng::new(n as u64);
        let (p, t) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
        let got = dev.mse(&p, &t);
        assert_eq!(got.to_bits(), Cpu.mse(&p, &t).to_bits(), "mse n={n}");
        let want = p.iter().zip(&t).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / n as f64;
        assert!((got as f64 - want).abs() < 1e-5 * want.max(1.0), "mse n={n}: {got} vs {want}");
        let (mut d, mut cd) = (vec![f32::NAN; n], vec![0.0; n]);
        dev.mse_backward(&p, &t, 0.5, &mut d);
        Cpu.mse_backward(&p, &t, 0.5, &mut cd);
        exact("mse_backward", &d, &cd);
    }
    assert!(dev.mse(&[], &[]).is_nan(), "mse of nothing is NaN, like PyTorch");
}

fn cross_entropy(dev: &dyn Device) {
    for (rows, classes) in [(1, 1), (4, 3), (37, 10), (5, 1000)] {
        let mut rng = Rng::new((rows * classes) as u64);
        let logits = rng.vec(rows * classes, -20.0, 20.0);
        let targets: Vec<u32> = (0..rows).map(|r| ((r * 7 + 3) % classes) as u32).collect();
        let (mut probs, mut cprobs) = (vec![f32::NAN; rows * classes], vec![0.0; rows * classes]);
        let loss = dev.cross_entropy(&logits, classes, &targets, &mut probs);
        let closs = Cpu.cross_entropy(&logits, classes, &targets, &mut cprobs);
        near("softmax", &probs, &cprobs);
        assert!((loss - closs).abs() <= 1e-6 * closs.abs().max(1.0), "{rows}x{classes}: {loss} vs {closs}");
        let want: f64 =
            (0..rows).map(|r| ce_row_ref(&logits[r * classes..][..classes], targets[r])).sum::<f64>() / rows as f64;
        assert!((loss as f64 - want).abs() < 1e-5 * want.max(1.0), "{loss} vs f64 {want}");
        let (mut d, mut cd) = (vec![f32::NAN; rows * classes], vec![0.0; rows * classes]);
        dev.cross_entropy_backward(&cprobs, classes, &targets, 0.7, &mut d);
        Cpu.cross_entropy_backward(&cprobs, classes, &targets, 0.7, &mut cd);
        exact("cross_entropy_backward", &d, &cd);
    }
    assert!(dev.cross_entropy(&[], 3, &[], &mut []).is_nan(), "zero rows give NaN");
}

/// `logsumexp(z) − z[t]` in `f64`.
fn ce_row_ref(z: &[f32], t: u32) -> f64 {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    lse - z[t as usize] as f64
}

fn optimizers(dev: &dyn Device) {
    let n = 3000;
    let mut rng = Rng::new(11);
    let (p0, grads) = (rng.vec(n, -1.0, 1.0), [rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0)]);
    let sgds = [
        SgdConfig { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false },
        SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 1e-3, nesterov: false },
        SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: true },
    ];
    for cfg in &sgds {
        let (mut p, mut buf, mut cp, mut cbuf) = (p0.clone(), vec![0.0; n], p0.clone(), vec![0.0; n]);
        for (step, g) in grads.iter().enumerate() {
            dev.sgd_step(&mut p, g, &mut buf, step == 0, cfg);
            Cpu.sgd_step(&mut cp, g, &mut cbuf, step == 0, cfg);
        }
        exact(&format!("sgd {cfg:?}"), &p, &cp);
        exact("sgd momentum buffer", &buf, &cbuf);
    }
    for (beta1, decoupled) in [(0.9, false), (0.3, false), (0.9, true), (0.3, true)] {
        let cfg = AdamConfig { lr: 1e-2, beta1, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 };
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut cp, mut cm, mut cv) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        for (i, g) in grads.iter().enumerate() {
            if decoupled {
                dev.adamw_step(&mut p, g, &mut m, &mut v, i as u64 + 1, &cfg);
                Cpu.adamw_step(&mut cp, g, &mut cm, &mut cv, i as u64 + 1, &cfg);
            } else {
                dev.adam_step(&mut p, g, &mut m, &mut v, i as u64 + 1, &cfg);
                Cpu.adam_step(&mut cp, g, &mut cm, &mut cv, i as u64 + 1, &cfg);
            }
        }
        exact(&format!("adam beta1={beta1} decoupled={decoupled}"), &p, &cp);
        exact("adam m", &m, &cm);
        exact("adam v", &v, &cv);
    }
}

/// Runs on every machine: opening a GPU that is not there is an error that
/// names the problem, never a panic.
#[test]
fn gpu_new_reports_absence_as_a_clear_error() {
    let opened = Gpu::new(0);
    if cuda::COMPILED {
        match opened {
            Ok(gpu) => eprintln!("GPU 0 present: {gpu:?}"),
            Err(Error::CudaUnavailable(why)) => assert!(!why.is_empty()),
            Err(other) => panic!("unexpected error opening GPU 0: {other}"),
        }
    } else {
        assert!(matches!(opened, Err(Error::CudaNotCompiled)), "{opened:?}");
    }
    let e = Gpu::new(1 << 20).expect_err("no machine has a millionth GPU");
    if cuda::COMPILED {
        assert!(matches!(e, Error::CudaUnavailable(_)), "{e}");
    } else {
        assert_eq!(e.to_string(), "this build has no CUDA support; rebuild with --features cuda");
    }
}

/// Bad lengths and out-of-range targets are errors naming the op (CUDA only).
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "built without the `cuda` feature (cargo test --features cuda)")]
fn cuda_rejects_bad_arguments() {
    let Some(dev) = devices::cuda("cuda_rejects_bad_arguments") else { return };
    let gpu = dev.0;
    let (a, b, mut out) = (gpu.upload(&[1.0; 3]).unwrap(), gpu.upload(&[1.0; 4]).unwrap(), gpu.zeros(3).unwrap());
    let e = gpu.add(&a, &b, &mut out).unwrap_err();
    assert_eq!(e.to_string(), "invalid GPU op arguments: add: b.len() = 4 != out.len() = 3");
    let targets = gpu.upload_u32(&[0, 3]).unwrap();
    let (logits, mut probs) = (gpu.zeros(6).unwrap(), gpu.zeros(6).unwrap());
    let e = gpu.cross_entropy(&logits, 3, &targets, &mut probs).unwrap_err();
    assert!(matches!(e, Error::CudaInvalidArgument(ref m) if m.contains("3 >= classes = 3")), "{e}");
    let mut c = gpu.zeros(4).unwrap();
    assert!(gpu.matmul(&mut c, &a, Trans::No, &b, Trans::No, 2, 2, 2, false).is_err());
}
