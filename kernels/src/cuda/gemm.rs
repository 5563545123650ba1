//! Row-major `c = op(a)·op(b)` as one column-major (cuBLAS) `sgemm`.
//!
//! A row-major `r × c` matrix is the column-major `c × r` matrix of its
//! transpose, so row-major `C = op(A)·op(B)` (m×n) is column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ` (n×m, leading dimension n): cuBLAS gets `b` as its
//! first operand and `a` as its second, each transposed exactly when the
//! caller asked for it. Kept free of cudarc so the mapping is unit-tested on
//! machines without a GPU.

use crate::matmul::Trans;

/// One column-major `sgemm`: `C(M×N) = opA(A)(M×K) · opB(B)(K×N)`, with
/// `A = b`, `B = a` of the row-major product (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColMajorGemm {
    /// Whether cuBLAS transposes its first operand (the row-major `b`).
    pub(crate) trans_first: bool,
    /// Whether cuBLAS transposes its second operand (the row-major `a`).
    pub(crate) trans_second: bool,
    /// cuBLAS `m` (the row-major `n`).
    pub(crate) m: i32,
    /// cuBLAS `n` (the row-major `m`).
    pub(crate) n: i32,
    /// cuBLAS `k` (the row-major `k`).
    pub(crate) k: i32,
    /// Leading dimension of the first operand as stored.
    pub(crate) ld_first: i32,
    /// Leading dimension of the second operand as stored.
    pub(crate) ld_second: i32,
    /// Leading dimension of `C` (the row-major `n`).
    pub(crate) ldc: i32,
}

impl ColMajorGemm {
    /// The `sgemm` for row-major `c[m×n] = op(a)[m×k] · op(b)[k×n]`.
    /// Caller guarantees `m, k, n` fit in `i32` (buffer lengths do).
    pub(crate) fn for_row_major(ta: Trans, tb: Trans, m: usize, k: usize, n: usize) -> Self {
        let (m, k, n) = (m as i32, k as i32, n as i32);
        // `b` stored row-major is k×n (Trans::No) or n×k (Trans::Yes):
        // column-major that is op(b)ᵀ with ld n, or op(b) with ld k.
        let (trans_first, ld_first) = match tb {
            Trans::No => (false, n),
            Trans::Yes => (true, k),
        };
        // `a` stored row-major is m×k (Trans::No) or k×m (Trans::Yes).
        let (trans_second, ld_second) = match ta {
            Trans::No => (false, k),
            Trans::Yes => (true, m),
        };
        ColMajorGemm { trans_first, trans_second, m: n, n: m, k, ld_first, ld_second, ldc: n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element (i, j) of a column-major matrix, transposed or not.
    fn at(x: &[f32], ld: i32, trans: bool, i: i32, j: i32) -> f32 {
        let (r, c) = if trans { (j, i) } else { (i, j) };
        x[(r + c * ld) as usize]
    }

    /// Reference column-major sgemm (alpha 1, beta 0), as cuBLAS defines it.
    fn col_major_sgemm(g: &ColMajorGemm, first: &[f32], second: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0f32; (g.ldc * g.n) as usize];
        for j in 0..g.n {
            for i in 0..g.m {
                let mut s = 0.0f64;
                for p in 0..g.k {
                    let x = at(first, g.ld_first, g.trans_first, i, p) as f64;
                    s += x * at(second, g.ld_second, g.trans_second, p, j) as f64;
                }
                c[(i + j * g.ldc) as usize] = s as f32;
            }
        }
        c
    }

    #[test]
    fn swapped_operands_compute_the_row_major_product() {
        let (m, k, n) = (3, 4, 5);
        let val = |i: usize| (i as f32 * 0.37).sin();
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                let a: Vec<f32> = (0..m * k).map(val).collect();
                let b: Vec<f32> = (0..k * n).map(|i| val(i + 100)).collect();
                let mut want = vec![0.0f32; m * n];
                crate::matmul(&mut want, &a, ta, &b, tb, m, k, n, false);
                let g = ColMajorGemm::for_row_major(ta, tb, m, k, n);
                let got = col_major_sgemm(&g, &b, &a);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{ta:?} {tb:?}: {got:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn leading_dimensions_cover_the_stored_operands() {
        let g = ColMajorGemm::for_row_major(Trans::Yes, Trans::No, 2, 3, 4);
        assert_eq!((g.m, g.n, g.k, g.ldc), (4, 2, 3, 4));
        assert_eq!((g.trans_first, g.ld_first, g.trans_second, g.ld_second), (false, 4, true, 2));
    }
}
