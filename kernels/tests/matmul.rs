//! `matmul` against a naive f64 triple loop for every transpose combination,
//! on every kernel path the CPU has (`tests/isa.rs` checks exact bits).

mod common;

use baton_kernels::{isa, matmul, Isa, Trans};
use common::{assert_close, Rng};

/// Element (i, j) of op(x) where op(x) is `rows × cols`.
fn at(x: &[f32], t: Trans, rows: usize, cols: usize, i: usize, j: usize) -> f64 {
    match t {
        Trans::No => x[i * cols + j] as f64,
        Trans::Yes => x[j * rows + i] as f64,
    }
}

/// c0 (+)= op(a)·op(b) in f64.
#[allow(clippy::too_many_arguments)]
fn naive(a: &[f32], ta: Trans, b: &[f32], tb: Trans, m: usize, k: usize, n: usize, c0: Option<&[f32]>) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = c0.map_or(0.0, |c0| c0[i * n + j] as f64);
            for p in 0..k {
                s += at(a, ta, m, k, i, p) * at(b, tb, k, n, p, j);
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn check(m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for ta in [Trans::No, Trans::Yes] {
        for tb in [Trans::No, Trans::Yes] {
            let a = rng.vec(m * k, -1.0, 1.0);
            let b = rng.vec(k * n, -1.0, 1.0);
            let c0 = rng.vec(m * n, -1.0, 1.0);
            let tol = 1e-5 * (k as f64).sqrt().max(1.0);
            let what = format!("{m}x{k}x{n} {ta:?}{tb:?}");

            for isa in Isa::available() {
                let what = format!("{isa} {what}");
                let mut c = vec![f32::NAN; m * n];
                isa::with_isa(isa, || matmul(&mut c, &a, ta, &b, tb, m, k, n, false)).unwrap();
                assert_close(&what, &c, &naive(&a, ta, &b, tb, m, k, n, None), tol, tol);

                let mut c = c0.clone();
                isa::with_isa(isa, || matmul(&mut c, &a, ta, &b, tb, m, k, n, true)).unwrap();
                let want = naive(&a, ta, &b, tb, m, k, n, Some(&c0));
                assert_close(&format!("{what} acc"), &c, &want, tol, tol);
            }
        }
    }
}

#[test]
fn odd_small_sizes() {
    for (i, &(m, k, n)) in [(1, 1, 1), (3, 5, 7), (7, 5, 3), (1, 9, 1), (2, 1, 17), (17, 33, 5)].iter().enumerate() {
        check(m, k, n, i as u64);
    }
}

#[test]
fn mlp_shaped_sizes() {
    // Batch 32, width 64 (the small-MLP case) and a size big enough to take
    // several K blocks and (with >1 thread) the parallel path.
    check(32, 64, 64, 10);
    check(64, 32, 64, 11);
    check(96, 130, 70, 12);
}

#[test]
fn zero_k_writes_zeros_or_keeps_c() {
    let mut c = vec![f32::NAN; 6];
    matmul(&mut c, &[], Trans::No, &[], Trans::Yes, 2, 0, 3, false);
    assert_eq!(c, vec![0.0; 6]);
    let mut c = vec![1.5f32; 6];
    matmul(&mut c, &[], Trans::Yes, &[], Trans::No, 2, 0, 3, true);
    assert_eq!(c, vec![1.5; 6]);
}

#[test]
fn zero_m_or_n_is_a_noop() {
    let mut c: Vec<f32> = vec![];
    matmul(&mut c, &[], Trans::No, &[1.0, 2.0], Trans::No, 0, 2, 1, false);
    matmul(&mut c, &[1.0, 2.0], Trans::No, &[], Trans::No, 1, 2, 0, false);
}

#[test]
fn known_product() {
    // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]; with a transposed: [26 30; 38 44].
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]);
    let mut c = [0.0f32; 4];
    matmul(&mut c, &a, Trans::No, &b, Trans::No, 2, 2, 2, false);
    assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    matmul(&mut c, &a, Trans::Yes, &b, Trans::No, 2, 2, 2, false);
    assert_eq!(c, [26.0, 30.0, 38.0, 44.0]);
    matmul(&mut c, &a, Trans::No, &b, Trans::Yes, 2, 2, 2, false);
    assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
}

#[test]
#[should_panic(expected = "a.len() != m*k")]
fn wrong_length_panics() {
    let mut c = [0.0f32; 4];
    matmul(&mut c, &[1.0; 3], Trans::No, &[1.0; 4], Trans::No, 2, 2, 2, false);
}
