//! Optimizer updates with PyTorch semantics (`torch.optim.SGD`,
//! `torch.optim.Adam` and `torch.optim.AdamW`, the `foreach=False`
//! single-tensor path). Scalars that
//! PyTorch computes as Python floats are computed in `f64` and rounded to
//! `f32` once, as PyTorch does when it passes them to an `f32` kernel.

use crate::threads::par_chunks_mut;
use crate::Isa;

mod into;
pub use into::{adam_step_into, adamw_step_into, sgd_step_into};

/// Hyper-parameters of [`sgd_step`] (`torch.optim.SGD`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor; 0 disables the momentum buffer.
    pub momentum: f32,
    /// Dampening applied to the gradient in the momentum update.
    pub dampening: f32,
    /// L2 penalty added to the gradient (`g + wd·param`).
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// One SGD update.
///
/// `g = grad + wd·param`; if `momentum != 0`: `buf = g` on the first step
/// (`first == true`) else `buf = momentum·buf + (1−dampening)·g`;
/// `g = nesterov ? g + momentum·buf : buf`. Then `param −= lr·g`.
/// `momentum_buf` is used only when `momentum != 0`.
///
/// # Panics
/// If `grad.len() != param.len()`, or `momentum != 0` and
/// `momentum_buf.len() != param.len()`.
pub fn sgd_step(param: &mut [f32], grad: &[f32], momentum_buf: &mut [f32], first: bool, cfg: &SgdConfig) {
    assert_eq!(grad.len(), param.len(), "sgd_step: grad.len() != param.len()");
    if cfg.momentum == 0.0 {
        return sgd_plain(param, grad, cfg);
    }
    assert_eq!(momentum_buf.len(), param.len(), "sgd_step: momentum_buf.len() != param.len()");
    sgd_momentum(param, grad, momentum_buf, first, cfg);
}

/// `param −= lr·(grad + wd·param)`; lengths checked by the caller.
fn sgd_plain(param: &mut [f32], grad: &[f32], cfg: &SgdConfig) {
    let (neg_lr, wd) = (-cfg.lr, cfg.weight_decay);
    par_chunks_mut(param, |off, p| sgd_plain_chunk(p, &grad[off..off + p.len()], neg_lr, wd));
}

/// The loop of [`sgd_plain`] over one chunk.
#[inline(always)]
fn sgd_plain_chunk(p: &mut [f32], grad: &[f32], neg_lr: f32, wd: f32) {
    for (p, &g) in p.iter_mut().zip(grad) {
        *p += neg_lr * decay(g, *p, wd);
    }
}

/// SGD with a momentum buffer; `buf.len() == param.len() == grad.len()`
/// checked by the caller.
fn sgd_momentum(param: &mut [f32], grad: &[f32], buf: &mut [f32], first: bool, cfg: &SgdConfig) {
    let c = *cfg;
    let damp = (1.0 - c.dampening as f64) as f32;
    let bufp = SyncPtr(buf.as_mut_ptr());
    par_chunks_mut(param, |off, p| {
        let n = p.len();
        // SAFETY: `buf.len() == param.len()` (asserted by `sgd_step`) and
        // par_chunks_mut hands out disjoint chunks of `param`, so
        // `off..off + n` is in bounds of `buf` and each range of it is
        // borrowed mutably by exactly one task. `buf` stays exclusively
        // borrowed by this function for the whole call.
        let b = unsafe { std::slice::from_raw_parts_mut(bufp.get().add(off), n) };
        sgd_momentum_chunk(p, b, &grad[off..off + n], first, &c, damp);
    });
}

/// The loop of [`sgd_momentum`] over one chunk.
#[inline(always)]
fn sgd_momentum_chunk(p: &mut [f32], b: &mut [f32], grad: &[f32], first: bool, c: &SgdConfig, damp: f32) {
    for ((p, b), &g) in p.iter_mut().zip(b).zip(grad) {
        let g = decay(g, *p, c.weight_decay);
        *b = if first { g } else { *b * c.momentum + damp * g };
        let d = if c.nesterov { g + c.momentum * *b } else { *b };
        *p += -c.lr * d;
    }
}

/// `g + wd·p` (skipped when `wd == 0`, as PyTorch does).
#[inline(always)]
fn decay(g: f32, p: f32, wd: f32) -> f32 {
    if wd != 0.0 {
        g + wd * p
    } else {
        g
    }
}

/// A raw pointer that may cross into rayon tasks; users must give each task
/// a disjoint range.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: the pointer is only dereferenced through disjoint ranges, one per
// task (see the users' SAFETY comments), so sharing it between threads
// creates no data race.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Accessor so closures capture the whole `SyncPtr` (edition-2021
    /// disjoint capture would otherwise capture the bare pointer field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Hyper-parameters of [`adam_step`] (`torch.optim.Adam`, L2 weight decay)
/// and [`adamw_step`] (`torch.optim.AdamW`, decoupled weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay rate of the first-moment estimate.
    pub beta1: f32,
    /// Decay rate of the second-moment estimate.
    pub beta2: f32,
    /// Added to the denominator for numerical stability.
    pub eps: f32,
    /// Weight decay: an L2 penalty added to the gradient in [`adam_step`],
    /// decoupled (`param *= 1 − lr·wd` before the update) in [`adamw_step`].
    pub weight_decay: f32,
}

/// One Adam update following torch's `_single_tensor_adam`; `step` is
/// 1-based (the count including this update).
///
/// `g = grad + wd·param`; `m = m + (1−β1)·(g − m)` (torch `lerp_`);
/// `v = β2·v + (1−β2)·g·g`; `bc1 = 1−β1^step`, `bc2 = 1−β2^step` (in `f64`);
/// `step_size = lr/bc1`; `denom = sqrt(v)/sqrt(bc2) + eps`;
/// `param += (−step_size · m) / denom` (torch's `addcdiv_(m, denom, value=−step_size)`,
/// which multiplies before it divides).
///
/// # Panics
/// If `step == 0` or `grad`, `m`, `v` differ in length from `param`.
pub fn adam_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig) {
    adam_update(param, grad, m, v, step, AdamScalars::new(cfg, step));
}

/// One AdamW update following torch's `_single_tensor_adam` with
/// `decoupled_weight_decay=True`; `step` is 1-based.
///
/// `param *= 1 − lr·wd` (the factor computed in `f64`, rounded to `f32`
/// once, as torch's `param.mul_(1 - lr * weight_decay)`), then the update
/// of [`adam_step`] with no L2 term: `m`, `v`, bias corrections and
/// the parameter update exactly as there.
///
/// # Panics
/// If `step == 0` or `grad`, `m`, `v` differ in length from `param`.
pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig) {
    adam_update(param, grad, m, v, step, AdamScalars::decoupled(cfg, step));
}

/// The shared loop of [`adam_step`] and [`adamw_step`].
fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: u64, s: AdamScalars) {
    assert!(step >= 1, "adam_step: step is 1-based");
    assert_eq!(grad.len(), param.len(), "adam_step: grad.len() != param.len()");
    assert_eq!(m.len(), param.len(), "adam_step: m.len() != param.len()");
    assert_eq!(v.len(), param.len(), "adam_step: v.len() != param.len()");
    let (mp, vp) = (SyncPtr(m.as_mut_ptr()), SyncPtr(v.as_mut_ptr()));
    let isa = crate::isa::current();
    par_chunks_mut(param, |off, p| {
        let n = p.len();
        // SAFETY: `m` and `v` have `param.len()` elements (asserted above),
        // par_chunks_mut gives each task a disjoint `off..off + n` inside
        // `param`, so each task borrows disjoint in-bounds ranges of `m` and
        // `v`, which stay exclusively borrowed by this function.
        let (m, v) = unsafe {
            (std::slice::from_raw_parts_mut(mp.get().add(off), n), std::slice::from_raw_parts_mut(vp.get().add(off), n))
        };
        adam_chunk(p, m, v, &grad[off..off + n], &s, isa);
    });
}

/// The loop of [`adam_update`] over one chunk: [`AdamScalars::update`] on
/// every element, with its three per-step choices (decoupled decay, L2
/// term, lerp branch) taken once per chunk instead of per element, so the
/// loop is branch-free and vectorises. Each element still gets exactly the
/// operations `update` gives it, in its order.
///
/// `isa` picks the vector width only (AVX-512, AVX2, else the build's
/// baseline): every element's operations are the same on each, so the bits
/// are too.
#[inline(always)]
fn adam_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], s: &AdamScalars, isa: Isa) {
    match isa {
        // SAFETY: `isa` comes from `isa::current()`, which only returns
        // paths the CPU has (`Isa::check`), so the features are present.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { adam_chunk_avx512(p, m, v, grad, s) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { adam_chunk_avx2(p, m, v, grad, s) },
        _ => adam_chunk_any(p, m, v, grad, s),
    }
}

/// [`adam_chunk_any`] compiled for AVX-512F (16-lane vectors).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adam_chunk_avx512(p: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], s: &AdamScalars) {
    adam_chunk_any(p, m, v, grad, s)
}

/// [`adam_chunk_any`] compiled for AVX2 (8-lane vectors; no FMA: Rust never
/// contracts a multiply and an add).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_chunk_avx2(p: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], s: &AdamScalars) {
    adam_chunk_any(p, m, v, grad, s)
}

/// [`adam_chunk`] for whatever the compiler targets.
#[inline(always)]
fn adam_chunk_any(p: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], s: &AdamScalars) {
    match (s.keep != 1.0, s.wd != 0.0) {
        (false, false) => adam_lerp::<false, false>(p, m, v, grad, s),
        (true, false) => adam_lerp::<true, false>(p, m, v, grad, s),
        (false, true) => adam_lerp::<false, true>(p, m, v, grad, s),
        (true, true) => adam_lerp::<true, true>(p, m, v, grad, s),
    }
}

/// [`adam_chunk`] with the decay choices fixed; picks the lerp branch.
#[inline(always)]
fn adam_lerp<const KEEP: bool, const WD: bool>(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    s: &AdamScalars,
) {
    if s.w1 < 0.5 {
        adam_loop::<KEEP, WD, true>(p, m, v, g, s);
    } else {
        adam_loop::<KEEP, WD, false>(p, m, v, g, s);
    }
}

/// The element loop with every choice fixed: `KEEP` is `s.keep != 1`,
/// `WD` is `s.wd != 0`, `LOW` is `s.w1 < 0.5` (the caller checks them).
#[inline(always)]
fn adam_loop<const KEEP: bool, const WD: bool, const LOW: bool>(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    s: &AdamScalars,
) {
    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(grad) {
        s.update_fixed::<KEEP, WD, LOW>(p, m, v, g);
    }
}

/// Per-step scalars of Adam, computed as PyTorch does (Python floats, then
/// rounded to `f32` when passed to the kernels).
/// (The CUDA kernel takes these same scalars, so both devices round alike.)
#[derive(Clone, Copy)]
pub(crate) struct AdamScalars {
    /// AdamW's decoupled decay factor `1 − lr·wd` (1 for Adam, where
    /// multiplying by it is the identity on every value).
    pub(crate) keep: f32,
    /// Adam's L2 coefficient (0 for AdamW).
    pub(crate) wd: f32,
    pub(crate) w1: f32,
    pub(crate) beta2: f32,
    pub(crate) w2: f32,
    pub(crate) neg_step_size: f32,
    pub(crate) bc2_sqrt: f32,
    pub(crate) eps: f32,
}

impl AdamScalars {
    pub(crate) fn new(cfg: &AdamConfig, step: u64) -> Self {
        let exp = i32::try_from(step).unwrap_or(i32::MAX);
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(exp);
        let bc2 = 1.0 - (cfg.beta2 as f64).powi(exp);
        Self {
            keep: 1.0,
            wd: cfg.weight_decay,
            w1: (1.0 - cfg.beta1 as f64) as f32,
            beta2: cfg.beta2,
            w2: (1.0 - cfg.beta2 as f64) as f32,
            neg_step_size: (-(cfg.lr as f64) / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: cfg.eps,
        }
    }

    /// AdamW's scalars: Adam's with no L2 term and the decoupled factor
    /// `1 − lr·wd` (skipped, as torch does, when `wd == 0`).
    pub(crate) fn decoupled(cfg: &AdamConfig, step: u64) -> Self {
        let keep = if cfg.weight_decay != 0.0 { (1.0 - cfg.lr as f64 * cfg.weight_decay as f64) as f32 } else { 1.0 };
        Self { keep, wd: 0.0, ..Self::new(cfg, step) }
    }

    /// One element's update: `p *= keep` (when `KEEP`, i.e. `keep != 1`),
    /// the L2 term (when `WD`, i.e. `wd != 0`), torch's lerp for `m` (its
    /// first form when `LOW`, i.e. `w1 < 0.5`), then `v`, `denom` and `p`.
    /// The caller derives the flags from `self`.
    #[inline(always)]
    fn update_fixed<const KEEP: bool, const WD: bool, const LOW: bool>(
        &self,
        p: &mut f32,
        m: &mut f32,
        v: &mut f32,
        g: f32,
    ) {
        if KEEP {
            *p *= self.keep;
        }
        let g = if WD { g + self.wd * *p } else { g };
        // torch's lerp: start + w·(end − start) for w < 0.5, else
        // end − (end − start)·(1 − w).
        *m = if LOW { *m + self.w1 * (g - *m) } else { g - (g - *m) * (1.0 - self.w1) };
        *v = *v * self.beta2 + self.w2 * g * g;
        let denom = v.sqrt() / self.bc2_sqrt + self.eps;
        *p += self.neg_step_size * *m / denom;
    }
}
