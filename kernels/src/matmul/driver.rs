//! Packing, cache blocking and threads around a micro-kernel ([`Tile`]).
//!
//! The classic five loops (Goto/BLIS): for each block of `NC` columns and
//! each block of `KC` of K, op(b)'s `KC × NC` block is packed into panels of
//! `NR` columns (`[p][j]`, zero-padded past `n`; it stays in L2), then tasks
//! take blocks of `MC` rows (and, when rows are few, part of the columns),
//! pack their `MC × KC` of op(a) into panels of `MR` rows (`[p][i]`,
//! zero-padded past the last row) and run the micro-kernel B panel by B panel
//! (L1), A panel by A panel (L2). A tile's accumulators go through K in
//! order: the first K block starts from zero (or from `c` when accumulating),
//! each later one from the `c` the previous block stored. None of the block
//! sizes, the task split or the tile shape can change an element's fma chain.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{Trans, PAR_MIN_FLOPS};
use crate::threads;

/// A register-blocked micro-kernel computing an `MR × NR` tile of C.
pub(super) trait Tile: Copy + Send + Sync {
    /// Rows of a tile.
    const MR: usize;
    /// Columns of a tile.
    const NR: usize;
    /// K block length (cache blocking only).
    const KC: usize;
    /// Rows of C per task (a multiple of `MR`).
    const MC: usize;
    /// Columns of C per packed B block (a multiple of `NR`).
    const NC: usize;

    /// For every `i < MR`, `j < NR`: `acc = if load { c[i*ldc + j] } else
    /// { 0.0 }`, then `acc = fma(a[i*a.xs + p*a.ps], b[j + p*b.ps], acc)` for
    /// `p` in `0..kc` in order, then `c[i*ldc + j] = acc`.
    ///
    /// # Safety
    /// `a.ptr` is valid for reads at `i*a.xs + p*a.ps` and `b.ptr` at
    /// `j + p*b.ps` (`b.xs == 1`) for all `i < MR`, `j < NR`, `p < kc`; `c`
    /// is valid for reads and writes at `i*ldc + j`; no other thread touches
    /// those `c` elements during the call, and `c` overlaps neither `a` nor `b`.
    unsafe fn tile(self, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool);
}

/// Where a micro-kernel reads an operand panel: element `(x, p)` (x a row
/// of op(a) or a column of op(b) inside the panel) at `ptr[x*xs + p*ps]`.
#[derive(Clone, Copy)]
pub(super) struct Src {
    pub(super) ptr: *const f32,
    pub(super) xs: usize,
    pub(super) ps: usize,
}

/// A bounds-checked operand panel: element `(x, p)` at `data[x*xs + p*ps]`,
/// a packed panel (`xs = 1`, `ps = MR or NR`) or a panel read in place from
/// the caller's matrix.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    xs: usize,
    ps: usize,
}

impl<'a> View<'a> {
    /// A packed panel of `r` lanes.
    fn packed(data: &'a [f32], r: usize) -> Self {
        View { data, xs: 1, ps: r }
    }

    /// The kernel's pointer for a `width × kc` panel.
    ///
    /// # Panics
    /// If an element of the panel lies outside `data`.
    fn src(self, width: usize, kc: usize) -> Src {
        assert!((width - 1) * self.xs + (kc - 1) * self.ps < self.data.len(), "matmul: panel outside its buffer");
        Src { ptr: self.data.as_ptr(), xs: self.xs, ps: self.ps }
    }
}

/// The largest `MR * NR` of any [`Tile`] (size of the edge-tile buffer).
const MAX_TILE: usize = 512;

/// One validated product (see [`super::matmul`]): buffer lengths checked,
/// `m, k, n > 0`.
pub(super) struct Job<'a> {
    pub(super) a: &'a [f32],
    pub(super) ta: Trans,
    pub(super) b: &'a [f32],
    pub(super) tb: Trans,
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) accumulate: bool,
}

/// The K block and column block being computed: `pc..pc+kc`, `jc..jc+nc`.
#[derive(Clone, Copy)]
struct Panel {
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
}

/// A task's part of a [`Panel`]: rows `i0..i0+rows`, columns `j0..j0+cols`
/// (absolute; `j0 - jc` is a multiple of `NR`).
#[derive(Clone, Copy)]
struct Block {
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
}

/// C's base pointer, shared by tasks that write disjoint [`Block`]s.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: tasks only write through the pointer inside their own Block, the
// blocks of one K block partition C and K blocks run one after another, and
// `run` holds the `&mut [f32]` it came from (so nothing else reads or writes
// C) until every task has finished.
unsafe impl Send for SharedC {}
// SAFETY: as for Send: concurrent users touch disjoint elements.
unsafe impl Sync for SharedC {}

/// Runs `job` into `c` (`m*n` elements) with micro-kernel `kern`, on the
/// crate's thread pool when the product is big enough.
pub(super) fn run<K: Tile>(kern: K, job: &Job<'_>, c: &mut [f32]) {
    debug_assert!(K::MR * K::NR <= MAX_TILE && K::MC % K::MR == 0 && K::NC % K::NR == 0);
    debug_assert!(job.a.len() == job.m * job.k && job.b.len() == job.k * job.n && c.len() == job.m * job.n);
    let (m, k, n) = (job.m, job.k, job.n);
    let (pool, nthreads) = threads::current();
    let flops = m.saturating_mul(n).saturating_mul(k);
    let parallel = nthreads > 1 && flops >= PAR_MIN_FLOPS;
    // Small products read whole panels in place (packing would cost as
    // much as the arithmetic); big ones pack, for the caches.
    let direct = flops < PAR_MIN_FLOPS;
    let cp = SharedC(c.as_mut_ptr());
    let bp_len = K::KC.min(k) * K::NC.min(n.div_ceil(K::NR) * K::NR);
    with_scratch(&B_SCRATCH, bp_len, |bp| {
        let mut all = || {
            for jc in (0..n).step_by(K::NC) {
                let nc = K::NC.min(n - jc);
                let blocks = blocks::<K>(m, jc, nc, if parallel { nthreads } else { 1 });
                for pc in (0..k).step_by(K::KC) {
                    let at = Panel { pc, kc: K::KC.min(k - pc), jc, nc };
                    let bp = &mut bp[..at.kc * nc.div_ceil(K::NR) * K::NR];
                    let direct_b = direct && job.tb == Trans::No;
                    if !direct_b {
                        pack_b::<K>(job, at, bp, parallel);
                    }
                    let bv = BPanels { bp: &*bp, direct: direct_b };
                    let task = |blk: &Block| block::<K>(kern, job, at, bv, cp, *blk, direct);
                    if parallel {
                        blocks.par_iter().for_each(task);
                    } else {
                        blocks.iter().for_each(task);
                    }
                }
            }
        };
        if parallel {
            pool.install(all)
        } else {
            all()
        }
    });
}

/// Splits columns `jc..jc+nc` of C into task blocks of `MC` rows; with
/// several threads, also into column blocks (whole `NR` panels) until there
/// are about four per thread.
fn blocks<K: Tile>(m: usize, jc: usize, nc: usize, nthreads: usize) -> Vec<Block> {
    let row_blocks = m.div_ceil(K::MC);
    let col_splits = (4 * nthreads).div_ceil(row_blocks).max(1);
    let cols = nc.div_ceil(col_splits).div_ceil(K::NR).max(4) * K::NR;
    let mut out = Vec::with_capacity(row_blocks * nc.div_ceil(cols));
    for i0 in (0..m).step_by(K::MC) {
        for j0 in (jc..jc + nc).step_by(cols) {
            out.push(Block { i0, rows: K::MC.min(m - i0), j0, cols: cols.min(jc + nc - j0) });
        }
    }
    out
}

/// op(b)'s panels of one K block: packed in `bp`, or (when `direct`, for
/// `Trans::No`) read in place, except a partial last panel.
#[derive(Clone, Copy)]
struct BPanels<'a> {
    bp: &'a [f32],
    direct: bool,
}

/// Computes one block of C for one K block: packs its rows of op(a) (in
/// `direct` mode only a partial last panel), then walks B panels and A
/// panels, one tile each.
fn block<K: Tile>(kern: K, job: &Job<'_>, at: Panel, bv: BPanels<'_>, cp: SharedC, blk: Block, direct: bool) {
    let kc = at.kc;
    let load = at.pc > 0 || job.accumulate;
    let a_len = if direct { kc * K::MR } else { blk.rows.div_ceil(K::MR) * K::MR * kc };
    with_scratch(&A_SCRATCH, a_len, |ap| {
        let edge_a = blk.i0 + blk.rows - blk.rows % K::MR;
        if !direct {
            pack_a::<K>(job, at, blk, ap);
        } else if !blk.rows.is_multiple_of(K::MR) {
            pack_a::<K>(job, at, Block { i0: edge_a, rows: blk.rows % K::MR, ..blk }, ap);
        }
        // In direct mode a partial last B panel is still packed (zero-padded).
        let mut edge_b = Vec::new();
        if bv.direct && !job.n.is_multiple_of(K::NR) && blk.j0 + blk.cols == job.n {
            edge_b = vec![0.0f32; kc * K::NR];
            let q0 = (job.n - job.n % K::NR - at.jc) / K::NR;
            pack_b_group::<K>(job.b, (1, job.n), at, q0, &mut edge_b);
        }
        for j in (blk.j0..blk.j0 + blk.cols).step_by(K::NR) {
            let cols = K::NR.min(blk.j0 + blk.cols - j);
            let b = match (bv.direct, cols == K::NR) {
                (true, true) => View { data: &job.b[at.pc * job.n + j..], xs: 1, ps: job.n },
                (true, false) => View::packed(&edge_b, K::NR),
                (false, _) => View::packed(&bv.bp[(j - at.jc) * kc..][..kc * K::NR], K::NR),
            };
            for i in (blk.i0..blk.i0 + blk.rows).step_by(K::MR) {
                let rows = K::MR.min(blk.i0 + blk.rows - i);
                let a = match (direct, rows == K::MR) {
                    (true, true) => a_in_place(job, at, i),
                    (true, false) => View::packed(&ap[..kc * K::MR], K::MR),
                    (false, _) => View::packed(&ap[(i - blk.i0) * kc..][..kc * K::MR], K::MR),
                };
                tile_at(kern, kc, a, b, cp, job.n, (i, j, rows, cols), load);
            }
        }
    });
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

/// One tile of C at `(i, j)` with `rows × cols` real elements (C is `ldc`
/// wide); a partial tile runs the full kernel on a copy and keeps the real
/// lanes, which computes each real element's chain exactly as a full tile.
#[allow(clippy::too_many_arguments)]
fn tile_at<K: Tile>(kern: K, kc: usize, a: View<'_>, b: View<'_>, cp: SharedC, ldc: usize, at: Tile4, load: bool) {
    let (i, j, rows, cols) = at;
    let (a, b) = (a.src(K::MR, kc), b.src(K::NR, kc));
    debug_assert!(b.xs == 1);
    // SAFETY: (i, j) is inside this task's Block and rows/cols stop at its
    // edge, so every C element used is inside C (`i*ldc + j + r*ldc + s` for
    // r < rows, s < cols) and owned by this task (see SharedC). `View::src`
    // checked that every element the kernel reads of `a` and `b` lies in
    // their slices, which are the caller's inputs or the packed buffers,
    // never C.
    unsafe {
        let c = cp.0.add(i * ldc + j);
        if rows == K::MR && cols == K::NR {
            return kern.tile(kc, a, b, c, ldc, load);
        }
        let mut tmp = [0.0f32; MAX_TILE];
        if load {
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), tmp.as_mut_ptr().add(r * K::NR), cols);
            }
        }
        kern.tile(kc, a, b, tmp.as_mut_ptr(), K::NR, load);
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * K::NR), c.add(r * ldc), cols);
        }
    }
}

/// `(i, j, rows, cols)` of a tile.
type Tile4 = (usize, usize, usize, usize);

/// Packs op(b)'s block `at` into `bp`: panel `q` (columns `jc + q*NR..`)
/// at `q*kc*NR`, laid out `[p][j]`. Panels are packed in parallel when
/// `parallel` (inside the pool).
fn pack_b<K: Tile>(job: &Job<'_>, at: Panel, bp: &mut [f32], parallel: bool) {
    let (k, n) = (job.k, job.n);
    // op(b)[p, j] = b[j*ws + p*ks].
    let (ws, ks) = match job.tb {
        Trans::No => (1, n),
        Trans::Yes => (k, 1),
    };
    // Groups of GROUP panels: for Trans::No each source row is read as one
    // run of GROUP*NR floats instead of NR-float pieces 4 KiB apart.
    const GROUP: usize = 8;
    let group = |(g, dst): (usize, &mut [f32])| pack_b_group::<K>(job.b, (ws, ks), at, g * GROUP, dst);
    if parallel {
        bp.par_chunks_mut(GROUP * at.kc * K::NR).enumerate().for_each(group);
    } else {
        bp.chunks_mut(GROUP * at.kc * K::NR).enumerate().for_each(group);
    }
}

/// Packs the B panels `q0..` that `dst` holds (whole panels of `kc*NR`).
fn pack_b_group<K: Tile>(b: &[f32], (ws, ks): (usize, usize), at: Panel, q0: usize, dst: &mut [f32]) {
    let panel_len = at.kc * K::NR;
    let widths = |q: usize| K::NR.min(at.nc - (q0 + q) * K::NR);
    if ws != 1 {
        for (q, d) in dst.chunks_mut(panel_len).enumerate() {
            let j0 = at.jc + (q0 + q) * K::NR;
            pack_panel(d, b, j0 * ws + at.pc * ks, (ws, ks), (widths(q), K::NR), at.kc);
        }
        return;
    }
    // Row-major op(b): walk source rows, each one contiguous run over the
    // group's columns.
    let panels = dst.len() / panel_len;
    let j0 = at.jc + q0 * K::NR;
    for p in 0..at.kc {
        let row = &b[(at.pc + p) * ks + j0..];
        for q in 0..panels {
            let w = widths(q);
            let d = &mut dst[q * panel_len + p * K::NR..][..K::NR];
            d[..w].copy_from_slice(&row[q * K::NR..][..w]);
            d[w..].fill(0.0);
        }
    }
}

/// Packs op(a)'s rows `blk.i0..blk.i0+blk.rows`, K block `at`, into `ap`:
/// panel `q` at `q*kc*MR`, laid out `[p][i]`.
fn pack_a<K: Tile>(job: &Job<'_>, at: Panel, blk: Block, ap: &mut [f32]) {
    let (m, k) = (job.m, job.k);
    // op(a)[i, p] = a[i*ws + p*ks].
    let (ws, ks) = match job.ta {
        Trans::No => (k, 1),
        Trans::Yes => (1, m),
    };
    for (q, dst) in ap.chunks_mut(at.kc * K::MR).enumerate() {
        let i0 = blk.i0 + q * K::MR;
        let width = K::MR.min(blk.i0 + blk.rows - i0);
        pack_panel(dst, job.a, i0 * ws + at.pc * ks, (ws, ks), (width, K::MR), at.kc);
    }
}

/// `dst[p*r + w] = src[base + w*ws + p*ks]` for `w < width`, `0.0` for
/// `width <= w < r`, `p < k`. One of the strides is 1 (operands are row-major).
fn pack_panel(
    dst: &mut [f32],
    src: &[f32],
    base: usize,
    (ws, ks): (usize, usize),
    (width, r): (usize, usize),
    k: usize,
) {
    debug_assert!(dst.len() == k * r && width <= r && (ws == 1 || ks == 1));
    if width < r {
        dst.fill(0.0);
    }
    if ws == 1 {
        for (p, row) in dst.chunks_exact_mut(r).enumerate() {
            row[..width].copy_from_slice(&src[base + p * ks..][..width]);
        }
        return;
    }
    // ks == 1: each w is a contiguous run over p. Transpose 8×8 blocks
    // through a small array (the compiler turns that into vector shuffles),
    // then the ragged w and p edges one element at a time. Eight runs at a
    // time, each read start to end: whole cache lines, eight streams (rows
    // 4 KiB apart share an L1 set, so more at once would evict each other).
    const B: usize = 8;
    let (wf, pf) = (width - width % B, k - k % B);
    for w0 in (0..wf).step_by(B) {
        for p0 in (0..pf).step_by(B) {
            let mut blk = [[0.0f32; B]; B];
            for (w, row) in blk.iter_mut().enumerate() {
                row.copy_from_slice(&src[base + (w0 + w) * ws + p0..][..B]);
            }
            for (p, out) in dst[p0 * r..].chunks_exact_mut(r).take(B).enumerate() {
                for (w, o) in out[w0..w0 + B].iter_mut().enumerate() {
                    *o = blk[w][p];
                }
            }
        }
    }
    for w in 0..width {
        let run = &src[base + w * ws..][..k];
        let ps = if w < wf { pf } else { 0 };
        for (p, &v) in run.iter().enumerate().skip(ps) {
            dst[p * r + w] = v;
        }
    }
}

thread_local! {
    /// Packed op(b) of the product running on this thread (reused between calls).
    static B_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed op(a) rows of the block running on this thread.
    static A_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of a 64-byte-aligned buffer taken from `slot`
/// (taken out while in use, so a nested call just allocates its own).
/// Contents on entry are unspecified; packing overwrites all of it.
fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    const ALIGN_F32: usize = 16;
    let mut v = slot.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if v.len() < len + ALIGN_F32 {
        v = vec![0.0; len + ALIGN_F32];
    }
    let off = v.as_ptr().align_offset(ALIGN_F32 * 4).min(ALIGN_F32);
    let out = f(&mut v[off..off + len]);
    slot.with(|s| *s.borrow_mut() = v);
    out
}
