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
//!
//! [`unroll_segment`] runs one segment of truncated backpropagation through
//! time from a given theta and rule state, with Andrychowicz et al.'s
//! meta-loss along it (f at every theta visited, gradients constant) and a
//! surrogate scalar whose gradient is that meta-loss's ([`Segment`]).
//!
//! Both run a rule's fused kernel ([`super::fused`], [`Rule::fused`]) when
//! the options ask for fused kernels, the rule has one that runs its
//! shape, and theta is on the CPU in float32 or float64 (and `unroll` does
//! not truncate within its steps); the kernel's outputs are the same
//! tensors in the same graph (one candle op whose backward is the
//! kernel's), to float tolerance. Otherwise they build the composed
//! candle graph below, the reference.

use candle_core::{DType, Tensor};

use super::fused::{self, RunOptions, Spec};
use super::objective::Objective;
use super::rule::{Rule, StateParts};
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
    /// A rule's fused kernel where it has one and can run it (CPU, float32
    /// or float64, no truncation within the unroll), or the composed
    /// candle graph (default: fused).
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

/// The fused kernel's description of `rule` and its weights, when `opts`
/// ask for fused kernels and the kernel can run the rule on `theta`: the
/// CPU, float32 or float64 (the weights too), no cut within the steps.
fn fused_plan<R: Rule>(
    rule: &R,
    theta: &Tensor,
    opts: &UnrollOptions,
) -> Option<(Spec, Vec<Tensor>)> {
    let dtype = theta.dtype();
    let runs = opts.kernels == Kernels::Fused
        && theta.device().is_cpu()
        && matches!(dtype, DType::F32 | DType::F64)
        && (opts.truncate == 0 || opts.truncate >= opts.steps);
    if !runs {
        return None;
    }
    rule.fused()
        .filter(|(_, w)| w.iter().all(|t| t.dtype() == dtype && t.device().is_cpu()))
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

/// Unroll `rule` from `theta0` (`[1, n]`) on `objective`: the fused
/// kernel of [`Rule::fused`] when it runs (see the module docs), else a
/// candle graph (the composed path). `opts.checkpoint` is for the
/// meta-LSTM's own kernel, which dispatches before calling this.
pub fn unroll<R: Rule>(
    rule: &R,
    theta0: &Tensor,
    objective: &mut dyn Objective,
    opts: &UnrollOptions,
) -> Result<Unrolled> {
    if let Some((spec, weights)) = fused_plan(rule, theta0, opts) {
        let run = RunOptions {
            steps: opts.steps,
            record: opts.record,
            segment: false,
            state: false,
        };
        let out = fused::run(&spec, &weights, theta0, None, objective, run)?;
        return Ok(Unrolled {
            theta: out.theta,
            recorded: out.recorded,
            inputs: out.inputs,
        });
    }
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

/// One segment of an unroll continued from a given state, with Andrychowicz
/// et al.'s meta-loss along it (what [`unroll_segment`] returns).
#[derive(Debug, Clone)]
pub struct Segment {
    /// theta_T, `[1, n]`, in the graph.
    pub theta: Tensor,
    /// f at each theta visited, in the reference's order: f(theta_0), ...,
    /// f(theta_T), T + 1 values (`meta.py:332-333` writes f before each
    /// update, `meta.py:360-362` the final one; `meta.py:364` sums them).
    pub losses: Vec<f64>,
    /// The scalar `sum_{t=0..=T} <stopgrad(grad f(theta_t)), theta_t>`,
    /// whose gradient with respect to the rule's weights (and theta_0, if
    /// in the graph) is that of `sum_t f(theta_t)` with the gradients
    /// constant (see [`unroll_segment`]); its value is not a loss.
    pub surrogate: Tensor,
    /// The `(gradient [1, n], loss)` the objective gave at theta_0, ...,
    /// theta_T (T + 1: the last one at theta_T); `objective::Replay` plays
    /// them back.
    pub inputs: Vec<(Tensor, f64)>,
    /// With `record`: per step 1..=T, the rule's series (`[1, n]` each).
    pub recorded: Vec<Vec<Tensor>>,
}

/// `opts.steps` updates of `rule` from `theta` (`[1, n]`) and `state`, which it
/// continues and leaves at the segment's end (recording the rule's series
/// with `opts.record`; the fused kernel when `opts.kernels` asks for it and
/// it runs the rule, see the module docs; `opts.truncate` is ignored), with Andrychowicz et al.'s
/// meta-loss along the way: one segment of truncated backpropagation
/// through time (the reference unrolls 20 steps at a time over 100,
/// `train.py:43-45, 52`, updating the optimizer after each unroll,
/// `util.py:30-36`, and carrying theta and the state into the next,
/// `meta.py:375-377`).
///
/// It cuts nothing: theta and `state` go on in whatever graph they carry.
/// For truncated BPTT, cut them at the segment's start (`theta.detach()`,
/// [`Rule::detach`]); the reference's segment starts from variables, which
/// carry no gradient. Two segments of T/2 with the state carried give the
/// values of one segment of T.
///
/// **The meta-loss** (`meta.py:326-364`) is the unweighted sum of f at
/// every theta of the segment, the start included:
///
/// ```text
/// L = sum_{t=0..=T} f(theta_t)
/// ```
///
/// with the gradients fed to the rule constant (`second_derivatives =
/// False`: `tf.stop_gradient`, `meta.py:317-318`). Consecutive segments
/// both count f at their common theta, as the reference's do (each
/// `fx_array` begins with f at its start). Differentiating L with the
/// gradient inputs g_t constant, each theta_t depends on the weights phi
/// only through the rule, so
///
/// ```text
/// dL/dphi = sum_t grad f(theta_t)^T dtheta_t/dphi
///         = d/dphi sum_t <stopgrad(g_t), theta_t>,   g_t = grad f(theta_t)
/// ```
///
/// exactly: the surrogate's gradient is the reference's meta-gradient,
/// with no second derivatives of f (the objective gives g_t as a
/// constant, and this is the only place f's derivative enters). The term
/// of f(theta_T) needs g_T = grad f(theta_T), which no update uses: one
/// more objective call at theta_T (T + 1 in all), as the reference builds
/// f at `x_final` (`meta.py:361`) and differentiates it.
pub fn unroll_segment<R: Rule>(
    rule: &R,
    state: &mut R::State,
    theta: &Tensor,
    objective: &mut dyn Objective,
    opts: &UnrollOptions,
) -> Result<Segment> {
    let (steps, record) = (opts.steps, opts.record);
    let whole = UnrollOptions {
        truncate: 0,
        ..*opts
    };
    if let Some((spec, weights)) = fused_plan(rule, theta, &whole) {
        let run = RunOptions {
            steps,
            record,
            segment: true,
            state: true,
        };
        let parts = state.parts();
        let out = fused::run(&spec, &weights, theta, Some(&parts), objective, run)?;
        *state = R::State::from_parts(out.state)?;
        return Ok(Segment {
            theta: out.theta,
            losses: out.losses,
            surrogate: out.surrogate.expect("a segment's surrogate"),
            inputs: out.inputs,
            recorded: out.recorded,
        });
    }
    let mut theta = theta.clone();
    let mut losses = Vec::with_capacity(steps + 1);
    let mut inputs = Vec::with_capacity(steps + 1);
    let mut recorded = Vec::new();
    let mut terms = Vec::with_capacity(steps + 1);
    for t in 0..=steps {
        // (g_t, f(theta_t)): constants.
        let (grad, loss) = objective.loss_and_grad(&theta)?;
        let grad = grad.detach();
        // <stopgrad(g_t), theta_t>
        terms.push((&theta * &grad)?.sum_all()?);
        losses.push(loss);
        if t < steps {
            let step = rule.step(state, &theta, &grad, loss, record)?;
            theta = step.theta;
            recorded.extend(step.series);
        }
        inputs.push((grad, loss));
    }
    let surrogate = Tensor::stack(&terms, 0)?.sum_all()?;
    Ok(Segment {
        theta,
        losses,
        surrogate,
        inputs,
        recorded,
    })
}
