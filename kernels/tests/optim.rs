//! Optimizer updates against values computed by hand (PyTorch semantics).

mod common;

use baton_kernels::isa::with_isa;
use baton_kernels::optim::{
    adam_step, adam_step_into, adamw_step, adamw_step_into, sgd_step, sgd_step_into, AdamConfig, SgdConfig,
};
use baton_kernels::Isa;
use common::{bits, data, Rng};

fn close(got: f32, want: f64, what: &str) {
    assert!((got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "{what}: got {got}, want {want}");
}

fn sgd(momentum: f32, dampening: f32, weight_decay: f32, nesterov: bool) -> SgdConfig {
    SgdConfig { lr: 0.1, momentum, dampening, weight_decay, nesterov }
}

/// Runs two steps from p = [1, −2] with grads g1, g2; returns (param, buf).
fn two_sgd_steps(cfg: &SgdConfig, g1: [f32; 2], g2: [f32; 2]) -> ([f32; 2], [f32; 2]) {
    let (mut p, mut buf) = ([1.0f32, -2.0], [f32::NAN; 2]);
    sgd_step(&mut p, &g1, &mut buf, true, cfg);
    sgd_step(&mut p, &g2, &mut buf, false, cfg);
    (p, buf)
}

#[test]
fn sgd_plain() {
    let mut p = [1.0f32, -2.0];
    sgd_step(&mut p, &[0.5, 1.0], &mut [], true, &sgd(0.0, 0.0, 0.01, false));
    // p − 0.1·(g + 0.01·p)
    close(p[0], 1.0 - 0.1 * 0.51, "p0");
    close(p[1], -2.0 - 0.1 * 0.98, "p1");
}

#[test]
fn sgd_momentum_two_steps() {
    let (p, buf) = two_sgd_steps(&sgd(0.9, 0.0, 0.0, false), [0.5, 1.0], [0.25, -0.5]);
    // step 1: buf = g1 = [0.5, 1]; p = [0.95, −2.1]
    // step 2: buf = 0.9·[0.5, 1] + [0.25, −0.5] = [0.7, 0.4]; p = [0.88, −2.14]
    close(buf[0], 0.7, "buf0");
    close(buf[1], 0.4, "buf1");
    close(p[0], 0.88, "p0");
    close(p[1], -2.14, "p1");
}

#[test]
fn sgd_dampening_skips_first_step() {
    let (p, buf) = two_sgd_steps(&sgd(0.9, 0.5, 0.0, false), [0.5, 1.0], [0.25, -0.5]);
    // step 1: buf = g1 (no dampening on the first step); p0 = 0.95
    // step 2: buf0 = 0.45 + 0.5·0.25 = 0.575; p0 = 0.95 − 0.0575 = 0.8925
    close(buf[0], 0.575, "buf0");
    close(p[0], 0.8925, "p0");
}

#[test]
fn sgd_nesterov_weight_decay_two_steps() {
    let (p, buf) = two_sgd_steps(&sgd(0.9, 0.0, 0.1, true), [0.5, 1.0], [0.25, -0.5]);
    // step 1: g = 0.5 + 0.1 = 0.6; buf = 0.6; d = 0.6 + 0.54 = 1.14; p0 = 0.886
    // step 2: g = 0.25 + 0.0886 = 0.3386; buf = 0.54 + 0.3386 = 0.8786;
    //         d = 0.3386 + 0.9·0.8786 = 1.12934; p0 = 0.886 − 0.112934 = 0.773066
    close(buf[0], 0.8786, "buf0");
    close(p[0], 0.773066, "p0");
}

fn adam(weight_decay: f32) -> AdamConfig {
    AdamConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
}

/// Two Adam steps from p = 1 with g1 = 0.5, g2 = −0.25; returns (p, m, v)
/// after each step.
fn two_adam_steps(cfg: &AdamConfig) -> [(f32, f32, f32); 2] {
    let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    adam_step(&mut p, &[0.5], &mut m, &mut v, 1, cfg);
    let first = (p[0], m[0], v[0]);
    adam_step(&mut p, &[-0.25], &mut m, &mut v, 2, cfg);
    [first, (p[0], m[0], v[0])]
}

#[test]
fn adam_bias_correction_two_steps() {
    let [s1, s2] = two_adam_steps(&adam(0.0));
    // step 1: m = 0.05, v = 2.5e-4, bc1 = 0.1, bc2 = 1e-3:
    //         p = 1 − (0.1/0.1)·0.05/(sqrt(2.5e-4)/sqrt(1e-3) + 1e-8) ≈ 0.9
    close(s1.1, 0.05, "m1");
    close(s1.2, 2.5e-4, "v1");
    close(s1.0, 0.900000002, "p1");
    // step 2: m = 0.05 + 0.1·(−0.25 − 0.05) = 0.02; v = 0.999·2.5e-4 + 1e-3·0.0625
    //         = 3.1225e-4; bc1 = 0.19, bc2 = 1.999e-3;
    //         p = 0.9 − (0.1/0.19)·0.02/(sqrt(3.1225e-4)/sqrt(1.999e-3) + 1e-8)
    close(s2.1, 0.02, "m2");
    close(s2.2, 3.1225e-4, "v2");
    close(s2.0, 0.8733662987, "p2");
}

#[test]
fn adam_l2_weight_decay_two_steps() {
    let [s1, s2] = two_adam_steps(&adam(0.1));
    // step 1: g = 0.5 + 0.1·1 = 0.6; m = 0.06; v = 3.6e-4; p ≈ 0.9
    close(s1.1, 0.06, "m1");
    close(s1.0, 0.9000000017, "p1");
    // step 2: g = −0.25 + 0.1·0.9 = −0.16; m = 0.06 + 0.1·(−0.22) = 0.038;
    //         v = 0.999·3.6e-4 + 1e-3·0.0256 = 3.8524e-4
    close(s2.1, 0.038, "m2");
    close(s2.2, 3.8524e-4, "v2");
    close(s2.0, 0.8544413675, "p2");
}

#[test]
#[should_panic(expected = "step is 1-based")]
fn adam_rejects_step_zero() {
    adam_step(&mut [1.0], &[1.0], &mut [0.0], &mut [0.0], 0, &adam(0.0));
}

/// torch.optim.AdamW's formula in f64, literally: p *= 1 − lr·wd; m, v as
/// Adam; p −= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps).
fn adamw_f64(p: &mut f64, m: &mut f64, v: &mut f64, g: f64, step: i32, c: &AdamConfig) {
    let (lr, b1, b2, eps, wd) = (c.lr as f64, c.beta1 as f64, c.beta2 as f64, c.eps as f64, c.weight_decay as f64);
    *p *= 1.0 - lr * wd;
    *m = b1 * *m + (1.0 - b1) * g;
    *v = b2 * *v + (1.0 - b2) * g * g;
    let (bc1, bc2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
    *p -= lr / bc1 * *m / (v.sqrt() / bc2.sqrt() + eps);
}

#[test]
fn adamw_decoupled_decay_three_steps() {
    let cfg = AdamConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let (mut p, mut m, mut v) = ([1.0f32, -2.0], [0.0f32; 2], [0.0f32; 2]);
    let mut want = [(1.0f64, 0.0f64, 0.0f64), (-2.0, 0.0, 0.0)];
    for (step, g) in [[0.5f32, 0.25], [-0.25, 1.0], [0.125, -0.5]].iter().enumerate() {
        adamw_step(&mut p, g, &mut m, &mut v, step as u64 + 1, &cfg);
        for (i, (wp, wm, wv)) in want.iter_mut().enumerate() {
            adamw_f64(wp, wm, wv, g[i] as f64, step as i32 + 1, &cfg);
            close(p[i], *wp, &format!("p[{i}] step {step}"));
            close(m[i], *wm, &format!("m[{i}] step {step}"));
            close(v[i], *wv, &format!("v[{i}] step {step}"));
        }
    }
    // By hand, step 1 of p[0]: 1·(1 − 0.1·0.1) − (0.1/0.1)·0.05/(sqrt(2.5e-4)/sqrt(1e-3) + 1e-8)
    // = 0.99 − 0.1 (to 1e-8); the f64 model above must agree with that too.
    let mut first = (1.0, 0.0, 0.0);
    adamw_f64(&mut first.0, &mut first.1, &mut first.2, 0.5, 1, &cfg);
    assert!((first.0 - 0.89).abs() < 1e-7, "{first:?}");
}

#[test]
fn adamw_without_weight_decay_is_adam() {
    let cfg = AdamConfig { weight_decay: 0.0, ..adam(0.0) };
    let (mut p, mut m, mut v) = ([1.0f32, -3.0], [0.0f32; 2], [0.0f32; 2]);
    let (mut q, mut mq, mut vq) = (p, m, v);
    for step in 1..=3 {
        adam_step(&mut p, &[0.5, -0.125], &mut m, &mut v, step, &cfg);
        adamw_step(&mut q, &[0.5, -0.125], &mut mq, &mut vq, step, &cfg);
    }
    assert_eq!(p.map(f32::to_bits), q.map(f32::to_bits));
}

/// The out-of-place updates leave in their outputs the bits the in-place
/// ones leave, over several steps (so the state read is not all zeros),
/// on a length that spans several parallel chunks and ends in a partial
/// one, with 1 and 2 threads; their inputs stay untouched.
#[test]
fn out_of_place_updates_are_the_in_place_bits() {
    let n = (1 << 17) + 77;
    let mut rng = Rng::new(17);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| data(&mut rng, n)).collect();
    let start: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(n, 0.0, 1.0)).collect();
    let adam_cfg = AdamConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    for threads in [1, 2] {
        baton_kernels::threads::set_num_threads(threads).unwrap();
        for decoupled in [false, true] {
            let mut live = start.clone();
            for (step, g) in grads.iter().enumerate() {
                let before = live.clone();
                let mut out = vec![vec![f32::NAN; n]; 3];
                let [o0, o1, o2] = &mut out[..] else { unreachable!() };
                let to = [o0.as_mut_slice(), o1.as_mut_slice(), o2.as_mut_slice()];
                let from = [live[0].as_slice(), live[1].as_slice(), live[2].as_slice()];
                let t = step as u64 + 1;
                match decoupled {
                    false => adam_step_into(from, g, to, t, &adam_cfg),
                    true => adamw_step_into(from, g, to, t, &adam_cfg),
                }
                let [p, m, v] = &mut live[..] else { unreachable!() };
                match decoupled {
                    false => adam_step(p, g, m, v, t, &adam_cfg),
                    true => adamw_step(p, g, m, v, t, &adam_cfg),
                }
                for (k, (a, b)) in out.iter().zip(&live).enumerate() {
                    assert_eq!(
                        bits(a),
                        bits(b),
                        "adam (decoupled {decoupled}) buffer {k} step {step}, {threads} threads"
                    );
                }
                assert_ne!(bits(&before[0]), bits(&live[0]), "the update changed nothing");
            }
        }
        for cfg in [sgd(0.9, 0.1, 0.01, false), sgd(0.9, 0.0, 0.0, true), sgd(0.0, 0.0, 0.01, false)] {
            let (mut p, mut buf) = (start[0].clone(), vec![0.0f32; if cfg.momentum == 0.0 { 0 } else { n }]);
            for (step, g) in grads.iter().enumerate() {
                let (mut op, mut ob) = (vec![f32::NAN; n], vec![f32::NAN; buf.len()]);
                sgd_step_into(
                    [p.as_slice(), buf.as_slice()],
                    g,
                    [op.as_mut_slice(), ob.as_mut_slice()],
                    step == 0,
                    &cfg,
                );
                sgd_step(&mut p, g, &mut buf, step == 0, &cfg);
                assert_eq!(bits(&op), bits(&p), "sgd {cfg:?} param step {step}, {threads} threads");
                assert_eq!(bits(&ob), bits(&buf), "sgd {cfg:?} buffer step {step}, {threads} threads");
            }
        }
    }
}

/// torch's `_single_tensor_adam` on one element, written out with its
/// per-step choices as branches (the form the kernel had before its loop
/// was specialised per choice), scalars rounded to f32 as the kernel does.
fn adam_reference(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: i32, c: &AdamConfig, decoupled: bool) {
    let (bc1, bc2) = (1.0 - (c.beta1 as f64).powi(step), 1.0 - (c.beta2 as f64).powi(step));
    let keep =
        if decoupled && c.weight_decay != 0.0 { (1.0 - c.lr as f64 * c.weight_decay as f64) as f32 } else { 1.0 };
    let wd = if decoupled { 0.0 } else { c.weight_decay };
    let w1 = (1.0 - c.beta1 as f64) as f32;
    let w2 = (1.0 - c.beta2 as f64) as f32;
    let neg_step_size = (-(c.lr as f64) / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    for i in 0..p.len() {
        if keep != 1.0 {
            p[i] *= keep;
        }
        let g = if wd != 0.0 { g[i] + wd * p[i] } else { g[i] };
        m[i] = if w1 < 0.5 { m[i] + w1 * (g - m[i]) } else { g - (g - m[i]) * (1.0 - w1) };
        v[i] = v[i] * c.beta2 + w2 * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + c.eps;
        p[i] += neg_step_size * m[i] / denom;
    }
}

/// Adam and AdamW bit for bit against [`adam_reference`] in every
/// combination of the kernel's per-step choices (decoupled decay or not,
/// an L2 term or not, either lerp branch), over three steps, on a length
/// with a partial last chunk, at 1 and 2 threads, on every ISA path the CPU
/// has (the vector width differs), with signed zeros,
/// infinities and NaNs among the gradients.
#[test]
fn adam_matches_the_per_element_reference_in_every_branch() {
    let n = (1 << 16) + 13;
    let mut rng = Rng::new(23);
    let mut grads: Vec<Vec<f32>> = (0..3).map(|_| data(&mut rng, n)).collect();
    for (i, &s) in [0.0, -0.0, f32::INFINITY, f32::NAN, 1e-40].iter().enumerate() {
        grads[1][i * 997] = s;
    }
    let start = rng.vec(n, -1.0, 1.0);
    for (threads, isa) in [1, 2].into_iter().flat_map(|t| Isa::available().into_iter().map(move |i| (t, i))) {
        baton_kernels::threads::set_num_threads(threads).unwrap();
        for (beta1, wd, decoupled) in adam_choices() {
            let cfg = AdamConfig { lr: 1e-2, beta1, beta2: 0.999, eps: 1e-8, weight_decay: wd };
            let (mut p, mut m, mut v) = (start.clone(), vec![0.0; n], vec![0.0; n]);
            let (mut rp, mut rm, mut rv) = (start.clone(), vec![0.0; n], vec![0.0; n]);
            for (step, g) in grads.iter().enumerate() {
                with_isa(isa, || match decoupled {
                    false => adam_step(&mut p, g, &mut m, &mut v, step as u64 + 1, &cfg),
                    true => adamw_step(&mut p, g, &mut m, &mut v, step as u64 + 1, &cfg),
                })
                .expect("an available path");
                adam_reference(&mut rp, g, &mut rm, &mut rv, step as i32 + 1, &cfg, decoupled);
                let what =
                    format!("beta1 {beta1} wd {wd} decoupled {decoupled} step {step}, {threads} threads, {isa:?}");
                assert_eq!(bits(&p), bits(&rp), "param, {what}");
                assert_eq!(bits(&m), bits(&rm), "m, {what}");
                assert_eq!(bits(&v), bits(&rv), "v, {what}");
            }
        }
    }
}

/// (beta1, weight decay, decoupled): both lerp branches (w1 = 1 − beta1
/// below and above 0.5), with and without decay, Adam and AdamW.
fn adam_choices() -> Vec<(f32, f32, bool)> {
    let mut all = Vec::new();
    for beta1 in [0.9, 0.3] {
        for wd in [0.0, 0.05] {
            for decoupled in [false, true] {
                all.push((beta1, wd, decoupled));
            }
        }
    }
    all
}
