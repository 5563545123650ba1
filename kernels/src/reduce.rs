//! Fixed-order `f32` sums that vectorise.
//!
//! Element `i` goes to accumulator lane `i % LANES`; the lanes are combined
//! in a fixed tree. The order depends only on the length, never on threads
//! or on the SIMD width the compiler picks, and Rust never contracts
//! `a*b + c` into an FMA, so the bits are the same on every x86-64 machine.

/// Number of interleaved accumulators.
pub(crate) const LANES: usize = 8;

/// Combines the lanes as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
#[inline(always)]
fn combine(l: [f32; LANES]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// Σ_i f(a[i]).
#[inline(always)]
pub(crate) fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += f(x);
    }
    combine(acc)
}

/// Σ_i f(a[i], b[i]).
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline(always)]
pub(crate) fn sum_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    assert_eq!(a.len(), b.len(), "sum_map2: lengths differ");
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += f(x, y);
    }
    combine(acc)
}

/// Σ_i f(a[i], b[i], c[i]).
///
/// # Panics
/// Unless `a`, `b` and `c` have equal lengths.
#[inline(always)]
pub(crate) fn sum_map3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    assert!(a.len() == b.len() && a.len() == c.len(), "sum_map3: lengths differ");
    let mut acc = [0.0f32; LANES];
    let (ca, cb, cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l], z[l]);
        }
    }
    for (l, ((&x, &y), &z)) in ra.iter().zip(rb).zip(rc).enumerate() {
        acc[l] += f(x, y, z);
    }
    combine(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_f64_and_the_documented_order() {
        let a: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5).collect();
        let b: Vec<f32> = a.iter().map(|x| x * 2.0 + 1.0).collect();
        let want: f64 = a.iter().map(|&x| x as f64).sum();
        assert!((sum_map(&a, |x| x) as f64 - want).abs() < 1e-4);
        let want2: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((sum_map2(&a, &b, |x, y| x * y) as f64 - want2).abs() < 1e-4);
        let s3 = sum_map3(&a, &b, &a, |x, y, z| x * y - z);
        assert!((s3 as f64 - (want2 - want)).abs() < 1e-3);
        // 11 elements: lanes 0..3 get two, the rest one.
        let x: Vec<f32> = (1..=11).map(|i| i as f32).collect();
        let l = [1.0 + 9.0, 2.0 + 10.0, 3.0 + 11.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(sum_map(&x, |v| v), combine(l));
        assert_eq!(sum_map(&[], |v| v), 0.0);
    }
}
