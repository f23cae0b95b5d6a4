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

use candle_core::{Result, Tensor, D};

/// 3x3 convolution with padding 1 and stride 1 or 2 on `[C, B, H, W]`.
///
/// `w`: `[O, C, 3, 3]`, `b`: `[O]`; returns `[O, B, Ho, Wo]` with
/// `Ho = (H - 1) / stride + 1` (as PyTorch's `Conv2d(k=3, p=1)`).
///
/// y[o, n, i, j] = b[o] + sum_{c, dy, dx} w[o, c, dy, dx] * xpad[c, n, s*i + dy, s*j + dx]
pub fn conv3x3(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize) -> Result<Tensor> {
    let (c, n, h, wd) = x.dims4()?;
    let o = w.dim(0)?;
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
    // [C, 9, B, Ho, Wo] -> [C*9, B*Ho*Wo]; column index c*9 + dy*3 + dx
    // matches w's [O, C, 3, 3] layout.
    let cols = Tensor::stack(&cols, 1)?.reshape((c * 9, n * ho * wo))?;
    let y = w.reshape((o, c * 9))?.matmul(&cols)?;
    let y = y.broadcast_add(&b.reshape((o, 1))?)?;
    y.reshape((o, n, ho, wo))
}

/// Batch statistics of one layer: mean and biased variance per channel,
/// each `[C, 1]`.
#[derive(Debug, Clone)]
pub struct BnStats {
    pub mean: Tensor,
    pub var: Tensor,
}

/// Batch norm on `[C, B, H, W]` with the statistics of this batch (returned)
/// or with given ones (e.g. the support set's, for non-transductive
/// prediction). No running statistics exist.
///
/// y = gamma * (x - mean) / sqrt(var + eps) + beta
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
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
            BnStats { mean, var }
        }
    };
    let inv = (st.var.clone() + eps)?.sqrt()?.recip()?;
    let scale = gamma.reshape((c, 1))?.mul(&inv)?;
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
