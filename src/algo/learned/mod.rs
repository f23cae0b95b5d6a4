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
//!   meta-trains.
//!
//! A new coordinate-wise rule (Andrychowicz et al.'s two-layer LSTM
//! optimizer, theta_t = theta_{t-1} + W h_t over the preprocessed
//! gradient) is one file here: its weights struct (two [`LstmLayer`]s and
//! an output layer, `from_params`/`to_params` by name), its state struct,
//! and `impl Rule`. docs/algorithms.md ("Learned update rules") has the
//! recipe.

pub mod lstm;
pub mod objective;
pub mod preprocess;
pub mod ravi;
pub mod rule;
pub mod unroll;

pub use lstm::{LstmLayer, LstmState};
pub use objective::Objective;
pub use preprocess::{preprocess, Inputs, Preprocess};
pub use rule::{Rule, Step};
pub use unroll::{unroll, UnrollOptions, Unrolled};
