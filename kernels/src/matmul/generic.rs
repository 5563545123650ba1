//! The portable micro-kernel: scalar `f32::mul_add`, an exact fused
//! multiply-add (one rounding) in hardware where the build targets FMA, in
//! software (the platform's `fmaf`) otherwise: the same bits, much slower.

use super::driver::{Src, Tile};

/// 4×8 tiles of scalar fused multiply-adds.
#[derive(Clone, Copy)]
pub(super) struct Scalar;

const MR: usize = 4;
const NR: usize = 8;

impl Tile for Scalar {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const B_BLOCK: usize = 64 * 1024;
    unsafe fn tile(self, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        let mut acc = [[0.0f32; NR]; MR];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: the caller guarantees c[i*ldc..i*ldc+NR] is valid.
                row.copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(i * ldc), NR) });
            }
        }
        for p in 0..kc {
            // SAFETY: the caller guarantees b[j + p*b.ps] (j < NR) and
            // a[i*a.xs + p*a.ps] (i < MR) are valid for reads.
            let bp = unsafe { std::slice::from_raw_parts(b.ptr.add(p * b.ps), NR) };
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = unsafe { *a.ptr.add(i * a.xs + p * a.ps) };
                for (acc, &bj) in row.iter_mut().zip(bp) {
                    *acc = ai.mul_add(bj, *acc);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: as above, and no one else touches these elements.
            unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) }.copy_from_slice(row);
        }
    }
}
