//! The learner's building blocks and the meta-learner's LSTM cell: the
//! composed candle ops, the fused CPU kernels that compute the same
//! values, and what the kernels share. One file per concept:
//!
//! - [`conv`]: 3x3 convolution as a candle op, with its patches (im2col)
//!   and their adjoint;
//! - [`batch_norm`]: batch norm with the batch's statistics or given ones;
//! - [`pool`]: 2x2 max pooling;
//! - [`lstm_cell`]: the meta-learner's layer-1 LSTM step (a fused custom
//!   op on the CPU);
//! - [`block`]: one learner block (conv + batch norm + ReLU (+ pool)) as
//!   one fused op with a hand-written backward;
//! - `patches`: the fused block's 3x3 patches of channels-last images;
//! - `gemm`: the gemm wrappers of the fused kernels (`Mat`, `matmul`,
//!   `matmul_raw`);
//! - [`simd`]: the SIMD switch and the one AVX2 dispatch of every kernel;
//! - [`scalar`]: the one scalar trait of the kernels (f32, f64) and their
//!   activations;
//! - [`tile`]: register tiles of 16 coordinates and their loads, stores
//!   and lane sums, shared by the coordinate-wise LSTM kernels.
//!
//! Here: [`Kernels`], the switch between the fused kernels and the
//! composed ops (it chooses for the learner's blocks and the meta-LSTM
//! alike, so it belongs to neither file).
//!
//! The composed convolution, batch norm and pooling sit in files of their
//! own so each can be swapped for a fused kernel. All three work on
//! *channel-major* activations `[C, B, H, W]` (why: [`conv`] and
//! [`batch_norm`]) and are built of candle primitives (pad, narrow,
//! reshape, cat, matmul, max, arithmetic) whose backward passes are
//! themselves differentiable, or of custom ops whose backward is again
//! such an op, so second-order MAML works through them.

use candle_core::{Device, Layout, Result};

pub mod batch_norm;
pub mod block;
pub mod conv;
pub(crate) mod gemm;
pub mod lstm_cell;
pub(crate) mod patches;
pub mod pool;
pub mod scalar;
pub mod simd;
pub mod tile;

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

impl Kernels {
    /// The kernels that run on `device`: the fused ones are CPU code, so
    /// any other device runs the composed path whatever was asked. The one
    /// place this fallback is decided.
    pub fn on(self, device: &Device) -> Kernels {
        if device.is_cpu() {
            self
        } else {
            Kernels::Composed
        }
    }

    /// Every implementation that runs on `device`, the reference first.
    pub fn available(device: &Device) -> &'static [Kernels] {
        if device.is_cpu() {
            &[Kernels::Composed, Kernels::Fused]
        } else {
            &[Kernels::Composed]
        }
    }
}

/// The contiguous part of a custom op's input, or an error naming `op`.
fn contiguous_slice<'a, T>(v: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}
