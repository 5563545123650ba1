//! Packing operand panels into contiguous, zero-padded buffers.
//!
//! A panel holds `r` lanes (rows of op(a) or columns of op(b)) over a run of
//! `kc` values of `p`, laid out `[p][lane]`: `dst[p*r + w]`. Lanes past the
//! operand's edge are zeros, so a micro-kernel can always run its full tile
//! (and the caller keeps only the real lanes). Packing only moves values:
//! it never changes a bit, whichever instructions it uses.

use super::driver::Tile;

/// Where panel lanes come from: lane `w`, position `p` of the source is
/// `src[base + w*ws + p*ps]`; one of the strides is 1 (operands are
/// row-major, used as stored or transposed).
#[derive(Clone, Copy)]
pub(super) struct Strided {
    pub(super) base: usize,
    pub(super) ws: usize,
    pub(super) ps: usize,
}

/// Packs one panel of `r` lanes: `dst[p*r + w] = src[s.base + w*s.ws +
/// p*s.ps]` for `w < width`, `0.0` for `width <= w < r`, `p < kc`
/// (`dst.len() == kc*r`).
///
/// # Panics
/// If a source element lies outside `src`, or the shape is inconsistent.
pub(super) fn panel<K: Tile>(kern: K, dst: &mut [f32], src: &[f32], s: Strided, (width, r): (usize, usize), kc: usize) {
    assert!(dst.len() == kc * r && (1..=r).contains(&width) && kc > 0, "matmul: bad panel shape");
    let last = s.base + (width - 1) * s.ws + (kc - 1) * s.ps;
    assert!(last < src.len(), "matmul: panel outside its operand");
    let src = &src[s.base..];
    if s.ws != 1 {
        debug_assert!(s.ps == 1);
        return kern.pack_transposed(dst, src, s.ws, (width, r), kc);
    }
    match r {
        6 => copy_rows::<6>(dst, src, s.ps, width),
        8 => copy_rows::<8>(dst, src, s.ps, width),
        12 => copy_rows::<12>(dst, src, s.ps, width),
        16 => copy_rows::<16>(dst, src, s.ps, width),
        32 => copy_rows::<32>(dst, src, s.ps, width),
        _ => copy_rows_any(dst, src, s.ps, (width, r)),
    }
}

/// [`copy_rows`] for a lane count without a fixed-size instance.
fn copy_rows_any(dst: &mut [f32], src: &[f32], ps: usize, (width, r): (usize, usize)) {
    for (p, row) in dst.chunks_exact_mut(r).enumerate() {
        row[..width].copy_from_slice(&src[p * ps..][..width]);
        row[width..].fill(0.0);
    }
}

/// Lanes contiguous in the source: `dst[p*R..][..width] = src[p*ps..][..width]`.
fn copy_rows<const R: usize>(dst: &mut [f32], src: &[f32], ps: usize, width: usize) {
    if width == R {
        // Fixed-size copies: inlined vector moves, no memcpy call per row.
        for (p, row) in dst.chunks_exact_mut(R).enumerate() {
            let from: &[f32; R] = src[p * ps..][..R].try_into().expect("R elements");
            row.copy_from_slice(from);
        }
        return;
    }
    copy_rows_any(dst, src, ps, (width, R));
}

/// The portable transposing pack: `dst[p*r + w] = src[w*ws + p]` for
/// `w < width` (zeros for `width <= w < r`), `p < kc`; each source run is
/// read start to end.
pub(super) fn transposed_scalar(dst: &mut [f32], src: &[f32], ws: usize, (width, r): (usize, usize), kc: usize) {
    if width < r {
        dst.fill(0.0);
    }
    for w in 0..width {
        for (p, &v) in src[w * ws..][..kc].iter().enumerate() {
            dst[p * r + w] = v;
        }
    }
}
