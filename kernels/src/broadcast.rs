//! Elementwise binary ops with NumPy broadcasting, and the reduction of a
//! broadcast gradient back to an operand's shape.
//!
//! Shapes align on the right; a dimension of 1 (or a missing one) repeats.
//! The reduction visits output elements in row-major order, so each operand
//! element's sum runs in a fixed order whatever the thread count.

/// Elementwise operation of [`binary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
}

/// The broadcast shape of `a` and `b`, or `None` when they do not broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() < rank { 1 } else { s[i + s.len() - rank] };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Row-major strides of `shape` aligned to rank `rank`, 0 where it broadcasts.
fn strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let mut strides = vec![0; rank];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let o = i + rank - shape.len();
        strides[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

/// Calls `f(out_index, operand_index)` for every element of `out` in
/// row-major order, with the index of the element of `shape` it reads.
fn for_each_index(shape: &[usize], out: &[usize], mut f: impl FnMut(usize, usize)) {
    let strides = strides(shape, out);
    let total: usize = out.iter().product();
    let mut idx = vec![0usize; out.len()];
    let mut src = 0usize;
    for o in 0..total {
        f(o, src);
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            src += strides[d];
            if idx[d] < out[d] {
                break;
            }
            src -= strides[d] * out[d];
            idx[d] = 0;
        }
    }
}

/// `out = a ∘ b` with broadcasting; `out` has [`broadcast_shape`]'s shape.
///
/// # Panics
/// If the shapes do not broadcast or a length differs from its shape.
pub fn binary(kind: BinaryKind, a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out: &mut [f32]) {
    let shape = broadcast_shape(a_shape, b_shape).expect("binary: shapes do not broadcast");
    assert_eq!(a.len(), a_shape.iter().product::<usize>(), "binary: a's length");
    assert_eq!(b.len(), b_shape.iter().product::<usize>(), "binary: b's length");
    assert_eq!(out.len(), shape.iter().product::<usize>(), "binary: out's length");
    if a_shape == b_shape {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = apply(kind, x, y);
        }
        return;
    }
    let mut a_idx = Vec::with_capacity(out.len());
    for_each_index(a_shape, &shape, |_, i| a_idx.push(i));
    for_each_index(b_shape, &shape, |o, j| out[o] = apply(kind, a[a_idx[o]], b[j]));
}

fn apply(kind: BinaryKind, x: f32, y: f32) -> f32 {
    match kind {
        BinaryKind::Add => x + y,
        BinaryKind::Sub => x - y,
        BinaryKind::Mul => x * y,
    }
}

/// `out[j] = Σ grad[o]` over the output elements `o` that read operand
/// element `j` of `shape`, summed in row-major order of `o`; `out` is
/// overwritten.
///
/// # Panics
/// If `shape` does not broadcast to `grad_shape` or a length differs.
pub fn reduce_to(grad: &[f32], grad_shape: &[usize], shape: &[usize], out: &mut [f32]) {
    assert_eq!(grad.len(), grad_shape.iter().product::<usize>(), "reduce_to: grad's length");
    assert_eq!(out.len(), shape.iter().product::<usize>(), "reduce_to: out's length");
    assert_eq!(broadcast_shape(grad_shape, shape).as_deref(), Some(grad_shape), "reduce_to: shapes");
    out.fill(0.0);
    for_each_index(shape, grad_shape, |o, j| out[j] += grad[o]);
}

/// Reads operand `shape`'s broadcast element for each output element:
/// `out[o] = x[index(o)]` (used for products' gradients).
///
/// # Panics
/// If `shape` does not broadcast to `out_shape` or a length differs.
pub fn expand(x: &[f32], shape: &[usize], out_shape: &[usize], out: &mut [f32]) {
    assert_eq!(x.len(), shape.iter().product::<usize>(), "expand: x's length");
    assert_eq!(out.len(), out_shape.iter().product::<usize>(), "expand: out's length");
    for_each_index(shape, out_shape, |o, j| out[o] = x[j]);
}
