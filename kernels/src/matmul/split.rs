//! How a packed product's C is divided between threads: one task per
//! thread, of even shares, each running all of K for its tiles (so a call
//! forks and joins once, and no element's chain is split).
//!
//! The split decides what is packed twice. Rows split: each thread packs
//! all of op(b) (block by block, for its own row panels), and each row
//! panel of row-major op(a) is read or repacked by one thread. Columns
//! split: each thread packs only its columns of op(b), and every thread
//! walks every row panel of op(a). Transposed op(a) is packed whole once,
//! by all threads together, before the tasks, so its products split
//! columns; row-major op(a), which each thread would repack for its own
//! column block, splits rows when it has at least as many rows as op(b)
//! has columns (repacking it costs about what packing op(b) does per
//! element, and the larger operand should be the one packed once).

use super::Trans;

/// A task: row panels `q0..q1` (rows `q*MR..`), columns `j0..j0+cols`
/// (`j0` a multiple of `NR`), over all of K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Task {
    pub(super) q0: usize,
    pub(super) q1: usize,
    pub(super) j0: usize,
    pub(super) cols: usize,
}

/// The tasks of an `m × n` C (row-major op(a) when `ta == Trans::No`) in
/// tiles of `mr × nr` for `nthreads` threads: they partition C's tiles,
/// at most `nthreads` of them, each holding an even share of the split
/// dimension's panels (group `g` of `G`: panels `g*P/G..(g+1)*P/G`), none
/// empty.
pub(super) fn tasks(ta: Trans, (m, n): (usize, usize), (mr, nr): (usize, usize), nthreads: usize) -> Vec<Task> {
    let (panels, col_panels) = (m.div_ceil(mr), n.div_ceil(nr));
    let rows_first = ta == Trans::No && m >= n;
    let (row_groups, col_groups) = match nthreads {
        1 => (1, 1),
        t if (rows_first && panels >= t) || col_panels < t => (t.min(panels), 1),
        t => (1, t),
    };
    let mut out = Vec::with_capacity(row_groups * col_groups);
    for cg in 0..col_groups {
        let j0 = cg * col_panels / col_groups * nr;
        let cols = ((cg + 1) * col_panels / col_groups * nr).min(n) - j0;
        for rg in 0..row_groups {
            out.push(Task { q0: rg * panels / row_groups, q1: (rg + 1) * panels / row_groups, j0, cols });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{tasks, Trans};

    /// Every tile of C lies in exactly one task, no task is empty, there
    /// are at most as many tasks as threads, and the split dimension's
    /// shares differ by at most one panel.
    #[test]
    fn tasks_partition_c_in_even_shares() {
        for (mr, nr) in [(12, 32), (6, 16), (4, 8)] {
            for (m, n) in [(1, 1), (13, 1050), (100, 45), (1024, 512), (256, 1024), (25, 97), (12, 33), (2048, 2048)] {
                for ta in [Trans::No, Trans::Yes] {
                    for t in 1..=5 {
                        let ts = tasks(ta, (m, n), (mr, nr), t);
                        let what = format!("{m}x{n} tiles {mr}x{nr} {ta:?} at {t} threads: {ts:?}");
                        assert!(!ts.is_empty() && ts.len() <= t, "{what}");
                        let mut seen = vec![0u8; m.div_ceil(mr) * n.div_ceil(nr)];
                        for task in &ts {
                            assert!(task.q0 < task.q1 && task.cols > 0 && task.j0 % nr == 0, "{what}");
                            for q in task.q0..task.q1 {
                                for j in (task.j0..task.j0 + task.cols).step_by(nr) {
                                    seen[q * n.div_ceil(nr) + j / nr] += 1;
                                }
                            }
                        }
                        assert!(seen.iter().all(|&s| s == 1), "{what}: not a partition");
                        let rows: Vec<usize> = ts.iter().map(|t| t.q1 - t.q0).collect();
                        let cols: Vec<usize> = ts.iter().map(|t| t.cols.div_ceil(nr)).collect();
                        for shares in [rows, cols] {
                            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                            assert!(hi - lo <= 1, "{what}: uneven shares");
                        }
                    }
                }
            }
        }
    }

    /// Row-major op(a) with at least as many rows as columns splits rows
    /// (each row panel read by one thread); otherwise columns are split
    /// (each column of op(b) packed by one thread), unless there are fewer
    /// column panels than threads.
    #[test]
    fn split_dimension_follows_the_operand_packed_once() {
        let rows_split = |ta, m, n| tasks(ta, (m, n), (12, 32), 2).iter().all(|t| t.cols == n);
        assert!(rows_split(Trans::No, 1024, 512));
        assert!(!rows_split(Trans::No, 256, 1024));
        assert!(!rows_split(Trans::Yes, 2048, 512));
        assert!(rows_split(Trans::Yes, 1024, 20));
    }
}
