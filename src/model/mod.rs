//! The learner and what it is made of: the functional conv-4 over named
//! parameters, where batch norm takes its statistics, Adam, and the kernels
//! underneath.
//!
//! - [`learner`]: the standard conv-4 of few-shot learning, functional over
//!   its parameters;
//! - [`params`]: an ordered, named collection of parameter tensors;
//! - [`norm`]: where batch norm takes its statistics (the references'
//!   protocols);
//! - [`optim`]: Adam with checkpointable state (the meta-optimiser);
//! - [`hand`]: the five hand-designed updates of `torch.optim` (SGD,
//!   momentum, Nesterov, RMSprop, Adam) on flat slices, the baselines of
//!   the optimisation benchmarks;
//! - [`kernels`]: the building blocks (composed candle ops and the fused
//!   CPU kernels).

pub mod hand;
pub mod kernels;
pub mod learner;
pub mod norm;
pub mod optim;
pub mod params;
