//! A coordinate-wise learned update rule: the interface every rule
//! implements so that one unroll ([`super::unroll()`]) drives any of them on
//! any [`super::Objective`].
//!
//! A rule maps, per coordinate k and step t, the objective's gradient and
//! loss at theta_{t-1} and its own per-coordinate state to theta_t:
//!
//! ```text
//! (theta_t, s_t) = rule(theta_{t-1}, grad_t, L_t, s_{t-1}),   t = 1..=T
//! ```
//!
//! with weights shared by every coordinate (named fields of the rule's
//! struct, read from and written to `Params` by name) and the state `s`
//! a struct of `[features, n]` tensors. Everything is a candle graph, so
//! the meta-gradient flows back through time by autograd; a rule may also
//! say how the shared fused kernel runs it ([`Rule::fused`], the LSTM
//! stack of [`super::fused`]; the meta-learner LSTM has a kernel of its
//! own, `meta_lstm/fused.rs`).

use candle_core::Tensor;

use super::fused::Spec;
use crate::error::Result;

/// A rule's per-coordinate state as a list of `[rows, n]` tensors in a
/// fixed order, and back: what the fused kernel reads at an unroll's start
/// and hands back at its end ([`Spec::state_rows`]' order for the rules it
/// runs).
pub trait StateParts: Sized {
    /// The tensors, in order.
    fn parts(&self) -> Vec<Tensor>;
    /// The state from tensors in [`StateParts::parts`]' order.
    fn from_parts(parts: Vec<Tensor>) -> Result<Self>;
}

/// One step's output.
#[derive(Debug, Clone)]
pub struct Step {
    /// theta_t, `[1, n]`.
    pub theta: Tensor,
    /// When recorded: the values of each of [`Rule::series`] at this step
    /// (`[1, n]` each, in that order, cut from the graph).
    pub series: Option<Vec<Tensor>>,
}

/// A coordinate-wise learned update rule.
pub trait Rule {
    /// Per-coordinate state carried from step to step.
    type State: StateParts;

    /// Names of the per-coordinate series a step can record (a gated
    /// rule's gates, say), in order; empty: none.
    fn series(&self) -> &'static [&'static str];

    /// The state before the first step, for `theta0`'s coordinates
    /// (`[1, n]`; its dtype and device).
    fn start(&self, theta0: &Tensor) -> Result<Self::State>;

    /// theta_t from theta_{t-1} (`theta`, `[1, n]`) and the objective's
    /// gradient (`[1, n]`) and loss at theta_{t-1}; updates `state`. With
    /// `record`, also the values of [`Rule::series`].
    fn step(
        &self,
        state: &mut Self::State,
        theta: &Tensor,
        grad: &Tensor,
        loss: f64,
        record: bool,
    ) -> Result<Step>;

    /// Cut `state` from the autograd graph (a truncation point): the
    /// meta-gradient flows back no further than here.
    fn detach(&self, state: &mut Self::State);

    /// How the fused kernel ([`super::fused`]) runs this rule, and its
    /// weights in [`Spec::weight_sizes`]' order, when the kernel can (its
    /// shape: [`super::fused::H`] hidden units, the gradient as the only
    /// input); `None`, the default, runs the composed graph.
    fn fused(&self) -> Option<(Spec, Vec<Tensor>)> {
        None
    }
}
