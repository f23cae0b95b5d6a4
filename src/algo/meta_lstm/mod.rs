//! The meta-learner LSTM of Ravi & Larochelle, "Optimization as a Model for
//! Few-Shot Learning" (ICLR 2017), as the official code
//! (twitter-research/meta-learning-lstm, read at 0cffa24) does it. File and
//! line citations below are to that repository; docs/fidelity.md has the
//! full table.
//!
//! Gradient descent, theta_t = theta_{t-1} - alpha * grad_t, is the cell
//! update of an LSTM whose cell state is the learner's parameters, with the
//! forget gate fixed at 1 and the input gate at alpha. The meta-learner
//! learns both gates, per coordinate and per step, and the initial cell
//! state theta_0 (the learner's initial parameters):
//!
//! - Learner gradient: the mean cross-entropy's gradient divided once more
//!   by the batch size (`model/lstm/meta-learner-lstm.lua:64`,
//!   `gradParameters:div(inputs:size(1))`; `grad_div_batch`). This scaled
//!   gradient is both preprocessed and used in the cell update.
//! - Inputs per learner coordinate: the loss and the gradient, each
//!   preprocessed as in Andrychowicz et al. (2016) with p = 10
//!   ([`crate::algo::learned::preprocess()`];
//!   `model/lstm/lstm-helper.lua:6-57`); the loss pair is broadcast to
//!   every coordinate. The reference concatenates (loss, grad); we feed
//!   (grad, loss): a fixed permutation of the columns of the first layer's
//!   input weights, whose initialisation is symmetric.
//! - Layer 1: a standard LSTM, 4 inputs -> 20 hidden units
//!   (`meta-learner-lstm.lua:98`), its weights shared by all coordinates,
//!   its state (h, c) carried across the steps of an episode, one bias.
//! - Layer 2, the meta-LSTM cell, per coordinate (`lstm-helper.lua:106-131`):
//!   `f_t = sigmoid(W_f [h_t, theta_{t-1}, f_{t-1}] + b_f)`,
//!   `i_t = sigmoid(W_i [h_t, theta_{t-1}, i_{t-1}] + b_i)`,
//!   `theta_t = f_t * theta_{t-1} - i_t * grad_t`,
//!   where the fed-back f_{t-1}, i_{t-1} are pre-sigmoid values (zero at
//!   t = 0) and the raw (scaled, not preprocessed) gradient enters only the
//!   cell update.
//! - Initialisation (`meta-learner-lstm.lua:119-136`): weights and biases
//!   U(-0.01, 0.01), b_f ~ U(4, 5), b_i ~ U(-5, -4) (so a fresh meta-learner
//!   is close to gradient descent with a small learning rate); theta_0 from
//!   a fresh learner, then learned.
//! - No second derivatives: the gradient and loss fed to the meta-learner
//!   are computed on a detached copy of theta_t and are constants; the
//!   meta-gradient flows back through time through the meta-learner's own
//!   states to theta_0 and the LSTM weights.
//! - T updates on the whole support set: the reference's batch size equals
//!   the support size (5 for 1-shot, 25 for 5-shot), so its nEpochs are
//!   full-batch updates: 12 for 1-shot and 8 for 5-shot
//!   (`config/lstm/train-imagenet-{1,5}shot.lua`). No Omniglot config
//!   exists; there we default to 10, the mission's number. The query loss
//!   after the last update is the meta-loss. Adam, lr 1e-3, global
//!   gradient-norm clip 0.25, one episode per meta-update
//!   (`model/lstm/train-lstm.lua:65-81`, `meta-learner-lstm.lua:207-226`).
//!
//! Batch norm (see [`crate::model::norm`]): while meta-training, the reference
//! normalises the query pass with the query batch's own statistics (its
//! learner is in training mode); at validation and test it calls
//! `learner.set('evaluate')` after the T support passes, so the query is
//! normalised with running statistics that were reset at the start of the
//! episode and updated by every support pass with momentum 0.9 (1-shot) or
//! 0.95 (5-shot) (`meta-learner-lstm.lua:166-202`; the Torch7 convention
//! weighs the newest batch by the momentum). That is `batch_norm: {eval:
//! running}` in `benchmarks/reference/`; the comparison benchmarks use one
//! protocol for every algorithm (`eval: support` unless transductive).
//!
//! Other departures, and why:
//! - Every update uses the whole support set (the same as the reference in
//!   its 1- and 5-shot configs, where batch size = support size).
//! - The layer-1 LSTM has one bias vector, as the reference (PyTorch ports
//!   have two, b_ih + b_hh, one parameter in effect).
//!
//! The update rule itself is [`crate::algo::learned::ravi`] (named weights,
//! per-coordinate state, the composed step with the equations beside its
//! lines), unrolled by the learned-rule parts of [`crate::algo::learned`]
//! on the learner's support set
//! ([`crate::algo::learned::objective::Support`]). This module is the
//! algorithm around it: its configuration, meta-training (Adam on the
//! meta-gradient), checkpoints (the meta-parameters by name, `meta.lstm.w_ih`
//! and so on), the report of its gates to an [`Observer`], and the choice
//! of the [`fused`] kernel, which runs the rule's whole unroll in one pass
//! when the rule has the published shape. Activations are laid out
//! feature-major (`[features, coordinates]`) so every gate is a contiguous
//! block.

pub mod fused;

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

pub use super::learned::preprocess::preprocess;
pub use super::learned::ravi::Gates;

use super::learned::objective::{self, Objective, Replay, Support};
use super::learned::ravi::{RaviRule, RaviWeights, SERIES};
use super::learned::{Inputs, Preprocess, UnrollOptions};
use super::{
    at_least_one, positive, Adapted, Algorithm, Context, Entry, EpisodeScore, Observer, Progress,
};
use crate::data::sampler::{Batch, EpisodeId, EpisodeSpec};
use crate::data::task::TaskKind;
use crate::error::{Error, Result};
use crate::model::kernels::scalar::Scalar;
use crate::model::kernels::Kernels;
use crate::model::learner::{cross_entropy, Learner};
use crate::model::norm::RunningStats;
use crate::model::optim::{clip_global_norm, Adam, AdamConfig};
use crate::model::params::Params;
use crate::rng::Rng;

/// Registry entry.
pub const ENTRY: Entry = Entry {
    name: "meta-lstm",
    about: "Meta-learner LSTM (Ravi & Larochelle 2017)",
    tasks: &[TaskKind::Episodic, TaskKind::Optimisation],
    resolve: |v, ctx| super::resolve_as(v, ctx, MetaLstmConfig::resolve),
    build: |v, ctx| super::build_as(v, ctx, MetaLstmConfig::resolve, MetaLstm::new),
};

/// Hidden units of the published meta-learner's layer 1
/// (`meta-learner-lstm.lua:98`): the size this algorithm builds, and the
/// size the [`fused`] kernel is compiled for (a rule of another size runs
/// composed).
pub const HIDDEN: usize = 20;

/// Meta-LSTM hyperparameters as written in a benchmark file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaLstmConfig {
    /// Always `meta-lstm`.
    pub algorithm: String,
    /// Name in tables [default: `meta-lstm`].
    pub label: Option<String>,
    /// Learner updates per episode, T [default: 10 on Omniglot; on
    /// mini-ImageNet 12 for 1-shot and 8 for 5-shot, the reference configs].
    pub steps: Option<usize>,
    /// Updates at validation/test time [default: `steps`].
    pub steps_test: Option<usize>,
    /// Adam learning rate of the meta-learner [default: 1e-3].
    pub meta_lr: Option<f64>,
    /// Global gradient-norm clip [default: 0.25].
    pub clip_norm: Option<f64>,
    /// Episodes per meta-update [default: 1].
    pub meta_batch: Option<usize>,
    /// Preprocessing constant p of Andrychowicz et al. [default: 10].
    pub preprocess_p: Option<f64>,
    /// Divide the learner's (mean-loss) gradient by the batch size before
    /// the meta-learner sees it, as the reference does
    /// (`gradParameters:div(inputs:size(1))`) [default: true].
    pub grad_div_batch: Option<bool>,
    /// Gradient checkpointing over the T updates (fused kernels): keep the
    /// meta-learner's state every k steps and recompute the steps between
    /// in the backward, for long unrolls; the meta-gradient is unchanged
    /// bit for bit. 0 keeps every step's tape [default: 0].
    pub grad_checkpoint_steps: Option<usize>,
}

/// Resolved meta-LSTM hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaLstmResolved {
    pub algorithm: String,
    pub label: String,
    pub steps: usize,
    pub steps_test: usize,
    pub meta_lr: f64,
    pub clip_norm: f64,
    pub meta_batch: usize,
    pub preprocess_p: f64,
    pub grad_div_batch: bool,
    #[serde(default)]
    pub grad_checkpoint_steps: usize,
}

impl MetaLstmConfig {
    pub fn resolve(&self, ctx: &Context) -> Result<MetaLstmResolved> {
        // twitter-research/meta-learning-lstm config/lstm/train-imagenet-
        // {1,5}shot.lua: nEpochs 12 (1-shot), 8 (5-shot). No Omniglot
        // config exists: 10, the mission's number.
        let default_steps = match (ctx.dataset.as_str(), ctx.spec.shots) {
            ("omniglot", _) => 10,
            (_, 1) => 12,
            (_, 5) => 8,
            _ => 10,
        };
        let steps = at_least_one("steps", self.steps.unwrap_or(default_steps))?;
        Ok(MetaLstmResolved {
            algorithm: "meta-lstm".into(),
            label: self.label.clone().unwrap_or_else(|| "meta-lstm".into()),
            steps,
            steps_test: at_least_one("steps_test", self.steps_test.unwrap_or(steps))?,
            meta_lr: positive("meta_lr", self.meta_lr.unwrap_or(1e-3))?,
            clip_norm: positive("clip_norm", self.clip_norm.unwrap_or(0.25))?,
            meta_batch: at_least_one("meta_batch", self.meta_batch.unwrap_or(1))?,
            preprocess_p: positive("preprocess_p", self.preprocess_p.unwrap_or(10.0))?,
            grad_div_batch: self.grad_div_batch.unwrap_or(true),
            grad_checkpoint_steps: self.grad_checkpoint_steps.unwrap_or(0),
        })
    }
}

fn scalar_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The result of unrolling the meta-learner on a support set.
pub struct Unrolled {
    /// theta_T, `[1, n]`.
    pub theta: Tensor,
    /// `(forget, input)` gate values after the sigmoid at steps 1..=T
    /// (`[1, n]` each), if recorded.
    pub gates: Vec<(Tensor, Tensor)>,
    /// The (gradient `[1, n]`, loss) pairs fed to the meta-learner.
    pub inputs: Vec<(Tensor, f64)>,
}

impl From<super::learned::Unrolled> for Unrolled {
    /// The rule's recorded series ([`SERIES`]: forget, input) as pairs.
    fn from(u: super::learned::Unrolled) -> Self {
        let gates = u
            .recorded
            .into_iter()
            .filter_map(|s| match <[Tensor; 2]>::try_from(s) {
                Ok([f, i]) => Some((f, i)),
                Err(_) => None,
            })
            .collect();
        Unrolled {
            theta: u.theta,
            gates,
            inputs: u.inputs,
        }
    }
}

/// A fused unroll with what produced it.
struct FusedUnroll<T> {
    unroll: fused::Unroll<T>,
    weights: fused::Weights<T>,
    gates: Vec<(Tensor, Tensor)>,
    inputs: Vec<(Tensor, f64)>,
}

/// The meta-learner: its parameters, the learner shape, the optimiser.
pub struct MetaLstm {
    pub config: MetaLstmResolved,
    ctx: Context,
    /// The rule's meta-parameters by name ([`RaviWeights::to_params`]:
    /// `lstm.w_ih [80, 4]`, `lstm.w_hh [80, 20]`, `lstm.b [80, 1]`,
    /// `cell.w_f [1, 22]`, `cell.w_i [1, 22]`, `cell.b_f [1, 1]`,
    /// `cell.b_i [1, 1]`, `theta0 [1, n]`), as Adam and checkpoints see them.
    pub params: Params,
    /// Shapes and names of the learner's parameters (values unused).
    template: Params,
    adam: Adam,
    /// The last meta-training unroll (a `fused::Unroll<T>`), kept so that
    /// the next episode reuses its tape's buffers.
    spare: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl MetaLstm {
    pub fn new(config: MetaLstmResolved, ctx: &Context) -> Result<Self> {
        let dev = &ctx.device;
        let template = ctx
            .learner
            .init(&mut Rng::derive(ctx.run_seed, &[0x1417]), dev)?;
        let n = template.numel();
        let mut rng = Rng::derive(ctx.run_seed, &[0x157]);
        // theta_0 from a fresh learner, then learned.
        let theta0 = template.flatten()?.reshape((1, n))?;
        let weights = RaviWeights::init(Inputs::GradientAndLoss, HIDDEN, theta0, &mut rng, dev)?;
        let params = weights.to_params();
        let adam = Adam::new(AdamConfig::with_lr(config.meta_lr), &params)?;
        Ok(MetaLstm {
            config,
            ctx: ctx.clone(),
            params,
            template,
            adam,
            spare: std::sync::Mutex::new(None),
        })
    }

    /// The learner this meta-learner trains.
    pub fn learner(&self) -> &Learner {
        &self.ctx.learner
    }

    /// Coordinate ranges of each learner layer (`conv1`..`conv4`, `head`)
    /// in the flattened parameter vector.
    pub fn layer_ranges(&self) -> Vec<(String, Range<usize>)> {
        objective::layer_ranges(&self.template)
    }

    /// Learner parameters viewed from a flat `[1, n]` vector.
    pub fn learner_params(&self, theta: &Tensor) -> Result<Params> {
        self.template.unflatten_like(&theta.flatten_all()?)
    }

    /// The rule at meta-parameters `mp` (named as [`MetaLstm::params`]):
    /// the gradient and loss inputs preprocessed with `preprocess_p`,
    /// learned gates.
    pub fn rule(&self, mp: &Params) -> Result<RaviRule> {
        let pre = Preprocess {
            p: self.config.preprocess_p,
        };
        RaviRule::new(RaviWeights::from_params(mp)?, pre, Inputs::GradientAndLoss)
    }

    /// The objective the rule updates: the learner's loss on `(x, y)`, its
    /// gradient divided by the batch size when `grad_div_batch`
    /// (meta-learner-lstm.lua: the criterion averages, then
    /// `gradParameters:div(inputs:size(1))`). The passes' batch-norm
    /// statistics go into `running` when given.
    pub fn support<'a>(
        &'a self,
        x: &'a Tensor,
        y: &'a Tensor,
        running: Option<&'a mut RunningStats>,
    ) -> Support<'a> {
        Support {
            learner: &self.ctx.learner,
            template: &self.template,
            x,
            y,
            grad_div_batch: self.config.grad_div_batch,
            running,
        }
    }

    /// The options of this algorithm's own unrolls: `steps` updates with
    /// the configured kernels and gradient checkpointing.
    fn options(&self, steps: usize, record: bool) -> UnrollOptions {
        UnrollOptions {
            kernels: self.ctx.learner.kernels,
            checkpoint: self.config.grad_checkpoint_steps,
            record,
            ..UnrollOptions::new(steps)
        }
    }

    /// Whether the fused kernel can run `rule` with `opts`: on the CPU,
    /// the published shape (H = [`HIDDEN`], gradient and loss inputs), no
    /// truncation.
    fn fusable(rule: &RaviRule, opts: &UnrollOptions) -> bool {
        rule.weights.theta0.device().is_cpu()
            && rule.weights.hidden() == HIDDEN
            && rule.inputs == Inputs::GradientAndLoss
            && (opts.truncate == 0 || opts.truncate >= opts.steps)
    }

    /// Unroll `rule` on `objective` from its theta_0: the fused kernel when
    /// `opts.kernels` asks for it and it can run (then the same values to
    /// float tolerance, without a graph to differentiate), else the
    /// composed candle graph ([`crate::algo::learned::unroll()`]).
    pub fn unroll(
        &self,
        rule: &RaviRule,
        objective: &mut dyn Objective,
        opts: &UnrollOptions,
    ) -> Result<Unrolled> {
        let theta0 = &rule.weights.theta0;
        let (n, dev) = (theta0.dim(1)?, theta0.device().clone());
        let fused = opts.kernels == Kernels::Fused && Self::fusable(rule, opts);
        macro_rules! fused {
            ($t:ty) => {{
                let f = self.unroll_fused::<$t>(rule, objective, opts, false)?;
                Ok(Unrolled {
                    theta: Tensor::from_vec(f.unroll.theta, (1, n), &dev)?,
                    gates: f.gates,
                    inputs: f.inputs,
                })
            }};
        }
        match (fused, theta0.dtype()) {
            (true, DType::F32) => fused!(f32),
            (true, DType::F64) => fused!(f64),
            _ => Ok(super::learned::unroll(rule, theta0, objective, opts)?.into()),
        }
    }

    /// The rule's named weights as flat arrays for the fused kernel.
    fn weights<T: Scalar>(rule: &RaviRule) -> Result<fused::Weights<T>> {
        let v = |t: &Tensor| -> Result<Vec<T>> { Ok(t.flatten_all()?.to_vec1::<T>()?) };
        let (lstm, cell) = (&rule.weights.lstm, &rule.weights.cell);
        Ok(fused::Weights {
            w_ih: v(&lstm.weight_ih)?,
            w_hh: v(&lstm.weight_hh)?,
            b: v(&lstm.bias)?,
            w_f: v(&cell.weight_f)?,
            w_i: v(&cell.weight_i)?,
            b_f: v(&cell.bias_f)?[0],
            b_i: v(&cell.bias_i)?[0],
        })
    }

    /// [`MetaLstm::unroll`] with the fused kernel (no candle graph): the
    /// unroll (with its tape when `keep`, for the backward), the weights it
    /// used, and the recorded gates.
    fn unroll_fused<T: Scalar>(
        &self,
        rule: &RaviRule,
        objective: &mut dyn Objective,
        opts: &UnrollOptions,
        keep: bool,
    ) -> Result<FusedUnroll<T>> {
        let w = Self::weights::<T>(rule)?;
        let theta0 = rule.weights.theta0.flatten_all()?.to_vec1::<T>()?;
        let n = theta0.len();
        let dev = rule.weights.theta0.device().clone();
        // Meta-training reuses the previous episode's unroll (its tape).
        let reuse = keep
            .then(|| self.spare.lock().ok().and_then(|mut s| s.take()))
            .flatten()
            .and_then(|b| b.downcast::<fused::Unroll<T>>().ok());
        let mut u = match reuse {
            Some(mut u) => {
                u.reset(&theta0, rule.gates, keep);
                *u
            }
            None => fused::Unroll::new(theta0, rule.gates, keep),
        };
        u.set_segment(opts.checkpoint);
        let mut recorded = Vec::new();
        let mut inputs = Vec::with_capacity(opts.steps);
        for _ in 0..opts.steps {
            let theta = Tensor::from_slice(&u.theta, (1, n), &dev)?;
            let (grad, loss) = objective.loss_and_grad(&theta)?;
            let g = grad.flatten_all()?.to_vec1::<T>()?;
            let p = rule.preprocess.p;
            if let Some((f, i)) = u.step(&w, &g, loss, p, opts.record) {
                recorded.push((
                    Tensor::from_vec(f, (1, n), &dev)?,
                    Tensor::from_vec(i, (1, n), &dev)?,
                ));
            }
            inputs.push((grad, loss));
        }
        Ok(FusedUnroll {
            unroll: u,
            weights: w,
            gates: recorded,
            inputs,
        })
    }

    /// The objective of an episode's support set, or `frozen` inputs played
    /// back.
    fn objective<'a>(
        &'a self,
        b: &'a Batch,
        frozen: Option<&'a [(Tensor, f64)]>,
    ) -> Box<dyn Objective + 'a> {
        match frozen {
            Some(f) => Box::new(Replay::new(f)),
            None => Box::new(self.support(&b.support_x, &b.support_y, None)),
        }
    }

    /// θ_T after `steps` updates on `(x, y)` with the configured kernels,
    /// and the gates after the sigmoid at each step when `record`.
    fn adapt_theta(
        &self,
        x: &Tensor,
        y: &Tensor,
        steps: usize,
        record: bool,
        running: Option<&mut RunningStats>,
    ) -> Result<Unrolled> {
        let rule = self.rule(&self.params)?;
        let mut objective = self.support(x, y, running);
        self.unroll(&rule, &mut objective, &self.options(steps, record))
    }

    /// Meta-loss, score and meta-gradient of one episode at meta-parameters
    /// `mp` with the configured kernels: the fused forward and hand-written
    /// backward through time, or candle's autograd over the composed graph.
    /// `frozen` fixes the learner's gradient and loss inputs (gradient
    /// checks).
    pub fn meta_gradient(
        &self,
        mp: &Params,
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(f64, EpisodeScore, Params)> {
        let rule = self.rule(mp)?;
        let opts = self.options(self.config.steps, false);
        let fused = opts.kernels == Kernels::Fused && Self::fusable(&rule, &opts);
        match (fused, rule.weights.theta0.dtype()) {
            (true, DType::F32) => self.meta_gradient_fused::<f32>(mp, &rule, &opts, b, frozen),
            (true, DType::F64) => self.meta_gradient_fused::<f64>(mp, &rule, &opts, b, frozen),
            _ => {
                let vars = mp.to_vars()?;
                let mv = Params::from_vars(&mp.names, &vars);
                let (l, s) = self.meta_loss(&mv, b, frozen)?;
                let g = mv.grads(&l.backward()?)?;
                Ok((scalar_f64(&l)?, s, g))
            }
        }
    }

    fn meta_gradient_fused<T: Scalar>(
        &self,
        mp: &Params,
        rule: &RaviRule,
        opts: &UnrollOptions,
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(f64, EpisodeScore, Params)> {
        let FusedUnroll {
            unroll: u,
            weights: w,
            ..
        } = self.unroll_fused::<T>(rule, &mut *self.objective(b, frozen), opts, true)?;
        let n = u.theta.len();
        let dev = rule.weights.theta0.device().clone();
        // dL/dθ_T through the learner's query pass (candle autograd).
        let theta_t = Var::from_tensor(&Tensor::from_slice(&u.theta, (1, n), &dev)?)?;
        let p = self.learner_params(theta_t.as_tensor())?;
        let logits = self.ctx.predict_train(&p, &b.support_x, &b.query_x)?;
        let loss = cross_entropy(&logits, &b.query_y)?;
        let score = EpisodeScore::of(&logits, &b.query_y)?;
        let grads = loss.backward()?;
        let d_theta_t = match grads.get(theta_t.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<T>()?,
            None => vec![T::zero(); n],
        };
        let (gw, d0) = u.backward(&w, &d_theta_t);
        if let Ok(mut s) = self.spare.lock() {
            *s = Some(Box::new(u));
        }
        // The gradient by name, shaped as the weights it belongs to.
        let like = |v: Vec<T>, t: &Tensor| Tensor::from_vec(v, t.dims(), &dev);
        let (lstm, cell) = (&rule.weights.lstm, &rule.weights.cell);
        let mut g = rule.weights.clone();
        g.lstm.weight_ih = like(gw.w_ih, &lstm.weight_ih)?;
        g.lstm.weight_hh = like(gw.w_hh, &lstm.weight_hh)?;
        g.lstm.bias = like(gw.b, &lstm.bias)?;
        g.cell.weight_f = like(gw.w_f, &cell.weight_f)?;
        g.cell.weight_i = like(gw.w_i, &cell.weight_i)?;
        g.cell.bias_f = like(vec![gw.b_f], &cell.bias_f)?;
        g.cell.bias_i = like(vec![gw.b_i], &cell.bias_i)?;
        g.theta0 = like(d0, &rule.weights.theta0)?;
        let g = g.to_params();
        // In `mp`'s order.
        let tensors = mp
            .names
            .iter()
            .map(|name| g.get(name).cloned())
            .collect::<Result<Vec<_>>>()?;
        Ok((
            scalar_f64(&loss)?,
            score,
            Params::new(mp.names.clone(), tensors),
        ))
    }

    /// Meta-loss (query loss after the composed unroll) and its score.
    pub fn meta_loss(
        &self,
        mp: &Params,
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(Tensor, EpisodeScore)> {
        let rule = self.rule(mp)?;
        let opts = UnrollOptions {
            kernels: Kernels::Composed,
            ..UnrollOptions::new(self.config.steps)
        };
        let mut objective = self.objective(b, frozen);
        let u = self.unroll(&rule, &mut *objective, &opts)?;
        let p = self.learner_params(&u.theta)?;
        let logits = self.ctx.predict_train(&p, &b.support_x, &b.query_x)?;
        let loss = cross_entropy(&logits, &b.query_y)?;
        Ok((loss, EpisodeScore::of(&logits, &b.query_y)?))
    }

    /// Cast all meta-parameters (float64 gradient checks).
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        self.params = self.params.to_dtype(dtype)?;
        self.template = self.template.to_dtype(dtype)?;
        self.adam = Adam::new(self.adam.config, &self.params)?;
        Ok(())
    }
}

impl Algorithm for MetaLstm {
    /// `steps` support passes and the query pass per episode; the fused
    /// kernel's tape keeps 128 float32 values per coordinate and step
    /// (fused.rs), or with gradient checkpointing every k steps' state
    /// (43 values) and per step the gradient and loss inputs (2).
    fn step_cost(&self) -> super::StepCost {
        let c = &self.config;
        let mut sc = super::StepCost::episodic(
            c.steps,
            c.steps_test,
            self.ctx.spec,
            self.ctx.spec,
            c.meta_batch,
            &format!("steps {}", c.steps),
        );
        let k = c.grad_checkpoint_steps;
        sc.tape_bytes_per_param = 4.0
            * if k == 0 {
                128.0 * c.steps as f64
            } else {
                43.0 * c.steps.div_ceil(k) as f64 + 2.0 * c.steps as f64 + 128.0 * k as f64
            };
        sc
    }
    fn label(&self) -> &str {
        &self.config.label
    }
    fn kind(&self) -> &'static str {
        "meta-lstm"
    }
    fn meta_batch(&self) -> usize {
        self.config.meta_batch
    }
    fn train_spec(&self) -> EpisodeSpec {
        self.ctx.spec
    }
    fn meta_train_step(&mut self, episodes: &[Batch], _progress: Progress) -> Result<EpisodeScore> {
        if episodes.is_empty() {
            return Err(Error::invalid("meta-batch", 0, "at least one episode"));
        }
        let mut grads = Vec::with_capacity(episodes.len());
        let mut scores = Vec::with_capacity(episodes.len());
        for b in episodes {
            let (_, s, g) = self.meta_gradient(&self.params, b, None)?;
            grads.push(g);
            scores.push(s);
        }
        let nb = episodes.len() as f64;
        let g = super::sum_params(&grads)?.map(|t| t / nb)?;
        let (g, _norm) = clip_global_norm(&g, self.config.clip_norm)?;
        self.params = self.adam.step(&self.params, &g)?;
        Ok(EpisodeScore::mean(&scores))
    }
    fn adapt(&self, x: &Tensor, y: &Tensor, _episode: EpisodeId) -> Result<Adapted> {
        let mut running = self.ctx.recorder();
        let u = self.adapt_theta(x, y, self.config.steps_test, false, running.as_mut())?;
        Ok(Adapted {
            params: self.learner_params(&u.theta)?,
            running,
        })
    }
    fn context(&self) -> &Context {
        &self.ctx
    }
    fn meta_params(&self) -> &Params {
        &self.params
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        super::params_and_adam_state(("meta.", &self.params), ("adam.", &self.adam))
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        super::load_params_and_adam(s, ("meta.", &mut self.params), ("adam.", &mut self.adam))
    }
    /// The rule's weights; theta_0 stays this learner's fresh draw.
    fn load_rule(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        super::load_rule_params(s, "meta.", &mut self.params, "theta0")
    }
    /// The gates after the sigmoid, `forget` and `input`.
    fn series(&self) -> &[&'static str] {
        &SERIES
    }
    /// The gates at every test-time step (`steps_test`) of an adaptation
    /// to `b`'s support set, per learner layer.
    fn observe(&self, b: &Batch, obs: &mut dyn Observer) -> Result<()> {
        let u = self.adapt_theta(
            &b.support_x,
            &b.support_y,
            self.config.steps_test,
            true,
            None,
        )?;
        let layers = self.layer_ranges();
        for (t, (f, i)) in u.gates.iter().enumerate() {
            for (name, g) in SERIES.iter().zip([f, i]) {
                let v = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                for (layer, r) in &layers {
                    obs.record(name, t + 1, layer, &v[r.clone()]);
                }
            }
        }
        Ok(())
    }
}
