//! The packed path's blocking on shapes that cut every block raggedly, on
//! every kernel path and at 1, 2 and 3 threads, bit for bit against the
//! literal fma chain: K split into equal blocks (on the vector paths k =
//! 519, 600, 1031 give blocks of 260/259, 300, 344/344/343, none a multiple
//! of 8), row panels of 6
//! (AVX-512 and AVX2) and 4 (generic) rows and column panels of 64, 16 and
//! 8 with partial last ones, packing groups of 8 panels cut inside
//! (m = 100), several column blocks (n = 1050 with 300-long K blocks), few
//! row panels (m = 13: tasks split columns too), all four transposes, with
//! and without accumulation. All are above `PAR_MIN_FLOPS` (packed path).
//!
//! Paths this CPU lacks are skipped, and say so on stderr.

mod common;

use baton_kernels::isa::{self, Isa};
use baton_kernels::matmul::PAR_MIN_FLOPS;
use baton_kernels::{matmul, threads};
use common::{bits, data, reference, Product, Rng, TRANS};

#[test]
fn packed_path_blocks_give_the_fma_chain_at_any_thread_count() {
    for isa in Isa::ALL.into_iter().filter(|isa| !isa.is_available()) {
        eprintln!("skipping {isa} path: CPU lacks it");
    }
    let mut rng = Rng::new(12);
    for (m, k, n) in [(25, 1031, 97), (100, 519, 45), (13, 600, 1050)] {
        assert!(m * k * n >= PAR_MIN_FLOPS, "{m}x{k}x{n} would take the small-product path");
        for (ta, tb) in TRANS {
            let product = Product::random(&mut rng, (ta, tb), m, k, n);
            for t in [1, 2, 3] {
                threads::set_num_threads(t).unwrap();
                for isa in Isa::available() {
                    product.check(isa, &format!("{isa} {m}x{k}x{n} {ta:?}/{tb:?} at {t} threads"));
                }
            }
        }
    }
}

/// A last row panel of every length the packed path treats differently
/// (the AVX-512 path runs its 2-, 4- or 6-row kernel on it, the AVX2
/// path its 6-row one, rows read in place or packed), through all K
/// blocks and at 1 and 2 threads (tasks of column groups, or with m > n of
/// row groups times column groups; with n = 1500, more than two column
/// blocks at one thread, so row-major op(a) is packed whole), bit for bit
/// against the literal fma chain.
#[test]
fn packed_path_short_last_row_panels_give_the_fma_chain() {
    let mut rng = Rng::new(13);
    for (m, k, n) in [(29, 300, 300), (32, 300, 257), (33, 257, 300), (35, 520, 130), (101, 230, 100), (13, 1031, 1500)]
    {
        assert!(m * k * n >= PAR_MIN_FLOPS, "{m}x{k}x{n} would take the small-product path");
        for (ta, tb) in TRANS {
            let (a, b, c0) = (data(&mut rng, m * k), data(&mut rng, k * n), data(&mut rng, m * n));
            let acc = bits(&reference(&a, ta, &b, tb, m, k, n, Some(&c0)));
            for t in [1, 2] {
                threads::set_num_threads(t).unwrap();
                for isa in Isa::available() {
                    let mut c = c0.clone();
                    isa::with_isa(isa, || matmul(&mut c, &a, ta, &b, tb, m, k, n, true)).unwrap();
                    assert!(
                        bits(&c) == acc,
                        "{isa} {m}x{k}x{n} {ta:?}/{tb:?} at {t} threads: differs from the fma chain"
                    );
                }
            }
        }
    }
}

/// The thread splits and the short last row panels written straight into
/// C, bit for bit against the literal fma chain on every path, at 1, 2
/// and 3 threads: row-major op(a) with more rows than columns (rows split
/// between threads, each task all of n = 290 columns, so its row panels are
/// repacked per block, and 3 threads giving uneven shares of 26 panels),
/// fewer rows than columns (columns split; n = 1100 is more than two AVX2
/// column blocks, so at 1 thread that path packs op(a) whole, at 2 it
/// repacks row panels per block), fewer column
/// panels than threads (n = 20: rows split for either transpose); last row
/// panels of exactly 4 and 2 rows (m = 292, 296; the AVX-512 path's 4- and
/// 2-row kernels write C directly, a partial column panel goes through a
/// copy) on the packed and the small-product paths (m = 16, 20, 128 below
/// `PAR_MIN_FLOPS`), with and without accumulation.
#[test]
fn thread_splits_and_exact_short_panels_give_the_fma_chain() {
    let mut rng = Rng::new(14);
    let shapes = [
        (301, 300, 290),
        (292, 257, 100),
        (296, 130, 300),
        (40, 260, 1100),
        (700, 300, 20),
        (16, 64, 33),
        (20, 31, 64),
        (128, 128, 64),
    ];
    for (m, k, n) in shapes {
        for (ta, tb) in TRANS {
            let product = Product::random(&mut rng, (ta, tb), m, k, n);
            for t in [1, 2, 3] {
                threads::set_num_threads(t).unwrap();
                for isa in Isa::available() {
                    product.check(isa, &format!("{isa} {m}x{k}x{n} {ta:?}/{tb:?} at {t} threads"));
                }
            }
        }
    }
}
