//! The x86-64 micro-kernels: AVX-512F (12×32 tiles, 24 `zmm` accumulators)
//! and AVX2+FMA (6×16 tiles, 12 `ymm` accumulators). Each lane of a vector
//! FMA is one scalar fused multiply-add, so both compute exactly the chain of
//! [`Tile::tile`], lane by lane, as the generic kernel does.
//!
//! A kernel value exists only once `detect` has seen the CPU features it
//! needs, which is what makes calling its `#[target_feature]` code sound.

use std::arch::x86_64::*;

use super::driver::{Src, Tile};

/// The AVX-512F kernel; constructed only by [`Avx512::detect`].
#[derive(Clone, Copy)]
pub(super) struct Avx512(());

impl Avx512 {
    /// The kernel, if this CPU has AVX-512F.
    pub(super) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

impl Tile for Avx512 {
    const MR: usize = 8;
    const NR: usize = 32;
    const KC: usize = 256;
    const MC: usize = 128;
    const NC: usize = 1024;

    unsafe fn tile(self, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: `self` exists only if the CPU has AVX-512F (`detect`); the
        // pointer contract is the caller's (see `Tile::tile`).
        unsafe { tile_12x32(kc, a, b, c, ldc, load) }
    }
}

/// # Safety
/// The CPU has AVX-512F; operands as in [`Tile::tile`] with MR = 12, NR = 32.
#[target_feature(enable = "avx512f")]
unsafe fn tile_12x32(kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
    // One base pointer per row and one running offset per operand: no
    // address chain between the rows' loads.
    let rows: [*const f32; 8] = std::array::from_fn(|i| a.ptr.wrapping_add(i * a.xs));
    let (mut ao, mut bo) = (0usize, 0usize);
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            row[0] = unsafe { _mm512_loadu_ps(c.add(i * ldc)) };
            row[1] = unsafe { _mm512_loadu_ps(c.add(i * ldc + 16)) };
        }
    }
    for _ in 0..kc {
        let (b0, b1) = unsafe { (_mm512_loadu_ps(b.ptr.add(bo)), _mm512_loadu_ps(b.ptr.add(bo + 16))) };
        for (row, r) in acc.iter_mut().zip(rows) {
            let ai = _mm512_set1_ps(unsafe { *r.add(ao) });
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
        ao += a.ps;
        bo += b.ps;
    }
    for (i, row) in acc.iter().enumerate() {
        unsafe { _mm512_storeu_ps(c.add(i * ldc), row[0]) };
        unsafe { _mm512_storeu_ps(c.add(i * ldc + 16), row[1]) };
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

impl Tile for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    const KC: usize = 256;
    const MC: usize = 96;
    const NC: usize = 1024;

    unsafe fn tile(self, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: `self` exists only if the CPU has AVX2 and FMA (`detect`);
        // the pointer contract is the caller's (see `Tile::tile`).
        unsafe { tile_6x16(kc, a, b, c, ldc, load) }
    }
}

/// # Safety
/// The CPU has AVX2 and FMA; operands as in [`Tile::tile`] with MR = 6, NR = 16.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16(kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
    // One base pointer per row and one running offset per operand: no
    // address chain between the rows' loads.
    let rows: [*const f32; 6] = std::array::from_fn(|i| a.ptr.wrapping_add(i * a.xs));
    let (mut ao, mut bo) = (0usize, 0usize);
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            row[0] = unsafe { _mm256_loadu_ps(c.add(i * ldc)) };
            row[1] = unsafe { _mm256_loadu_ps(c.add(i * ldc + 8)) };
        }
    }
    for _ in 0..kc {
        let (b0, b1) = unsafe { (_mm256_loadu_ps(b.ptr.add(bo)), _mm256_loadu_ps(b.ptr.add(bo + 8))) };
        for (row, r) in acc.iter_mut().zip(rows) {
            let ai = _mm256_set1_ps(unsafe { *r.add(ao) });
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
        ao += a.ps;
        bo += b.ps;
    }
    for (i, row) in acc.iter().enumerate() {
        unsafe { _mm256_storeu_ps(c.add(i * ldc), row[0]) };
        unsafe { _mm256_storeu_ps(c.add(i * ldc + 8), row[1]) };
    }
}
