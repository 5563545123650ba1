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

/// Packs lanes `0..width` of `s` (lane `w`, position `p` at
/// `src[s.base + w*s.ws + p*s.ps]`) into consecutive panels of `r` lanes:
/// panel `q` holds lanes `q*r..` at `dst[q*kc*r..]`, `dst[q*kc*r + p*r +
/// w] = lane q*r + w` (zeros past `width`). `dst` holds exactly
/// `width.div_ceil(r)` panels.
///
/// # Panics
/// If a source element lies outside `src`, or the shape is inconsistent.
pub(super) fn panels<K: Tile>(
    kern: K,
    dst: &mut [f32],
    src: &[f32],
    s: Strided,
    (width, r): (usize, usize),
    kc: usize,
) {
    let len = kc * r;
    assert!(width > 0 && kc > 0 && r > 0 && dst.len() == width.div_ceil(r) * len, "matmul: bad panel shape");
    let last = s.base + (width - 1) * s.ws + (kc - 1) * s.ps;
    assert!(last < src.len(), "matmul: panel outside its operand");
    let src = &src[s.base..];
    if s.ws != 1 {
        debug_assert!(s.ps == 1);
        for (q, d) in dst.chunks_exact_mut(len).enumerate() {
            let w0 = q * r;
            kern.pack_transposed(d, &src[w0 * s.ws..], s.ws, ((width - w0).min(r), r), kc);
        }
        return;
    }
    match r {
        6 => across::<6>(dst, src, s.ps, width, kc),
        8 => across::<8>(dst, src, s.ps, width, kc),
        12 => across::<12>(dst, src, s.ps, width, kc),
        16 => across::<16>(dst, src, s.ps, width, kc),
        32 => across::<32>(dst, src, s.ps, width, kc),
        64 => across::<64>(dst, src, s.ps, width, kc),
        _ => across_any(dst, src, s.ps, (width, r), kc),
    }
}

/// Lanes contiguous in the source: position `p` of every lane is one run
/// `src[p*ps..][..width]`, read start to end (the panels are written `R`
/// floats at a time, with fixed-size copies where a panel is full).
fn across<const R: usize>(dst: &mut [f32], src: &[f32], ps: usize, width: usize, kc: usize) {
    let full = width / R;
    for p in 0..kc {
        let run = &src[p * ps..][..width];
        for q in 0..full {
            let from: &[f32; R] = run[q * R..][..R].try_into().expect("R lanes");
            dst[q * kc * R + p * R..][..R].copy_from_slice(from);
        }
        if full * R < width {
            let d = &mut dst[full * kc * R + p * R..][..R];
            d[..width - full * R].copy_from_slice(&run[full * R..]);
            d[width - full * R..].fill(0.0);
        }
    }
}

/// [`across`] for a lane count without a fixed-size instance.
fn across_any(dst: &mut [f32], src: &[f32], ps: usize, (width, r): (usize, usize), kc: usize) {
    for p in 0..kc {
        let run = &src[p * ps..][..width];
        for (q, lanes) in run.chunks(r).enumerate() {
            let d = &mut dst[q * kc * r + p * r..][..r];
            d[..lanes.len()].copy_from_slice(lanes);
            d[lanes.len()..].fill(0.0);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{panels, Strided};
    use crate::matmul::driver::Tile;
    use crate::matmul::generic::Scalar;

    /// `panels` against its definition, for `kern`'s packing code: both
    /// source layouts, lane counts of every kernel, ragged widths and `kc`
    /// not a multiple of 8.
    fn check<K: Tile>(kern: K) {
        let src: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        for r in [4usize, 6, 8, 12, 16, 32, 64] {
            for (width, kc) in [(1, 1), (r, 8), (r - 1, 13), (3 * r + 2, 21), (2 * r, 64)] {
                for (ws, ps) in [(1, 211), (173, 1)] {
                    let s = Strided { base: 7, ws, ps };
                    let mut dst = vec![f32::NAN; width.div_ceil(r) * kc * r];
                    panels(kern, &mut dst, &src, s, (width, r), kc);
                    for (idx, &got) in dst.iter().enumerate() {
                        let (q, p, w) = (idx / (kc * r), idx % (kc * r) / r, idx % r);
                        let lane = q * r + w;
                        let want = if lane < width { src[7 + lane * ws + p * ps] } else { 0.0 };
                        assert!(got.to_bits() == want.to_bits(), "r={r} width={width} kc={kc} ws={ws}: [{idx}]");
                    }
                }
            }
        }
    }

    #[test]
    fn panels_hold_their_definition_on_every_path() {
        check(Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::matmul::x86::{Avx2, Avx512};
            match Avx2::detect() {
                Some(k) => check(k),
                None => eprintln!("skipping the avx2 pack: CPU lacks it"),
            }
            match Avx512::detect() {
                Some(k) => check(k),
                None => eprintln!("skipping the avx512 pack: CPU lacks it"),
            }
        }
    }
}
