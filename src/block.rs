//! One learner block as one fused op: 3x3 convolution (padding 1, stride 1
//! or 2) + batch norm with the batch's own statistics + ReLU (+ 2x2 max
//! pool), with its hand-written backward.
//!
//! The composed path ([`crate::ops`]) runs about ten candle ops per block,
//! each a pass over memory with a fresh allocation, and candle's autograd
//! keeps every intermediate. Here the forward is one im2col, one GEMM (the
//! `gemm` crate) and one pass per channel for the statistics, the
//! normalisation and the ReLU (and one for the pool); the backward is the
//! chain rule written out below with two GEMMs, and it skips the input
//! gradient of the first block (the images), which nobody asks for. What
//! the backward needs (the patches, the normalised values, 1/sigma, the
//! pool's arg-max) is kept from the forward in the op itself.
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

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::{matmul, sum8, BnStats, Im2Col, Mat};

/// What the backward keeps from the forward.
#[derive(Debug)]
struct Saved<T> {
    cols: Vec<T>,
    xhat: Vec<T>,
    act: Vec<T>,
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
}
impl Num for f32 {}
impl Num for f64 {}

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
    fn p(&self) -> usize {
        self.n * self.ho * self.wo
    }
    fn pooled(&self) -> (usize, usize) {
        (self.ho / 2, self.wo / 2)
    }
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

    fn geo(&self, lx: &Layout, lp: &Layout) -> Result<Geo> {
        let (c, n, h, w) = lx.shape().dims4()?;
        let len = lp.shape().elem_count();
        // len = o*c*9 + 3o
        let o = len / (c * 9 + 3);
        if o * (c * 9 + 3) != len {
            candle_core::bail!(
                "fused block: {len} packed parameters do not fit {c} input channels"
            );
        }
        Ok(Geo {
            c,
            n,
            h,
            w,
            o,
            ho: (h - 1) / self.stride + 1,
            wo: (w - 1) / self.stride + 1,
            stride: self.stride,
        })
    }

    fn forward<T: Num>(&self, g: Geo, x: &[T], prm: &[T]) -> (Vec<T>, Saved<T>) {
        let (k, p, o) = (g.k(), g.p(), g.o);
        let cols = g.im2col().fwd(x);
        let (wt, rest) = prm.split_at(o * k);
        let (bias, rest) = rest.split_at(o);
        let (gamma, beta) = rest.split_at(o);
        let mut y = vec![T::zero(); o * p];
        let rm = |data, cols| Mat {
            data,
            rs: cols,
            cs: 1,
        };
        matmul(o, p, k, &mut y, false, rm(wt, k), rm(&cols[..], p), true);
        let eps = T::from(self.eps).unwrap_or_else(T::zero);
        let pf = T::from(p).unwrap_or_else(T::one);
        let mut act = vec![T::zero(); o * p];
        let mut rstd = vec![T::zero(); o];
        let mut mean = vec![T::zero(); o];
        let mut var = vec![T::zero(); o];
        y.par_chunks_mut(p)
            .zip(act.par_chunks_mut(p))
            .zip(
                rstd.par_iter_mut()
                    .zip(mean.par_iter_mut().zip(var.par_iter_mut())),
            )
            .enumerate()
            .for_each(|(c, ((yr, ar), (rs, (mu, va))))| {
                for v in yr.iter_mut() {
                    *v += bias[c];
                }
                let m = sum8(yr.len(), |i| yr[i]) / pf;
                let vr = sum8(yr.len(), |i| (yr[i] - m) * (yr[i] - m)) / pf;
                let r = T::one() / (vr + eps).sqrt();
                let (gc, bc) = (gamma[c], beta[c]);
                for (v, a) in yr.iter_mut().zip(ar.iter_mut()) {
                    *v = (*v - m) * r; // now xhat
                    let z = gc * *v + bc;
                    *a = if z > T::zero() { z } else { T::zero() };
                }
                *rs = r;
                *mu = m;
                *va = vr;
            });
        let (out, argmax) = if self.pool {
            pool_fwd(g, &act)
        } else {
            (act.clone(), vec![])
        };
        let saved = Saved {
            cols,
            xhat: y,
            act,
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
        prm: &[T],
        s: &Saved<T>,
        grad: &[T],
    ) -> (Option<Vec<T>>, Vec<T>) {
        let (k, p, o) = (g.k(), g.p(), g.o);
        let (wt, rest) = prm.split_at(o * k);
        let gamma = &rest[o..2 * o];
        // dL/da, then masked by the ReLU.
        let mut da = if self.pool {
            pool_bwd(g, grad, &s.argmax)
        } else {
            grad.to_vec()
        };
        let mut dgamma = vec![T::zero(); o];
        let mut dbeta = vec![T::zero(); o];
        let pf = T::from(p).unwrap_or_else(T::one);
        da.par_chunks_mut(p)
            .zip(dgamma.par_iter_mut().zip(dbeta.par_iter_mut()))
            .enumerate()
            .for_each(|(c, (dr, (dg, db)))| {
                let xr = &s.xhat[c * p..(c + 1) * p];
                let ar = &s.act[c * p..(c + 1) * p];
                for (d, a) in dr.iter_mut().zip(ar) {
                    if *a <= T::zero() {
                        *d = T::zero();
                    }
                }
                let sg = sum8(p, |i| dr[i]);
                let sgx = sum8(p, |i| dr[i] * xr[i]);
                // dy = gamma * rstd / P * (P g - dbeta - xhat dgamma)
                let scale = gamma[c] * s.rstd[c] / pf;
                for (d, x) in dr.iter_mut().zip(xr) {
                    *d = scale * (pf * *d - sg - *x * sgx);
                }
                *dg = sgx;
                *db = sg;
            });
        let dy = da;
        let mut dw = vec![T::zero(); o * k];
        let dym = Mat {
            data: &dy[..],
            rs: p,
            cs: 1,
        };
        // dw = dy cols^T
        let cols_t = Mat {
            data: &s.cols[..],
            rs: 1,
            cs: p,
        };
        matmul(o, k, p, &mut dw, false, dym, cols_t, true);
        let dbias: Vec<T> = dy.par_chunks(p).map(|r| sum8(p, |i| r[i])).collect();
        let dx = self.need_dx.then(|| {
            let mut dcols = vec![T::zero(); k * p];
            // dcols = w^T dy
            let w_t = Mat {
                data: wt,
                rs: 1,
                cs: k,
            };
            matmul(k, p, o, &mut dcols, false, w_t, dym, true);
            g.im2col().adjoint(&dcols)
        });
        let mut dprm = dw;
        dprm.extend_from_slice(&dbias);
        dprm.extend_from_slice(&dgamma);
        dprm.extend_from_slice(&dbeta);
        (dx, dprm)
    }
}

/// 2x2 max pool, stride 2, floor, on `[O, B, Ho, Wo]`; the arg-max is the
/// first maximum in row-major window order (as PyTorch).
fn pool_fwd<T: Num>(g: Geo, a: &[T]) -> (Vec<T>, Vec<u8>) {
    let (hp, wp) = g.pooled();
    let planes = g.o * g.n;
    let mut out = vec![T::zero(); planes * hp * wp];
    let mut arg = vec![0u8; planes * hp * wp];
    out.par_chunks_mut(hp * wp)
        .zip(arg.par_chunks_mut(hp * wp))
        .enumerate()
        .for_each(|(pl, (or, ar))| {
            let src = &a[pl * g.ho * g.wo..(pl + 1) * g.ho * g.wo];
            for i in 0..hp {
                for j in 0..wp {
                    let mut best = src[2 * i * g.wo + 2 * j];
                    let mut at = 0u8;
                    for (q, (di, dj)) in [(0, 1), (1, 0), (1, 1)].iter().enumerate() {
                        let v = src[(2 * i + di) * g.wo + 2 * j + dj];
                        if v > best {
                            best = v;
                            at = q as u8 + 1;
                        }
                    }
                    or[i * wp + j] = best;
                    ar[i * wp + j] = at;
                }
            }
        });
    (out, arg)
}

fn pool_bwd<T: Num>(g: Geo, grad: &[T], arg: &[u8]) -> Vec<T> {
    let (hp, wp) = g.pooled();
    let mut da = vec![T::zero(); g.o * g.n * g.ho * g.wo];
    da.par_chunks_mut(g.ho * g.wo)
        .enumerate()
        .for_each(|(pl, dr)| {
            for i in 0..hp {
                for j in 0..wp {
                    let q = arg[pl * hp * wp + i * wp + j] as usize;
                    dr[(2 * i + q / 2) * g.wo + 2 * j + q % 2] = grad[pl * hp * wp + i * wp + j];
                }
            }
        });
    da
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
        let g = self.geo(lx, lp)?;
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
        let (c, n, h, w) = x.dims4()?;
        let len = prm.elem_count();
        let o = len / (c * 9 + 3);
        let g = Geo {
            c,
            n,
            h,
            w,
            o,
            ho: (h - 1) / self.stride + 1,
            wo: (w - 1) / self.stride + 1,
            stride: self.stride,
        };
        let grad = grad.contiguous()?;
        let guard = self.cache.lock().expect("block cache");
        let dev = x.device();
        macro_rules! run {
            ($t:ty, $s:expr) => {{
                let pv = prm.flatten_all()?.to_vec1::<$t>()?;
                let gv = grad.flatten_all()?.to_vec1::<$t>()?;
                let (dx, dp) = self.backward(g, &pv, $s, &gv);
                let dx = match dx {
                    Some(v) => Some(Tensor::from_vec(v, (c, n, h, w), dev)?),
                    None => None,
                };
                (dx, Some(Tensor::from_vec(dp, len, dev)?))
            }};
        }
        Ok(match guard.as_ref() {
            Some(Cache::F32(s)) => run!(f32, s),
            Some(Cache::F64(s)) => run!(f64, s),
            None => candle_core::bail!("fused block: backward without a forward"),
        })
    }
}
