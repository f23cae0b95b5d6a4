//! One learner block as one fused op: 3x3 convolution (padding 1, stride 1
//! or 2) + batch norm with the batch's own statistics + ReLU (+ 2x2 max
//! pool), with its hand-written backward.
//!
//! The composed path ([`crate::ops`]) runs about ten candle ops per block,
//! each a pass over memory with a fresh allocation, and candle's autograd
//! keeps every intermediate. Here the work goes in chunks of whole images
//! (about [`CHUNK_COLS`] output positions, so a chunk's patches stay in
//! cache), in parallel over chunks: per chunk one im2col and one GEMM (the
//! `gemm` crate) and the chunk's batch-norm moments; then one pass per
//! channel normalises, applies the ReLU and pools. The backward is the
//! chain rule written out below, chunk by chunk again: it recomputes the
//! chunk's patches instead of keeping them, forms the chunk's dy, and runs
//! two GEMMs (weights; input, skipped for the first block, whose input is
//! the images). The op keeps only the normalised values, 1/sigma and the
//! pool's arg-max. Chunks depend on the shapes only, and per-chunk partial
//! sums are combined in chunk order, so results do not depend on the
//! thread count.
//!
//! Layout: channel-major `[C, B, H, W]` as in [`crate::ops`]; the block's
//! parameters come packed in one vector `[w (O*C*9), b (O), gamma (O),
//! beta (O)]` (a candle `cat`, whose backward splits the gradient).
//!
//! Scope: train-mode batch norm only (statistics of this batch, the mode of
//! every inner-loop and meta-training pass), PyTorch padding, a learned
//! scale, floor pooling. Passes with given statistics (support-set or
//! running statistics), the reference variants and second-order MAML (which
//! differentiates the backward itself) use the composed path;
//! [`crate::learner::Learner::fusable`] decides.
//!
//! Equations per channel o over the P = B*Ho*Wo positions p:
//! - y_p = b + sum_k w_k cols_{k,p};  mu = mean(y);  var = mean((y - mu)^2)
//! - xhat_p = (y_p - mu) / sqrt(var + eps);  a_p = max(0, gamma xhat_p + beta)
//! - backward with g = dL/da masked by a > 0:
//!   dbeta = sum g;  dgamma = sum g xhat;
//!   dy_p = gamma / (P sqrt(var + eps)) * (P g_p - dbeta - xhat_p dgamma);
//!   dw = dy cols^T;  db = sum dy;  dcols = w^T dy -> dx (col2im)

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::ops::{matmul, matmul_raw, simd, sum8, BnStats, Im2Col, Mat};

/// Output positions per chunk of whole images (at least one image).
pub const CHUNK_COLS: usize = 512;

/// Fewest chunks per application when the batch allows.
pub const MIN_CHUNKS: usize = 4;

/// What the backward keeps from the forward.
#[derive(Debug)]
struct Saved<T> {
    /// The normalised pre-activations `[O, B*Ho*Wo]`.
    xhat: Vec<T>,
    rstd: Vec<T>,
    mean: Vec<T>,
    var: Vec<T>,
    /// Pool arg-max per output (0..4: row-major in the 2x2 window).
    argmax: Vec<u8>,
}

#[derive(Debug)]
enum Cache {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

/// The fused block (see the module docs).
#[derive(Debug, Clone)]
pub struct ConvBnRelu {
    pub stride: usize,
    pub pool: bool,
    pub eps: f64,
    /// Compute dL/dx in the backward (false for the first block).
    pub need_dx: bool,
    cache: Arc<Mutex<Option<Cache>>>,
}

/// Scalars of the fused block.
trait Num:
    num_traits::Float + candle_core::WithDType + Default + Send + Sync + std::ops::AddAssign + 'static
{
    /// `self` where `on`, else +0 (the same bits as `if on { self } else
    /// { 0 }`), as a bit mask: LLVM keeps the `if` as a branch per element,
    /// the mask vectorises.
    fn passed(self, on: bool) -> Self;
    /// This thread's kernel buffers for this scalar type.
    fn scratch() -> &'static std::thread::LocalKey<RefCell<Scratch<Self>>>;
}
/// `Num` for a float type, its same-width unsigned bits type and its
/// scratch buffers.
macro_rules! num {
    ($t:ty, $bits:ty, $scratch:ident) => {
        thread_local! {
            static $scratch: RefCell<Scratch<$t>> = RefCell::default();
        }
        impl Num for $t {
            #[inline(always)]
            fn passed(self, on: bool) -> $t {
                <$t>::from_bits(self.to_bits() & <$bits>::from(on).wrapping_neg())
            }
            fn scratch() -> &'static std::thread::LocalKey<RefCell<Scratch<$t>>> {
                &$scratch
            }
        }
    };
}
num!(f32, u32, SCRATCH_F32);
num!(f64, u64, SCRATCH_F64);

/// The batch-norm output before the ReLU; the forward's ReLU and the
/// backward's mask both come from this one expression, so they agree
/// bit for bit.
#[inline(always)]
fn pre<T: Num>(gamma: T, beta: T, xhat: T) -> T {
    gamma * xhat + beta
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
}

impl Geo {
    fn new(c: usize, n: usize, h: usize, w: usize, o: usize, stride: usize) -> Geo {
        Geo {
            c,
            n,
            h,
            w,
            o,
            ho: (h - 1) / stride + 1,
            wo: (w - 1) / stride + 1,
            stride,
        }
    }
    fn im2col(&self) -> Im2Col {
        Im2Col {
            c: self.c,
            n: self.n,
            h: self.h,
            w: self.w,
            stride: self.stride,
        }
    }
    fn k(&self) -> usize {
        self.c * 9
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
}

/// Per-thread buffers of the kernels (patches; the backward's dy and
/// gradient plane), kept from chunk to chunk and from call to call: fresh
/// buffers per call cost a zeroing pass and page faults (6% and 6% of a
/// mini-ImageNet learner profile). Every use writes the part it reads.
#[derive(Default)]
pub(crate) struct Scratch<T> {
    dy: Vec<T>,
    cols: Vec<T>,
    gplane: Vec<T>,
    /// Offsets of the input-gradient gather ([`Im2Col::gather_channel`]).
    off: Vec<u32>,
}

/// The first `n` elements of `v`, growing it (zeroed) if shorter.
#[inline(always)]
fn take<T: Num>(v: &mut Vec<T>, n: usize) -> &mut [T] {
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
fn per_chunk<T: Num, R: Send>(
    chunks: &[(usize, usize)],
    f: impl Fn(&mut Scratch<T>, usize, usize) -> R + Sync,
) -> Vec<R> {
    chunks
        .par_iter()
        .map(|&(b0, nb)| {
            T::scratch().with(|s| {
                let scratch = &mut s.borrow_mut();
                simd(
                    #[inline(always)]
                    || f(scratch, b0, nb),
                )
            })
        })
        .collect()
}

/// Mean and sum of squared deviations of `v`, in two passes.
#[inline(always)]
fn moments<T: Num>(v: &[T]) -> (T, T) {
    let n = T::from(v.len()).unwrap_or_else(T::one);
    let m = sum8(v.len(), |i| v[i]) / n;
    (m, sum8(v.len(), |i| (v[i] - m) * (v[i] - m)))
}

impl ConvBnRelu {
    pub fn new(stride: usize, pool: bool, eps: f64, need_dx: bool) -> Self {
        ConvBnRelu {
            stride,
            pool,
            eps,
            need_dx,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Apply to `x` `[C, B, H, W]` with the block's parameters; returns the
    /// output and the batch statistics (constants: this path is only taken
    /// where nothing differentiates through them).
    pub fn apply(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
    ) -> Result<(Tensor, BnStats)> {
        let packed = Tensor::cat(&[&w.flatten_all()?, b, gamma, beta], 0)?;
        let out = x
            .contiguous()?
            .apply_op2(&packed.contiguous()?, self.clone())?;
        let o = w.dim(0)?;
        let dev = x.device();
        let guard = self.cache.lock().expect("block cache");
        let (mean, var, count) = match guard.as_ref() {
            Some(Cache::F32(s)) => (
                Tensor::from_slice(&s.mean, (o, 1), dev)?,
                Tensor::from_slice(&s.var, (o, 1), dev)?,
                s.xhat.len() / o,
            ),
            Some(Cache::F64(s)) => (
                Tensor::from_slice(&s.mean, (o, 1), dev)?,
                Tensor::from_slice(&s.var, (o, 1), dev)?,
                s.xhat.len() / o,
            ),
            None => candle_core::bail!("fused block: forward kept nothing"),
        };
        Ok((out, BnStats { mean, var, count }))
    }

    fn geo(&self, shape: &Shape, len: usize) -> Result<Geo> {
        let (c, n, h, w) = shape.dims4()?;
        // len = o*c*9 + 3o
        let o = len / (c * 9 + 3);
        if o == 0 || o * (c * 9 + 3) != len {
            candle_core::bail!(
                "fused block: {len} packed parameters do not fit {c} input channels"
            );
        }
        Ok(Geo::new(c, n, h, w, o, self.stride))
    }

    fn forward<T: Num>(&self, g: Geo, x: &[T], prm: &[T]) -> (Vec<T>, Saved<T>) {
        let (k, p, o, plane) = (g.k(), g.p(), g.o, g.plane());
        let (wt, rest) = prm.split_at(o * k);
        let (bias, rest) = rest.split_at(o);
        let (gamma, beta) = rest.split_at(o);
        let chunks = g.chunks();
        let im = g.im2col();
        let taps = im.table();
        // y = w * patches, without the bias (batch norm removes it; it
        // only shifts the mean reported below).
        let mut y = vec![T::zero(); o * p];
        let yp = Disjoint(y.as_mut_ptr());
        let parts: Vec<Vec<(T, T)>> = per_chunk(
            &chunks,
            #[inline(always)]
            |scratch: &mut Scratch<T>, b0, nb| {
                let pc = nb * plane;
                // Fully written by fill_chunk.
                let cols = take(&mut scratch.cols, k * pc);
                im.fill_chunk(x, b0, cols, taps.as_deref());
                let rm = |data, cols| Mat {
                    data,
                    rs: cols,
                    cs: 1,
                };
                // SAFETY: this chunk owns columns b0*plane..+pc of every row
                // of y (chunks are disjoint).
                unsafe {
                    matmul_raw(
                        o,
                        pc,
                        k,
                        yp.0.add(b0 * plane),
                        p,
                        false,
                        rm(wt, k),
                        rm(cols, pc),
                        false,
                    )
                };
                // A loop, not an iterator chain: a `collect` would be a
                // separate function, outside this AVX2 build.
                let mut part = Vec::with_capacity(o);
                for c in 0..o {
                    // SAFETY: the same columns, now read back by their owner.
                    part.push(moments(unsafe { yp.slice(c * p + b0 * plane, pc) }));
                }
                part
            },
        );
        // Combine the chunks' moments in chunk order (Chan et al.).
        let eps = T::from(self.eps).unwrap_or_else(T::zero);
        let mut mean = vec![T::zero(); o];
        let mut m2 = vec![T::zero(); o];
        let mut count = T::zero();
        for (&(_, nb), part) in chunks.iter().zip(&parts) {
            let nc = T::from(nb * plane).unwrap_or_else(T::one);
            let total = count + nc;
            for (c, &(mc, m2c)) in part.iter().enumerate() {
                let delta = mc - mean[c];
                mean[c] += delta * nc / total;
                m2[c] += m2c + delta * delta * count * nc / total;
            }
            count = total;
        }
        let var: Vec<T> = m2.iter().map(|&v| v / count).collect();
        let rstd: Vec<T> = var.iter().map(|&v| T::one() / (v + eps).sqrt()).collect();
        let (hp, wp) = g.pooled();
        let out_plane = if self.pool { hp * wp } else { plane };
        let mut out = vec![T::zero(); o * g.n * out_plane];
        // One arg-max plane per channel (a placeholder byte without pool).
        let arg_plane = if self.pool { g.n * hp * wp } else { 0 }.max(1);
        let mut argmax = vec![0u8; o * arg_plane];
        y.par_chunks_mut(p)
            .zip(out.par_chunks_mut(g.n * out_plane))
            .zip(argmax.par_chunks_mut(arg_plane))
            .enumerate()
            .for_each(|(c, ((yr, or), ar))| {
                simd(
                    #[inline(always)]
                    || {
                        let (m, r, gc, bc) = (mean[c], rstd[c], gamma[c], beta[c]);
                        if !self.pool {
                            // One pass: y becomes xhat, out the ReLU of the affine.
                            for (a, v) in or.iter_mut().zip(yr.iter_mut()) {
                                let xh = (*v - m) * r;
                                *v = xh;
                                let z = pre(gc, bc, xh);
                                *a = if z > T::zero() { z } else { T::zero() };
                            }
                            return;
                        }
                        for v in yr.iter_mut() {
                            *v = (*v - m) * r; // now xhat
                        }
                        for b in 0..g.n {
                            let src = &yr[b * plane..(b + 1) * plane];
                            let dst = &mut or[b * hp * wp..(b + 1) * hp * wp];
                            let arg = &mut ar[b * hp * wp..(b + 1) * hp * wp];
                            pool_plane(g, src, dst, arg, |v| {
                                let z = pre(gc, bc, v);
                                if z > T::zero() {
                                    z
                                } else {
                                    T::zero()
                                }
                            });
                        }
                    },
                )
            });
        if !self.pool {
            argmax = Vec::new();
        }
        let mean = mean.iter().zip(bias).map(|(&m, &b)| m + b).collect();
        let saved = Saved {
            xhat: y,
            rstd,
            mean,
            var,
            argmax,
        };
        (out, saved)
    }

    fn backward<T: Num>(
        &self,
        g: Geo,
        x: &[T],
        prm: &[T],
        s: &Saved<T>,
        grad: &[T],
    ) -> (Option<Vec<T>>, Vec<T>) {
        let (k, p, o, plane) = (g.k(), g.p(), g.o, g.plane());
        let (wt, rest) = prm.split_at(o * k);
        let (gamma, beta) = (&rest[o..2 * o], &rest[2 * o..3 * o]);
        let (hp, wp) = g.pooled();
        let pf = T::from(p).unwrap_or_else(T::one);
        // g = dL/da masked by the ReLU; dbeta = sum g, dgamma = sum g xhat.
        let sums: Vec<(T, T)> = (0..o)
            .into_par_iter()
            .map(|c| {
                simd(
                    #[inline(always)]
                    || {
                        let xr = &s.xhat[c * p..(c + 1) * p];
                        let (gc, bc) = (gamma[c], beta[c]);
                        let on = |v: T| pre(gc, bc, v) > T::zero();
                        if self.pool {
                            let q = g.n * hp * wp;
                            let gr = &grad[c * q..(c + 1) * q];
                            let ar = &s.argmax[c * q..(c + 1) * q];
                            let (mut sg, mut sgx) = (T::zero(), T::zero());
                            let pq = hp * wp;
                            for b in 0..g.n {
                                let xb = &xr[b * plane..(b + 1) * plane];
                                let (gb, ab) =
                                    (&gr[b * pq..(b + 1) * pq], &ar[b * pq..(b + 1) * pq]);
                                pool_sources(g, ab, |i, src| {
                                    let xv = xb[src];
                                    let gm = gb[i].passed(on(xv));
                                    sg += gm;
                                    sgx += gm * xv;
                                });
                            }
                            (sg, sgx)
                        } else {
                            masked_sums(&grad[c * p..(c + 1) * p], xr, gc, bc)
                        }
                    },
                )
            })
            .collect();
        // dy = gamma * rstd / P * (P g - dbeta - xhat dgamma), by chunk;
        // then dw = dy cols^T, db = sum dy, dcols = w^T dy -> dx.
        let scale: Vec<T> = (0..o).map(|c| gamma[c] * s.rstd[c] / pf).collect();
        let mut dx = self.need_dx.then(|| vec![T::zero(); g.c * g.n * g.h * g.w]);
        let dxp = dx.as_mut().map(|v| Disjoint(v.as_mut_ptr()));
        let chunks = g.chunks();
        let im = g.im2col();
        let taps = im.table();
        // Small maps: the input gradient as a gather (see gather_channel).
        let inv = taps.as_ref().map(|_| im.inverse());
        let parts: Vec<(Vec<T>, Vec<T>)> = per_chunk(
            &chunks,
            #[inline(always)]
            |scratch: &mut Scratch<T>, b0, nb| {
                let pc = nb * plane;
                // All three fully written below before they are read.
                let Scratch {
                    dy,
                    cols,
                    gplane,
                    off,
                } = scratch;
                let dy = take(dy, o * pc);
                let cols = take(cols, k * pc);
                let gplane = take(gplane, plane);
                let mut db = vec![T::zero(); o];
                for c in 0..o {
                    let (gc, bc) = (gamma[c], beta[c]);
                    let (sg, sgx) = sums[c];
                    let sc = scale[c];
                    for bi in 0..nb {
                        let b = b0 + bi;
                        let at = c * p + b * plane;
                        let xr = &s.xhat[at..at + plane];
                        let row = &mut dy[c * pc + bi * plane..c * pc + (bi + 1) * plane];
                        let dy_of = |gv: T, xv: T| sc * (pf * gv - sg - xv * sgx);
                        if !self.pool {
                            // g and dy in one pass (no gradient plane).
                            for ((d, &gv), &xv) in row.iter_mut().zip(&grad[at..at + plane]).zip(xr)
                            {
                                *d = dy_of(gv.passed(pre(gc, bc, xv) > T::zero()), xv);
                            }
                            continue;
                        }
                        // The pooled gradient routed to its arg-max first.
                        gplane.fill(T::zero());
                        let q0 = (c * g.n + b) * hp * wp;
                        let gq = &grad[q0..q0 + hp * wp];
                        pool_sources(g, &s.argmax[q0..q0 + hp * wp], |i, src| {
                            gplane[src] = gq[i].passed(pre(gc, bc, xr[src]) > T::zero());
                        });
                        for ((d, &gv), &xv) in row.iter_mut().zip(gplane.iter()).zip(xr) {
                            *d = dy_of(gv, xv);
                        }
                    }
                    let row = &dy[c * pc..(c + 1) * pc];
                    db[c] = sum8(pc, |i| row[i]);
                }
                im.fill_chunk(x, b0, cols, taps.as_deref());
                let dym = Mat {
                    data: &dy[..],
                    rs: pc,
                    cs: 1,
                };
                let mut dw = vec![T::zero(); o * k];
                // dw = dy cols^T
                let cols_t = Mat {
                    data: &cols[..],
                    rs: 1,
                    cs: pc,
                };
                matmul(o, k, pc, &mut dw, false, dym, cols_t, false);
                if let Some(dxp) = dxp {
                    // dcols = w^T dy, reusing the patch buffer.
                    let w_t = Mat {
                        data: wt,
                        rs: 1,
                        cs: k,
                    };
                    matmul(k, pc, o, cols, false, w_t, dym, false);
                    let chw = g.n * g.h * g.w;
                    if let Some(inv) = &inv {
                        inv.offsets(pc, off);
                    }
                    for ci in 0..g.c {
                        // SAFETY: this chunk owns images b0..b0+nb of every
                        // channel of dx (chunks are disjoint).
                        let img = unsafe { dxp.slice(ci * chw + b0 * g.h * g.w, nb * g.h * g.w) };
                        match &inv {
                            Some(inv) => im.gather_channel(cols, ci, inv, off, img),
                            None => im.add_channel(cols, ci, None, img),
                        }
                    }
                }
                (dw, db)
            },
        );
        // Reduce in chunk order.
        let mut dprm = vec![T::zero(); o * k + 3 * o];
        for (dw, db) in &parts {
            for (a, &v) in dprm[..o * k].iter_mut().zip(dw) {
                *a += v;
            }
            for (a, &v) in dprm[o * k..o * k + o].iter_mut().zip(db) {
                *a += v;
            }
        }
        for (c, &(sg, sgx)) in sums.iter().enumerate() {
            dprm[o * k + o + c] = sgx;
            dprm[o * k + 2 * o + c] = sg;
        }
        (dx, dprm)
    }
}

/// `(sum g, sum g xhat)` with `g` the gradient where the ReLU passed it,
/// in eight lanes (the same order on every run; fixed-size lane arrays
/// so that no bounds checks keep the loop scalar).
#[inline(always)]
fn masked_sums<T: Num>(grad: &[T], xhat: &[T], gamma: T, beta: T) -> (T, T) {
    let mut sg = [T::zero(); 8];
    let mut sgx = [T::zero(); 8];
    // The masked gradient of a block of 64 first, in a loop LLVM
    // vectorises as a blend; then the sums, in eight lanes. (Both in one
    // loop, LLVM turns the mask back into a branch per element.)
    let mut gm = [T::zero(); 64];
    let (gc, xc) = (grad.chunks_exact(64), xhat.chunks_exact(64));
    let (gt, xt) = (gc.remainder(), xc.remainder());
    for (g64, x64) in gc.zip(xc) {
        for ((m, &g), &x) in gm.iter_mut().zip(g64).zip(x64) {
            *m = g.passed(pre(gamma, beta, x) > T::zero());
        }
        for (m8, x8) in gm.chunks_exact(8).zip(x64.chunks_exact(8)) {
            let m8: &[T; 8] = m8.try_into().expect("8 lanes");
            let x8: &[T; 8] = x8.try_into().expect("8 lanes");
            for l in 0..8 {
                sg[l] += m8[l];
                sgx[l] += m8[l] * x8[l];
            }
        }
    }
    // The tail: whole lanes of eight, then one by one.
    let (g8, x8) = (gt.chunks_exact(8), xt.chunks_exact(8));
    let (gt, xt) = (g8.remainder(), x8.remainder());
    for (g8, x8) in g8.zip(x8) {
        for l in 0..8 {
            let m = g8[l].passed(pre(gamma, beta, x8[l]) > T::zero());
            sg[l] += m;
            sgx[l] += m * x8[l];
        }
    }
    let fold = |a: [T; 8]| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    let (mut g, mut gx) = (fold(sg), fold(sgx));
    for (&gv, &xv) in gt.iter().zip(xt) {
        if pre(gamma, beta, xv) > T::zero() {
            g += gv;
            gx += gv * xv;
        }
    }
    (g, gx)
}

/// Call `f(i, src)` for each pooled output `i` of one `[Ho/2, Wo/2]`
/// plane (row-major) with the position `src` in its `[Ho, Wo]` plane of
/// the window's arg-max (`args[i]`, row-major in the 2x2 window).
#[inline(always)]
fn pool_sources(g: Geo, args: &[u8], mut f: impl FnMut(usize, usize)) {
    let (hp, wp) = g.pooled();
    for (pi, row) in args.chunks_exact(wp).take(hp).enumerate() {
        for (pj, &a) in row.iter().enumerate() {
            let a = a as usize;
            f(pi * wp + pj, (2 * pi + a / 2) * g.wo + 2 * pj + a % 2);
        }
    }
}

/// 2x2 max pool, stride 2, floor, of `act(src)` for one `[Ho, Wo]` plane;
/// the arg-max is the first maximum in row-major window order (as
/// PyTorch). Written as selects over window pairs, which vectorise.
#[inline(always)]
fn pool_plane<T: Num>(g: Geo, src: &[T], dst: &mut [T], arg: &mut [u8], act: impl Fn(T) -> T) {
    let (hp, wp) = g.pooled();
    for i in 0..hp {
        let r0 = &src[2 * i * g.wo..(2 * i + 1) * g.wo];
        let r1 = &src[(2 * i + 1) * g.wo..(2 * i + 2) * g.wo];
        let d = &mut dst[i * wp..(i + 1) * wp];
        let a = &mut arg[i * wp..(i + 1) * wp];
        for (((d, a), p0), p1) in d
            .iter_mut()
            .zip(a.iter_mut())
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            let (v1, v2, v3) = (act(p0[1]), act(p1[0]), act(p1[1]));
            let mut best = act(p0[0]);
            let mut at = 0u8;
            // First maximum wins: a later value must be strictly greater.
            let c = v1 > best;
            best = if c { v1 } else { best };
            at = if c { 1 } else { at };
            let c = v2 > best;
            best = if c { v2 } else { best };
            at = if c { 2 } else { at };
            let c = v3 > best;
            best = if c { v3 } else { best };
            at = if c { 3 } else { at };
            *d = best;
            *a = at;
        }
    }
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("fused block: inputs must be contiguous"),
    }
}

impl CustomOp2 for ConvBnRelu {
    fn name(&self) -> &'static str {
        "conv-bn-relu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geo(lx.shape(), lp.shape().elem_count())?;
        let (out, cache) = match (sx, sp) {
            (CpuStorage::F32(x), CpuStorage::F32(p)) => {
                let (o, s) = self.forward(g, slice(x, lx)?, slice(p, lp)?);
                (CpuStorage::F32(o), Cache::F32(s))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p)) => {
                let (o, s) = self.forward(g, slice(x, lx)?, slice(p, lp)?);
                (CpuStorage::F64(o), Cache::F64(s))
            }
            _ => candle_core::bail!("fused block: f32 or f64 inputs of one dtype"),
        };
        *self.cache.lock().expect("block cache") = Some(cache);
        let (h, w) = if self.pool { g.pooled() } else { (g.ho, g.wo) };
        Ok((out, Shape::from((g.o, g.n, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        prm: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let len = prm.elem_count();
        let g = self.geo(x.shape(), len)?;
        let (c, n, h, w) = (g.c, g.n, g.h, g.w);
        let grad = grad.contiguous()?;
        let guard = self.cache.lock().expect("block cache");
        let dev = x.device();
        // The input, read in place (the op was applied to a contiguous x).
        let (xs, xl) = x.storage_and_layout();
        macro_rules! run {
            ($t:ty, $s:expr, $xv:expr) => {{
                let pv = prm.flatten_all()?.to_vec1::<$t>()?;
                let gv = grad.flatten_all()?.to_vec1::<$t>()?;
                let (dx, dp) = self.backward(g, slice($xv, xl)?, &pv, $s, &gv);
                let dx = match dx {
                    Some(v) => Some(Tensor::from_vec(v, (c, n, h, w), dev)?),
                    None => None,
                };
                (dx, Some(Tensor::from_vec(dp, len, dev)?))
            }};
        }
        Ok(match (guard.as_ref(), &*xs) {
            (Some(Cache::F32(s)), Storage::Cpu(CpuStorage::F32(xv))) => run!(f32, s, xv),
            (Some(Cache::F64(s)), Storage::Cpu(CpuStorage::F64(xv))) => run!(f64, s, xv),
            (None, _) => candle_core::bail!("fused block: backward without a forward"),
            _ => candle_core::bail!(
                "fused block: the input is not on the CPU in the forward's dtype"
            ),
        })
    }
}
