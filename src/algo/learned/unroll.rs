//! One unroll of a learned rule over T steps of an objective.
//!
//! ```text
//! theta_0 given (the rule's learned initial state, or the objective's)
//! for t = 1..=T:
//!     (grad_t, L_t) = objective.loss_and_grad(theta_{t-1})   (constants)
//!     theta_t       = rule.step(theta_{t-1}, grad_t, L_t)
//! ```
//!
//! The whole unroll is one candle graph (unless truncated), so the
//! meta-loss of theta_T differentiates back through every step to the
//! rule's weights and theta_0. [`UnrollOptions`] gathers how: the number of
//! steps, truncation points, gradient checkpointing, kernels and whether
//! the rule's series are recorded.

use candle_core::Tensor;

use super::objective::Objective;
use super::rule::Rule;
use crate::error::Result;
use crate::model::kernels::Kernels;

/// How an unroll runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnrollOptions {
    /// Updates T.
    pub steps: usize,
    /// Truncated backpropagation through time: every `truncate` steps theta
    /// and the rule's state are cut from the graph, so the meta-gradient
    /// of the final loss flows back through the last segment only
    /// (Andrychowicz et al. truncate at 20). 0, the default: never.
    pub truncate: usize,
    /// Gradient checkpointing (kernels that implement it: the meta-learner
    /// LSTM's fused kernel): keep the state every k steps and recompute
    /// the steps between in the backward; the meta-gradient is the same
    /// bit for bit. 0, the default: keep every step.
    pub checkpoint: usize,
    /// A rule's fused kernel where it has one and can run it (CPU, no
    /// truncation), or the composed candle graph (default: fused).
    pub kernels: Kernels,
    /// Record the rule's series at every step (default: false).
    pub record: bool,
}

impl UnrollOptions {
    /// `steps` updates, everything else default.
    pub fn new(steps: usize) -> Self {
        UnrollOptions {
            steps,
            truncate: 0,
            checkpoint: 0,
            kernels: Kernels::default(),
            record: false,
        }
    }

    /// Whether step `t` (0-based) starts a new truncated segment.
    pub fn cuts_before(&self, t: usize) -> bool {
        self.truncate > 0 && t > 0 && t.is_multiple_of(self.truncate)
    }
}

/// What an unroll produced.
#[derive(Debug, Clone)]
pub struct Unrolled {
    /// theta_T, `[1, n]` (in the graph unless truncated away).
    pub theta: Tensor,
    /// With `record`: per step 1..=T, the rule's series (`[1, n]` each).
    pub recorded: Vec<Vec<Tensor>>,
    /// The `(gradient [1, n], loss)` the objective gave at each step.
    pub inputs: Vec<(Tensor, f64)>,
}

/// Unroll `rule` from `theta0` (`[1, n]`) on `objective` as a candle graph
/// (the composed path; `opts.kernels` and `opts.checkpoint` are for rules
/// with kernels of their own, which dispatch before calling this).
pub fn unroll<R: Rule>(
    rule: &R,
    theta0: &Tensor,
    objective: &mut dyn Objective,
    opts: &UnrollOptions,
) -> Result<Unrolled> {
    let mut state = rule.start(theta0)?;
    let mut theta = theta0.clone();
    let mut recorded = Vec::new();
    let mut inputs = Vec::with_capacity(opts.steps);
    for t in 0..opts.steps {
        if opts.cuts_before(t) {
            theta = theta.detach();
            rule.detach(&mut state);
        }
        let (grad, loss) = objective.loss_and_grad(&theta)?;
        let step = rule.step(&mut state, &theta, &grad, loss, opts.record)?;
        theta = step.theta;
        recorded.extend(step.series);
        inputs.push((grad, loss));
    }
    Ok(Unrolled {
        theta,
        recorded,
        inputs,
    })
}
