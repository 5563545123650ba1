//! Elementwise arithmetic and row reductions on row-major `f32` buffers.

use std::mem::MaybeUninit;

use crate::threads::{self, par_chunks_mut, par_col_blocks, PAR_CHUNK};
use crate::Isa;

/// `len` zeros. A large buffer is zeroed in the pool's threads: one
/// thread zeroing every fresh op output was a serial share of a 2-thread
/// training step (the allocator reuses freed memory, so calloc cannot skip it).
pub fn zeros(len: usize) -> Vec<f32> {
    let Some(pool) = threads::pool_for(len) else {
        return vec![0.0; len];
    };
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    pool.install(|| v.spare_capacity_mut().par_chunks_mut(PAR_CHUNK).for_each(|c| c.fill(MaybeUninit::new(0.0))));
    // SAFETY: the capacity is `len` and all `len` elements were just written.
    unsafe { v.set_len(len) };
    v
}

/// `y[r*cols + c] += bias[c]` with `cols = bias.len()`.
///
/// # Panics
/// Unless `y.len()` is a multiple of `bias.len()` (an empty `bias` requires
/// an empty `y`).
pub fn add_bias_rows(y: &mut [f32], bias: &[f32]) {
    let cols = bias.len();
    if cols == 0 {
        assert!(y.is_empty(), "add_bias_rows: empty bias with non-empty y");
        return;
    }
    assert_eq!(y.len() % cols, 0, "add_bias_rows: y.len() % bias.len() != 0");
    let rows_per_chunk = (crate::threads::PAR_CHUNK / cols).max(1);
    match crate::threads::pool_for(y.len()) {
        None => add_bias_block(y, bias),
        Some(pool) => {
            use rayon::prelude::*;
            pool.install(|| {
                y.par_chunks_mut(rows_per_chunk * cols).for_each(|blk| add_bias_block(blk, bias));
            });
        }
    }
}

/// Adds `bias` to every row of `y` (`y.len()` a multiple of `bias.len()`).
fn add_bias_block(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `out[c] (+)= Σ_r x[r*cols + c]`, rows summed strictly in order 0, 1, 2, …
/// (starting from `out[c]` when `accumulate`, else from 0).
///
/// # Panics
/// If `out.len() != cols` or `x.len()` is not a multiple of `cols`.
pub fn sum_rows(x: &[f32], cols: usize, out: &mut [f32], accumulate: bool) {
    assert_eq!(out.len(), cols, "sum_rows: out.len() != cols");
    if cols == 0 {
        assert!(x.is_empty(), "sum_rows: cols == 0 with non-empty x");
        return;
    }
    assert_eq!(x.len() % cols, 0, "sum_rows: x.len() % cols != 0");
    if !accumulate {
        out.fill(0.0);
    }
    par_col_blocks(out, x.len(), |c0, blk| {
        for row in x.chunks_exact(cols) {
            let w = blk.len();
            for (o, v) in blk.iter_mut().zip(&row[c0..c0 + w]) {
                *o += v;
            }
        }
    });
}

/// `out = a + b`.
///
/// # Panics
/// Unless `a`, `b` and `out` have equal lengths.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert_eq!(a.len(), out.len(), "add: a.len() != out.len()");
    assert_eq!(b.len(), out.len(), "add: b.len() != out.len()");
    par_chunks_mut(out, |off, o| {
        let n = o.len();
        for ((o, a), b) in o.iter_mut().zip(&a[off..off + n]).zip(&b[off..off + n]) {
            *o = a + b;
        }
    });
}

/// `dst += src`.
///
/// # Panics
/// Unless `dst.len() == src.len()`.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_assign: dst.len() != src.len()");
    par_chunks_mut(dst, |off, d| {
        let n = d.len();
        for (d, s) in d.iter_mut().zip(&src[off..off + n]) {
            *d += s;
        }
    });
}

/// `x[i] = x[i] + 0.0`: the bits of `0.0 + x[i]` (IEEE addition is
/// commutative), so a sum that starts from zeros can start from its first
/// term instead. The addition changes only `-0.0` (to `+0.0`) and
/// signalling NaNs (quietened); every other value stays as it is, so each
/// block of [`PLUS_ZERO_BLOCK`] elements is only read unless it holds one
/// of those, and then the whole block gets the addition.
///
/// The scan runs at the width [`crate::isa::current`] gives (AVX-512, AVX2
/// or the build's baseline; the baseline's 4 lanes made it compute-bound,
/// about a quarter of memory speed); the same elements get the addition on
/// every path, so the bits are the same.
pub fn plus_zero(x: &mut [f32]) {
    let isa = crate::isa::current();
    par_chunks_mut(x, |_, x| plus_zero_chunk(x, isa));
}

/// [`plus_zero`] of one chunk on `isa`.
#[inline(always)]
fn plus_zero_chunk(x: &mut [f32], isa: Isa) {
    match isa {
        // SAFETY: `isa` comes from `isa::current()`, which only returns
        // paths the CPU has (`Isa::check`), so the features are present.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { plus_zero_avx512(x) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { plus_zero_avx2(x) },
        _ => plus_zero_any(x),
    }
}

/// [`plus_zero_any`] compiled for AVX-512F (16-lane vectors).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn plus_zero_avx512(x: &mut [f32]) {
    plus_zero_any(x)
}

/// [`plus_zero_any`] compiled for AVX2 (8-lane vectors).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn plus_zero_avx2(x: &mut [f32]) {
    plus_zero_any(x)
}

/// The blocks of [`plus_zero`] for whatever the compiler targets.
#[inline(always)]
fn plus_zero_any(x: &mut [f32]) {
    for blk in x.chunks_mut(PLUS_ZERO_BLOCK) {
        // A fold, not `any`: no early exit, so it vectorises.
        if blk.iter().fold(0u32, |acc, &v| acc | u32::from(changed_by_plus_zero(v))) != 0 {
            for v in blk.iter_mut() {
                *v += 0.0;
            }
        }
    }
}

/// Elements per block of [`plus_zero`]'s read-only scan.
const PLUS_ZERO_BLOCK: usize = 1024;

/// Whether `v + 0.0` has other bits than `v`: `-0.0`, or a signalling NaN
/// (exponent all ones, quiet bit clear, mantissa not zero).
#[inline(always)]
fn changed_by_plus_zero(v: f32) -> bool {
    let b = v.to_bits();
    let snan = (b & 0x7fff_ffff) > 0x7f80_0000 && b & 0x0040_0000 == 0;
    b == 0x8000_0000 || snan
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    par_chunks_mut(x, |_, x| {
        for v in x.iter_mut() {
            *v *= s;
        }
    });
}
