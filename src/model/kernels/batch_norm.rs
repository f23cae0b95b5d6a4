//! Batch norm as a candle op on *channel-major* activations `[C, B, H, W]`:
//! the statistics are a reduction over the contiguous second axis of a
//! `[C, B*H*W]` view (reducing over dims (0, 2, 3) of `[B, C, H, W]` was
//! measured about 50x slower in candle). Composed of candle primitives
//! (reshape, mean, arithmetic), so second-order MAML works through it.

use candle_core::{Result, Tensor};

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
