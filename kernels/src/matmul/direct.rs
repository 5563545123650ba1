//! Small products (fewer than [`super::PAR_MIN_FLOPS`] multiply-adds), on
//! the calling thread: the kernel reads op(a)'s full row panels in place
//! and, for `Trans::No`, op(b)'s full column panels too; only partial edge
//! panels are packed (zero-padded), and op(b) when it is transposed. Packing
//! would cost as much as the arithmetic here. The chains are those of the
//! packed path: K blocks carry the accumulator through `c`.

use super::driver::{self, Job, Panel, SharedC, Tile, View, A_SCRATCH, B_SCRATCH};
use super::pack::{self, Strided};
use super::Trans;

/// Runs `job` into `c` (see [`driver::run`]).
pub(super) fn run<K: Tile>(kern: K, job: &Job<'_>, c: &mut [f32]) {
    let (k, n) = (job.k, job.n);
    let kc = driver::k_block(k, K::KC);
    let padded_n = n.div_ceil(K::NR) * K::NR;
    let cp = SharedC(c.as_mut_ptr());
    let in_place_b = job.tb == Trans::No;
    let bp_len = if in_place_b { kc * K::NR } else { kc * padded_n };
    let both = |bp: &mut [f32], edge_a: &mut [f32]| {
        for pc in (0..k).step_by(kc) {
            let at = Panel { pc, kc: kc.min(k - pc), jc: 0, nc: n };
            let bp = &mut bp[..if in_place_b { at.kc * K::NR } else { at.kc * padded_n }];
            if in_place_b {
                pack_b_edge(kern, job, at, bp);
            } else {
                driver::pack_b(kern, job, at, bp, false);
            }
            k_block(kern, job, at, bp, &mut edge_a[..at.kc * K::MR], cp);
        }
    };
    driver::with_scratch(&B_SCRATCH, bp_len, |bp| driver::with_scratch(&A_SCRATCH, kc * K::MR, |ea| both(bp, ea)));
}

/// The last, partial column panel of op(b) (`Trans::No`) for block `at`,
/// packed into `bp` (`kc*NR`); nothing when `n` is a multiple of `NR`.
fn pack_b_edge<K: Tile>(kern: K, job: &Job<'_>, at: Panel, bp: &mut [f32]) {
    let (n, edge) = (job.n, job.n % K::NR);
    if edge != 0 {
        let s = Strided { base: (n - edge) + at.pc * n, ws: 1, ps: n };
        pack::panels(kern, bp, job.b, s, (edge, K::NR), at.kc);
    }
}

/// All tiles of one K block: column panels outer (in L1), row panels inner;
/// a partial last row panel is packed into `edge_a` (`kc*MR`).
fn k_block<K: Tile>(kern: K, job: &Job<'_>, at: Panel, bp: &[f32], edge_a: &mut [f32], cp: SharedC) {
    let (m, n, kc) = (job.m, job.n, at.kc);
    let load = at.pc > 0 || job.accumulate;
    if !m.is_multiple_of(K::MR) {
        let (ws, ps) = job.a_strides();
        let i0 = m - m % K::MR;
        pack::panels(kern, edge_a, job.a, Strided { base: i0 * ws + at.pc * ps, ws, ps }, (m % K::MR, K::MR), kc);
    }
    for j in (0..n).step_by(K::NR) {
        let cols = K::NR.min(n - j);
        let b = match (job.tb, cols == K::NR) {
            (Trans::No, true) => View { data: &job.b[at.pc * n + j..], xs: 1, ps: n },
            (Trans::No, false) => View::packed(bp, K::NR),
            (Trans::Yes, _) => View::packed(&bp[j * kc..][..kc * K::NR], K::NR),
        };
        for i in (0..m).step_by(K::MR) {
            let rows = K::MR.min(m - i);
            let a = if rows == K::MR { a_in_place(job, at, i) } else { View::packed(edge_a, K::MR) };
            driver::tile_at(kern, kc, a, b, cp, n, (i, j, rows, cols), load);
        }
    }
}

/// The MR rows of op(a) from row `i`, K block `at`, read in place.
fn a_in_place<'a>(job: &Job<'a>, at: Panel, i: usize) -> View<'a> {
    match job.ta {
        // op(a)[i, p] = a[i*k + p]
        Trans::No => View { data: &job.a[i * job.k + at.pc..], xs: job.k, ps: 1 },
        // op(a)[i, p] = a[p*m + i]
        Trans::Yes => View { data: &job.a[at.pc * job.m + i..], xs: 1, ps: job.m },
    }
}
