//! One learner block as one fused op: 3x3 convolution (padding 1, stride 1
//! or 2) + batch norm with the batch's own statistics + ReLU (+ 2x2 max
//! pool), with its hand-written backward.
//!
//! The composed path ([`crate::model::kernels::conv`],
//! [`crate::model::kernels::batch_norm`], [`crate::model::kernels::pool`])
//! runs about ten candle ops per block, each a pass over memory with a
//! fresh allocation, and candle's autograd keeps every intermediate. Here
//! the work goes in chunks of whole images (about [`CHUNK_COLS`] output
//! positions, so a chunk's patches stay in cache), in parallel over
//! chunks: per chunk one im2col ([`crate::model::kernels::patches`]) and
//! one GEMM (the `gemm` crate, through `crate::model::kernels::gemm`) and
//! the chunk's batch-norm moments; then one pass normalises, applies the
//! ReLU and pools. The backward is the chain rule written out below, chunk by chunk
//! again: it recomputes the chunk's patches instead of keeping them, forms
//! the chunk's dy, and runs two GEMMs (weights; input, skipped for the
//! first block, whose input is the images). The op keeps only the
//! normalised values, 1/sigma and the pool's arg-max. Chunks depend on the
//! shapes only, and per-chunk partial sums are combined in chunk order, so
//! results do not depend on the thread count.
//!
//! Layout: *channels-last* `[B, H, W, C]` in and out (the learner converts
//! at the first block's input and the last block's output): a position's
//! channels are contiguous, so a patch is three block copies, and every
//! per-channel pass (moments, normalisation, pooling, the backward's sums
//! and dy) runs along rows of `C` values, vectorised across channels. The
//! block's parameters come packed in one vector `[w (O*C*9), b (O), gamma
//! (O), beta (O)]` (a candle `cat`, whose backward splits the gradient),
//! `w` in PyTorch's `[O, C, 3, 3]` order.
//!
//! Scope: train-mode batch norm only (statistics of this batch, the mode of
//! every inner-loop and meta-training pass), PyTorch padding, a learned
//! scale, floor pooling. Passes with given statistics (support-set or
//! running statistics), the reference variants and second-order MAML (which
//! differentiates the backward itself) use the composed path;
//! [`crate::model::learner::Learner::fusable`] decides.
//!
//! Equations per channel o over the P = B*Ho*Wo positions p:
//! - y_p = b + sum_k w_k cols_{p,k};  mu = mean(y);  var = mean((y - mu)^2)
//! - xhat_p = (y_p - mu) / sqrt(var + eps);  a_p = max(0, gamma xhat_p + beta)
//! - backward with g = dL/da masked by a > 0 (and routed to the pool's
//!   arg-max): dbeta = sum g;  dgamma = sum g xhat;
//!   dy_p = gamma / (P sqrt(var + eps)) * (P g_p - dbeta - xhat_p dgamma);
//!   dw = cols^T dy;  db = sum dy;  dcols = dy w^T -> dx (the adjoint of
//!   im2col)

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::model::kernels::batch_norm::BnStats;
use crate::model::kernels::gemm::{matmul, matmul_raw, Mat};
use crate::model::kernels::patches::Patches;
use crate::model::kernels::scalar::Scalar;
use crate::model::kernels::simd::simd;

/// Output positions per chunk of whole images (at least one image).
pub const CHUNK_COLS: usize = 512;

/// Fewest chunks per application when the batch allows.
pub const MIN_CHUNKS: usize = 4;

/// What the backward keeps from the forward.
#[derive(Debug)]
struct Saved<T> {
    /// The normalised pre-activations `[B*Ho*Wo, O]`.
    xhat: Vec<T>,
    rstd: Vec<T>,
    mean: Vec<T>,
    var: Vec<T>,
    /// The weights as the patches' right factor ([`ConvBnRelu::weights_kxo`]).
    wk: Vec<T>,
    /// Pool arg-max per output `[B*Ho/2*Wo/2, O]` (0..4: row-major in the
    /// 2x2 window).
    argmax: Vec<u8>,
}

/// What the stack keeps: each block's geometry, input (but the first's,
/// which candle keeps) and [`Saved`].
#[derive(Debug)]
struct Kept<T> {
    geos: Vec<Geo>,
    inputs: Vec<Vec<T>>,
    saved: Vec<Saved<T>>,
}

#[derive(Debug)]
enum Cache {
    F32(Kept<f32>),
    F64(Kept<f64>),
}

/// One fused block's settings (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct ConvBnRelu {
    pub stride: usize,
    pub pool: bool,
    pub eps: f64,
    /// Output channels.
    pub out: usize,
    /// Compute dL/dx in the backward (false for the first block).
    pub need_dx: bool,
}

/// The learner's blocks, one after the other, as one candle op: the
/// activations between blocks and their gradients never become candle
/// tensors (candle's backward would zero a buffer for each gradient and
/// add the block's into it, and every op boundary is a pause for the
/// other core).
#[derive(Debug, Clone)]
pub struct Blocks {
    blocks: Vec<ConvBnRelu>,
    cache: Arc<Mutex<Option<Cache>>>,
}

/// The batch-norm output before the ReLU; the forward's ReLU and the
/// backward's mask both come from this one expression, so they agree
/// bit for bit.
#[inline(always)]
fn pre<T: Scalar>(gamma: T, beta: T, xhat: T) -> T {
    gamma * xhat + beta
}

/// max(0, z), as the forward's ReLU.
#[inline(always)]
fn relu<T: Scalar>(z: T) -> T {
    if z > T::zero() {
        z
    } else {
        T::zero()
    }
}

/// A pointer that threads may share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Disjoint<T>(*mut T);
// SAFETY: only used to hand disjoint ranges to rayon's threads (each user
// states which range it owns).
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// # Safety
    /// `start..start + len` lies in the buffer, and no other thread
    /// touches it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Geometry of one application.
#[derive(Debug, Clone, Copy)]
struct Geo {
    c: usize,
    n: usize,
    h: usize,
    w: usize,
    o: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    pool: bool,
}

impl Geo {
    fn patches(&self) -> Patches {
        Patches {
            c: self.c,
            h: self.h,
            w: self.w,
            stride: self.stride,
        }
    }
    fn k(&self) -> usize {
        self.c * 9
    }
    /// The block's packed parameters: `[w (O*K), b, gamma, beta]`.
    fn params(&self) -> usize {
        self.o * self.k() + 3 * self.o
    }
    /// Calls `f(PyTorch's index, patch order's index)` for every weight:
    /// `[O, C, 3, 3]` against `[K, O]` with rows `(ky, kx, c)`. The order
    /// keeps both sides in cache: per input channel, eight output
    /// channels' nine taps (an iterator over (o, c, tap) that strode
    /// through `[K, O]` was 13% of a 5-image learner pass).
    #[inline(always)]
    fn weight_pairs(&self, mut f: impl FnMut(usize, usize)) {
        let (o, c) = (self.o, self.c);
        for ci in 0..c {
            for ob in (0..o).step_by(8) {
                for tap in 0..9 {
                    let row = (tap * c + ci) * o;
                    for oi in ob..(ob + 8).min(o) {
                        f((oi * c + ci) * 9 + tap, row + oi);
                    }
                }
            }
        }
    }
    fn plane(&self) -> usize {
        self.ho * self.wo
    }
    fn p(&self) -> usize {
        self.n * self.plane()
    }
    fn pooled(&self) -> (usize, usize) {
        (self.ho / 2, self.wo / 2)
    }
    /// Output positions per image (after the pool, if any).
    fn out_plane(&self) -> usize {
        if self.pool {
            let (hp, wp) = self.pooled();
            hp * wp
        } else {
            self.plane()
        }
    }
    /// The chunks `(first image, images)`: about [`CHUNK_COLS`] positions
    /// each, but at least [`MIN_CHUNKS`] where there are enough images (small
    /// batches on small maps still use every core). A function of the
    /// shapes only, never of the thread count.
    fn chunks(&self) -> Vec<(usize, usize)> {
        let per = (CHUNK_COLS / self.plane())
            .min(self.n.div_ceil(MIN_CHUNKS))
            .clamp(1, self.n);
        (0..self.n)
            .step_by(per)
            .map(|b0| (b0, per.min(self.n - b0)))
            .collect()
    }

    /// The gradient with respect to the block's pre-pool activations at
    /// output position `(i, j)` of image `b`, masked by the ReLU, into `g`
    /// (one value per channel); `xr` is that position's xhat. Without the
    /// pool it is `grad`'s row; with it, the pooled gradient where this
    /// position is its window's arg-max, else 0 (also outside every
    /// window: floor pooling drops a last odd row or column).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn routed<T: Scalar>(
        &self,
        grad: &[T],
        argmax: &[u8],
        (b, i, j): (usize, usize, usize),
        xr: &[T],
        gamma: &[T],
        beta: &[T],
        g: &mut [T],
    ) {
        let o = self.o;
        let affine = gamma.iter().zip(beta);
        let on = |(&gc, &bc): (&T, &T), x: T| pre(gc, bc, x) > T::zero();
        if !self.pool {
            let at = ((b * self.ho + i) * self.wo + j) * o;
            for ((d, (&gv, &x)), gb) in g
                .iter_mut()
                .zip(grad[at..at + o].iter().zip(xr))
                .zip(affine)
            {
                *d = gv.passed(on(gb, x));
            }
            return;
        }
        let (hp, wp) = self.pooled();
        if i >= 2 * hp || j >= 2 * wp {
            g.fill(T::zero());
            return;
        }
        let at = ((b * hp + i / 2) * wp + j / 2) * o;
        let me = ((i % 2) * 2 + j % 2) as u8;
        let (gq, aq) = (&grad[at..at + o], &argmax[at..at + o]);
        for ((d, ((&gv, &a), &x)), gb) in g.iter_mut().zip(gq.iter().zip(aq).zip(xr)).zip(affine) {
            // `&`, not `&&`: no branch per value.
            *d = gv.passed((a == me) & on(gb, x));
        }
    }
}

/// Per-thread buffers of the kernels (patches; the backward's dy and one
/// routed gradient row), kept from chunk to chunk and from call to call:
/// fresh buffers per call cost a zeroing pass and page faults (6% and 6% of
/// a mini-ImageNet learner profile). Every use writes the part it reads.
#[derive(Default)]
pub(crate) struct Scratch<T> {
    dy: Vec<T>,
    cols: Vec<T>,
    grow: Vec<T>,
}

thread_local! {
    /// This thread's kernel buffers, one set per scalar type ([`per_chunk`]
    /// hands out `T`'s).
    static SCRATCH: RefCell<(Scratch<f32>, Scratch<f64>)> = RefCell::default();
}

/// A vector of `n` values that are not initialised: the output buffers'
/// zeroing was a tenth of a learner pass (memset and fresh pages), and
/// every value is overwritten anyway (as candle's own CPU kernels do).
///
/// # Safety
/// The caller writes every element before any is read. Only used for
/// `f32`, `f64` and `u8`, for which every bit pattern is a value.
#[allow(clippy::uninit_vec)] // as candle's sort.rs: written before read
unsafe fn unwritten<T: Copy>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: capacity n; plain-old-data; the caller's promise covers reads.
    unsafe { v.set_len(n) };
    v
}

/// The first `n` elements of `v`, growing it (zeroed) if shorter.
#[inline(always)]
fn take<T: Scalar>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::zero());
    }
    &mut v[..n]
}

/// `f(scratch, b0, nb)` for every chunk `(b0, nb)`, in parallel, each with
/// its thread's scratch buffers and in the AVX2 build ([`simd`]); results
/// in chunk order. Callers mark `f` `#[inline(always)]`: a large closure
/// the inliner leaves out of line is compiled for baseline x86-64.
#[inline(always)]
fn per_chunk<T: Scalar, R: Send>(
    chunks: &[(usize, usize)],
    f: impl Fn(&mut Scratch<T>, usize, usize) -> R + Sync,
) -> Vec<R> {
    chunks
        .par_iter()
        .map(|&(b0, nb)| {
            SCRATCH.with(|s| {
                let (s32, s64) = &mut *s.borrow_mut();
                let scratch: &mut Scratch<T> = (s32 as &mut dyn Any)
                    .downcast_mut()
                    .or_else(|| (s64 as &mut dyn Any).downcast_mut())
                    .expect("the fused blocks run in f32 or f64");
                simd(
                    #[inline(always)]
                    || f(scratch, b0, nb),
                )
            })
        })
        .collect()
}

impl Blocks {
    pub fn new(blocks: Vec<ConvBnRelu>) -> Self {
        Blocks {
            blocks,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Apply to `x` `[B, H, W, C]` (channels-last) with the blocks'
    /// parameters (`[w, b, gamma, beta]` per block); returns the last
    /// block's output `[B, Ho, Wo, O]` and each block's batch statistics
    /// (constants: this path is only taken where nothing differentiates
    /// through them).
    pub fn apply(&self, x: &Tensor, params: &[Tensor]) -> Result<(Tensor, Vec<BnStats>)> {
        if self.blocks.is_empty() {
            candle_core::bail!("fused blocks: no blocks");
        }
        if params.len() != 4 * self.blocks.len() {
            candle_core::bail!(
                "fused blocks: {} parameter tensors for {} blocks",
                params.len(),
                self.blocks.len()
            );
        }
        let flat = params
            .iter()
            .map(|t| t.flatten_all())
            .collect::<Result<Vec<_>>>()?;
        let packed = Tensor::cat(&flat, 0)?;
        let out = x.contiguous()?.apply_op2(&packed, self.clone())?;
        let dev = x.device();
        let guard = self.cache.lock().expect("blocks cache");
        macro_rules! stats {
            ($k:expr) => {
                $k.saved
                    .iter()
                    .zip(&self.blocks)
                    .map(|(s, b)| {
                        Ok(BnStats {
                            mean: Tensor::from_slice(&s.mean, (b.out, 1), dev)?,
                            var: Tensor::from_slice(&s.var, (b.out, 1), dev)?,
                            count: s.xhat.len() / b.out,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            };
        }
        let stats = match guard.as_ref() {
            Some(Cache::F32(k)) => stats!(k),
            Some(Cache::F64(k)) => stats!(k),
            None => candle_core::bail!("fused blocks: forward kept nothing"),
        };
        Ok((out, stats))
    }

    /// Each block's geometry for input dims `shape`, checked against the
    /// packed parameters' length.
    fn geos(&self, shape: &Shape, len: usize) -> Result<Vec<Geo>> {
        let (n, mut h, mut w, mut c) = shape.dims4()?;
        let mut geos = Vec::with_capacity(self.blocks.len());
        let mut total = 0;
        for b in &self.blocks {
            let g = b.geo(n, h, w, c);
            total += g.params();
            (h, w) = if b.pool { g.pooled() } else { (g.ho, g.wo) };
            c = g.o;
            geos.push(g);
        }
        if total != len {
            candle_core::bail!("fused blocks: {len} packed parameters, the blocks take {total}");
        }
        Ok(geos)
    }

    fn forward<T: Scalar>(&self, geos: Vec<Geo>, x: &[T], prm: &[T]) -> (Vec<T>, Kept<T>) {
        let mut inputs: Vec<Vec<T>> = Vec::with_capacity(self.blocks.len());
        let mut saved = Vec::with_capacity(self.blocks.len());
        let mut at = 0;
        for (b, g) in self.blocks.iter().zip(&geos) {
            let len = g.params();
            let input = inputs.last().map_or(x, |v| &v[..]);
            let (out, s) = b.forward(*g, input, &prm[at..at + len]);
            saved.push(s);
            inputs.push(out);
            at += len;
        }
        let out = inputs.pop().expect("at least one block");
        (
            out,
            Kept {
                geos,
                inputs,
                saved,
            },
        )
    }

    fn backward<T: Scalar>(&self, x: &[T], prm: &[T], kept: &Kept<T>, grad: &[T]) -> Vec<T> {
        let mut dprm = vec![T::zero(); prm.len()];
        let mut at = prm.len();
        let mut grad_here: Option<Vec<T>> = None;
        for (i, b) in self.blocks.iter().enumerate().rev() {
            let g = kept.geos[i];
            let len = g.params();
            at -= len;
            let input = if i == 0 { x } else { &kept.inputs[i - 1][..] };
            let gr = grad_here.as_deref().unwrap_or(grad);
            let dp = &mut dprm[at..at + len];
            grad_here = b.backward(g, input, &prm[at..at + len], &kept.saved[i], gr, dp);
        }
        dprm
    }
}

impl ConvBnRelu {
    /// The geometry of this block on an input `[n, h, w, c]`.
    fn geo(&self, n: usize, h: usize, w: usize, c: usize) -> Geo {
        let stride = self.stride;
        let (ho, wo) = Patches { c, h, w, stride }.out_hw();
        Geo {
            c,
            n,
            h,
            w,
            o: self.out,
            ho,
            wo,
            stride,
            pool: self.pool,
        }
    }

    /// The weights as the patches' right factor `[K, O]`: row `(ky, kx, c)`
    /// (the patch order), from PyTorch's `[O, C, 3, 3]`.
    fn weights_kxo<T: Scalar>(g: Geo, w: &[T]) -> Vec<T> {
        let mut wt = vec![T::zero(); g.k() * g.o];
        g.weight_pairs(|torch, kxo| wt[kxo] = w[torch]);
        wt
    }

    fn forward<T: Scalar>(&self, g: Geo, x: &[T], prm: &[T]) -> (Vec<T>, Saved<T>) {
        let (k, p, o, plane) = (g.k(), g.p(), g.o, g.plane());
        let (wt, rest) = prm.split_at(o * k);
        let (bias, rest) = rest.split_at(o);
        let (gamma, beta) = rest.split_at(o);
        let wk = Self::weights_kxo(g, wt);
        let chunks = g.chunks();
        let pt = g.patches();
        let img = g.h * g.w * g.c;
        // y = patches * w, without the bias (batch norm removes it; it
        // only shifts the mean reported below). Rows: positions.
        // SAFETY: every value is written (each chunk's GEMM, without
        // accumulation) before anything reads it.
        let mut y: Vec<T> = unsafe { unwritten(p * o) };
        let yp = Disjoint(y.as_mut_ptr());
        let parts: Vec<(Vec<T>, Vec<T>)> = per_chunk(
            &chunks,
            #[inline(always)]
            |scratch: &mut Scratch<T>, b0, nb| {
                let pc = nb * plane;
                // Fully written by fill.
                let cols = take(&mut scratch.cols, pc * k);
                pt.fill(&x[b0 * img..(b0 + nb) * img], cols);
                let rm = |data, cols| Mat {
                    data,
                    rs: cols,
                    cs: 1,
                };
                // SAFETY: this chunk owns rows b0*plane..+pc of y (chunks
                // are disjoint).
                unsafe {
                    matmul_raw(
                        pc,
                        o,
                        k,
                        yp.0.add(b0 * plane * o),
                        o,
                        false,
                        rm(cols, k),
                        rm(&wk, o),
                        false,
                    )
                };
                // SAFETY: the same rows, now read back by their owner.
                let yc = unsafe { yp.slice(b0 * plane * o, pc * o) };
                let n = T::from(pc).unwrap_or_else(T::one);
                // Per channel, sums in row order, vectorised across channels.
                let mut mean = vec![T::zero(); o];
                for row in yc.chunks_exact(o) {
                    for (a, &v) in mean.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                for m in mean.iter_mut() {
                    *m /= n;
                }
                let mut m2 = vec![T::zero(); o];
                for row in yc.chunks_exact(o) {
                    for ((a, &m), &v) in m2.iter_mut().zip(&mean).zip(row) {
                        *a += (v - m) * (v - m);
                    }
                }
                (mean, m2)
            },
        );
        // Combine the chunks' moments in chunk order (Chan et al.).
        let eps = T::from(self.eps).unwrap_or_else(T::zero);
        let mut mean = vec![T::zero(); o];
        let mut m2 = vec![T::zero(); o];
        let mut count = T::zero();
        for (&(_, nb), (mc, m2c)) in chunks.iter().zip(&parts) {
            let nc = T::from(nb * plane).unwrap_or_else(T::one);
            let total = count + nc;
            for c in 0..o {
                let delta = mc[c] - mean[c];
                mean[c] += delta * nc / total;
                m2[c] += m2c[c] + delta * delta * count * nc / total;
            }
            count = total;
        }
        let var: Vec<T> = m2.iter().map(|&v| v / count).collect();
        let rstd: Vec<T> = var.iter().map(|&v| T::one() / (v + eps).sqrt()).collect();
        let (hp, wp) = g.pooled();
        let out_plane = g.out_plane();
        // SAFETY: the pass below writes every value of out (and of argmax
        // where it pools) before anything reads them.
        let mut out = unsafe { unwritten(g.n * out_plane * o) };
        // The arg-max of each pooled output (a placeholder byte without pool).
        let mut argmax = if self.pool {
            unsafe { unwritten(out.len()) }
        } else {
            vec![0u8]
        };
        let (outp, argp) = (Disjoint(out.as_mut_ptr()), Disjoint(argmax.as_mut_ptr()));
        per_chunk(
            &chunks,
            #[inline(always)]
            |_: &mut Scratch<T>, b0, nb| {
                // SAFETY: this chunk owns images b0..b0+nb of y, out and
                // argmax (chunks are disjoint).
                let yc = unsafe { yp.slice(b0 * plane * o, nb * plane * o) };
                let oc = unsafe { outp.slice(b0 * out_plane * o, nb * out_plane * o) };
                if !self.pool {
                    // One pass: y becomes xhat, out the ReLU of the affine.
                    for (yr, or) in yc.chunks_exact_mut(o).zip(oc.chunks_exact_mut(o)) {
                        // Iterators, not indices: indexed, LLVM reloads the
                        // captured slices per value and stays scalar.
                        let per_channel = mean.iter().zip(&rstd).zip(gamma.iter().zip(beta));
                        for ((v, a), ((&m, &r), (&gc, &bc))) in
                            yr.iter_mut().zip(or.iter_mut()).zip(per_channel)
                        {
                            let xh = (*v - m) * r;
                            *v = xh;
                            *a = relu(pre(gc, bc, xh));
                        }
                    }
                    return;
                }
                for yr in yc.chunks_exact_mut(o) {
                    for (v, (&m, &r)) in yr.iter_mut().zip(mean.iter().zip(&rstd)) {
                        *v = (*v - m) * r; // now xhat
                    }
                }
                let ac = unsafe { argp.slice(b0 * out_plane * o, nb * out_plane * o) };
                for bi in 0..nb {
                    let yb = &yc[bi * plane * o..(bi + 1) * plane * o];
                    for pi in 0..hp {
                        for pj in 0..wp {
                            let q = ((bi * hp + pi) * wp + pj) * o;
                            let r0 = (2 * pi * g.wo + 2 * pj) * o;
                            let r2 = r0 + g.wo * o;
                            pool_row(
                                [
                                    &yb[r0..r0 + o],
                                    &yb[r0 + o..r0 + 2 * o],
                                    &yb[r2..r2 + o],
                                    &yb[r2 + o..r2 + 2 * o],
                                ],
                                &mut oc[q..q + o],
                                &mut ac[q..q + o],
                                gamma,
                                beta,
                            );
                        }
                    }
                }
            },
        );
        if !self.pool {
            argmax = Vec::new();
        }
        let mean = mean.iter().zip(bias).map(|(&m, &b)| m + b).collect();
        let saved = Saved {
            xhat: y,
            wk,
            rstd,
            mean,
            var,
            argmax,
        };
        (out, saved)
    }

    fn backward<T: Scalar>(
        &self,
        g: Geo,
        x: &[T],
        prm: &[T],
        s: &Saved<T>,
        grad: &[T],
        dprm: &mut [T],
    ) -> Option<Vec<T>> {
        let (k, p, o, plane) = (g.k(), g.p(), g.o, g.plane());
        let rest = &prm[o * k..];
        let (gamma, beta) = (&rest[o..2 * o], &rest[2 * o..3 * o]);
        let wk = &s.wk;
        let pf = T::from(p).unwrap_or_else(T::one);
        let chunks = g.chunks();
        // dbeta = sum g, dgamma = sum g xhat: per chunk, combined in order.
        let parts: Vec<(Vec<T>, Vec<T>)> = per_chunk(
            &chunks,
            #[inline(always)]
            |scratch: &mut Scratch<T>, b0, nb| {
                let grow = take(&mut scratch.grow, o);
                let (mut sg, mut sgx) = (vec![T::zero(); o], vec![T::zero(); o]);
                for bi in 0..nb {
                    for i in 0..g.ho {
                        for j in 0..g.wo {
                            let at = ((b0 + bi) * plane + i * g.wo + j) * o;
                            let xr = &s.xhat[at..at + o];
                            g.routed(grad, &s.argmax, (b0 + bi, i, j), xr, gamma, beta, grow);
                            for ((a, b), (&gv, &xv)) in
                                sg.iter_mut().zip(sgx.iter_mut()).zip(grow.iter().zip(xr))
                            {
                                *a += gv;
                                *b += gv * xv;
                            }
                        }
                    }
                }
                (sg, sgx)
            },
        );
        let (mut sg, mut sgx) = (vec![T::zero(); o], vec![T::zero(); o]);
        for (a, b) in &parts {
            for c in 0..o {
                sg[c] += a[c];
                sgx[c] += b[c];
            }
        }
        // dy = gamma * rstd / P * (P g - dbeta - xhat dgamma), by chunk
        // (each position's routed g again: cheaper than keeping it);
        // then dw = cols^T dy, db = sum dy, dcols = dy w^T -> dx.
        let scale: Vec<T> = (0..o).map(|c| gamma[c] * s.rstd[c] / pf).collect();
        let (scale, sg, sgx) = (&scale[..o], &sg[..o], &sgx[..o]);
        // SAFETY: the chunks' adjoints write every value (each its images).
        let mut dx = self
            .need_dx
            .then(|| unsafe { unwritten(g.n * g.h * g.w * g.c) });
        let dxp = dx.as_mut().map(|v| Disjoint(v.as_mut_ptr()));
        let pt = g.patches();
        let img = g.h * g.w * g.c;
        let inv = self.need_dx.then(|| pt.inverse());
        let parts: Vec<(Vec<T>, Vec<T>)> = per_chunk(
            &chunks,
            #[inline(always)]
            |scratch: &mut Scratch<T>, b0, nb| {
                let pc = nb * plane;
                // All three fully written below before they are read.
                let Scratch { dy, cols, grow } = scratch;
                let dy = take(dy, pc * o);
                let cols = take(cols, pc * k);
                let grow = take(grow, o);
                let mut db = vec![T::zero(); o];
                for bi in 0..nb {
                    for i in 0..g.ho {
                        for j in 0..g.wo {
                            let r = (bi * g.ho + i) * g.wo + j;
                            let at = (b0 * plane + r) * o;
                            let xr = &s.xhat[at..at + o];
                            g.routed(grad, &s.argmax, (b0 + bi, i, j), xr, gamma, beta, grow);
                            let d = &mut dy[r * o..(r + 1) * o];
                            let sums = sg.iter().zip(sgx);
                            for (((d, a), (&gv, &xv)), (&sc, (&sgc, &sgxc))) in d
                                .iter_mut()
                                .zip(db.iter_mut())
                                .zip(grow.iter().zip(xr))
                                .zip(scale.iter().zip(sums))
                            {
                                *d = sc * (pf * gv - sgc - xv * sgxc);
                                *a += *d;
                            }
                        }
                    }
                }
                pt.fill(&x[b0 * img..(b0 + nb) * img], cols);
                let dym = Mat {
                    data: &dy[..],
                    rs: o,
                    cs: 1,
                };
                // dw [K, O] = cols^T dy
                // SAFETY: the GEMM writes every value (no accumulation).
                let mut dw = unsafe { unwritten(k * o) };
                let cols_t = Mat {
                    data: &cols[..],
                    rs: 1,
                    cs: k,
                };
                matmul(k, o, pc, &mut dw, false, cols_t, dym, false);
                if let (Some(dxp), Some(inv)) = (dxp, &inv) {
                    // dcols = dy w^T, reusing the patch buffer.
                    let w_t = Mat {
                        data: &wk[..],
                        rs: 1,
                        cs: o,
                    };
                    matmul(pc, k, o, cols, false, dym, w_t, false);
                    // SAFETY: this chunk owns images b0..b0+nb of dx
                    // (chunks are disjoint).
                    let dxc = unsafe { dxp.slice(b0 * img, nb * img) };
                    pt.adjoint(cols, inv, dxc);
                }
                (dw, db)
            },
        );
        // Reduce in chunk order into `dprm` (zeroed by the caller), then
        // back to PyTorch's weight order.
        let mut dwk = vec![T::zero(); k * o];
        for (dw, db) in &parts {
            for (a, &v) in dwk.iter_mut().zip(dw) {
                *a += v;
            }
            for (a, &v) in dprm[o * k..o * k + o].iter_mut().zip(db) {
                *a += v;
            }
        }
        g.weight_pairs(|torch, kxo| dprm[torch] = dwk[kxo]);
        for c in 0..o {
            dprm[o * k + o + c] = sgx[c];
            dprm[o * k + 2 * o + c] = sg[c];
        }
        dx
    }
}

/// One pooled row: per channel, the max of the activation (the ReLU of
/// `gamma xhat + beta`) over the window's four rows of xhat (row-major in
/// the 2x2 window) into `dst`, its position into `arg`; the first maximum
/// wins (as PyTorch). Selects over iterators, which vectorise.
#[inline(always)]
fn pool_row<T: Scalar>(src: [&[T]; 4], dst: &mut [T], arg: &mut [u8], gamma: &[T], beta: &[T]) {
    let [s0, s1, s2, s3] = src;
    let windows = s0.iter().zip(s1).zip(s2.iter().zip(s3));
    for (((d, a), ((&v0, &v1), (&v2, &v3))), (&gc, &bc)) in dst
        .iter_mut()
        .zip(arg.iter_mut())
        .zip(windows)
        .zip(gamma.iter().zip(beta))
    {
        let act = |v: T| relu(pre(gc, bc, v));
        let mut best = act(v0);
        let mut at = 0u8;
        for (w, v) in [(1u8, v1), (2, v2), (3, v3)] {
            // A later value must be strictly greater.
            let v = act(v);
            let gt = v > best;
            best = if gt { v } else { best };
            at = if gt { w } else { at };
        }
        *d = best;
        *a = at;
    }
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("fused block: inputs must be contiguous"),
    }
}

impl CustomOp2 for Blocks {
    fn name(&self) -> &'static str {
        "conv-bn-relu-blocks"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geos = self.geos(lx.shape(), lp.shape().elem_count())?;
        let last = *geos.last().expect("at least one block");
        let (out, cache) = match (sx, sp) {
            (CpuStorage::F32(x), CpuStorage::F32(p)) => {
                let (o, k) = self.forward(geos, slice(x, lx)?, slice(p, lp)?);
                (CpuStorage::F32(o), Cache::F32(k))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p)) => {
                let (o, k) = self.forward(geos, slice(x, lx)?, slice(p, lp)?);
                (CpuStorage::F64(o), Cache::F64(k))
            }
            _ => candle_core::bail!("fused blocks: f32 or f64 inputs of one dtype"),
        };
        *self.cache.lock().expect("blocks cache") = Some(cache);
        let (h, w) = if last.pool {
            last.pooled()
        } else {
            (last.ho, last.wo)
        };
        Ok((out, Shape::from((last.n, h, w, last.o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        prm: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.blocks.first().is_some_and(|b| b.need_dx) {
            candle_core::bail!("fused blocks: no gradient for the images");
        }
        let grad = grad.contiguous()?;
        let prm = prm.contiguous()?;
        let guard = self.cache.lock().expect("blocks cache");
        // Everything read in place (the op was applied to a contiguous x).
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = prm.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        macro_rules! run {
            ($t:ident, $k:expr) => {{
                let (
                    Storage::Cpu(CpuStorage::$t(xv)),
                    Storage::Cpu(CpuStorage::$t(pv)),
                    Storage::Cpu(CpuStorage::$t(gv)),
                ) = (&*xs, &*ps, &*gs)
                else {
                    candle_core::bail!("fused blocks: backward inputs not on the CPU in one dtype")
                };
                let dp = self.backward(slice(xv, xl)?, slice(pv, pl)?, $k, slice(gv, gl)?);
                Tensor::from_vec(dp, prm.elem_count(), prm.device())?
            }};
        }
        let dp = match guard.as_ref() {
            Some(Cache::F32(k)) => run!(F32, k),
            Some(Cache::F64(k)) => run!(F64, k),
            None => candle_core::bail!("fused blocks: backward without a forward"),
        };
        Ok((None, Some(dp)))
    }
}
