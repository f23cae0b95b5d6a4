//! MAML (Finn, Abbeel & Levine, ICML 2017), first- and second-order.
//!
//! Inner loop on the support set, from the meta-parameters theta:
//!   theta'_{k+1} = theta'_k - alpha * grad L_support(theta'_k),  theta'_0 = theta
//! Meta-update with Adam on the mean query loss over the meta-batch:
//!   theta <- Adam(theta, grad_theta mean_i L_query_i(theta'_K))
//!
//! Second-order MAML differentiates through the inner gradients. candle
//! detaches every gradient it computes unless `CANDLE_GRAD_DO_NOT_DETACH`
//! is set when a thread first runs backprop (a thread-local read once), so
//! a naive second-order MAML is silently first-order. [`second_order_pool`]
//! sets that up itself: it builds a dedicated thread pool whose threads read
//! the variable set, proves on every one of them that a second derivative
//! comes out right (d/dx of d(x^3)/dx = 6x), and restores the environment.
//! Inner gradients are taken with respect to a zero "probe" variable added
//! to the current inner parameters, because candle only returns gradients of
//! variables.
//!
//! First-order MAML uses the query gradient at the adapted parameters as the
//! meta-gradient (the inner updates are treated as constants).
//!
//! Fidelity to cbfinn/maml (read at a7f45f1; docs/fidelity.md has the
//! table, `benchmarks/reference/maml-*.yaml` the reference setups):
//! - Defaults (`main.py:11-20`, paper section 5.2): Omniglot 5-way: alpha =
//!   0.4, 1 inner step in training and 3 at test, meta-batch 32; Omniglot
//!   20-way: alpha = 0.1, 5 steps, meta-batch 16; mini-ImageNet: alpha =
//!   0.01, 5 steps in training and 10 at test (`main.py:228-230`),
//!   meta-batch 4 (1-shot) or 2 (5-shot, paper appendix); Adam meta
//!   learning rate 1e-3 (`main.py:50`); meta-gradient clipped to [-10, 10]
//!   on mini-ImageNet (`maml.py:147-148`, `clip_value`).
//! - Loss: the reference differentiates sum(CE)/K (`utils.py:56-58` divides
//!   by `update_batch_size`, `tf.gradients` sums): `loss: per-shot`. The
//!   comparison benchmarks keep the mean (`loss: mean`): with alpha = 0.4
//!   the per-shot loss is a step of 2.0 on the mean, which the shared
//!   learner does not survive.
//! - Batch norm: the reference normalises every pass with its own batch's
//!   statistics, the query pass included (`utils.py:41`), so
//!   `batch_norm.meta_train: query` is the default; its offset is outer-only
//!   (not in `weights`, `maml.py:90-94`): `adapt_bn: false`.
//! - Meta-training queries per class: K on Omniglot, 15 on mini-ImageNet
//!   (`main.py:245-251`): `train_queries`.

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    at_least_one, positive, sgd_adapt, sum_params, Adapted, Algorithm, Context, Entry,
    EpisodeScore, InnerSgd, Progress,
};
use crate::data::sampler::{Batch, EpisodeId, EpisodeSpec};
use crate::data::task::TaskKind;
use crate::error::{Error, Result};
use crate::model::learner::{cross_entropy, Learner};
use crate::model::optim::{Adam, AdamConfig};
use crate::model::params::Params;
use crate::rng::Rng;

/// Registry entry.
pub const ENTRY: Entry = Entry {
    name: "maml",
    about: "MAML (Finn et al. 2017), first- or second-order",
    tasks: &[TaskKind::Episodic],
    resolve: |v, ctx| super::resolve_as(v, ctx, MamlConfig::resolve),
    build: |v, ctx| super::build_as(v, ctx, MamlConfig::resolve, Maml::new),
};

/// MAML hyperparameters as written in a benchmark file; absent fields take
/// the published defaults for the benchmark's dataset and shape.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MamlConfig {
    /// Always `maml`.
    pub algorithm: String,
    /// Name in tables [default: `fomaml` or `maml`].
    pub label: Option<String>,
    /// Ignore second derivatives [default: false].
    pub first_order: Option<bool>,
    /// Inner-loop SGD step size alpha (dimensionless).
    pub inner_lr: Option<f64>,
    /// Inner SGD steps during meta-training.
    pub inner_steps: Option<usize>,
    /// Inner SGD steps at validation and test time.
    pub inner_steps_test: Option<usize>,
    /// Episodes per meta-update.
    pub meta_batch: Option<usize>,
    /// Adam learning rate of the meta-update [default: 1e-3].
    pub meta_lr: Option<f64>,
    /// Loss convention: `mean` cross-entropy, or `per-shot`, the reference's
    /// sum(CE)/K (= N x mean on the support set) for inner and outer loss
    /// [default: mean].
    pub loss: Option<LossScale>,
    /// Batch-norm parameters adapted in the inner loop [default: true; the
    /// reference keeps its batch-norm offset outer-only: false].
    pub adapt_bn: Option<bool>,
    /// Clip each meta-gradient coordinate to [-c, c] before Adam
    /// [default: 10 on mini-ImageNet, none elsewhere, as the reference].
    pub clip_value: Option<f64>,
    /// Query images per class in meta-training episodes [default: the
    /// benchmark's `queries`; the reference uses K].
    pub train_queries: Option<usize>,
}

/// How the cross-entropy is scaled (cbfinn/maml `utils.py` `xent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossScale {
    /// Mean over examples (PyTorch ports, learn2learn).
    Mean,
    /// Sum over examples divided by the shots K (the reference:
    /// `softmax_cross_entropy(pred, label) / FLAGS.update_batch_size`,
    /// summed by `tf.gradients` and `reduce_sum`).
    PerShot,
}

/// Resolved MAML hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MamlResolved {
    pub algorithm: String,
    pub label: String,
    pub first_order: bool,
    pub inner_lr: f64,
    pub inner_steps: usize,
    pub inner_steps_test: usize,
    pub meta_batch: usize,
    pub meta_lr: f64,
    pub loss: LossScale,
    pub adapt_bn: bool,
    pub clip_value: Option<f64>,
    pub train_queries: usize,
}

impl MamlConfig {
    /// Fill in the published defaults for `ctx` and check every value.
    pub fn resolve(&self, ctx: &Context) -> Result<MamlResolved> {
        let omniglot = ctx.dataset == "omniglot";
        let (lr, steps, steps_test, batch) = if omniglot && ctx.spec.ways >= 20 {
            (0.1, 5, 5, 16)
        } else if omniglot {
            (0.4, 1, 3, 32)
        } else {
            (0.01, 5, 10, if ctx.spec.shots >= 5 { 2 } else { 4 })
        };
        let first_order = self.first_order.unwrap_or(false);
        Ok(MamlResolved {
            algorithm: "maml".into(),
            label: self
                .label
                .clone()
                .unwrap_or_else(|| if first_order { "fomaml" } else { "maml" }.into()),
            first_order,
            inner_lr: positive("inner_lr", self.inner_lr.unwrap_or(lr))?,
            inner_steps: at_least_one("inner_steps", self.inner_steps.unwrap_or(steps))?,
            inner_steps_test: at_least_one(
                "inner_steps_test",
                self.inner_steps_test.unwrap_or(steps_test),
            )?,
            meta_batch: at_least_one("meta_batch", self.meta_batch.unwrap_or(batch))?,
            meta_lr: positive("meta_lr", self.meta_lr.unwrap_or(1e-3))?,
            loss: self.loss.unwrap_or(LossScale::Mean),
            adapt_bn: self.adapt_bn.unwrap_or(true),
            clip_value: match self.clip_value {
                Some(c) => Some(positive("clip_value", c)?),
                None => (ctx.dataset == "mini-imagenet").then_some(10.0),
            },
            train_queries: at_least_one(
                "train_queries",
                self.train_queries.unwrap_or(ctx.spec.queries),
            )?,
        })
    }
}

/// MAML state: meta-parameters and their Adam optimiser.
pub struct Maml {
    pub config: MamlResolved,
    ctx: Context,
    pub theta: Params,
    adam: Adam,
}

impl Maml {
    /// Fresh meta-parameters from the run seed.
    pub fn new(config: MamlResolved, ctx: &Context) -> Result<Self> {
        if !config.first_order {
            second_order_pool()?;
        }
        let theta = ctx
            .learner
            .init(&mut Rng::derive(ctx.run_seed, &[0x1417]), &ctx.device)?;
        let adam = Adam::new(AdamConfig::with_lr(config.meta_lr), &theta)?;
        let mut ctx = ctx.clone();
        if !config.first_order {
            // Second order differentiates the inner gradient itself: the
            // fused blocks' hand-written backward is not differentiable.
            ctx.learner = ctx.learner.composed();
        }
        Ok(Maml {
            config,
            ctx,
            theta,
            adam,
        })
    }

    /// Query loss, accuracy and meta-gradient of one episode. Second-order
    /// gradients are always computed on the second-order pool's threads.
    pub fn task_gradient(&self, theta: &Params, batch: &Batch) -> Result<(Params, EpisodeScore)> {
        if self.config.first_order {
            self.task_gradient_here(theta, batch)
        } else {
            second_order_pool()?.install(|| self.task_gradient_here(theta, batch))
        }
    }

    /// The inner step: learning rate, loss scale on the support set, and
    /// the tensors it adapts.
    pub fn inner_step(&self, support: usize) -> InnerSgd {
        let c = &self.config;
        InnerSgd {
            lr: c.inner_lr,
            loss_scale: self.loss_scale(support),
            adapt: self
                .theta
                .names
                .iter()
                .map(|n| c.adapt_bn || !Learner::is_bn_param(n))
                .collect(),
        }
    }

    /// Multiplier of the mean cross-entropy over `examples` examples.
    pub fn loss_scale(&self, examples: usize) -> f64 {
        match self.config.loss {
            LossScale::Mean => 1.0,
            LossScale::PerShot => examples as f64 / self.ctx.spec.shots as f64,
        }
    }

    fn task_gradient_here(&self, theta: &Params, batch: &Batch) -> Result<(Params, EpisodeScore)> {
        let c = &self.config;
        let l = &self.ctx.learner;
        let step = self.inner_step(batch.support_x.dim(0)?);
        let outer_scale = self.loss_scale(batch.query_x.dim(0)?);
        if c.first_order {
            let adapted = sgd_adapt(
                l,
                theta,
                &batch.support_x,
                &batch.support_y,
                &step,
                c.inner_steps,
                None,
            )?;
            let vars = adapted.to_vars()?;
            let pv = Params::from_vars(&adapted.names, &vars);
            let logits = self
                .ctx
                .predict_train(&pv, &batch.support_x, &batch.query_x)?;
            let loss = cross_entropy(&logits, &batch.query_y)?;
            let g = pv.grads(&(&loss * outer_scale)?.backward()?)?.detach();
            Ok((g, EpisodeScore::of(&logits, &batch.query_y)?))
        } else {
            let vars = theta.to_vars()?;
            let theta0 = Params::from_vars(&theta.names, &vars);
            let mut p = theta0.clone();
            for _ in 0..c.inner_steps {
                // Gradient of the support loss at p, kept differentiable:
                // taken with respect to a zero probe variable added to p.
                let probe: Vec<Var> = p
                    .tensors
                    .iter()
                    .map(|t| Var::zeros(t.shape(), t.dtype(), t.device()))
                    .collect::<candle_core::Result<_>>()?;
                let probe_p = Params::from_vars(&p.names, &probe);
                let shifted = p.zip_map(&probe_p, |a, b| a + b)?;
                let loss =
                    cross_entropy(&l.forward(&shifted, &batch.support_x)?, &batch.support_y)?;
                let g = probe_p.grads(&loss.backward()?)?;
                // theta'_{k+1} = theta'_k - alpha * grad L_support(theta'_k)
                p = step.apply(&p, &g)?;
            }
            let logits = self
                .ctx
                .predict_train(&p, &batch.support_x, &batch.query_x)?;
            let loss = cross_entropy(&logits, &batch.query_y)?;
            let g = theta0.grads(&(&loss * outer_scale)?.backward()?)?.detach();
            Ok((g, EpisodeScore::of(&logits, &batch.query_y)?))
        }
    }

    /// Mean meta-gradient over episodes (parallel over episodes).
    pub fn meta_gradient(&self, episodes: &[Batch]) -> Result<(Params, EpisodeScore)> {
        let run = || -> Result<Vec<(Params, EpisodeScore)>> {
            episodes
                .par_iter()
                .map(|b| self.task_gradient(&self.theta, b))
                .collect()
        };
        let results = if self.config.first_order {
            run()?
        } else {
            second_order_pool()?.install(run)?
        };
        let n = results.len() as f64;
        let grads: Vec<Params> = results.iter().map(|r| r.0.clone()).collect();
        // Mean over the meta-batch (the reference's reduce_sum / meta_batch).
        let mut g = sum_params(&grads)?.map(|t| t / n)?;
        if let Some(c) = self.config.clip_value {
            // cbfinn/maml maml.py: tf.clip_by_value(grad, -10, 10) (mini-ImageNet).
            g = g.map(|t| t.clamp(-c, c))?;
        }
        let scores: Vec<EpisodeScore> = results.iter().map(|r| r.1).collect();
        Ok((g, EpisodeScore::mean(&scores)))
    }
}

impl Algorithm for Maml {
    /// Per episode `inner_steps` support passes and the query pass; second
    /// order differentiates through them (twice the work, every inner
    /// step's activations alive).
    fn step_cost(&self) -> super::StepCost {
        let c = &self.config;
        let mut sc = super::StepCost::episodic(
            c.inner_steps,
            c.inner_steps_test,
            self.ctx.spec,
            self.train_spec(),
            c.meta_batch,
            &format!("inner_steps {}", c.inner_steps),
        );
        if !c.first_order {
            sc.step_images *= 2.0;
            let t = self.train_spec();
            sc.alive_images = (c.inner_steps * t.ways * t.shots + t.ways * t.queries) as f64;
        }
        sc
    }
    fn label(&self) -> &str {
        &self.config.label
    }
    fn kind(&self) -> &'static str {
        "maml"
    }
    fn meta_batch(&self) -> usize {
        self.config.meta_batch
    }
    fn train_spec(&self) -> EpisodeSpec {
        EpisodeSpec {
            queries: self.config.train_queries,
            ..self.ctx.spec
        }
    }
    fn meta_train_step(&mut self, episodes: &[Batch], _progress: Progress) -> Result<EpisodeScore> {
        let (g, score) = self.meta_gradient(episodes)?;
        self.theta = self.adam.step(&self.theta, &g)?;
        Ok(score)
    }
    fn adapt(&self, x: &Tensor, y: &Tensor, _episode: EpisodeId) -> Result<Adapted> {
        let mut running = self.ctx.recorder();
        let params = sgd_adapt(
            &self.ctx.learner,
            &self.theta,
            x,
            y,
            &self.inner_step(x.dim(0)?),
            self.config.inner_steps_test,
            running.as_mut(),
        )?;
        Ok(Adapted { params, running })
    }
    fn context(&self) -> &Context {
        &self.ctx
    }
    fn meta_params(&self) -> &Params {
        &self.theta
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        super::params_and_adam_state(("theta.", &self.theta), ("adam.", &self.adam))
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        super::load_params_and_adam(s, ("theta.", &mut self.theta), ("adam.", &mut self.adam))
    }
}

/// The thread pool in which second-order gradients are computed; built
/// once per process (see the module docs).
pub fn second_order_pool() -> Result<&'static rayon::ThreadPool> {
    static POOL: OnceLock<std::result::Result<rayon::ThreadPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        const VAR: &str = "CANDLE_GRAD_DO_NOT_DETACH";
        let preset = std::env::var_os(VAR);
        if preset.is_none() {
            std::env::set_var(VAR, "1");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("fewshot-2nd-order-{i}"))
            .build()
            .map_err(|e| e.to_string());
        // Every pool thread reads the variable now (first backprop).
        let checks: std::result::Result<Vec<f64>, String> = pool
            .as_ref()
            .map_err(|e| e.clone())
            .and_then(|p| p.broadcast(|_| second_derivative_probe()).into_iter().collect());
        if preset.is_none() {
            std::env::remove_var(VAR);
        }
        let checks = checks?;
        if let Some(bad) = checks.iter().find(|v| (**v - 18.0).abs() > 1e-9) {
            return Err(format!(
                "second derivatives are not available from candle in this process (probe gave {bad}, expected 18); \
                 run with CANDLE_GRAD_DO_NOT_DETACH=1"
            ));
        }
        pool
    })
    .as_ref()
    .map_err(|e| Error::Config {
        source_name: "first_order".into(),
        reason: e.clone(),
    })
}

/// d/dx [d(x*x*x)/dx] at x = 3, computed with candle's backprop twice: 18
/// (= 6x) when gradients keep their graph; candle's default detaching gives
/// 12 (= 4x) or nothing.
fn second_derivative_probe() -> std::result::Result<f64, String> {
    let f = || -> candle_core::Result<f64> {
        let x = Var::new(&[3f64], &candle_core::Device::Cpu)?;
        let xt = x.as_tensor();
        let y = (xt * xt)?.mul(xt)?.sum_all()?;
        let g = y
            .backward()?
            .get(x.as_tensor())
            .cloned()
            .unwrap_or(x.zeros_like()?);
        let gg = g.sum_all()?.backward()?;
        Ok(gg
            .get(x.as_tensor())
            .map(|t| t.to_vec1::<f64>().map(|v| v[0]))
            .transpose()?
            .unwrap_or(0.0))
    };
    f().map_err(|e| e.to_string())
}
