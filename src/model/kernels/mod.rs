//! The learner's building blocks: the composed candle ops and the fused
//! CPU kernels that compute the same values.
//!
//! - [`ops`]: 3x3 convolution, batch norm, 2x2 max pooling and the LSTM
//!   cell as candle ops, the gemm wrappers and the SIMD switch;
//! - [`block`]: one learner block as one fused op with a hand-written
//!   backward;
//! - `patches`: the fused block's 3x3 patches of channels-last images.

pub mod block;
pub mod ops;
pub(crate) mod patches;
