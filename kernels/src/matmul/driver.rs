//! Packing, cache blocking and threads around a micro-kernel ([`Tile`]).
//!
//! Products of at least [`PAR_MIN_FLOPS`] multiply-adds (the packed path):
//! transposed op(a) is packed once per call into row panels of `MR` rows
//! over all of K (`[p][i]`, zero-padded past the last row); row-major
//! op(a) is not packed up front: its full row panels are read in place
//! by a kernel with [`Tile::A_IN_PLACE`] (few rows, AVX-512); for other
//! kernels a block with at least [`REPACK_MIN_PANELS`] column panels
//! repacks each row panel's K block into a small buffer just before its
//! tiles (it stays in L1), a narrower one reads the row panel in place
//! (row-major op(a) is packed whole instead when a task has more than two
//! column blocks); a partial last row panel is packed once. C is cut into one task per thread (rows or
//! columns split, see [`super::split`]), and each task runs all of K for
//! its tiles on one thread, so a call forks and joins once:
//! for each block of its columns and each K block in order, it packs
//! op(b)'s `kc × nc` block into panels of `NR` columns (`[p][j]`,
//! zero-padded past `n`; sized to stay in L2) into its thread's buffer,
//! then walks its row panels: each row panel's `MR × kc` slice stays in L1
//! while the tile walks the block's column panels. Smaller products read
//! the operands in place ([`super::direct`]). The packing buffers are
//! thread-local and kept between calls (the calling thread keeps about
//! `m·k` floats of its largest product with transposed op(a), each pool
//! thread up to `B_BLOCK + KC·MR`).
//!
//! A tile's accumulators go through K in order: the first K block starts
//! from zero (or from `c` when accumulating), each later one from the `c`
//! the previous block stored. None of the block sizes, the task split or
//! the tile shape can change an element's fma chain.

use std::cell::RefCell;

use rayon::prelude::*;

use super::pack::{self, Strided};
use super::split::{self, Task};
use super::{direct, Trans, PAR_MIN_FLOPS};
use crate::threads;

/// A register-blocked micro-kernel computing an `MR × NR` tile of C, with
/// the block sizes that suit it.
pub(super) trait Tile: Copy + Send + Sync {
    /// Rows of a tile.
    const MR: usize;
    /// Columns of a tile.
    const NR: usize;
    /// Longest K block: K is cut into equal blocks of at most this length
    /// (cache blocking only).
    const KC: usize;
    /// Floats of op(b) packed per block (`kc · nc`): about half the L2.
    const B_BLOCK: usize;
    /// Whether full row panels of row-major op(a) are always read in place
    /// (never repacked nor packed whole): for tiles of few rows, whose
    /// rows `k` floats apart fit one L1 set.
    const A_IN_PLACE: bool = false;
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

    /// [`Tile::tile`] for rows `i < rows` at least (`rows <= MR`; rows past
    /// `rows` may be left unwritten or computed too): an edge tile may run
    /// a shorter kernel. Each computed element's chain is that of `tile`.
    ///
    /// # Safety
    /// As for [`Tile::tile`], except that `c` need only be valid (and the
    /// caller's) for rows `i < self.rows_touched(rows)`: no other row of
    /// `c` is read or written.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_rows(self, rows: usize, kc: usize, a: Src, b: Src, c: *mut f32, ldc: usize, load: bool) {
        let _ = rows;
        // SAFETY: the caller's contract is that of `tile`.
        unsafe { self.tile(kc, a, b, c, ldc, load) }
    }

    /// How many rows of `c` (from the first) [`Tile::tile_rows`] reads and
    /// writes for a panel of `rows` real rows (`rows <= MR`, result in
    /// `rows..=MR`): the height of the kernel it runs. When that is `rows`
    /// the edge tile writes C directly instead of through a copy.
    fn rows_touched(self, rows: usize) -> usize {
        let _ = rows;
        Self::MR
    }

    /// `dst[p*r + w] = src[w*ws + p]` for `w < width`, `0.0` for
    /// `width <= w < r`, `p < kc` (`dst.len() == kc*r`, every source element
    /// inside `src`). Only moves values; vector paths override it.
    fn pack_transposed(self, dst: &mut [f32], src: &[f32], ws: usize, lanes: (usize, usize), kc: usize) {
        pack::transposed_scalar(dst, src, ws, lanes, kc)
    }
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
pub(super) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) xs: usize,
    pub(super) ps: usize,
}

impl<'a> View<'a> {
    /// A packed panel of `r` lanes.
    pub(super) fn packed(data: &'a [f32], r: usize) -> Self {
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

impl Job<'_> {
    /// op(a)'s element `(i, p)` is `a[i*ws + p*ps]`.
    pub(super) fn a_strides(&self) -> (usize, usize) {
        match self.ta {
            Trans::No => (self.k, 1),
            Trans::Yes => (1, self.m),
        }
    }

    /// op(b)'s element `(p, j)` is `b[j*ws + p*ps]`.
    pub(super) fn b_strides(&self) -> (usize, usize) {
        match self.tb {
            Trans::No => (1, self.n),
            Trans::Yes => (self.k, 1),
        }
    }
}

/// The K block and column block being computed: `pc..pc+kc`, `jc..jc+nc`.
#[derive(Clone, Copy)]
pub(super) struct Panel {
    pub(super) pc: usize,
    pub(super) kc: usize,
    pub(super) jc: usize,
    pub(super) nc: usize,
}

/// C's base pointer, shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
pub(super) struct SharedC(pub(super) *mut f32);
// SAFETY: tasks only write through the pointer inside their own Task's
// tiles, the tasks partition C (each runs the K blocks of its tiles one
// after another), and `run` holds the `&mut [f32]` it came from (so nothing else
// reads or writes C) until every task has finished.
unsafe impl Send for SharedC {}
// SAFETY: as for Send: concurrent users touch disjoint elements.
unsafe impl Sync for SharedC {}

/// The length of `k`'s K blocks: `k` cut into equal blocks of at most `max`
/// (the last one may be shorter).
pub(super) fn k_block(k: usize, max: usize) -> usize {
    k.div_ceil(k.div_ceil(max))
}

/// Runs `job` into `c` (`m*n` elements) with micro-kernel `kern`, on the
/// crate's thread pool when the product is big enough.
pub(super) fn run<K: Tile>(kern: K, job: &Job<'_>, c: &mut [f32]) {
    debug_assert!(K::MR * K::NR <= MAX_TILE && K::B_BLOCK >= K::KC * K::NR);
    debug_assert!(job.a.len() == job.m * job.k && job.b.len() == job.k * job.n && c.len() == job.m * job.n);
    let (m, k, n) = (job.m, job.k, job.n);
    if m.saturating_mul(n).saturating_mul(k) < PAR_MIN_FLOPS {
        // Packing would cost as much as the arithmetic.
        return direct::run(kern, job, c);
    }
    let (pool, nthreads) = threads::current();
    let kc = k_block(k, K::KC);
    let cp = SharedC(c.as_mut_ptr());
    let tasks = split::tasks(job.ta, (m, n), (K::MR, K::NR), nthreads);
    // Row-major op(a) is packed whole only when a task walks more than two
    // column blocks: repacking its row panels per block would cost more.
    let widest = tasks.iter().map(|t| t.cols).max().unwrap_or(n);
    let in_place = job.ta == Trans::No && (K::A_IN_PLACE || widest <= 2 * block_cols::<K>(kc));
    let a_len = if in_place { K::MR * k } else { m.div_ceil(K::MR) * K::MR * k };
    with_scratch(&A_SCRATCH, a_len, |ap| {
        let mut all = || {
            if in_place {
                pack_a_edge(kern, job, ap);
            } else {
                pack_a(kern, job, ap, nthreads > 1);
            }
            let ap = OpA { packed: &*ap, in_place };
            let run = |t: &Task| task(kern, job, kc, ap, cp, *t);
            if nthreads > 1 {
                tasks.par_iter().for_each(run);
            } else {
                tasks.iter().for_each(run);
            }
        };
        if nthreads > 1 {
            pool.install(all)
        } else {
            all()
        }
    });
}

/// Computes one task: for each block of its columns (op(b) packed about
/// half an L2 at a time, on this thread) and each K block in order, the
/// tiles of its row panels.
fn task<K: Tile>(kern: K, job: &Job<'_>, kc: usize, ap: OpA<'_>, cp: SharedC, t: Task) {
    let nc = block_cols::<K>(kc).min(t.cols.div_ceil(K::NR) * K::NR);
    let all = |bp: &mut [f32], panel: &mut [f32]| {
        for jc in (t.j0..t.j0 + t.cols).step_by(nc) {
            for pc in (0..job.k).step_by(kc) {
                let at = Panel { pc, kc: kc.min(job.k - pc), jc, nc: nc.min(t.j0 + t.cols - jc) };
                let bp = &mut bp[..at.kc * at.nc.div_ceil(K::NR) * K::NR];
                pack_b(kern, job, at, bp, false);
                block(kern, job, at, ap, (bp, &mut *panel), cp, (t.q0, t.q1));
            }
        }
    };
    with_scratch(&B_SCRATCH, kc * nc, |bp| with_scratch(&PANEL_SCRATCH, kc * K::MR, |panel| all(bp, panel)))
}

/// Columns of a block of op(b) with K blocks of `kc`: as many whole panels
/// as fit [`Tile::B_BLOCK`].
fn block_cols<K: Tile>(kc: usize) -> usize {
    (K::B_BLOCK / kc / K::NR).max(1) * K::NR
}

/// Column panels of a block from which a row panel of row-major op(a) is
/// packed (into the task's `kc × MR` buffer, in L1) before its tiles
/// instead of read in place: packing it costs about half a tile, and a
/// panel read in place has its `MR` rows `k` floats apart, which for
/// `k` a multiple of 1024 all fall in the same L1 set.
const REPACK_MIN_PANELS: usize = 8;

/// The tiles of block `at` in row panels `q0..q1`: row panels outer (the
/// row panel's `MR × kc` slice of op(a) stays in L1), column panels inner.
/// `panel` (`kc*MR`) holds the row panel when it is repacked (see
/// [`REPACK_MIN_PANELS`]).
fn block<K: Tile>(
    kern: K,
    job: &Job<'_>,
    at: Panel,
    ap: OpA<'_>,
    (bp, panel): (&[f32], &mut [f32]),
    cp: SharedC,
    (q0, q1): (usize, usize),
) {
    let (kc, load) = (at.kc, at.pc > 0 || job.accumulate);
    let end = at.jc + at.nc;
    let repack = ap.in_place && !K::A_IN_PLACE && at.nc >= REPACK_MIN_PANELS * K::NR;
    for q in q0..q1 {
        let i = q * K::MR;
        let rows = K::MR.min(job.m - i);
        let a = if repack && rows == K::MR {
            let s = Strided { base: i * job.k + at.pc, ws: job.k, ps: 1 };
            pack::panels(kern, &mut panel[..kc * K::MR], job.a, s, (K::MR, K::MR), kc);
            View::packed(&panel[..kc * K::MR], K::MR)
        } else {
            ap.view::<K>(job, q, at)
        };
        for j in (at.jc..end).step_by(K::NR) {
            let cols = K::NR.min(end - j);
            let b = View::packed(&bp[(j - at.jc) * kc..][..kc * K::NR], K::NR);
            if j + K::NR < end {
                prefetch_c(cp, job.n, (i, j + K::NR, rows, K::NR.min(end - j - K::NR)));
            }
            tile_at(kern, kc, a, b, cp, job.n, (i, j, rows, cols), load);
        }
    }
}

/// One tile of C at `(i, j)` with `rows × cols` real elements (C is `ldc`
/// wide); a partial tile runs the full kernel on a copy and keeps the real
/// lanes, which computes each real element's chain exactly as a full tile.
///
/// The caller owns C's elements `(i + r, j + s)` for `r < rows`, `s < cols`
/// (no other thread touches them during the call), and they lie inside C.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_at<K: Tile>(
    kern: K,
    kc: usize,
    a: View<'_>,
    b: View<'_>,
    cp: SharedC,
    ldc: usize,
    at: Tile4,
    load: bool,
) {
    let (i, j, rows, cols) = at;
    let (a, b) = (a.src(K::MR, kc), b.src(K::NR, kc));
    debug_assert!(b.xs == 1 && rows <= K::MR && cols <= K::NR);
    // SAFETY: the caller owns the rows × cols elements at (i, j) of C (see
    // above), so every C element used is inside C and no one else's.
    // `View::src` checked that every element the kernel reads of `a` and
    // `b` lies in their slices, which are the caller's inputs or the packed
    // buffers, never C.
    unsafe {
        let c = cp.0.add(i * ldc + j);
        if rows == K::MR && cols == K::NR {
            return kern.tile(kc, a, b, c, ldc, load);
        }
        if cols == K::NR && kern.rows_touched(rows) == rows {
            // The shorter kernel touches exactly the real rows, all the
            // caller's (see Tile::tile_rows).
            return kern.tile_rows(rows, kc, a, b, c, ldc, load);
        }
        let mut tmp = [0.0f32; MAX_TILE];
        if load {
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), tmp.as_mut_ptr().add(r * K::NR), cols);
            }
        }
        kern.tile_rows(rows, kc, a, b, tmp.as_mut_ptr(), K::NR, load);
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * K::NR), c.add(r * ldc), cols);
        }
    }
}

/// Asks the caches for the C elements of tile `at` (the next tile's, while
/// this one computes). A hint only: nothing is read or written.
fn prefetch_c(cp: SharedC, ldc: usize, (i, j, rows, cols): Tile4) {
    #[cfg(target_arch = "x86_64")]
    for r in 0..rows {
        let row = cp.0.wrapping_add((i + r) * ldc + j);
        for s in (0..cols).step_by(16) {
            // SAFETY: SSE is part of x86-64 (every such CPU has it), and a
            // prefetch never faults nor touches memory.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(row.wrapping_add(s).cast())
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (cp, ldc, i, j, rows, cols);
}

/// `(i, j, rows, cols)` of a tile.
pub(super) type Tile4 = (usize, usize, usize, usize);

/// Panels packed per task (and per call of [`pack::panels`]): for
/// row-major lanes each source row is read as one run over the group
/// instead of `MR`- or `NR`-float pieces far apart.
const GROUP: usize = 8;

/// Where the tiles read op(a): row-major op(a) (`Trans::No`) in place,
/// each full row panel's `MR` rows read where they lie (a row panel's K
/// block stays in L1 while the tile walks the column panels), with only
/// the last, partial row panel packed; transposed op(a) packed whole (see
/// [`pack_a`]).
#[derive(Clone, Copy)]
struct OpA<'a> {
    packed: &'a [f32],
    in_place: bool,
}

impl<'a> OpA<'a> {
    /// Row panel `q`'s K block `at` (rows `q*MR..`, `at.pc..at.pc+at.kc`).
    fn view<K: Tile>(self, job: &Job<'a>, q: usize, at: Panel) -> View<'a> {
        let (i, kc) = (q * K::MR, at.kc);
        if !self.in_place {
            return View::packed(&self.packed[i * job.k + at.pc * K::MR..][..kc * K::MR], K::MR);
        }
        if i + K::MR <= job.m {
            // op(a)[i, p] = a[i*k + p]
            View { data: &job.a[i * job.k + at.pc..], xs: job.k, ps: 1 }
        } else {
            View::packed(&self.packed[at.pc * K::MR..][..kc * K::MR], K::MR)
        }
    }
}

/// Packs the last row panel of op(a) when it is partial (`m % MR` rows,
/// zero-padded to `MR`) into `ap[..MR*k]`, laid out `[p][i]`.
fn pack_a_edge<K: Tile>(kern: K, job: &Job<'_>, ap: &mut [f32]) {
    let (ws, ps) = job.a_strides();
    let i0 = job.m - job.m % K::MR;
    if i0 < job.m {
        pack::panels(
            kern,
            &mut ap[..K::MR * job.k],
            job.a,
            Strided { base: i0 * ws, ws, ps },
            (job.m - i0, K::MR),
            job.k,
        );
    }
}

/// Packs all of op(a) into `ap`: row panel `q` (rows `q*MR..`) at
/// `q*MR*k`, laid out `[p][i]` over all of K, so K block `pc` of it starts
/// at `q*MR*k + pc*MR`. Groups of panels are packed in parallel when
/// `parallel` (inside the pool).
fn pack_a<K: Tile>(kern: K, job: &Job<'_>, ap: &mut [f32], parallel: bool) {
    let (ws, ps) = job.a_strides();
    let one = |(g, dst): (usize, &mut [f32])| {
        let i0 = g * GROUP * K::MR;
        let width = (GROUP * K::MR).min(job.m - i0);
        pack::panels(kern, dst, job.a, Strided { base: i0 * ws, ws, ps }, (width, K::MR), job.k);
    };
    if parallel {
        ap.par_chunks_mut(GROUP * K::MR * job.k).enumerate().for_each(one);
    } else {
        ap.chunks_mut(GROUP * K::MR * job.k).enumerate().for_each(one);
    }
}

/// Packs op(b)'s block `at` into `bp`: panel `q` (columns `jc + q*NR..`)
/// at `q*kc*NR`, laid out `[p][j]`. Groups of panels are packed in
/// parallel when `parallel` (inside the pool).
pub(super) fn pack_b<K: Tile>(kern: K, job: &Job<'_>, at: Panel, bp: &mut [f32], parallel: bool) {
    let (ws, ps) = job.b_strides();
    let one = |(g, dst): (usize, &mut [f32])| {
        let j0 = at.jc + g * GROUP * K::NR;
        let width = (GROUP * K::NR).min(at.jc + at.nc - j0);
        pack::panels(kern, dst, job.b, Strided { base: j0 * ws + at.pc * ps, ws, ps }, (width, K::NR), at.kc);
    };
    if parallel {
        bp.par_chunks_mut(GROUP * at.kc * K::NR).enumerate().for_each(one);
    } else {
        bp.chunks_mut(GROUP * at.kc * K::NR).enumerate().for_each(one);
    }
}

thread_local! {
    /// Packed op(b) of the product running on this thread (reused between calls).
    pub(super) static B_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed op(a) of the product running on this thread (reused between calls).
    pub(super) static A_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One repacked row panel of op(a) (reused between calls).
    static PANEL_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of a 64-byte-aligned buffer taken from `slot`
/// (taken out while in use, so a nested call just allocates its own).
/// Contents on entry are unspecified; packing overwrites all of it.
pub(super) fn with_scratch<R>(
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
