//! Matrix products on row-major `f32` buffers whose bits do not depend on
//! the machine.
//!
//! # The definition
//!
//! Every output element is one fixed chain of fused multiply-adds over
//! `p = 0, 1, …, k-1` in order:
//!
//! ```text
//! acc = if accumulate { c[i,j] } else { 0.0 };
//! for p in 0..k { acc = fma(op(a)[i,p], op(b)[p,j], acc) }
//! c[i,j] = acc
//! ```
//!
//! (`fma` rounds once, as IEEE 754 `fusedMultiplyAdd`.) So `accumulate`
//! means "start the chain from `c`", not "add the product to `c` at the
//! end": `c + (a·b)` rounded separately would give other bits.
//!
//! # Why that makes the bits machine-independent
//!
//! The kernels compute exactly that chain on every path ([`crate::isa`]):
//! a vector FMA is `lanes` independent scalar FMAs, so the vector width does
//! not matter; the K dimension is blocked for the caches, but the accumulator
//! is carried from one K block to the next (stored to `c` and reloaded, which
//! is exact), never summed from per-block partial products; ragged edges run
//! the full-width tile on zero-padded copies and keep only the real lanes;
//! threads split the M×N tiles only, never K (a tile's K blocks run
//! in order on one thread). Blocking, cache sizes, thread
//! count and instruction set change the speed, never an element's chain.
//! The one caveat is NaN payloads: which NaN comes out of a chain that meets
//! several may differ between hardware and software FMA (every NaN stays a NaN).
//!
//! # Layout
//!
//! `mod.rs` (this API), `driver` (the packed path for big products:
//! transposed op(a) packed once per call, row-major op(a) read in place,
//! op(b) in L2-sized blocks packed by the thread that uses them), `split`
//! (one task per thread: C's row panels or column panels in even shares,
//! each through all of K), `direct` (small products, operands read in place), `pack`
//! (zero-padded panels), and one micro-kernel per path: `generic`
//! (`f32::mul_add`) and `x86` (AVX2+FMA 6×16; AVX-512F 6×64, with 2- and
//! 4-row kernels for a short last row panel).

mod direct;
mod driver;
mod generic;
mod pack;
mod split;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::isa::{self, Isa};

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

/// c\[m×n\] = op(a)·op(b) when `!accumulate`; when `accumulate`, each
/// element's fma chain starts from the old `c` (see the module docs).
///
/// op(a) is m×k: `a` is stored row-major m×k for `Trans::No`, k×m for
/// `Trans::Yes` (we use its transpose). op(b) is k×n: `b` is row-major k×n
/// for `Trans::No`, n×k for `Trans::Yes`.
/// `k == 0` gives zeros (or leaves `c` unchanged when accumulating);
/// `m == 0` or `n == 0` is a no-op. Runs on [`isa::current()`].
///
/// # Panics
/// If `a.len() != m*k`, `b.len() != k*n` or `c.len() != m*n`; if
/// `BATON_KERNEL_ISA` is invalid and no [`isa::with_isa`] override is active.
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
    let job = driver::Job { a, ta, b, tb, m, k, n, accumulate };
    dispatch(isa::current(), &job, c);
}

/// Runs `job` on the micro-kernel of `isa`.
fn dispatch(isa: Isa, job: &driver::Job<'_>, c: &mut [f32]) {
    const LACKS: &str = "isa::current() only returns paths the CPU has";
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => driver::run(x86::Avx512::detect().expect(LACKS), job, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => driver::run(x86::Avx2::detect().expect(LACKS), job, c),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => unreachable!("{LACKS}"),
        Isa::Generic => driver::run(generic::Scalar, job, c),
    }
}

/// Asserts the buffer lengths of [`matmul`] (with overflow checks).
fn check_lengths(c: &[f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert_eq!(a.len(), m.checked_mul(k).expect("m*k overflows"), "matmul: a.len() != m*k");
    assert_eq!(b.len(), k.checked_mul(n).expect("k*n overflows"), "matmul: b.len() != k*n");
    assert_eq!(c.len(), m.checked_mul(n).expect("m*n overflows"), "matmul: c.len() != m*n");
}
