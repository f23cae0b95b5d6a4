//! Reptile (Nichol, Achiam & Schulman, 2018), as openai/supervised-reptile.
//!
//! For each task of a meta-batch, starting from the meta-parameters theta,
//! run `inner_iters` Adam steps (beta1 = 0) on mini-batches of the task's
//! `train_shots`-shot training set, giving theta_i; then
//!   theta <- theta + epsilon * (mean_i theta_i - theta),
//! with epsilon annealed linearly from `meta_step` to `meta_step_final` over
//! the meta-training budget. At test time, `eval_inner_iters` Adam steps on
//! mini-batches of the support set, then predict the query set.
//!
//! As in the reference code, the inner Adam state (second moments and step
//! count) persists across tasks during meta-training (only the model
//! variables are reset between tasks), and evaluation starts from a copy of
//! it that is then discarded. Mini-batches cycle through reshuffled copies
//! of the task's samples, as `_mini_batches(replacement=False)` does.
//!
//! Defaults (openai/supervised-reptile at 8f2b71c, `README.md:35-56`, one
//! command per setting): inner Adam lr 1e-3 (5e-4 for 20-way), inner batch
//! 10 (20 for 20-way), inner iterations 5 (Omniglot) / 8 (mini-ImageNet) /
//! 10 (20-way), train shots 10 / 15, meta-batch 5, meta step 1.0 annealed
//! to 0, evaluation 50 iterations with batch 5 (Omniglot 5-way, mini-ImageNet
//! 1-shot), 10 (Omniglot 20-way) or 15 (mini-ImageNet 5-shot).
//!
//! Fidelity (docs/fidelity.md): the inner loss is the sum over the
//! mini-batch (`models.py:27-30` minimises the unreduced cross-entropy;
//! `inner_loss: sum`); Adam is TensorFlow's epsilon-hat form; the
//! reference's non-transductive prediction (each query with the support
//! set, `reptile.py:125-134`) is `batch_norm.eval: support-plus-one`; its
//! network (TF SAME padding, Glorot init, eps 1e-3, SAME max-pool on
//! mini-ImageNet) is the `learner:` options of
//! `benchmarks/reference/reptile-*.yaml`.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{at_least_one, positive, Adapted, Algorithm, Context, Entry, EpisodeScore, Progress};
use crate::data::sampler::{Batch, EpisodeId, EpisodeSpec};
use crate::data::task::TaskKind;
use crate::error::{Error, Result};
use crate::model::norm::RunningStats;
use crate::model::optim::{Adam, AdamConfig};
use crate::model::params::Params;
use crate::rng::Rng;

/// Registry entry.
pub const ENTRY: Entry = Entry {
    name: "reptile",
    about: "Reptile (Nichol et al. 2018) with inner Adam",
    tasks: &[TaskKind::Episodic],
    resolve: |v, ctx| super::resolve_as(v, ctx, ReptileConfig::resolve),
    build: |v, ctx| super::build_as(v, ctx, ReptileConfig::resolve, Reptile::new),
};

/// Reptile hyperparameters as written in a benchmark file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReptileConfig {
    /// Always `reptile`.
    pub algorithm: String,
    /// Name in tables [default: `reptile`].
    pub label: Option<String>,
    /// Inner Adam learning rate [default: 1e-3; 5e-4 for Omniglot 20-way].
    pub inner_lr: Option<f64>,
    /// Inner mini-batch size in meta-training [default: 10; 20 for
    /// Omniglot 20-way].
    pub inner_batch: Option<usize>,
    /// Inner iterations per task in meta-training [default: Omniglot 5
    /// (20-way 10), mini-ImageNet 8].
    pub inner_iters: Option<usize>,
    /// Shots per class of meta-training tasks [default: 10 / 15].
    pub train_shots: Option<usize>,
    /// Tasks per meta-update [default: 5].
    pub meta_batch: Option<usize>,
    /// Initial outer step size epsilon [default: 1.0].
    pub meta_step: Option<f64>,
    /// Final outer step size, reached at the end of the budget [default: 0].
    pub meta_step_final: Option<f64>,
    /// Inner mini-batch size at test time [default: 5; Omniglot 20-way 10;
    /// mini-ImageNet 5-shot 15].
    pub eval_inner_batch: Option<usize>,
    /// Inner iterations at test time [default: 50].
    pub eval_inner_iters: Option<usize>,
    /// Inner loss: `sum` over the mini-batch (the reference minimises the
    /// unreduced cross-entropy vector, `models.py`) or `mean`; with Adam
    /// the two differ only through epsilon [default: sum].
    pub inner_loss: Option<InnerLoss>,
}

/// Reduction of the inner mini-batch loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InnerLoss {
    Sum,
    Mean,
}

/// Resolved Reptile hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReptileResolved {
    pub algorithm: String,
    pub label: String,
    pub inner_lr: f64,
    pub inner_batch: usize,
    pub inner_iters: usize,
    pub train_shots: usize,
    pub meta_batch: usize,
    pub meta_step: f64,
    pub meta_step_final: f64,
    pub eval_inner_batch: usize,
    pub eval_inner_iters: usize,
    pub inner_loss: InnerLoss,
}

impl ReptileConfig {
    /// Fill in the published defaults for `ctx` and check every value.
    pub fn resolve(&self, ctx: &Context) -> Result<ReptileResolved> {
        // openai/supervised-reptile README.md:35-56, one command per setting.
        let omniglot = ctx.dataset == "omniglot";
        let twenty_way = omniglot && ctx.spec.ways >= 20;
        // (inner iters, train shots, inner batch, inner lr, eval batch)
        let (iters, shots, batch, lr, eval_batch) = if twenty_way {
            // README.md:53 (1-shot) and :56 (5-shot): 20-way Omniglot.
            (10, 10, 20, 5e-4, 10)
        } else if omniglot {
            // README.md:50 (1-shot) and :47 (5-shot): eval batch 5 in both.
            (5, 10, 10, 1e-3, 5)
        } else if ctx.spec.shots >= 5 {
            // README.md:41: mini-ImageNet 5-shot, eval batch 15.
            (8, 15, 10, 1e-3, 15)
        } else {
            // README.md:44: mini-ImageNet 1-shot.
            (8, 15, 10, 1e-3, 5)
        };
        let meta_step_final = self.meta_step_final.unwrap_or(0.0);
        if !(meta_step_final.is_finite() && meta_step_final >= 0.0) {
            return Err(Error::Config {
                source_name: "meta_step_final".into(),
                reason: format!("must be a number >= 0, got {meta_step_final}"),
            });
        }
        Ok(ReptileResolved {
            algorithm: "reptile".into(),
            label: self.label.clone().unwrap_or_else(|| "reptile".into()),
            inner_lr: positive("inner_lr", self.inner_lr.unwrap_or(lr))?,
            inner_batch: at_least_one("inner_batch", self.inner_batch.unwrap_or(batch))?,
            inner_iters: at_least_one("inner_iters", self.inner_iters.unwrap_or(iters))?,
            train_shots: at_least_one("train_shots", self.train_shots.unwrap_or(shots))?,
            meta_batch: at_least_one("meta_batch", self.meta_batch.unwrap_or(5))?,
            meta_step: positive("meta_step", self.meta_step.unwrap_or(1.0))?,
            meta_step_final,
            eval_inner_batch: at_least_one(
                "eval_inner_batch",
                self.eval_inner_batch.unwrap_or(eval_batch),
            )?,
            eval_inner_iters: at_least_one(
                "eval_inner_iters",
                self.eval_inner_iters.unwrap_or(50),
            )?,
            inner_loss: self.inner_loss.unwrap_or(InnerLoss::Sum),
        })
    }
}

/// Reptile state: meta-parameters and the persistent inner Adam state.
pub struct Reptile {
    pub config: ReptileResolved,
    ctx: Context,
    pub theta: Params,
    inner: Adam,
}

impl Reptile {
    pub fn new(config: ReptileResolved, ctx: &Context) -> Result<Self> {
        let theta = ctx
            .learner
            .init(&mut Rng::derive(ctx.run_seed, &[0x1417]), &ctx.device)?;
        let inner = Adam::new(
            AdamConfig {
                lr: config.inner_lr,
                beta1: 0.0,
                beta2: 0.999,
                eps: 1e-8,
            },
            &theta,
        )?;
        Ok(Reptile {
            config,
            ctx: ctx.clone(),
            theta,
            inner,
        })
    }

    /// Train `theta` on `(x, y)` with `iters` Adam steps on mini-batches of
    /// `batch` samples cycling through reshuffled copies of the samples.
    /// Every pass is folded into `running` when given. Also returns the
    /// mean loss and accuracy of the mini-batches, each measured in its
    /// own pass before its step (the learning curve's training score).
    #[allow(clippy::too_many_arguments)] // the inner loop's inputs, each distinct
    pub fn inner_loop(
        &self,
        theta: &Params,
        adam: &mut Adam,
        x: &Tensor,
        y: &Tensor,
        batch: usize,
        iters: usize,
        rng: &mut Rng,
        mut running: Option<&mut RunningStats>,
    ) -> Result<(Params, EpisodeScore)> {
        let n = x.dim(0)?;
        let mut scores = Vec::with_capacity(iters);
        let mut order: Vec<usize> = (0..n).collect();
        let mut pos = n; // force a shuffle first
        let mut p = theta.detach();
        let dev = x.device();
        for _ in 0..iters {
            let mut idx: Vec<u32> = Vec::with_capacity(batch);
            while idx.len() < batch {
                if pos == n {
                    rng.shuffle(&mut order);
                    pos = 0;
                }
                idx.push(order[pos] as u32);
                pos += 1;
            }
            let idx = Tensor::from_vec(idx, batch, dev)?;
            let bx = x.index_select(&idx, 0)?;
            let by = y.index_select(&idx, 0)?;
            let (loss, accuracy, g, stats) =
                self.ctx.learner.loss_grad_and_accuracy(&p, &bx, &by)?;
            scores.push(EpisodeScore { loss, accuracy });
            if let Some(r) = running.as_deref_mut() {
                r.update(&stats)?;
            }
            // The summed loss's gradient is the mean's times the batch.
            let scale = (self.config.inner_loss == InnerLoss::Sum).then_some(batch as f64);
            p = adam.step_scaled(&p, &g, scale)?;
        }
        Ok((p, EpisodeScore::mean(&scores)))
    }

    /// The generator of task `j`'s mini-batches at meta-step `step`.
    pub fn task_rng(&self, step: u64, j: usize) -> Rng {
        Rng::derive(self.ctx.run_seed, &[0x5e9, step, j as u64])
    }

    /// Replace the meta-parameters (any dtype) and reset the inner Adam
    /// state to zeros shaped like them (tests, fixtures).
    pub fn set_theta(&mut self, theta: Params) -> Result<()> {
        self.inner = Adam::new(self.inner.config, &theta)?;
        self.theta = theta;
        Ok(())
    }

    /// The persistent inner Adam state.
    pub fn inner_adam(&self) -> &Adam {
        &self.inner
    }

    /// Current outer step size for a budget fraction in [0, 1].
    pub fn epsilon(&self, fraction: f64) -> f64 {
        let f = fraction.clamp(0.0, 1.0);
        f * self.config.meta_step_final + (1.0 - f) * self.config.meta_step
    }
}

impl Algorithm for Reptile {
    /// `inner_iters` mini-batches of `inner_batch` images per task,
    /// `meta_batch` tasks; evaluation `eval_inner_iters` of
    /// `eval_inner_batch`, then the queries.
    fn step_cost(&self) -> super::StepCost {
        let c = &self.config;
        let q = (self.ctx.spec.ways * self.ctx.spec.queries) as f64;
        super::StepCost {
            step_images: c.meta_batch as f64 * c.inner_iters as f64 * c.inner_batch as f64,
            eval_images: c.eval_inner_iters as f64 * c.eval_inner_batch as f64 + q,
            alive_images: (c.inner_batch.max(c.eval_inner_batch) as f64).max(q),
            tape_bytes_per_param: 0.0,
            driver: format!(
                "inner_iters {} x inner_batch {} x meta_batch {}",
                c.inner_iters, c.inner_batch, c.meta_batch
            ),
        }
    }
    fn label(&self) -> &str {
        &self.config.label
    }
    /// The outer step anneals from `meta_step` to `meta_step_final` over
    /// the budget (unless the two are equal).
    fn schedule_spans_budget(&self) -> bool {
        self.config.meta_step != self.config.meta_step_final
    }
    fn kind(&self) -> &'static str {
        "reptile"
    }
    fn meta_batch(&self) -> usize {
        self.config.meta_batch
    }
    fn train_spec(&self) -> EpisodeSpec {
        // Reptile trains on the support set only; one query image per
        // class is sampled and ignored.
        EpisodeSpec {
            shots: self.config.train_shots,
            queries: 1,
            ..self.ctx.spec
        }
    }
    fn meta_train_step(&mut self, episodes: &[Batch], progress: Progress) -> Result<EpisodeScore> {
        let c = self.config.clone();
        let mut adapted = Vec::with_capacity(episodes.len());
        let mut scores = Vec::with_capacity(episodes.len());
        let mut adam = self.inner.clone();
        for (j, b) in episodes.iter().enumerate() {
            let mut rng = self.task_rng(progress.step, j);
            // The training score is the inner loop's own (its mini-batches
            // before each step): a pass over the adapted parameters only
            // for the curve would cost a third of a task on mini-ImageNet,
            // and the reference computes none (docs/algorithms.md).
            let (p, score) = self.inner_loop(
                &self.theta,
                &mut adam,
                &b.support_x,
                &b.support_y,
                c.inner_batch,
                c.inner_iters,
                &mut rng,
                None,
            )?;
            scores.push(score);
            adapted.push(p);
        }
        self.inner = adam;
        let n = episodes.len() as f64;
        let eps = self.epsilon(progress.fraction);
        let mean = super::sum_params(&adapted)?.map(|t| t / n)?;
        // theta <- theta + eps * (mean_i theta_i - theta)
        self.theta = self.theta.zip_map(&mean, |t, m| t + ((m - t)? * eps)?)?;
        Ok(EpisodeScore::mean(&scores))
    }
    fn adapt(&self, x: &Tensor, y: &Tensor, episode: EpisodeId) -> Result<Adapted> {
        let mut adam = self.inner.clone();
        // Evaluation mini-batches are drawn from the run seed and the
        // episode's identity, so an episode is adapted the same way every
        // time (and by every process of a job array).
        let [split, index] = episode.path();
        let mut rng = Rng::derive(self.ctx.run_seed, &[0xe7a1, split, index]);
        let mut running = self.ctx.recorder();
        let (params, _) = self.inner_loop(
            &self.theta,
            &mut adam,
            x,
            y,
            self.config.eval_inner_batch,
            self.config.eval_inner_iters,
            &mut rng,
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
        super::params_and_adam_state(("theta.", &self.theta), ("inner_adam.", &self.inner))
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        super::load_params_and_adam(
            s,
            ("theta.", &mut self.theta),
            ("inner_adam.", &mut self.inner),
        )
    }
}
