//! Elementwise kernels and row sums, exact against sequential loops.

mod common;

use baton_kernels::elementwise::{add, add_assign, add_bias_rows, plus_zero, scale, sum_rows, zeros};
use baton_kernels::isa::{self, Isa};
use baton_kernels::threads;
use common::{bits, Rng};

#[test]
fn sum_rows_is_sequential_in_row_order() {
    // Big enough (and wide enough) to take the parallel column-block path
    // whenever the pool has more than one thread; the bits must still equal
    // the strict row-order f32 sum.
    for (rows, cols) in [(1, 1), (5, 3), (300, 1000), (2000, 40)] {
        let x = Rng::new(rows as u64).vec(rows * cols, -1.0, 1.0);
        let mut want = vec![0.25f32; cols];
        for row in x.chunks(cols) {
            for (w, v) in want.iter_mut().zip(row) {
                *w += v;
            }
        }
        let mut got = vec![0.25f32; cols];
        sum_rows(&x, cols, &mut got, true);
        assert_eq!(bits(&got), bits(&want), "{rows}x{cols} accumulate");
        let mut got = vec![f32::NAN; cols];
        sum_rows(&x, cols, &mut got, false);
        let fresh: Vec<f32> = want.iter().map(|w| w - 0.25).collect();
        let close = got.iter().zip(&fresh).all(|(g, f)| (g - f).abs() < 1e-3);
        assert!(close, "{rows}x{cols} overwrite");
    }
}

#[test]
fn add_bias_rows_adds_per_column() {
    let mut y = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    add_bias_rows(&mut y, &[10.0, 20.0, 30.0]);
    assert_eq!(y, vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);

    let cols = 700;
    let mut y = Rng::new(1).vec(cols * 200, -1.0, 1.0);
    let bias = Rng::new(2).vec(cols, -1.0, 1.0);
    let want: Vec<f32> = y.iter().enumerate().map(|(i, v)| v + bias[i % cols]).collect();
    add_bias_rows(&mut y, &bias);
    assert_eq!(bits(&y), bits(&want));
}

#[test]
#[should_panic(expected = "y.len() % bias.len() != 0")]
fn add_bias_rows_rejects_ragged() {
    add_bias_rows(&mut [0.0; 5], &[1.0, 2.0]);
}

#[test]
fn add_add_assign_scale() {
    for n in [3, 200_001] {
        let a = Rng::new(3).vec(n, -1.0, 1.0);
        let b = Rng::new(4).vec(n, -1.0, 1.0);
        let mut out = vec![0.0; n];
        add(&a, &b, &mut out);
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(bits(&out), bits(&want));

        let mut d = a.clone();
        add_assign(&mut d, &b);
        assert_eq!(bits(&d), bits(&want));

        scale(&mut d, -0.5);
        let want: Vec<f32> = want.iter().map(|v| v * -0.5).collect();
        assert_eq!(bits(&d), bits(&want));
    }
}

#[test]
#[should_panic(expected = "b.len() != out.len()")]
fn add_rejects_mismatch() {
    add(&[1.0; 3], &[1.0; 2], &mut [0.0; 3]);
}

#[test]
fn zeros_are_zeros_at_every_size_and_thread_count() {
    // Sizes below, at and above the parallel threshold, ragged against the
    // chunk size; memory freed with garbage in it first, so a reused block
    // that were not written would show.
    for t in [1, 2] {
        threads::set_num_threads(t).expect("thread count");
        for len in [0, 1, 1000, 1 << 16, (1 << 16) + 7, 3 << 18] {
            drop(vec![f32::NAN; len]);
            let z = zeros(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|v| v.to_bits() == 0), "{len} at {t} threads");
        }
    }
}

#[test]
fn plus_zero_is_adding_onto_zeros() {
    // The accumulator's first term: `0 + g` computed as `g + 0` in place,
    // bit for bit, on signed zeros, NaNs, infinities, subnormals and random
    // values, above the parallel threshold (ragged against the chunk).
    let snan = f32::from_bits(0x7f80_0001);
    let special = [0.0, -0.0, f32::NAN, -f32::NAN, snan, -snan, f32::INFINITY, f32::NEG_INFINITY, 1e-45, -1e-45];
    let mut rng = Rng::new(7);
    let mut x = rng.vec((1 << 16) + 7, -2.0, 2.0);
    for (i, &v) in special.iter().enumerate() {
        x[i * 1000] = v;
    }
    // In the ragged tail, off any vector lane boundary.
    let n = x.len();
    x[n - 1] = -0.0;
    x[n - 1030] = snan;
    let mut onto_zeros = vec![0.0f32; x.len()];
    add_assign(&mut onto_zeros, &x);
    for (t, path) in [1, 2].into_iter().flat_map(|t| Isa::available().into_iter().map(move |p| (t, p))) {
        threads::set_num_threads(t).expect("thread count");
        let mut in_place = x.clone();
        isa::with_isa(path, || plus_zero(&mut in_place)).expect("an available path");
        assert_eq!(bits(&in_place), bits(&onto_zeros), "{t} threads, {path}");
        assert_eq!(in_place[1000].to_bits(), 0, "-0 becomes +0 ({path})");
        assert_eq!(in_place[20_000].to_bits(), x[20_000].to_bits(), "a block without specials keeps its bits");
    }
}
