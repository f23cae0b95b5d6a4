//! 2x2 max pooling as a candle op on *channel-major* activations
//! `[C, B, H, W]`, composed of candle primitives (narrow, reshape, max)
//! whose backward passes are themselves differentiable, so second-order
//! MAML works through it.
//!
//! We do **not** use candle's `max_pool2d`, whose backward (candle 0.11.1)
//! scales the gradient by (number of maxima)/(k*k) and misroutes it for odd
//! input sizes; [`max_pool2x2`] takes the max of four strided views, whose
//! gradient goes exactly to the arg-max (the finite-difference tests in
//! `model/learner.rs` check this).

use candle_core::{Result, Tensor, D};

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
