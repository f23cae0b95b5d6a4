//! The learner's building blocks, in one place so they can be swapped for
//! fused kernels: 3x3 convolution, batch norm and 2x2 max pooling.
//!
//! All three work on *channel-major* activations `[C, B, H, W]`: a
//! convolution is then one matrix product `[O, C*9] x [C*9, B*H*W]`, and
//! batch-norm statistics are a reduction over the contiguous second axis of
//! a `[C, B*H*W]` view (reducing over dims (0, 2, 3) of `[B, C, H, W]` was
//! measured about 50x slower in candle).
//!
//! Every op here is composed of candle primitives (pad, narrow, reshape,
//! cat, matmul, max, arithmetic) whose backward passes are themselves
//! differentiable, so second-order MAML works through them. In particular we
//! do **not** use candle's `max_pool2d`, whose backward (candle 0.11.1)
//! scales the gradient by (number of maxima)/(k*k) and misroutes it for odd
//! input sizes; [`max_pool2x2`] takes the max of four strided views, whose
//! gradient goes exactly to the arg-max (the finite-difference tests in
//! `learner.rs` check this).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// A strided matrix view for [`matmul`]: element (r, c) is
/// `data[r * rs + c * cs]` (row-major: `rs = cols, cs = 1`; its transpose:
/// `rs = 1, cs = rows`).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// `dst[m×n] = (acc ? dst : 0) + lhs[m×k] · rhs[k×n]`, `dst` row-major,
/// for the fused kernels. Bounds are checked here; the product is the
/// `gemm` crate's (runtime-dispatched SIMD), on rayon's threads when `par`
/// (else on the caller's: the caller is already parallel), in the same
/// order on every run.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: num_traits::Float + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    acc: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: bool,
) {
    assert!(dst.len() >= m * n && m > 0 && n > 0);
    // SAFETY: dst holds m rows of n (asserted); it is borrowed mutably, so
    // nothing else reads or writes it meanwhile.
    unsafe { matmul_raw(m, n, k, dst.as_mut_ptr(), n, acc, lhs, rhs, par) }
}

/// [`matmul`] into an `m×n` block of a larger row-major matrix: row `r`
/// of the block starts at `dst + r * dst_rs`. For kernels whose threads
/// fill disjoint column ranges of one matrix.
///
/// # Safety
/// `dst + r * dst_rs + c` must be valid for writes (and reads when `acc`)
/// for every `r < m`, `c < n`, and no other thread may touch those
/// elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_raw<T: num_traits::Float + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    acc: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: bool,
) {
    let last = |v: &Mat<T>, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    assert!(m > 0 && n > 0 && k > 0 && dst_rs >= n);
    assert!(last(&lhs, m, k) < lhs.data.len() && last(&rhs, k, n) < rhs.data.len());
    let parallelism = if par {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every operand index the product reads is within the slices
    // (asserted above); the destination is the caller's promise; dst
    // aliases neither operand (they are shared borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether this CPU runs the AVX2 builds of the kernels (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2"))
}

static SIMD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Allow (the default) or forbid the AVX2 builds of the CPU kernels, for
/// tests and A/B timing: both builds give the same bits
/// (`avx2_and_baseline_builds_give_the_same_bits`).
pub fn set_simd(on: bool) {
    SIMD.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the kernels run their AVX2 builds: allowed and supported.
#[cfg(target_arch = "x86_64")]
pub(crate) fn use_avx2() -> bool {
    SIMD.load(std::sync::atomic::Ordering::Relaxed) && has_avx2()
}

/// Run `f` compiled for AVX2 where the CPU has it (8-wide vectors; the
/// default build targets baseline x86-64, whose SSE2 is 4-wide). `f`'s
/// body and what it inlines (the element-wise kernels below are
/// `#[inline(always)]` for this) are compiled again with AVX2 enabled.
/// Without fast-math flags LLVM neither fuses multiply-adds nor reorders
/// sums, so both builds compute the same values bit for bit.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

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

fn contiguous_slice<'a, T>(v: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
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

/// Batch statistics of one layer: mean and biased variance per channel,
/// each `[C, 1]`.
#[derive(Debug, Clone)]
pub struct BnStats {
    pub mean: Tensor,
    pub var: Tensor,
    /// Values per channel the statistics were taken over (B*H*W).
    pub count: usize,
}

/// Batch norm on `[C, B, H, W]` with the statistics of this batch (returned)
/// or with given ones (e.g. the support set's, for non-transductive
/// prediction). No running statistics exist.
///
/// y = gamma * (x - mean) / sqrt(var + eps) + beta (gamma = 1 when absent,
/// as `tf.contrib.layers.batch_norm(scale=False)`).
pub fn batch_norm(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: &Tensor,
    eps: f64,
    stats: Option<&BnStats>,
) -> Result<(Tensor, BnStats)> {
    let dims = x.dims().to_vec();
    let c = dims[0];
    let flat = x.reshape((c, ()))?;
    let st = match stats {
        Some(s) => s.clone(),
        None => {
            let mean = flat.mean_keepdim(1)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            BnStats {
                mean,
                var,
                count: flat.dim(1)?,
            }
        }
    };
    let inv = (st.var.clone() + eps)?.sqrt()?.recip()?;
    let scale = match gamma {
        Some(g) => g.reshape((c, 1))?.mul(&inv)?,
        None => inv,
    };
    let y = flat
        .broadcast_sub(&st.mean)?
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.reshape((c, 1))?)?;
    Ok((y.reshape(dims)?, st))
}

/// 2x2 max pooling with stride 2 on `[C, B, H, W]` (floor: an odd last row
/// or column is dropped, as PyTorch's `MaxPool2d(2)`). The gradient flows to
/// the maximum of each window only.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (c, n, h, w) = x.dims4()?;
    let (ho, wo) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, 2 * ho)?.narrow(3, 0, 2 * wo)?
    } else {
        x.clone()
    };
    x.reshape((c, n, ho, 2, wo, 2))?.max(D::Minus1)?.max(3)
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

/// One step of the layer-1 LSTM of the meta-learner, on feature-major
/// pre-activations `z = W_ih x + W_hh h + b` (`[4H, n]`, gate blocks in the
/// order input, forget, cell, output) and the previous cell state `c_prev`
/// (`[H, n]`). Returns `(h, c)`, each `[H, n]`:
///
/// c = sigmoid(z_f) * c_prev + sigmoid(z_i) * tanh(z_g);  h = sigmoid(z_o) * tanh(c)
///
/// On the CPU this is one fused custom op (parallel over hidden units, one
/// pass over memory, analytic backward); elsewhere it is composed of candle
/// ops. The fused op has no second derivative (the meta-learner needs none).
pub fn lstm_cell(z: &Tensor, c_prev: &Tensor) -> Result<(Tensor, Tensor)> {
    let hd = c_prev.dim(0)?;
    if z.device().is_cpu() {
        let out = z.contiguous()?.apply_op2(&c_prev.contiguous()?, LstmCell)?;
        return Ok((out.narrow(0, 0, hd)?, out.narrow(0, hd, hd)?));
    }
    let sig = candle_nn::ops::sigmoid;
    let i = sig(&z.narrow(0, 0, hd)?)?;
    let f = sig(&z.narrow(0, hd, hd)?)?;
    let g = z.narrow(0, 2 * hd, hd)?.tanh()?;
    let o = sig(&z.narrow(0, 3 * hd, hd)?)?;
    let c = ((f * c_prev)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Ok((h, c))
}

/// Fused LSTM cell (see [`lstm_cell`]): `(z [4H, n], c_prev [H, n]) -> [2H, n]`
/// holding `h` then `c`.
#[derive(Debug, Clone, Copy)]
pub struct LstmCell;

/// Backward of [`LstmCell`]: `(z, c_prev, grad [2H, n]) -> [5H, n]` holding
/// `dz` (4H rows) then `dc_prev` (H rows).
#[derive(Debug, Clone, Copy)]
struct LstmCellBwd;

/// Activations of the fused LSTM: libm in float64 (exact reference for
/// gradient checks), a branch-free vectorisable exp in float32 (libm's
/// `tanhf`/`expf` were two thirds of a meta-LSTM episode under perf).
/// The activations the fused kernels use (see [`exp_f32`]).
pub trait Act: num_traits::Float + Send + Sync {
    /// The logistic sigmoid.
    fn sig(self) -> Self;
    /// The hyperbolic tangent.
    fn th(self) -> Self;
}

/// Which implementation of the hot paths runs: the fused kernels (one
/// pass per block of work with a hand-written backward; the default) or
/// the composed candle graph they replace (the reference the fused ones
/// are tested against). Both compute the same numbers to float tolerance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    #[default]
    Fused,
    Composed,
}

impl Act for f64 {
    #[inline]
    fn sig(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline]
    fn th(self) -> f64 {
        self.tanh()
    }
}

/// e^x for f32 with relative error about 2e-7: x = k ln2 + r with integer k
/// and |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial, 2^k by
/// building the exponent bits.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (exact for
    // |x log2 e| < 2^22): branch-free and vectorisable, where `round()` is
    // a libm call on baseline x86-64.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    // Cody-Waite: ln 2 split so that k * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from the bits of t: its low mantissa bits hold k in two's
    // complement, so (bits + 127) << 23 keeps exactly the exponent field
    // k + 127 (in 1..=254 after the clamp). Integer ops only, so the loop
    // around this vectorises (`k as i32` saturates and does not).
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

impl Act for f32 {
    #[inline]
    fn sig(self) -> f32 {
        1.0 / (1.0 + exp_f32(-self))
    }
    #[inline]
    fn th(self) -> f32 {
        // tanh x = 1 - 2 / (e^{2x} + 1): absolute error ~1e-7.
        1.0 - 2.0 / (exp_f32(2.0 * self) + 1.0)
    }
}

fn lstm_fwd<T: Act>(z: &[T], cp: &[T], hd: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); 2 * hd * n];
    let (hs, cs) = out.split_at_mut(hd * n);
    hs.par_chunks_mut(n)
        .zip(cs.par_chunks_mut(n))
        .enumerate()
        .for_each(|(k, (h, c))| {
            let zi = &z[k * n..(k + 1) * n];
            let zf = &z[(hd + k) * n..(hd + k + 1) * n];
            let zg = &z[(2 * hd + k) * n..(2 * hd + k + 1) * n];
            let zo = &z[(3 * hd + k) * n..(3 * hd + k + 1) * n];
            let cpk = &cp[k * n..(k + 1) * n];
            for j in 0..n {
                let cj = zf[j].sig() * cpk[j] + zi[j].sig() * zg[j].th();
                c[j] = cj;
                h[j] = zo[j].sig() * cj.th();
            }
        });
    out
}

fn lstm_bwd<T: Act>(z: &[T], cp: &[T], gr: &[T], hd: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); 5 * hd * n];
    let (dzi, rest) = out.split_at_mut(hd * n);
    let (dzf, rest) = rest.split_at_mut(hd * n);
    let (dzg, rest) = rest.split_at_mut(hd * n);
    let (dzo, dcp) = rest.split_at_mut(hd * n);
    let one = T::one();
    dzi.par_chunks_mut(n)
        .zip(dzf.par_chunks_mut(n))
        .zip(dzg.par_chunks_mut(n))
        .zip(dzo.par_chunks_mut(n))
        .zip(dcp.par_chunks_mut(n))
        .enumerate()
        .for_each(|(k, ((((di, df), dg), d_o), dc_prev))| {
            let row = |r: usize| &z[r * n..(r + 1) * n];
            let (zi, zf, zg, zo) = (row(k), row(hd + k), row(2 * hd + k), row(3 * hd + k));
            let cpk = &cp[k * n..(k + 1) * n];
            let gh = &gr[k * n..(k + 1) * n];
            let gc = &gr[(hd + k) * n..(hd + k + 1) * n];
            for j in 0..n {
                let (i, f, g, o) = (zi[j].sig(), zf[j].sig(), zg[j].th(), zo[j].sig());
                let c = f * cpk[j] + i * g;
                let tc = c.th();
                // dL/dc through h = o * tanh(c), plus the direct gradient of c.
                let dc = gc[j] + gh[j] * o * (one - tc * tc);
                di[j] = dc * g * i * (one - i);
                df[j] = dc * cpk[j] * f * (one - f);
                dg[j] = dc * i * (one - g * g);
                d_o[j] = gh[j] * tc * o * (one - o);
                dc_prev[j] = dc * f;
            }
        });
    out
}

fn lstm_dims(lz: &Layout, lc: &Layout) -> Result<(usize, usize)> {
    let (h4, n) = lz.shape().dims2()?;
    let (hd, n2) = lc.shape().dims2()?;
    if h4 != 4 * hd || n != n2 {
        candle_core::bail!(
            "lstm cell: z {:?} and c_prev {:?} do not match",
            lz.shape(),
            lc.shape()
        );
    }
    Ok((hd, n))
}

impl candle_core::CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "lstm-cell"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (hd, n) = lstm_dims(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(z), CpuStorage::F32(c)) => CpuStorage::F32(lstm_fwd(
                contiguous_slice(z, l1, "lstm")?,
                contiguous_slice(c, l2, "lstm")?,
                hd,
                n,
            )),
            (CpuStorage::F64(z), CpuStorage::F64(c)) => CpuStorage::F64(lstm_fwd(
                contiguous_slice(z, l1, "lstm")?,
                contiguous_slice(c, l2, "lstm")?,
                hd,
                n,
            )),
            _ => candle_core::bail!("lstm cell: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((2 * hd, n))))
    }
    fn bwd(
        &self,
        z: &Tensor,
        c_prev: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let hd = c_prev.dim(0)?;
        let d = z.apply_op3_no_bwd(c_prev, &grad.contiguous()?, &LstmCellBwd)?;
        Ok((
            Some(d.narrow(0, 0, 4 * hd)?),
            Some(d.narrow(0, 4 * hd, hd)?),
        ))
    }
}

impl candle_core::CustomOp3 for LstmCellBwd {
    fn name(&self) -> &'static str {
        "lstm-cell-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (hd, n) = lstm_dims(l1, l2)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(z), CpuStorage::F32(c), CpuStorage::F32(g)) => {
                CpuStorage::F32(lstm_bwd(
                    contiguous_slice(z, l1, "lstm")?,
                    contiguous_slice(c, l2, "lstm")?,
                    contiguous_slice(g, l3, "lstm")?,
                    hd,
                    n,
                ))
            }
            (CpuStorage::F64(z), CpuStorage::F64(c), CpuStorage::F64(g)) => {
                CpuStorage::F64(lstm_bwd(
                    contiguous_slice(z, l1, "lstm")?,
                    contiguous_slice(c, l2, "lstm")?,
                    contiguous_slice(g, l3, "lstm")?,
                    hd,
                    n,
                ))
            }
            _ => candle_core::bail!("lstm cell backward: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((5 * hd, n))))
    }
}

#[cfg(test)]
mod lstm_tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let e = ((exp_f32(x) as f64) / (x as f64).exp() - 1.0).abs();
            worst = worst.max(e);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        for x in [-3.0f32, -0.5, 0.0, 1e-4, 0.7, 5.0] {
            assert!((x.th() - x.tanh()).abs() < 3e-7, "tanh({x})");
            assert!(
                (x.sig() - 1.0 / (1.0 + (-x).exp())).abs() < 3e-7,
                "sigmoid({x})"
            );
        }
    }

    #[test]
    fn fused_lstm_cell_matches_composite_values_and_gradients() {
        let d = Device::Cpu;
        let (hd, n) = (3, 7);
        let z = Var::from_tensor(&Tensor::randn(0f64, 2., (4 * hd, n), &d).unwrap()).unwrap();
        let c = Var::from_tensor(&Tensor::randn(0f64, 1., (hd, n), &d).unwrap()).unwrap();
        let wh = Tensor::randn(0f64, 1., (hd, n), &d).unwrap();
        let wc = Tensor::randn(0f64, 1., (hd, n), &d).unwrap();
        let run = |fused: bool| {
            let (h, cc) = if fused {
                lstm_cell(z.as_tensor(), c.as_tensor()).unwrap()
            } else {
                let zz = z.as_tensor();
                let sig = candle_nn::ops::sigmoid;
                let i = sig(&zz.narrow(0, 0, hd).unwrap()).unwrap();
                let f = sig(&zz.narrow(0, hd, hd).unwrap()).unwrap();
                let g = zz.narrow(0, 2 * hd, hd).unwrap().tanh().unwrap();
                let o = sig(&zz.narrow(0, 3 * hd, hd).unwrap()).unwrap();
                let cc = ((f * c.as_tensor()).unwrap() + (i * g).unwrap()).unwrap();
                ((o * cc.tanh().unwrap()).unwrap(), cc)
            };
            let loss = ((&h * &wh).unwrap().sum_all().unwrap()
                + (&cc * &wc).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            (
                h,
                cc,
                g.get(z.as_tensor()).unwrap().clone(),
                g.get(c.as_tensor()).unwrap().clone(),
            )
        };
        let a = run(true);
        let b = run(false);
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2), (&a.3, &b.3)] {
            let e = (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(e < 1e-12, "fused and composite LSTM differ by {e}");
        }
    }
}
