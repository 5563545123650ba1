//! The optimizer updates out of place: the old parameter and state are
//! read and left as they are, the updated values go to separate buffers.
//!
//! Invariant: each `*_into` function leaves in its outputs, bit for bit,
//! what the in-place function of the same name leaves in its arguments:
//! every chunk is copied into the outputs and then updated there by the
//! same per-chunk loop the in-place kernel runs. The copy and the update go
//! in pieces of [`IN_CACHE`] elements, so each piece is updated while it is
//! still in L1 and the memory traffic is that of one update (a parallel
//! task's chunk, or with one thread the whole buffer, would have left the
//! cache before its update). The update is per element, so the pieces
//! cannot change a bit.
//! A caller that keeps a layer's values from before its update (to roll
//! the step back) can then swap buffers instead of copying them.

use super::{adam_chunk, sgd_momentum_chunk, sgd_plain_chunk, AdamConfig, AdamScalars, SgdConfig, SyncPtr};
use crate::threads::par_chunks_mut;

/// Elements per piece of copy-then-update: 8 KiB of each buffer, so Adam's
/// four (parameter, two moments, gradient) take 32 KiB, inside L1.
const IN_CACHE: usize = 2048;

/// Calls `f(start, end)` on consecutive pieces of `0..len`, each at most
/// [`IN_CACHE`] long.
fn in_pieces(len: usize, mut f: impl FnMut(usize, usize)) {
    (0..len).step_by(IN_CACHE).for_each(|start| f(start, (start + IN_CACHE).min(len)));
}

/// [`super::sgd_step`] out of place: `from` = [param, momentum buffer]
/// (the buffer empty when `momentum == 0`), updated values into `to`
/// (same lengths).
///
/// # Panics
/// If the lengths differ (the buffers only when `momentum != 0`).
pub fn sgd_step_into(from: [&[f32]; 2], grad: &[f32], to: [&mut [f32]; 2], first: bool, cfg: &SgdConfig) {
    let [param, buf] = from;
    let [to_param, to_buf] = to;
    assert_eq!(grad.len(), param.len(), "sgd_step_into: grad.len() != param.len()");
    assert_eq!(to_param.len(), param.len(), "sgd_step_into: output length != param.len()");
    let c = *cfg;
    if c.momentum == 0.0 {
        return par_chunks_mut(to_param, |off, p| {
            in_pieces(p.len(), |a, b| {
                p[a..b].copy_from_slice(&param[off + a..off + b]);
                sgd_plain_chunk(&mut p[a..b], &grad[off + a..off + b], -c.lr, c.weight_decay);
            })
        });
    }
    assert_eq!(buf.len(), param.len(), "sgd_step_into: momentum_buf.len() != param.len()");
    assert_eq!(to_buf.len(), param.len(), "sgd_step_into: output buffer length != param.len()");
    let damp = (1.0 - c.dampening as f64) as f32;
    let bufp = SyncPtr(to_buf.as_mut_ptr());
    par_chunks_mut(to_param, |off, p| {
        let n = p.len();
        // SAFETY: `to_buf.len() == to_param.len()` (asserted above) and
        // par_chunks_mut hands out disjoint chunks of `to_param`, so each
        // task borrows a disjoint in-bounds range of `to_buf`, which stays
        // exclusively borrowed by this function for the whole call.
        let b = unsafe { std::slice::from_raw_parts_mut(bufp.get().add(off), n) };
        in_pieces(n, |x, y| {
            p[x..y].copy_from_slice(&param[off + x..off + y]);
            b[x..y].copy_from_slice(&buf[off + x..off + y]);
            sgd_momentum_chunk(&mut p[x..y], &mut b[x..y], &grad[off + x..off + y], first, &c, damp);
        });
    });
}

/// [`super::adam_step`] out of place: `from` = [param, m, v], updated
/// values into `to` (same lengths); `step` is 1-based.
///
/// # Panics
/// If `step == 0` or the lengths differ.
pub fn adam_step_into(from: [&[f32]; 3], grad: &[f32], to: [&mut [f32]; 3], step: u64, cfg: &AdamConfig) {
    adam_update_into(from, grad, to, step, AdamScalars::new(cfg, step));
}

/// [`super::adamw_step`] out of place, as [`adam_step_into`].
///
/// # Panics
/// If `step == 0` or the lengths differ.
pub fn adamw_step_into(from: [&[f32]; 3], grad: &[f32], to: [&mut [f32]; 3], step: u64, cfg: &AdamConfig) {
    adam_update_into(from, grad, to, step, AdamScalars::decoupled(cfg, step));
}

fn adam_update_into(from: [&[f32]; 3], grad: &[f32], to: [&mut [f32]; 3], step: u64, s: AdamScalars) {
    assert!(step >= 1, "adam_step_into: step is 1-based");
    let n = from[0].len();
    assert_eq!(grad.len(), n, "adam_step_into: grad.len() != param.len()");
    assert!(from.iter().all(|b| b.len() == n), "adam_step_into: m or v differ in length from param");
    assert!(to.iter().all(|b| b.len() == n), "adam_step_into: an output differs in length from param");
    let [to_p, to_m, to_v] = to;
    let (mp, vp) = (SyncPtr(to_m.as_mut_ptr()), SyncPtr(to_v.as_mut_ptr()));
    let isa = crate::isa::current();
    par_chunks_mut(to_p, |off, p| {
        let k = p.len();
        // SAFETY: `to_m` and `to_v` have `n` elements (asserted above),
        // par_chunks_mut gives each task a disjoint `off..off + k` inside
        // `to_p`, so each task borrows disjoint in-bounds ranges of them,
        // which stay exclusively borrowed by this function.
        let (m, v) = unsafe {
            (std::slice::from_raw_parts_mut(mp.get().add(off), k), std::slice::from_raw_parts_mut(vp.get().add(off), k))
        };
        in_pieces(k, |a, b| {
            let (p, m, v) = (&mut p[a..b], &mut m[a..b], &mut v[a..b]);
            p.copy_from_slice(&from[0][off + a..off + b]);
            m.copy_from_slice(&from[1][off + a..off + b]);
            v.copy_from_slice(&from[2][off + a..off + b]);
            adam_chunk(p, m, v, &grad[off + a..off + b], &s, isa);
        });
    });
}
