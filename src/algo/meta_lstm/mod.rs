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
//!   ([`preprocess`]; `model/lstm/lstm-helper.lua:6-57`); the loss pair is
//!   broadcast to every coordinate. The reference concatenates (loss,
//!   grad); we feed (grad, loss): a fixed permutation of the columns of the
//!   first layer's input weights, whose initialisation is symmetric.
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
//! Activations are laid out feature-major (`[features, coordinates]`) so
//! every gate is a contiguous block.

pub mod fused;

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{
    at_least_one, parse_entry, positive, Adapted, Algorithm, Context, Entry, EpisodeScore,
    GateTrace, Progress,
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
    tasks: &[TaskKind::Episodic],
    resolve: |v, ctx| super::resolve_as(v, ctx, MetaLstmConfig::resolve),
    build,
};

/// Hidden units of the layer-1 LSTM.
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

fn build(v: &crate::yaml::Value, ctx: &Context) -> Result<Box<dyn Algorithm>> {
    let cfg: MetaLstmConfig = parse_entry(v)?;
    Ok(Box::new(MetaLstm::new(cfg.resolve(ctx)?, ctx)?))
}

fn scalar_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Andrychowicz et al. preprocessing of one value with constant p:
/// (log|x| / p, sign x) if |x| > e^-p, else (-1, e^p x)
/// (`lstm-helper.lua:10-42`: strict `torch.gt`).
pub fn preprocess(x: f64, p: f64) -> (f64, f64) {
    if x.abs() > (-p).exp() {
        (x.abs().ln() / p, x.signum())
    } else {
        (-1.0, p.exp() * x)
    }
}

/// How the gates are set during an unroll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gates {
    /// Computed by the meta-learner.
    Learned,
    /// Forced to constants: `Fixed { forget: 1.0, input: lr }` is SGD.
    Fixed { forget: f64, input: f64 },
}

/// The result of unrolling the meta-learner on a support set.
pub struct Unrolled {
    /// theta_T, `[1, n]`.
    pub theta: Tensor,
    /// Gate values after the sigmoid at steps 1..=T (`[1, n]` each), if
    /// recorded.
    pub gates: Vec<(Tensor, Tensor)>,
    /// The (gradient `[1, n]`, loss) pairs fed to the meta-learner.
    pub inputs: Vec<(Tensor, f64)>,
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
    /// `lstm.w_ih [80, 4]`, `lstm.w_hh [80, 20]`, `lstm.b [80, 1]`,
    /// `cell.w_f [1, 22]`, `cell.w_i [1, 22]`, `cell.b_f [1, 1]`,
    /// `cell.b_i [1, 1]`, `theta0 [1, n]`.
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
        let mut u = |shape: &[usize], lo: f64, hi: f64| -> Result<Tensor> {
            let len: usize = shape.iter().product();
            let v: Vec<f32> = (0..len).map(|_| rng.uniform_range(lo, hi) as f32).collect();
            Ok(Tensor::from_vec(v, shape, dev)?)
        };
        let h = HIDDEN;
        let tensors = vec![
            u(&[4 * h, 4], -0.01, 0.01)?,
            u(&[4 * h, h], -0.01, 0.01)?,
            u(&[4 * h, 1], -0.01, 0.01)?,
            u(&[1, h + 2], -0.01, 0.01)?,
            u(&[1, h + 2], -0.01, 0.01)?,
            u(&[1, 1], 4.0, 5.0)?,
            u(&[1, 1], -5.0, -4.0)?,
            template.flatten()?.reshape((1, n))?,
        ];
        let names = [
            "lstm.w_ih",
            "lstm.w_hh",
            "lstm.b",
            "cell.w_f",
            "cell.w_i",
            "cell.b_f",
            "cell.b_i",
            "theta0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let params = Params::new(names, tensors);
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
        let mut out: Vec<(String, Range<usize>)> = Vec::new();
        let mut off = 0;
        for (name, t) in self.template.names.iter().zip(&self.template.tensors) {
            let layer = Learner::layer_of(name);
            let n = t.elem_count();
            match out.last_mut() {
                Some((l, r)) if *l == layer => r.end += n,
                _ => out.push((layer, off..off + n)),
            }
            off += n;
        }
        out
    }

    /// Learner parameters viewed from a flat `[1, n]` vector.
    pub fn learner_params(&self, theta: &Tensor) -> Result<Params> {
        self.template.unflatten_like(&theta.flatten_all()?)
    }

    /// Learner loss and flat gradient at `theta` (detached: constants for
    /// the meta-learner), the gradient divided by the batch size when
    /// `grad_div_batch` (meta-learner-lstm.lua: the criterion averages,
    /// then `gradParameters:div(inputs:size(1))`). The pass's batch-norm
    /// statistics go into `running` when given.
    fn loss_and_grad(
        &self,
        theta: &Tensor,
        x: &Tensor,
        y: &Tensor,
        running: Option<&mut RunningStats>,
    ) -> Result<(Tensor, f64)> {
        let p = self.learner_params(&theta.detach())?;
        let (loss, g, stats) = self.ctx.learner.loss_and_grad(&p, x, y)?;
        if let Some(r) = running {
            r.update(&stats)?;
        }
        let mut g = g.flatten()?;
        if self.config.grad_div_batch {
            g = (g / x.dim(0)? as f64)?;
        }
        let n = g.elem_count();
        Ok((g.reshape((1, n))?, loss))
    }

    /// The four preprocessed inputs `[4, n]` for a gradient and a loss:
    /// [`preprocess`] of every gradient coordinate, computed where the
    /// gradient lives (no copy to the host), in float64 with the same
    /// operations as the scalar formula, so the CPU gives its exact bits.
    fn inputs(&self, grad: &Tensor, loss: f64) -> Result<Tensor> {
        let p = self.config.preprocess_p;
        let g = grad.flatten_all()?.to_dtype(DType::F64)?;
        let n = g.elem_count();
        let dev = g.device();
        let abs = g.abs()?;
        // |x| > e^-p: (log|x| / p, sign x); else (-1, e^p x).
        let big = abs.gt((-p).exp())?;
        let a = big.where_cond(
            &abs.log()?.broadcast_div(&Tensor::new(p, dev)?)?,
            &g.ones_like()?.neg()?,
        )?;
        let b = big.where_cond(&g.sign()?, &g.broadcast_mul(&Tensor::new(p.exp(), dev)?)?)?;
        let (la, lb) = preprocess(loss, p);
        let l = Tensor::new(&[la, lb], dev)?
            .reshape((2, 1))?
            .broadcast_as((2, n))?;
        Ok(Tensor::cat(&[&a.unsqueeze(0)?, &b.unsqueeze(0)?, &l], 0)?.to_dtype(grad.dtype())?)
    }

    /// Unroll the meta-learner for `steps` updates of the learner on
    /// `(x, y)`, from meta-parameters `mp`. With `frozen`, the gradient and
    /// loss inputs are taken from it instead of being computed (used to
    /// check the meta-gradient by finite differences). The support passes'
    /// batch-norm statistics go into `running` when given.
    #[allow(clippy::too_many_arguments)] // the unroll's inputs, each distinct
    pub fn unroll(
        &self,
        mp: &Params,
        x: &Tensor,
        y: &Tensor,
        steps: usize,
        gates: Gates,
        frozen: Option<&[(Tensor, f64)]>,
        record: bool,
        mut running: Option<&mut RunningStats>,
    ) -> Result<Unrolled> {
        let t = &mp.tensors;
        let (w_ih, w_hh, b, w_f, w_i, b_f, b_i) = (&t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6]);
        let mut theta = t[7].clone();
        let n = theta.dim(1)?;
        let hd = HIDDEN;
        let dev = theta.device().clone();
        let dt = theta.dtype();
        let mut h = Tensor::zeros((hd, n), dt, &dev)?;
        let mut c = Tensor::zeros((hd, n), dt, &dev)?;
        let mut f_prev = Tensor::zeros((1, n), dt, &dev)?;
        let mut i_prev = Tensor::zeros((1, n), dt, &dev)?;
        let mut out = Unrolled {
            theta: theta.clone(),
            gates: vec![],
            inputs: vec![],
        };
        // Per-coordinate weights of the cell, split once.
        let split = |w: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
            Ok((
                w.narrow(1, 0, hd)?,
                w.narrow(1, hd, 1)?,
                w.narrow(1, hd + 1, 1)?,
            ))
        };
        let (wf_h, wf_c, wf_f) = split(w_f)?;
        let (wi_h, wi_c, wi_i) = split(w_i)?;
        for step in 0..steps {
            let (grad, loss) = match frozen {
                Some(f) => f[step].clone(),
                None => self.loss_and_grad(&theta, x, y, running.as_deref_mut())?,
            };
            match gates {
                Gates::Fixed { forget, input } => {
                    // theta_t = f * theta_{t-1} - i * grad_t with constant gates.
                    theta = ((&theta * forget)? - (&grad * input)?)?;
                }
                Gates::Learned => {
                    let xin = self.inputs(&grad, loss)?;
                    // Layer 1: [i; f; g; o] = W_ih x + W_hh h + b   ([80, n])
                    let z = w_ih
                        .matmul(&xin)?
                        .add(&w_hh.matmul(&h)?)?
                        .broadcast_add(b)?;
                    (h, c) = crate::model::kernels::lstm_cell::lstm_cell(&z, &c)?;
                    // Layer 2: f_t = sigmoid(W_f [h_t, theta_{t-1}, f_{t-1}] + b_f)
                    let f_pre = wf_h
                        .matmul(&h)?
                        .add(&theta.broadcast_mul(&wf_c)?)?
                        .add(&f_prev.broadcast_mul(&wf_f)?)?
                        .broadcast_add(b_f)?;
                    // i_t = sigmoid(W_i [h_t, theta_{t-1}, i_{t-1}] + b_i)
                    let i_pre = wi_h
                        .matmul(&h)?
                        .add(&theta.broadcast_mul(&wi_c)?)?
                        .add(&i_prev.broadcast_mul(&wi_i)?)?
                        .broadcast_add(b_i)?;
                    let f = candle_nn::ops::sigmoid(&f_pre)?;
                    let i = candle_nn::ops::sigmoid(&i_pre)?;
                    // theta_t = f_t * theta_{t-1} - i_t * grad_t
                    theta = ((&f * &theta)? - (&i * &grad)?)?;
                    if record {
                        out.gates.push((f.detach(), i.detach()));
                    }
                    f_prev = f_pre;
                    i_prev = i_pre;
                }
            }
            out.inputs.push((grad, loss));
        }
        out.theta = theta;
        Ok(out)
    }

    /// The meta-learner's weights as flat arrays for the fused kernel.
    fn weights<T: Scalar>(mp: &Params) -> Result<fused::Weights<T>> {
        let v = |i: usize| -> Result<Vec<T>> { Ok(mp.tensors[i].flatten_all()?.to_vec1::<T>()?) };
        Ok(fused::Weights {
            w_ih: v(0)?,
            w_hh: v(1)?,
            b: v(2)?,
            w_f: v(3)?,
            w_i: v(4)?,
            b_f: v(5)?[0],
            b_i: v(6)?[0],
        })
    }

    /// [`MetaLstm::unroll`] with the fused kernel (no candle graph): the
    /// unroll (with its tape when `keep`), the weights it used, and the
    /// recorded gates.
    #[allow(clippy::too_many_arguments)] // the unroll's inputs, each distinct
    fn unroll_fused<T: Scalar>(
        &self,
        mp: &Params,
        x: &Tensor,
        y: &Tensor,
        steps: usize,
        gates: Gates,
        frozen: Option<&[(Tensor, f64)]>,
        record: bool,
        keep: bool,
        mut running: Option<&mut RunningStats>,
    ) -> Result<FusedUnroll<T>> {
        let w = Self::weights::<T>(mp)?;
        let theta0 = mp.tensors[7].flatten_all()?.to_vec1::<T>()?;
        let n = theta0.len();
        let dev = mp.tensors[7].device().clone();
        // Meta-training reuses the previous episode's unroll (its tape).
        let reuse = keep
            .then(|| self.spare.lock().ok().and_then(|mut s| s.take()))
            .flatten()
            .and_then(|b| b.downcast::<fused::Unroll<T>>().ok());
        let mut u = match reuse {
            Some(mut u) => {
                u.reset(&theta0, gates, keep);
                *u
            }
            None => fused::Unroll::new(theta0, gates, keep),
        };
        u.set_segment(self.config.grad_checkpoint_steps);
        let mut recorded = Vec::new();
        let mut inputs = Vec::with_capacity(steps);
        for step in 0..steps {
            let (grad, loss) = match frozen {
                Some(f) => f[step].clone(),
                None => {
                    let theta = Tensor::from_slice(&u.theta, (1, n), &dev)?;
                    self.loss_and_grad(&theta, x, y, running.as_deref_mut())?
                }
            };
            let g = grad.flatten_all()?.to_vec1::<T>()?;
            if let Some((f, i)) = u.step(&w, &g, loss, self.config.preprocess_p, record) {
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

    /// [`MetaLstm::unroll`] with the given kernels (`Composed` is
    /// `unroll` itself; `Fused` runs the fused kernel and returns the same
    /// values to float tolerance, without a graph to differentiate).
    #[allow(clippy::too_many_arguments)] // the unroll's inputs, each distinct
    pub fn unroll_with(
        &self,
        kernels: Kernels,
        mp: &Params,
        x: &Tensor,
        y: &Tensor,
        steps: usize,
        gates: Gates,
        frozen: Option<&[(Tensor, f64)]>,
        record: bool,
        running: Option<&mut RunningStats>,
    ) -> Result<Unrolled> {
        let n = mp.tensors[7].dim(1)?;
        let dev = mp.tensors[7].device().clone();
        // The fused kernel is CPU code.
        let kernels = if dev.is_cpu() {
            kernels
        } else {
            Kernels::Composed
        };
        macro_rules! fused {
            ($t:ty) => {{
                let f = self
                    .unroll_fused::<$t>(mp, x, y, steps, gates, frozen, record, false, running)?;
                Ok(Unrolled {
                    theta: Tensor::from_vec(f.unroll.theta, (1, n), &dev)?,
                    gates: f.gates,
                    inputs: f.inputs,
                })
            }};
        }
        match (kernels, mp.tensors[7].dtype()) {
            (Kernels::Fused, DType::F32) => fused!(f32),
            (Kernels::Fused, DType::F64) => fused!(f64),
            _ => self.unroll(mp, x, y, steps, gates, frozen, record, running),
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
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let u = self.unroll_with(
            self.ctx.kernels,
            &self.params,
            x,
            y,
            steps,
            Gates::Learned,
            None,
            record,
            running,
        )?;
        Ok((u.theta, u.gates))
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
        let kernels = if mp.tensors[7].device().is_cpu() {
            self.ctx.kernels
        } else {
            Kernels::Composed
        };
        match (kernels, mp.tensors[7].dtype()) {
            (Kernels::Fused, DType::F32) => self.meta_gradient_fused::<f32>(mp, b, frozen),
            (Kernels::Fused, DType::F64) => self.meta_gradient_fused::<f64>(mp, b, frozen),
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
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(f64, EpisodeScore, Params)> {
        let FusedUnroll {
            unroll: u,
            weights: w,
            ..
        } = self.unroll_fused::<T>(
            mp,
            &b.support_x,
            &b.support_y,
            self.config.steps,
            Gates::Learned,
            frozen,
            false,
            true,
            None,
        )?;
        let n = u.theta.len();
        let dev = mp.tensors[7].device().clone();
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
        let shapes: Vec<Vec<usize>> = mp.tensors.iter().map(|t| t.dims().to_vec()).collect();
        let data = [
            gw.w_ih,
            gw.w_hh,
            gw.b,
            gw.w_f,
            gw.w_i,
            vec![gw.b_f],
            vec![gw.b_i],
            d0,
        ];
        let tensors = data
            .into_iter()
            .zip(&shapes)
            .map(|(v, s)| Tensor::from_vec(v, s.as_slice(), &dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((
            scalar_f64(&loss)?,
            score,
            Params::new(mp.names.clone(), tensors),
        ))
    }

    /// Meta-loss (query loss after the unroll) and its score.
    pub fn meta_loss(
        &self,
        mp: &Params,
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(Tensor, EpisodeScore)> {
        let u = self.unroll(
            mp,
            &b.support_x,
            &b.support_y,
            self.config.steps,
            Gates::Learned,
            frozen,
            false,
            None,
        )?;
        let p = self.learner_params(&u.theta)?;
        let logits = self.ctx.predict_train(&p, &b.support_x, &b.query_x)?;
        let loss = cross_entropy(&logits, &b.query_y)?;
        Ok((loss, EpisodeScore::of(&logits, &b.query_y)?))
    }

    /// Gate values (forget, input; after the sigmoid) at every test-time
    /// step of an episode, flattened over all learner coordinates.
    pub fn gate_trace(&self, b: &Batch) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let (_, gates) = self.adapt_theta(
            &b.support_x,
            &b.support_y,
            self.config.steps_test,
            true,
            None,
        )?;
        gates
            .iter()
            .map(|(f, i)| {
                let f = f.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let i = i.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok((f, i))
            })
            .collect()
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
        let (theta, _) = self.adapt_theta(x, y, self.config.steps_test, false, running.as_mut())?;
        Ok(Adapted {
            params: self.learner_params(&theta)?,
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
        let mut m = self.params.to_named("meta.");
        m.extend(self.adam.to_named("adam.")?);
        Ok(m)
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        self.params = self.params.from_named_like("meta.", s)?;
        self.adam.load_named("adam.", s)
    }
    fn has_gates(&self) -> bool {
        true
    }
    fn gate_trace(&self, b: &Batch) -> Result<Option<GateTrace>> {
        Ok(Some(GateTrace {
            layers: self.layer_ranges(),
            gates: MetaLstm::gate_trace(self, b)?,
        }))
    }
}
