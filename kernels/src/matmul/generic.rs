//! The portable micro-kernel: scalar `f32::mul_add`, an exact fused
//! multiply-add (one rounding) in hardware where the build targets FMA, in
//! software (the platform's `fmaf`) otherwise: the same bits, much slower.

use super::driver::Tile;

/// 4×8 tiles of scalar fused multiply-adds.
#[derive(Clone, Copy)]
pub(super) struct Scalar;

const MR: usize = 4;
const NR: usize = 8;

impl Tile for Scalar {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const MC: usize = 64;
    const NC: usize = 1024;

    unsafe fn tile(self, kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: the caller guarantees `a` holds kc*MR and `b` kc*NR
        // readable elements, and `c` the MR rows of NR elements at stride ldc.
        let (a, b) = unsafe { (std::slice::from_raw_parts(a, kc * MR), std::slice::from_raw_parts(b, kc * NR)) };
        let mut acc = [[0.0f32; NR]; MR];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: as above; row i of the tile is c[i*ldc..i*ldc+NR].
                row.copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(i * ldc), NR) });
            }
        }
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
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
