//! The crate-wide thread pool.
//!
//! All parallel kernels run inside one swappable rayon pool, so the thread
//! count can be changed at any point in a process (tests compare 1 vs 2
//! threads in one run). Parallel kernels never let the thread count change
//! the order of a reduction, so results are bit-identical for any setting.

use std::sync::{Arc, OnceLock, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::{Error, Result};

/// Environment variable read once for the default thread count.
pub const THREADS_ENV: &str = "BATON_THREADS";

/// Work below this many elements runs on the calling thread: spawning rayon
/// tasks costs more than streaming this much memory.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

/// Elements per rayon task for elementwise kernels. A constant (not derived
/// from the thread count) so chunk boundaries never depend on threads.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

struct Pool {
    pool: Arc<ThreadPool>,
    threads: usize,
}

fn slot() -> &'static RwLock<Pool> {
    static SLOT: OnceLock<RwLock<Pool>> = OnceLock::new();
    SLOT.get_or_init(|| {
        let n = default_threads();
        let pool = build_pool(n).or_else(|_| build_pool(1)).expect("could not build even a 1-thread rayon pool");
        RwLock::new(Pool { pool: Arc::new(pool), threads: n })
    })
}

/// `BATON_THREADS` if set to a positive integer, else the machine's
/// available parallelism (1 if unknown). An invalid value is ignored.
fn default_threads() -> usize {
    parse_threads(std::env::var(THREADS_ENV).ok().as_deref())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// A thread count from the environment: a positive integer, else `None`.
fn parse_threads(value: Option<&str>) -> Option<usize> {
    value?.trim().parse::<usize>().ok().filter(|&n| n >= 1)
}

fn build_pool(n: usize) -> Result<ThreadPool> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("baton-kernels-{i}"))
        .build()
        .map_err(|e| Error::ThreadPool(e.to_string()))
}

/// Replaces the crate's pool with one of `n` threads. Work already running in
/// the old pool finishes there; the old pool is dropped when its last user is.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidThreadCount(n));
    }
    let pool = Arc::new(build_pool(n)?);
    let mut guard = slot().write().unwrap_or_else(|e| e.into_inner());
    *guard = Pool { pool, threads: n };
    Ok(())
}

/// The number of threads parallel kernels currently use.
pub fn num_threads() -> usize {
    slot().read().unwrap_or_else(|e| e.into_inner()).threads
}

/// The current pool and its thread count. The lock is released before the
/// caller runs anything, so `set_num_threads` never waits on a kernel.
pub(crate) fn current() -> (Arc<ThreadPool>, usize) {
    let guard = slot().read().unwrap_or_else(|e| e.into_inner());
    (Arc::clone(&guard.pool), guard.threads)
}

/// Runs `f` inside the crate's pool (for callers that want to parallelise
/// over independent items).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let (pool, _) = current();
    pool.install(f)
}

/// Runs `f` on one of the pool's threads, with the calling thread's kernel
/// path ([`crate::isa::current`], so a [`crate::isa::with_isa`] override
/// carries over), and returns its result. With a 1-thread pool, or when
/// called from inside the pool, it calls `f` where it is.
///
/// For a sequence of kernel calls (a training step): a parallel kernel
/// called from outside the pool hands its work to the pool and sleeps
/// until it is done, two cross-thread wake-ups per call (the W=1024 MLP
/// step makes over 100 such calls); called from a pool thread, it starts
/// its parallel work where it is. Results are the same bits either way.
pub fn run_inside<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let (pool, n) = current();
    if n == 1 || pool.current_thread_index().is_some() {
        return f();
    }
    let isa = crate::isa::current();
    pool.install(move || crate::isa::scoped(isa, f))
}

/// Applies `f(offset, chunk)` to consecutive chunks of `out`, where `offset`
/// is the chunk's start index in `out`. Runs in the pool, in chunks of
/// [`PAR_CHUNK`], when `out` has at least [`PAR_MIN_ELEMS`] elements and the
/// pool has more than one thread; otherwise calls `f(0, out)` once.
///
/// Only for per-element work: `f` must write each element from inputs at the
/// same index alone, so chunking can never change a result.
pub(crate) fn par_chunks_mut<F>(out: &mut [f32], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let Some(pool) = pool_for(out.len()) else {
        return f(0, out);
    };
    use rayon::prelude::*;
    pool.install(|| {
        out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(i, chunk)| f(i * PAR_CHUNK, chunk));
    });
}

/// Block size of [`block_sum`]. Fixed, so the summation tree never depends
/// on the thread count.
pub(crate) const SUM_BLOCK: usize = 4096;

/// Σ over blocks `[i*SUM_BLOCK, min((i+1)*SUM_BLOCK, len))` of `f(block)`,
/// partial sums added strictly in block order. Blocks are evaluated in
/// parallel when `len` is large, but the result is bit-identical to the
/// sequential evaluation.
pub(crate) fn block_sum<F>(len: usize, f: F) -> f64
where
    F: Fn(std::ops::Range<usize>) -> f64 + Sync + Send,
{
    let nblocks = len.div_ceil(SUM_BLOCK);
    let block = |i: usize| f(i * SUM_BLOCK..((i + 1) * SUM_BLOCK).min(len));
    let partials: Vec<f64> = match pool_for(len) {
        Some(pool) => {
            use rayon::prelude::*;
            pool.install(|| (0..nblocks).into_par_iter().map(block).collect())
        }
        None => return (0..nblocks).map(block).fold(0.0, |acc, s| acc + s),
    };
    partials.into_iter().fold(0.0, |acc, s| acc + s)
}

/// The pool to run `elems` elements of work in, or `None` when the work is
/// too small to pay for fork/join or the pool has a single thread.
pub(crate) fn pool_for(elems: usize) -> Option<Arc<ThreadPool>> {
    if elems < PAR_MIN_ELEMS {
        return None;
    }
    let (pool, n) = current();
    (n > 1).then_some(pool)
}

/// Columns per task for reductions over rows. Each task sums its columns
/// over all rows in row order, so the order never depends on threads.
pub(crate) const COL_BLOCK: usize = 128;

/// Applies `f(col_offset, out_block)` to blocks of [`COL_BLOCK`] columns of
/// `out`, in parallel when the reduction covers `elems` elements (rows ×
/// cols) worth splitting; otherwise `f(0, out)` once. `f` must compute each
/// output column independently of the others.
pub(crate) fn par_col_blocks<F>(out: &mut [f32], elems: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let pool = if out.len() >= 2 * COL_BLOCK { pool_for(elems) } else { None };
    let Some(pool) = pool else {
        return f(0, out);
    };
    use rayon::prelude::*;
    pool.install(|| {
        out.par_chunks_mut(COL_BLOCK).enumerate().for_each(|(i, blk)| f(i * COL_BLOCK, blk));
    });
}

/// Applies `f(first_row, block)` to blocks of whole rows of the row-major
/// `out` (`cols` wide), in parallel when `out` is large enough; otherwise
/// `f(0, out)` once. `f` must compute each row independently of the others.
pub(crate) fn par_rows_mut<F>(out: &mut [f32], cols: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let Some(pool) = pool_for(out.len()).filter(|_| cols > 0) else {
        return f(0, out);
    };
    let rows_per_task = rows_per_task(cols);
    use rayon::prelude::*;
    pool.install(|| {
        out.par_chunks_mut(rows_per_task * cols).enumerate().for_each(|(i, blk)| f(i * rows_per_task, blk));
    });
}

/// Rows of `cols` elements per parallel task: about [`PAR_CHUNK`] elements,
/// at least one row. Depends only on the shape, never on the thread count.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (PAR_CHUNK / cols.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_thread_count_parsing() {
        assert_eq!(parse_threads(Some("3")), Some(3));
        assert_eq!(parse_threads(Some(" 2 ")), Some(2));
        assert_eq!(parse_threads(Some("0")), None);
        assert_eq!(parse_threads(Some("-1")), None);
        assert_eq!(parse_threads(Some("many")), None);
        assert_eq!(parse_threads(None), None);
    }

    #[test]
    fn rows_per_task_is_shape_only() {
        assert_eq!(rows_per_task(0), PAR_CHUNK);
        assert_eq!(rows_per_task(1024), PAR_CHUNK / 1024);
        assert_eq!(rows_per_task(PAR_CHUNK * 3), 1);
    }
}
