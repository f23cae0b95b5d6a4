//! Learned update rules as reusable parts: a rule that updates the
//! parameters of an objective coordinate by coordinate, with weights it
//! learns (learn2learn's `LearnableOptimizer(model, transform)`: the rule
//! kept apart from what it updates).
//!
//! For an objective L over theta in R^n, a learned rule with weights phi
//! and per-coordinate state s unrolls T steps,
//!
//! ```text
//! g_t = grad L(theta_{t-1}),  L_t = L(theta_{t-1})            (constants)
//! x_t = preprocess(g_t[, L_t])                 per coordinate, 2 or 4 features
//! (theta_t, s_t) = rule_phi(theta_{t-1}, g_t, x_t, s_{t-1})    t = 1..=T
//! ```
//!
//! and is meta-trained on a meta-loss of theta_T (or of every theta_t) by
//! backpropagation through time to phi (and to theta_0 when it is learned).
//! No second derivatives: g_t and L_t are inputs, not functions of phi.
//!
//! The parts, one file each:
//! - [`objective`]: [`Objective`], loss and gradient at given flat
//!   parameters ([`objective::Support`], the learner on a support set;
//!   [`objective::Replay`], recorded inputs played back);
//! - [`preprocess`](mod@preprocess): Andrychowicz et al.'s log-sign preprocessing with its
//!   constant p, and [`Inputs`], which values a rule reads;
//! - [`lstm`]: a standard LSTM layer shared by all coordinates, with named
//!   weights ([`LstmLayer`]) and its state in a struct ([`LstmState`]);
//! - [`rule`]: the [`Rule`] trait (state, one step, named series to
//!   record, truncation);
//! - [`unroll`](mod@unroll): one unroll over T steps with one options struct
//!   ([`UnrollOptions`]: steps, truncation, checkpointing, kernels,
//!   recording);
//! - [`ravi`]: Ravi & Larochelle's rule (an [`LstmLayer`] and the
//!   meta-cell whose state is theta), which the `meta-lstm` algorithm
//!   meta-trains;
//! - [`andrychowicz`]: Andrychowicz et al.'s optimizer, theta_t =
//!   theta_{t-1} + scale (W_out h2_t + b_out) with h2 the top of two
//!   [`LstmLayer`]s over the preprocessed gradient, with the reference
//!   code's and the paper's settings as options;
//! - [`two_level`]: the two joined: Andrychowicz et al.'s LSTM proposes
//!   z_t, Ravi & Larochelle's gated cell sets theta_t = f_t theta_{t-1} +
//!   i_t z_t; z_t = -g_t gives Ravi's rule and f = i = 1 Andrychowicz's,
//!   bit for bit.
//!
//! - [`fused`](mod@fused): the LSTM stack, read-out and gated cell of the
//!   two rules above as one tiled CPU kernel with a hand-written backward
//!   through time, which [`unroll()`] and [`unroll_segment`] run in place
//!   of the composed graph where it applies (one candle op, so the
//!   callers differentiate the same tensors).
//!
//! Andrychowicz et al.'s meta-loss, f summed along the unroll with the
//! gradients constant, is [`unroll_segment`]'s: one segment of truncated
//! backpropagation through time, continued from a given state, with a
//! surrogate scalar whose gradient is that meta-loss's.
//!
//! A new coordinate-wise rule is one file here: its weights struct
//! (`from_params`/`to_params` by name), its state struct, and `impl
//! Rule`. docs/algorithms.md ("Learned update rules") has the recipe.

pub mod andrychowicz;
pub mod fused;
pub mod lstm;
pub mod objective;
pub mod preprocess;
pub mod ravi;
pub mod rule;
pub mod two_level;
pub mod unroll;

pub use lstm::{LstmLayer, LstmState};
pub use objective::Objective;
pub use preprocess::{preprocess, Inputs, Preprocess};
pub use rule::{Rule, StateParts, Step};
pub use unroll::{unroll, unroll_segment, Segment, UnrollOptions, Unrolled};
