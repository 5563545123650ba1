//! Data movement: swapping two axes, and slicing / joining the last axis.
//! Pure copies, so exact on every machine.

/// Shape with axes `d0` and `d1` swapped.
pub fn swapped(shape: &[usize], d0: usize, d1: usize) -> Vec<usize> {
    let mut out = shape.to_vec();
    out.swap(d0, d1);
    out
}

/// Copies `x` (row-major, `shape`) into `out` with axes `d0 < d1` swapped.
///
/// # Panics
/// If `d0 >= d1`, `d1 >= shape.len()` or a length differs from the shape's.
pub fn transpose(x: &[f32], shape: &[usize], d0: usize, d1: usize, out: &mut [f32]) {
    assert!(d0 < d1 && d1 < shape.len(), "transpose: bad axes {d0}, {d1} for rank {}", shape.len());
    let n: usize = shape.iter().product();
    assert!(x.len() == n && out.len() == n, "transpose: lengths differ from the shape");
    // View the shape as [outer, a, mid, b, inner] with a, b the swapped axes.
    let outer: usize = shape[..d0].iter().product();
    let (a, b) = (shape[d0], shape[d1]);
    let mid: usize = shape[d0 + 1..d1].iter().product();
    let inner: usize = shape[d1 + 1..].iter().product();
    let mut o = 0;
    for p in 0..outer {
        for j in 0..b {
            for m in 0..mid {
                for i in 0..a {
                    let src = (((p * a + i) * mid + m) * b + j) * inner;
                    out[o..o + inner].copy_from_slice(&x[src..src + inner]);
                    o += inner;
                }
            }
        }
    }
}

/// `out[r, :] = x[r, start..start + len]` for rows of `cols` elements.
///
/// # Panics
/// If `start + len > cols`, or the lengths are not whole rows.
pub fn narrow(x: &[f32], cols: usize, start: usize, len: usize, out: &mut [f32]) {
    assert!(start + len <= cols && cols > 0, "narrow: {start}+{len} > {cols} columns");
    assert_eq!(x.len() % cols, 0, "narrow: x.len() % cols != 0");
    assert_eq!(out.len(), x.len() / cols * len, "narrow: out.len() != rows * len");
    for (o, xr) in out.chunks_exact_mut(len.max(1)).zip(x.chunks_exact(cols)) {
        o.copy_from_slice(&xr[start..start + len]);
    }
}

/// Adds `dy` (`rows × len`) into columns `start..start + len` of `dx` (`rows × cols`).
///
/// # Panics
/// As [`narrow`].
pub fn narrow_backward(dy: &[f32], cols: usize, start: usize, len: usize, dx: &mut [f32]) {
    assert!(start + len <= cols && cols > 0, "narrow_backward: {start}+{len} > {cols} columns");
    assert_eq!(dx.len() % cols, 0, "narrow_backward: dx.len() % cols != 0");
    assert_eq!(dy.len(), dx.len() / cols * len, "narrow_backward: dy.len() != rows * len");
    for (g, d) in dy.chunks_exact(len.max(1)).zip(dx.chunks_exact_mut(cols)) {
        for (d, &g) in d[start..start + len].iter_mut().zip(g) {
            *d += g;
        }
    }
}

/// Joins row-major parts along the last axis: part `i` has `widths[i]`
/// columns and the same row count; `out` has `Σ widths` columns.
///
/// # Panics
/// If the parts' lengths do not match `rows × widths[i]`.
pub fn concat(parts: &[&[f32]], widths: &[usize], out: &mut [f32]) {
    assert_eq!(parts.len(), widths.len(), "concat: parts and widths differ");
    let cols: usize = widths.iter().sum();
    assert!(cols > 0 && out.len().is_multiple_of(cols), "concat: out is not whole rows");
    let rows = out.len() / cols;
    for (p, &w) in parts.iter().zip(widths) {
        assert_eq!(p.len(), rows * w, "concat: a part has the wrong length");
    }
    for r in 0..rows {
        let mut o = r * cols;
        for (p, &w) in parts.iter().zip(widths) {
            out[o..o + w].copy_from_slice(&p[r * w..(r + 1) * w]);
            o += w;
        }
    }
}
