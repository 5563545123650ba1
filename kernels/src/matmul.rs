//! Matrix products on row-major `f32` buffers, via `gemm` with strides
//! (transposes are expressed as strides, never copied).
//!
//! `gemm` gives bit-identical results for any thread count on one machine;
//! its K-blocking depends on the detected cache sizes and its micro-kernel on
//! the instruction set, so bits can differ between machine types.

use gemm::Parallelism;

use crate::threads;

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Use the operand as stored.
    No,
    /// Use the transpose of the stored operand.
    Yes,
}

/// Below this many multiply-adds (m·n·k) a product runs on the calling
/// thread: rayon's fork/join costs more than it saves.
pub const PAR_MIN_FLOPS: usize = 1 << 21;

/// Row and column strides (in elements) of `op(x)` where `x` is stored
/// row-major as `rows × cols` of `op(x)` when not transposed.
fn strides(t: Trans, rows: usize, cols: usize) -> (isize, isize) {
    match t {
        Trans::No => (cols as isize, 1),
        Trans::Yes => (1, rows as isize),
    }
}

/// c\[m×n\] = op(a)·op(b) when `!accumulate`, c += op(a)·op(b) when `accumulate`.
///
/// op(a) is m×k: `a` is stored row-major m×k for `Trans::No`, k×m for
/// `Trans::Yes` (we use its transpose). op(b) is k×n: `b` is row-major k×n
/// for `Trans::No`, n×k for `Trans::Yes`.
/// `k == 0` gives zeros (or leaves `c` unchanged when accumulating);
/// `m == 0` or `n == 0` is a no-op.
///
/// # Panics
/// If `a.len() != m*k`, `b.len() != k*n` or `c.len() != m*n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    check_lengths(c, a, b, m, k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let op = Gemm { m, k, n, a_strides: strides(ta, m, k), b_strides: strides(tb, k, n), accumulate };
    let (pool, nthreads) = threads::current();
    if nthreads > 1 && m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_FLOPS {
        pool.install(|| op.run(c, a, b, Parallelism::Rayon(nthreads)));
    } else {
        op.run(c, a, b, Parallelism::None);
    }
}

/// Asserts the buffer lengths of [`matmul`] (with overflow checks).
fn check_lengths(c: &[f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert_eq!(a.len(), m.checked_mul(k).expect("m*k overflows"), "matmul: a.len() != m*k");
    assert_eq!(b.len(), k.checked_mul(n).expect("k*n overflows"), "matmul: b.len() != k*n");
    assert_eq!(c.len(), m.checked_mul(n).expect("m*n overflows"), "matmul: c.len() != m*n");
}

/// A validated product: `m·k·n` buffers, `(row, col)` strides of op(a), op(b).
struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    a_strides: (isize, isize),
    b_strides: (isize, isize),
    accumulate: bool,
}

impl Gemm {
    /// Calls gemm. Caller guarantees `a.len() == m*k`, `b.len() == k*n`,
    /// `c.len() == m*n` and `m, n, k > 0`.
    fn run(&self, c: &mut [f32], a: &[f32], b: &[f32], par: Parallelism) {
        let Gemm { m, k, n, .. } = *self;
        debug_assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
        let ((a_rs, a_cs), (b_rs, b_cs)) = (self.a_strides, self.b_strides);
        // SAFETY: `matmul` asserted `a` holds m*k elements, `b` k*n and `c`
        // m*n. With strides from `strides`, every element gemm touches is at
        // `i*rs + j*cs` for (i, j) inside op(x)'s shape, which is below the
        // stored buffer's length. `c` is exclusively borrowed and cannot
        // alias `a` or `b` (shared borrows), so gemm's writes race with
        // nothing. gemm computes dst = alpha*dst + beta*lhs*rhs and never
        // reads dst when read_dst == false.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                self.accumulate,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                if self.accumulate { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    }
}
