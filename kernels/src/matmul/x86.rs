//! The x86-64 micro-kernels: AVX-512F (6×64 tiles, 24 `zmm` accumulators;
//! 2×64 and 4×64 for a last panel of up to 2 or 4 rows) and AVX2+FMA (6×16
//! tiles, 12 `ymm` accumulators), and an AVX transposing
//! pack for both. Each lane of a vector FMA is one scalar fused
//! multiply-add, so both kernels compute exactly the chain of
//! [`Tile::tile`], lane by lane, as the generic kernel does.
//!
//! A kernel value exists only once `detect` has seen the CPU features it
//! needs, which is what makes calling its `#[target_feature]` code sound.

use std::arch::x86_64::*;

use super::driver::{Src, Tile};

/// How many K steps ahead the kernels prefetch op(b) (into L1): far enough
/// to hide an L2 hit, near enough to stay inside the next panel.
const PREFETCH_K: usize = 16;

/// The AVX-512F kernel: 6×64 tiles (24 `zmm` accumulators; 2×64 and 4×64
/// for a last panel of up to 2 or 4 rows), four vector loads of op(b) and
/// six broadcasts of op(a) per K step (the `gemm` crate's shape). It reads
/// row-major op(a) in place: its 6 rows `k` floats apart fit the ways of
/// one L1 set (12 rows of a 12×32 tile did not, so they were repacked).
/// Constructed only by [`Avx512::detect`].
#[derive(Clone, Copy)]
pub(super) struct Avx512(());

impl Avx512 {
    /// The kernel, if this CPU has AVX-512F (and AVX2 and FMA, which every
    /// AVX-512F CPU has; the transposing pack uses AVX).
    pub(super) fn detect() -> Option<Self> {
        let has = is_x86_feature_detected!("avx512f") && Avx2::detect().is_some();
        has.then_some(Avx512(()))
    }
}

impl Tile for Avx512 {
    const MR: usize = 6;
    const NR: usize = 64;
    const KC: usize = 512;
    // 1 MiB of packed op(b): half of a 2 MiB L2.
    const B_BLOCK: usize = 256 * 1024;
    const A_IN_PLACE: bool = true;
    unsafe fn tile(self, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: `self` exists only if the CPU has AVX-512F (`detect`); the
        // pointer contract is the caller's (see `Tile::tile`).
        unsafe {
            if a.xs == 1 {
                tile_zmm::<6, 4, true, 6>(kc, a, b, c, ldc, load)
            } else {
                tile_zmm::<6, 4, false, 6>(kc, a, b, c, ldc, load)
            }
        }
    }

    unsafe fn tile_rows(self, rows: usize, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: as for `tile`; the shorter kernels read and write a subset
        // of the full tile's elements (its first 2 or 4 rows).
        unsafe {
            match (rows, a.xs == 1) {
                (..=2, true) => tile_zmm::<2, 4, true, 6>(kc, a, b, c, ldc, load),
                (..=2, false) => tile_zmm::<2, 4, false, 6>(kc, a, b, c, ldc, load),
                (..=4, true) => tile_zmm::<4, 4, true, 6>(kc, a, b, c, ldc, load),
                (..=4, false) => tile_zmm::<4, 4, false, 6>(kc, a, b, c, ldc, load),
                _ => self.tile(kc, a, b, c, ldc, load),
            }
        }
    }

    fn rows_touched(self, rows: usize) -> usize {
        match rows {
            0..=2 => 2,
            3..=4 => 4,
            _ => 6,
        }
    }

    fn pack_transposed(self, dst: &mut [f32], src: &[f32], ws: usize, lanes: (usize, usize), kc: usize) {
        transposed(dst, src, ws, lanes, kc)
    }
}

/// # Safety
/// The CPU has AVX-512F; operands as in [`Tile::tile`] with `MR` rows and
/// NR = 16·`NV`; when `UNIT`, `a.xs == 1` (a K step's `MR` values of op(a)
/// are contiguous: packed, or op(a) transposed in place). `FULL` is the
/// row count of the packed panels of this kernel family (`a.ps` of a
/// packed panel, also for its shorter kernels).
#[target_feature(enable = "avx512f")]
unsafe fn tile_zmm<const MR: usize, const NV: usize, const UNIT: bool, const FULL: usize>(
    kc: usize,
    a: Src,
    b: Src,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = unsafe { _mm512_loadu_ps(c.add(i * ldc + 16 * v)) };
            }
        }
    }
    // op(a) read in place transposed (its MR values of a K step contiguous,
    // the next step's `a.ps` floats on): prefetched like op(b), both lines
    // the MR values may straddle. Packed panels (`a.ps == FULL`) are read
    // start to end, which the hardware prefetches by itself.
    if UNIT && a.ps > FULL {
        unsafe { k_loop::<MR, NV, UNIT, true>(&mut acc, kc, a, b) }
    } else {
        unsafe { k_loop::<MR, NV, UNIT, false>(&mut acc, kc, a, b) }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            unsafe { _mm512_storeu_ps(c.add(i * ldc + 16 * v), *x) };
        }
    }
}

/// The K loop of [`tile_zmm`]: for `p` in `0..kc` in order, `acc[i][v]`
/// lane `l` becomes `fma(op(a)[i, p], op(b)[p, 16v + l], acc[i][v])`;
/// op(a) is prefetched when `PA`.
///
/// # Safety
/// As for [`tile_zmm`].
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn k_loop<const MR: usize, const NV: usize, const UNIT: bool, const PA: bool>(
    acc: &mut [[__m512; NV]; MR],
    kc: usize,
    a: Src,
    b: Src,
) {
    let xs = if UNIT { 1 } else { a.xs };
    let (mut ap, mut bp) = (a.ptr, b.ptr);
    for _ in 0..kc {
        // A hint only: prefetching never faults, and the address is never
        // dereferenced (hence wrapping arithmetic).
        let ahead = bp.wrapping_add(PREFETCH_K * b.ps);
        for v in 0..NV {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * v).cast());
        }
        if PA {
            let ahead = ap.wrapping_add(PREFETCH_K * a.ps);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(MR - 1).cast());
        }
        let mut bv = [_mm512_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = unsafe { _mm512_loadu_ps(bp.add(16 * v)) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(unsafe { *ap.add(i * xs) });
            for (x, &bj) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(ai, bj, *x);
            }
        }
        ap = ap.wrapping_add(a.ps);
        bp = bp.wrapping_add(b.ps);
    }
}

/// The AVX2+FMA kernel; constructed only by [`Avx2::detect`].
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    /// The kernel, if this CPU has AVX2 and FMA.
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

/// Rows of the AVX2 tile.
const MR256: usize = 6;

impl Tile for Avx2 {
    const MR: usize = MR256;
    const NR: usize = 16;
    const KC: usize = 512;
    // 512 KiB of packed op(b): half of a 1 MiB L2 (AVX2 machines' L2s are
    // 0.5-2 MiB).
    const B_BLOCK: usize = 128 * 1024;
    unsafe fn tile(self, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: `self` exists only if the CPU has AVX2 and FMA (`detect`);
        // the pointer contract is the caller's (see `Tile::tile`).
        unsafe {
            if a.xs == 1 {
                tile_6x16::<true>(kc, a, b, c, ldc, load)
            } else {
                tile_6x16::<false>(kc, a, b, c, ldc, load)
            }
        }
    }

    fn pack_transposed(self, dst: &mut [f32], src: &[f32], ws: usize, lanes: (usize, usize), kc: usize) {
        transposed(dst, src, ws, lanes, kc)
    }
}

/// # Safety
/// The CPU has AVX2 and FMA; operands as in [`Tile::tile`] with MR = 6,
/// NR = 16; when `UNIT`, `a.xs == 1`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16<const UNIT: bool>(kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
    let xs = if UNIT { 1 } else { a.xs };
    let mut acc = [[_mm256_setzero_ps(); 2]; MR256];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            row[0] = unsafe { _mm256_loadu_ps(c.add(i * ldc)) };
            row[1] = unsafe { _mm256_loadu_ps(c.add(i * ldc + 8)) };
        }
    }
    let (mut ap, mut bp) = (a.ptr, b.ptr);
    for _ in 0..kc {
        // A hint only (see tile_x32): 64 bytes of op(b) per K step.
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH_K * b.ps).cast());
        let (b0, b1) = unsafe { (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))) };
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm256_set1_ps(unsafe { *ap.add(i * xs) });
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
        ap = ap.wrapping_add(a.ps);
        bp = bp.wrapping_add(b.ps);
    }
    for (i, row) in acc.iter().enumerate() {
        unsafe { _mm256_storeu_ps(c.add(i * ldc), row[0]) };
        unsafe { _mm256_storeu_ps(c.add(i * ldc + 8), row[1]) };
    }
}

/// [`Tile::pack_transposed`] with 8×8 AVX transposes (the scalar pack for
/// the last `kc % 8` positions). Both x86 kernels exist only on CPUs with
/// AVX2.
fn transposed(dst: &mut [f32], src: &[f32], ws: usize, (width, r): (usize, usize), kc: usize) {
    let k8 = kc - kc % 8;
    assert!(dst.len() == kc * r && (1..=r).contains(&width) && (width - 1) * ws + kc <= src.len());
    // SAFETY: the CPU has AVX (an x86 kernel exists); the loads read
    // src[w*ws + p..][..8] for w < width, p + 8 <= k8 <= kc, and the stores
    // write dst[p*r + w0..][..min(8, r - w0)] for p < k8, both in bounds by
    // the assertion above.
    unsafe { transposed_avx(dst.as_mut_ptr(), src.as_ptr(), ws, (width, r), k8) };
    for p in k8..kc {
        for w in 0..r {
            dst[p * r + w] = if w < width { src[w * ws + p] } else { 0.0 };
        }
    }
}

/// The first `k8` (a multiple of 8) positions of [`transposed`]: 8
/// positions of every lane at a time, so each destination line is written
/// while it is in L1.
///
/// # Safety
/// The CPU has AVX; `dst` is valid for `k8 * r` writes and `src` for reads
/// at `w*ws + p` for `w < width`, `p < k8`.
#[target_feature(enable = "avx")]
unsafe fn transposed_avx(dst: *mut f32, src: *const f32, ws: usize, (width, r): (usize, usize), k8: usize) {
    for p0 in (0..k8).step_by(8) {
        for w0 in (0..r).step_by(8) {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (w, row) in rows.iter_mut().enumerate().take(width.saturating_sub(w0)) {
                *row = unsafe { _mm256_loadu_ps(src.add((w0 + w) * ws + p0)) };
            }
            let lanes = (r - w0).min(8);
            // Lane l of the mask is set (all ones) for l < lanes: the 8
            // values of MASKS from 8 - lanes (lanes is 1..=8).
            let mask = unsafe { _mm256_loadu_si256(MASKS.as_ptr().add(8 - lanes).cast()) };
            for (p, col) in transpose8(rows).into_iter().enumerate() {
                let d = unsafe { dst.add((p0 + p) * r + w0) };
                match lanes {
                    8 => unsafe { _mm256_storeu_ps(d, col) },
                    // Writes d[..lanes] only: masked-off lanes are not touched.
                    _ => unsafe { _mm256_maskstore_ps(d, mask, col) },
                }
            }
        }
    }
}

/// Eight lanes set, then eight clear: 8 values from `8 - l` are the mask
/// of the first `l` lanes.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// The transpose of an 8×8 block held as 8 rows.
#[target_feature(enable = "avx")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}
