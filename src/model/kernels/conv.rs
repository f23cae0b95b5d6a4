//! 3x3 convolution (padding 1, stride 1 or 2) as a candle op on
//! *channel-major* activations `[C, B, H, W]`: a convolution is then one
//! matrix product `[O, C*9] x [C*9, B*H*W]` of the weights and the image's
//! patches (im2col).
//!
//! On the CPU the patches are a custom op, [`Im2Col`], whose backward is
//! its adjoint [`Col2Im`] and vice versa, so second derivatives work (and
//! second-order MAML works through it); elsewhere [`im2col_composite`]
//! builds them of candle primitives (pad, narrow, reshape, stack).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;

/// 3x3 convolution with padding 1 and stride 1 or 2 on `[C, B, H, W]`.
///
/// `w`: `[O, C, 3, 3]`, `b`: `[O]`; returns `[O, B, Ho, Wo]` with
/// `Ho = (H - 1) / stride + 1` (as PyTorch's `Conv2d(k=3, p=1)`).
///
/// y[o, n, i, j] = b[o] + sum_{c, dy, dx} w[o, c, dy, dx] * xpad[c, n, s*i + dy, s*j + dx]
///
/// On the CPU the patches come from the [`Im2Col`] custom op (whose
/// backward is [`Col2Im`] and vice versa, so second derivatives work); on
/// other devices from [`im2col_composite`], built of candle primitives.
pub fn conv3x3(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize) -> Result<Tensor> {
    let (c, n, h, wd) = x.dims4()?;
    let o = w.dim(0)?;
    let ho = (h - 1) / stride + 1;
    let wo = (wd - 1) / stride + 1;
    let cols = if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Im2Col {
            c,
            n,
            h,
            w: wd,
            stride,
        })?
    } else {
        im2col_composite(x, stride)?
    };
    let y = w.reshape((o, c * 9))?.matmul(&cols)?;
    let y = y.broadcast_add(&b.reshape((o, 1))?)?;
    y.reshape((o, n, ho, wo))
}

/// Patches of a 3x3, padding-1 convolution from candle primitives (pad,
/// narrow, reshape, stack): `[C, B, H, W]` -> `[C*9, B*Ho*Wo]`, row index
/// `c*9 + dy*3 + dx`. Slower than [`Im2Col`] (its backward allocates a
/// padded tensor per tap) but runs on any device.
pub fn im2col_composite(x: &Tensor, stride: usize) -> Result<Tensor> {
    let (c, n, h, wd) = x.dims4()?;
    let ho = (h - 1) / stride + 1;
    let wo = (wd - 1) / stride + 1;
    // Pad 1 on top/left; on bottom/right enough that every strided window
    // (length stride*ho starting at dy <= 2) fits. Extra rows beyond the
    // usual 1 are only ever read by the discarded stride phases.
    let pad_b = (1 + stride * ho).saturating_sub(h).max(1);
    let pad_r = (1 + stride * wo).saturating_sub(wd).max(1);
    let xp = x.pad_with_zeros(2, 1, pad_b)?.pad_with_zeros(3, 1, pad_r)?;
    let mut cols = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            let v = xp.narrow(2, dy, stride * ho)?.narrow(3, dx, stride * wo)?;
            let v = if stride == 1 {
                v
            } else {
                v.reshape((c, n, ho, stride, wo, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((c, n, ho, wo))?
            };
            cols.push(v);
        }
    }
    Tensor::stack(&cols, 1)?.reshape((c * 9, n * ho * wo))
}

/// Geometry shared by [`Im2Col`] and [`Col2Im`]: a `[c, n, h, w]` image and
/// 3x3 windows with padding 1 and the given stride.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    pub c: usize,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
}

/// The adjoint of [`Im2Col`]: scatters-adds `[C*9, B*Ho*Wo]` patches back
/// into a `[C, B, H, W]` image.
#[derive(Debug, Clone, Copy)]
pub struct Col2Im(pub Im2Col);

impl Im2Col {
    fn out_hw(&self) -> (usize, usize) {
        (
            (self.h - 1) / self.stride + 1,
            (self.w - 1) / self.stride + 1,
        )
    }

    /// The output indices `lo..hi` (along one axis of `len` inputs and
    /// `out` outputs) whose input `stride * j + d - 1` lies inside the
    /// image; the others read the zero padding.
    #[inline]
    fn inside(&self, d: usize, len: usize, out: usize) -> (usize, usize) {
        let lo = usize::from(d == 0);
        let hi = if len >= d {
            ((len - d) / self.stride + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Fill one row of patches: tap `tap` (`dy * 3 + dx`) of one channel
    /// `x_c` (`[n, h, w]`) for images `b0..b0 + nb`, `row` of length
    /// `nb * ho * wo`. Every element is written (padding as zero).
    #[inline(always)]
    pub(crate) fn fill_row<T: Copy + Default>(
        &self,
        x_c: &[T],
        tap: usize,
        b0: usize,
        row: &mut [T],
    ) {
        let (ho, wo) = self.out_hw();
        let (h, w, s) = (self.h, self.w, self.stride);
        let (dy, dx) = (tap / 3, tap % 3);
        let (ilo, ihi) = self.inside(dy, h, ho);
        let (jlo, jhi) = self.inside(dx, w, wo);
        let zero = T::default();
        for (bi, img) in row.chunks_exact_mut(ho * wo).enumerate() {
            let b = b0 + bi;
            for (i, d) in img.chunks_exact_mut(wo).enumerate() {
                if i < ilo || i >= ihi {
                    d.fill(zero);
                    continue;
                }
                let y = s * i + dy - 1;
                let src = &x_c[(b * h + y) * w..(b * h + y + 1) * w];
                d[..jlo].fill(zero);
                d[jhi..].fill(zero);
                if s == 1 {
                    d[jlo..jhi].copy_from_slice(&src[jlo + dx - 1..jhi + dx - 1]);
                } else if jhi > jlo {
                    let from = src[s * jlo + dx - 1..].iter().step_by(s);
                    for (v, x) in d[jlo..jhi].iter_mut().zip(from) {
                        *v = *x;
                    }
                }
            }
        }
    }

    /// The adjoint of [`Im2Col::fill_row`]: add one row of patch gradients
    /// into the images `img` (`[nb, h, w]` of one channel).
    #[inline(always)]
    pub(crate) fn add_row<T: Copy + std::ops::AddAssign>(
        &self,
        row: &[T],
        tap: usize,
        img: &mut [T],
    ) {
        let (ho, wo) = self.out_hw();
        let (h, w, s) = (self.h, self.w, self.stride);
        let (dy, dx) = (tap / 3, tap % 3);
        let (ilo, ihi) = self.inside(dy, h, ho);
        let (jlo, jhi) = self.inside(dx, w, wo);
        for (bi, src_img) in row.chunks_exact(ho * wo).enumerate() {
            for i in ilo..ihi {
                let y = s * i + dy - 1;
                let dst = &mut img[(bi * h + y) * w..(bi * h + y + 1) * w];
                let src = &src_img[i * wo..(i + 1) * wo];
                if s == 1 {
                    for (d, v) in dst[jlo + dx - 1..jhi + dx - 1]
                        .iter_mut()
                        .zip(&src[jlo..jhi])
                    {
                        *d += *v;
                    }
                } else if jhi > jlo {
                    let to = dst[s * jlo + dx - 1..].iter_mut().step_by(s);
                    for (d, v) in to.zip(&src[jlo..jhi]) {
                        *d += *v;
                    }
                }
            }
        }
    }

    /// Output planes at most this wide take the offset-table path
    /// ([`Im2Col::taps`]): on small maps (Omniglot's 14, 7, 4 and 2 at
    /// stride 2) the row-by-row copy spends its time on per-row set-up for
    /// rows of 2-14 values.
    pub(crate) const TABLE_MAX_WIDTH: usize = 16;

    /// Whether this geometry takes the offset-table path.
    pub(crate) fn small(&self) -> bool {
        self.out_hw().1 <= Self::TABLE_MAX_WIDTH
    }

    /// For each tap (`dy * 3 + dx`) and output position of one image plane
    /// (`Ho * Wo`, row-major), the offset of the input pixel it reads in
    /// that image's `[H, W]` plane, or `u32::MAX` where it reads the zero
    /// padding. A function of the geometry only.
    pub(crate) fn taps(&self) -> Vec<u32> {
        let (ho, wo) = self.out_hw();
        let (h, w, s) = (self.h, self.w, self.stride);
        let mut t = Vec::with_capacity(9 * ho * wo);
        for tap in 0..9 {
            let (dy, dx) = (tap / 3, tap % 3);
            for i in 0..ho {
                for j in 0..wo {
                    // Input (s i + dy - 1, s j + dx - 1), padding outside.
                    let (y, x) = ((s * i + dy).wrapping_sub(1), (s * j + dx).wrapping_sub(1));
                    t.push(if y < h && x < w {
                        (y * w + x) as u32
                    } else {
                        u32::MAX
                    });
                }
            }
        }
        t
    }

    /// The offset table where this geometry takes the table path
    /// ([`Im2Col::taps`] where [`Im2Col::small`]): built once per call of
    /// a kernel and handed to every chunk.
    pub(crate) fn table(&self) -> Option<Vec<u32>> {
        self.small().then(|| self.taps())
    }

    /// One row of patches (as [`Im2Col::fill_row`]): small maps gather
    /// through `taps` ([`Im2Col::taps`], given where [`Im2Col::small`]),
    /// larger ones copy row by row. Both write the same values.
    #[inline(always)]
    fn patch_row<T: Copy + Default>(
        &self,
        x_c: &[T],
        tap: usize,
        b0: usize,
        row: &mut [T],
        taps: Option<&[u32]>,
    ) {
        match taps {
            Some(t) => {
                let po = t.len() / 9;
                self.gather_row(x_c, &t[tap * po..(tap + 1) * po], b0, row)
            }
            None => self.fill_row(x_c, tap, b0, row),
        }
    }

    /// [`Im2Col::fill_row`] through one tap's offsets `off` (a slice of
    /// [`Im2Col::taps`]): the same values.
    #[inline(always)]
    fn gather_row<T: Copy + Default>(&self, x_c: &[T], off: &[u32], b0: usize, row: &mut [T]) {
        let pi = self.h * self.w;
        let zero = T::default();
        for (bi, dst) in row.chunks_exact_mut(off.len()).enumerate() {
            let img = &x_c[(b0 + bi) * pi..(b0 + bi + 1) * pi];
            // Padding offsets are out of range: `get` gives None, 0.
            for (d, &o) in dst.iter_mut().zip(off) {
                *d = img.get(o as usize).copied().unwrap_or(zero);
            }
        }
    }

    /// The adjoint of [`Im2Col::patch_row`] over all rows for channel
    /// `ci`: add the
    /// patch-gradient rows `cols` (`[C*9, nb*Ho*Wo]`) of that channel's
    /// nine taps into `img` (`[nb, H, W]`, images `b0..b0 + nb` of it).
    #[inline(always)]
    pub(crate) fn add_channel<T: Copy + std::ops::AddAssign>(
        &self,
        cols: &[T],
        ci: usize,
        taps: Option<&[u32]>,
        img: &mut [T],
    ) {
        let len = cols.len() / (self.c * 9);
        let Some(taps) = taps else {
            for tap in 0..9 {
                let r = ci * 9 + tap;
                self.add_row(&cols[r * len..(r + 1) * len], tap, img);
            }
            return;
        };
        let (ho, wo) = self.out_hw();
        let (po, pi) = (ho * wo, self.h * self.w);
        for tap in 0..9 {
            let r = ci * 9 + tap;
            let off = &taps[tap * po..(tap + 1) * po];
            let row = &cols[r * len..(r + 1) * len];
            for (src, dst) in row.chunks_exact(po).zip(img.chunks_exact_mut(pi)) {
                for (&v, &o) in src.iter().zip(off) {
                    if let Some(d) = dst.get_mut(o as usize) {
                        *d += v;
                    }
                }
            }
        }
    }

    pub(crate) fn fwd<T: Copy + Default + Send + Sync>(&self, x: &[T]) -> Vec<T> {
        let (ho, wo) = self.out_hw();
        let m = self.n * ho * wo;
        let plane = self.n * self.h * self.w;
        let mut out = vec![T::default(); self.c * 9 * m];
        let taps = self.table();
        out.par_chunks_mut(m).enumerate().for_each(|(r, row)| {
            let ci = r / 9;
            self.patch_row(
                &x[ci * plane..(ci + 1) * plane],
                r % 9,
                0,
                row,
                taps.as_deref(),
            );
        });
        out
    }

    pub(crate) fn adjoint<T: Copy + Default + Send + Sync + std::ops::AddAssign>(
        &self,
        cols: &[T],
    ) -> Vec<T> {
        let (ho, wo) = self.out_hw();
        let (n, h, w) = (self.n, self.h, self.w);
        let m = n * ho * wo;
        let mut out = vec![T::default(); self.c * n * h * w];
        let taps = self.table();
        debug_assert_eq!(cols.len(), self.c * 9 * m);
        out.par_chunks_mut(n * h * w)
            .enumerate()
            .for_each(|(ci, img)| self.add_channel(cols, ci, taps.as_deref(), img));
        out
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ho, wo) = self.out_hw();
        let shape = Shape::from((self.c * 9, self.n * ho * wo));
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.fwd(contiguous_slice(v, l, "im2col")?)),
            CpuStorage::F64(v) => CpuStorage::F64(self.fwd(contiguous_slice(v, l, "im2col")?)),
            _ => candle_core::bail!("im2col: only f32 and f64 are supported"),
        };
        Ok((out, shape))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(*self))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let shape = Shape::from((g.c, g.n, g.h, g.w));
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(g.adjoint(contiguous_slice(v, l, "col2im")?)),
            CpuStorage::F64(v) => CpuStorage::F64(g.adjoint(contiguous_slice(v, l, "col2im")?)),
            _ => candle_core::bail!("col2im: only f32 and f64 are supported"),
        };
        Ok((out, shape))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(self.0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The offset-table path of small maps writes exactly what the
    /// row-by-row path writes, and adds back exactly what it adds back:
    /// odd and even sizes, stride 1 and 2, 1x1 to 28x28, a chunk that
    /// starts past the first image.
    #[test]
    fn table_path_equals_the_row_path() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        for (h, w, stride) in [
            (28, 28, 2),
            (14, 14, 2),
            (7, 7, 2),
            (4, 4, 2),
            (2, 2, 2),
            (1, 1, 2),
            (1, 1, 1),
            (5, 8, 2),
            (6, 5, 1),
            (9, 9, 1),
            (3, 7, 1),
        ] {
            let (c, n, b0, nb) = (3, 4, 1, 2);
            let g = Im2Col { c, n, h, w, stride };
            assert!(g.small(), "{h}x{w}");
            let x: Vec<f64> = (0..c * n * h * w).map(|_| next()).collect();
            let (ho, wo) = g.out_hw();
            let len = nb * ho * wo;
            let (mut table, taps) = (vec![f64::NAN; c * 9 * len], g.table());
            for (r, row) in table.chunks_exact_mut(len).enumerate() {
                let plane = n * h * w;
                let x_c = &x[r / 9 * plane..(r / 9 + 1) * plane];
                g.patch_row(x_c, r % 9, b0, row, taps.as_deref());
            }
            let mut rows = vec![f64::NAN; c * 9 * len];
            for (r, row) in rows.chunks_exact_mut(len).enumerate() {
                let plane = n * h * w;
                g.fill_row(&x[r / 9 * plane..(r / 9 + 1) * plane], r % 9, b0, row);
            }
            assert_eq!(table, rows, "{h}x{w} stride {stride}");
            // The adjoint, channel by channel, on top of nonzero images.
            let cols: Vec<f64> = (0..c * 9 * len).map(|_| next()).collect();
            let taps = g.taps();
            for ci in 0..c {
                let start: Vec<f64> = (0..nb * h * w).map(|_| next()).collect();
                let (mut a, mut b) = (start.clone(), start);
                g.add_channel(&cols, ci, Some(&taps), &mut a);
                g.add_channel(&cols, ci, None, &mut b);
                assert_eq!(a, b, "{h}x{w} stride {stride} channel {ci}");
            }
        }
        // Large maps keep the row path.
        assert!(!Im2Col {
            c: 1,
            n: 1,
            h: 84,
            w: 84,
            stride: 1
        }
        .small());
    }

    #[test]
    fn im2col_matches_composite_forward_and_adjoint() {
        let d = Device::Cpu;
        for (h, w, stride) in [(7, 7, 2), (6, 5, 1), (28, 28, 2), (5, 8, 2), (21, 21, 1)] {
            let x = Tensor::randn(0f64, 1., (3, 2, h, w), &d).unwrap();
            let g = Im2Col {
                c: 3,
                n: 2,
                h,
                w,
                stride,
            };
            let a = x.apply_op1(g).unwrap();
            let b = im2col_composite(&x, stride).unwrap();
            let diff = (a.clone() - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{h}x{w} stride {stride}");
            // <im2col(x), y> == <x, col2im(y)> (adjointness).
            let y = Tensor::randn(0f64, 1., a.shape(), &d).unwrap();
            let lhs = (a * &y)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let back = y.apply_op1(Col2Im(g)).unwrap();
            let rhs = (x * back)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{lhs} {rhs}");
        }
        let _ = DType::F32;
    }
}
