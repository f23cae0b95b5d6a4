//! 3x3 patches (padding 1, stride 1 or 2) of *channels-last* images
//! `[B, H, W, C]`, and their adjoint, for the fused blocks
//! ([`crate::model::kernels::block`]).
//!
//! Channels-last, the three pixels a kernel row reads are adjacent, so one
//! output position's patch is three contiguous runs of `3 * C` values (one
//! per kernel row), whatever the stride: im2col is a few block copies per
//! position instead of a strided gather per value, as in the channel-major
//! layout of [`crate::model::kernels::conv::Im2Col`]. A patch row is `[K = 9 * C]` in
//! `(ky, kx, c)` order; a chunk's patches are `[positions, K]`.
//!
//! The adjoint (patch gradients back to the image) is written as a gather:
//! each input pixel sums the patch entries that read it, in a fixed order,
//! so threads never write the same pixel and the result does not depend on
//! the thread count.

/// Geometry of one image's patches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patches {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
}

impl Patches {
    /// Output height and width (PyTorch's, for padding 1).
    pub(crate) fn out_hw(&self) -> (usize, usize) {
        (
            (self.h - 1) / self.stride + 1,
            (self.w - 1) / self.stride + 1,
        )
    }

    /// Values per patch row.
    pub(crate) fn k(&self) -> usize {
        9 * self.c
    }

    /// Patches of `nb` consecutive images `x` (`[nb, H, W, C]`) into `cols`
    /// (`[nb * Ho * Wo, 9 * C]`, every value written; padding as zero).
    #[inline(always)]
    pub(crate) fn fill<T: Copy + Default>(&self, x: &[T], cols: &mut [T]) {
        let (ho, wo) = self.out_hw();
        let (c, h, w, s) = (self.c, self.h, self.w, self.stride);
        let (k, img, run) = (self.k(), h * w * c, 3 * c);
        let zero = T::default();
        for (xb, cb) in x.chunks_exact(img).zip(cols.chunks_exact_mut(ho * wo * k)) {
            for (i, ci) in cb.chunks_exact_mut(wo * k).enumerate() {
                for ky in 0..3 {
                    // Input row s i + ky - 1; outside: the padding.
                    let r = (s * i + ky).wrapping_sub(1);
                    if r >= h {
                        for patch in ci.chunks_exact_mut(k) {
                            patch[ky * run..(ky + 1) * run].fill(zero);
                        }
                        continue;
                    }
                    let xr = &xb[r * w * c..(r + 1) * w * c];
                    for (j, patch) in ci.chunks_exact_mut(k).enumerate() {
                        let dst = &mut patch[ky * run..(ky + 1) * run];
                        // Input columns s j - 1 ..= s j + 1.
                        let left = s * j;
                        if left >= 1 && left + 2 <= w {
                            copy_run(dst, &xr[(left - 1) * c..(left + 2) * c]);
                            continue;
                        }
                        for (kx, d) in dst.chunks_exact_mut(c).enumerate() {
                            let col = (left + kx).wrapping_sub(1);
                            if col < w {
                                copy_run(d, &xr[col * c..(col + 1) * c]);
                            } else {
                                d.fill(zero);
                            }
                        }
                    }
                }
            }
        }
    }

    /// For each input row `r`, the pairs `(i, ky)` of output row and
    /// kernel row that read it (`s i + ky - 1 = r`), in increasing `i`;
    /// with `n = w, out = wo` the same for columns.
    fn readers(n: usize, out: usize, s: usize) -> Vec<Vec<(usize, usize)>> {
        let mut v = vec![Vec::new(); n];
        for i in 0..out {
            for ky in 0..3 {
                let r = (s * i + ky).wrapping_sub(1);
                if r < n {
                    v[r].push((i, ky));
                }
            }
        }
        v
    }

    /// The adjoint's table: for each input pixel (row-major in one image),
    /// the offsets in one image's patch gradients (`[Ho * Wo, 9 * C]`) of
    /// the `C`-runs that read it, between `start[q]..start[q + 1]` of
    /// `off`. A function of the geometry only; built once per call.
    pub(crate) fn inverse(&self) -> Inverse {
        let (ho, wo) = self.out_hw();
        let (rows, cols) = (
            Self::readers(self.h, ho, self.stride),
            Self::readers(self.w, wo, self.stride),
        );
        let mut start = vec![0u32];
        let mut off = Vec::new();
        for r in &rows {
            for cl in &cols {
                for &(i, ky) in r {
                    for &(j, kx) in cl {
                        off.push((((i * wo + j) * 9 + ky * 3 + kx) * self.c) as u32);
                    }
                }
                start.push(off.len() as u32);
            }
        }
        Inverse { start, off }
    }

    /// The adjoint of [`Patches::fill`]: the image gradients `dx`
    /// (`[nb, H, W, C]`, every value written) of patch gradients `dcols`
    /// (`[nb * Ho * Wo, 9 * C]`); each pixel's sum in [`Patches::inverse`]'s
    /// order, from zero.
    #[inline(always)]
    pub(crate) fn adjoint<T: num_traits::Float>(&self, dcols: &[T], inv: &Inverse, dx: &mut [T]) {
        let (ho, wo) = self.out_hw();
        let c = self.c;
        let per = ho * wo * self.k();
        for (db, src) in dx
            .chunks_exact_mut(self.h * self.w * c)
            .zip(dcols.chunks_exact(per))
        {
            for (d, se) in db.chunks_exact_mut(c).zip(inv.start.windows(2)) {
                d.fill(T::zero());
                for &o in &inv.off[se[0] as usize..se[1] as usize] {
                    let from = &src[o as usize..o as usize + c];
                    for (a, &v) in d.iter_mut().zip(from) {
                        *a = *a + v;
                    }
                }
            }
        }
    }
}

/// [`Patches::inverse`].
#[derive(Debug, Clone)]
pub(crate) struct Inverse {
    start: Vec<u32>,
    off: Vec<u32>,
}

/// `dst = src`, with fixed-size moves for the first layers' short runs (1,
/// 3 or 9 values: one or three input channels), where a `memcpy` call per
/// run cost more than the copy (memmove 8.3% -> 5.1% of a 10-image
/// mini-ImageNet learner pass).
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn fixed<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) {
        let d: &mut [T; N] = dst.try_into().expect("a run of N values");
        *d = *<&[T; N]>::try_from(src).expect("a run of N values");
    }
    match dst.len() {
        1 => fixed::<T, 1>(dst, src),
        3 => fixed::<T, 3>(dst, src),
        9 => fixed::<T, 9>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patches against the definition, and the adjoint against
    /// <fill(x), g> = <x, adjoint(g)> (exact in integers-as-floats).
    #[test]
    fn patches_and_their_adjoint_match_the_definition() {
        for (c, h, w, s) in [
            (1, 7, 5, 2),
            (3, 6, 6, 1),
            (2, 5, 8, 2),
            (4, 1, 1, 1),
            (2, 2, 3, 2),
        ] {
            let p = Patches { c, h, w, stride: s };
            let (ho, wo) = p.out_hw();
            let nb = 2;
            let x: Vec<f64> = (0..nb * h * w * c).map(|i| (i % 13) as f64 - 6.0).collect();
            let mut cols = vec![f64::NAN; nb * ho * wo * p.k()];
            p.fill(&x, &mut cols);
            for b in 0..nb {
                for i in 0..ho {
                    for j in 0..wo {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                for ci in 0..c {
                                    let (r, q) =
                                        ((s * i + ky) as isize - 1, (s * j + kx) as isize - 1);
                                    let want =
                                        if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
                                            0.0
                                        } else {
                                            x[((b * h + r as usize) * w + q as usize) * c + ci]
                                        };
                                    let at =
                                        ((b * ho + i) * wo + j) * p.k() + (ky * 3 + kx) * c + ci;
                                    assert_eq!(cols[at], want, "{c} {h} {w} {s}");
                                }
                            }
                        }
                    }
                }
            }
            let g: Vec<f64> = (0..cols.len()).map(|i| (i % 7) as f64 - 3.0).collect();
            let mut dx = vec![f64::NAN; x.len()];
            p.adjoint(&g, &p.inverse(), &mut dx);
            let lhs: f64 = cols.iter().zip(&g).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{c} {h} {w} {s}");
            // And pixel by pixel: a unit image picks out its readers.
            for q in 0..x.len() {
                let mut e = vec![0.0; x.len()];
                e[q] = 1.0;
                let mut ce = vec![0.0; cols.len()];
                p.fill(&e, &mut ce);
                let want: f64 = ce.iter().zip(&g).map(|(a, b)| a * b).sum();
                assert_eq!(dx[q], want, "{c} {h} {w} {s} pixel {q}");
            }
        }
    }
}
