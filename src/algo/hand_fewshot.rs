//! The hand-designed optimisers on few-shot episodes: SGD, SGD with
//! momentum, Nesterov momentum, RMSProp and Adam (`torch.optim`'s
//! arithmetic, [`crate::model::hand`]) adapting a *fresh* learner on each
//! episode's support set. They are the baselines a learned update rule
//! must beat once its learned initialisation is taken away (`bench eval
//! --fresh-init`, or a learner of another shape): the question of
//! architecture transfer (docs/learned-optimizers.md).
//!
//! Per episode:
//!
//! ```text
//! theta_0                  a fresh learner's parameters (the draw every learned
//!                          rule of the run starts from: Rng::derive(run_seed, [0x1417]))
//! for t = 1..=T:
//!     g_t = grad L_support(theta_{t-1})       the learner's mean cross-entropy
//!     theta_t = hand_rule(theta_{t-1}, g_t)   torch.optim's step, learning rate eta
//! score        = the query set at theta_T, as at test time
//! ```
//!
//! "Meta-training" is tuning the one hyperparameter, eta, on training
//! episodes: meta-step s tries the grid's rate number `s mod G` on a
//! meta-batch of training episodes and adds their mean query loss (scored
//! as at test time) to that rate's tally; the rate in use is the one with
//! the lowest mean query loss so far (a diverged rate, non-finite loss,
//! never wins; ties go to the smaller rate; before any rate is tried, the
//! smallest). A budget of G x k meta-steps gives every rate k meta-batches.
//! The tallies are the checkpointed state, so validation, `select: best`,
//! resume and `--fresh-init` transfer treat the tuned rate as any
//! algorithm's meta-parameters. An entry that gives `lr` skips tuning.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::learned::objective::{Objective, Support};
use super::meta_lstm::MetaLstmConfig;
use super::{at_least_one, positive, Adapted, Algorithm, Context, Entry, EpisodeScore, Progress};
use crate::data::sampler::{Batch, EpisodeId, EpisodeSpec};
use crate::data::task::TaskKind;
use crate::error::{Error, Result};
use crate::model::hand::{lr_grid, HandConfig, HandKind};
use crate::model::params::Params;
use crate::rng::Rng;

macro_rules! hand_entry {
    ($name:ident, $kind:literal, $about:expr) => {
        #[doc = concat!("Registry entry of `", $kind, "` on few-shot episodes.")]
        pub const $name: Entry = Entry {
            name: $kind,
            about: $about,
            tasks: &[TaskKind::Episodic, TaskKind::Optimisation],
            resolve: |v, ctx| super::resolve_as(v, ctx, HandFewShotConfig::resolve),
            build: |v, ctx| super::build_as(v, ctx, HandFewShotConfig::resolve, HandFewShot::new),
        };
    };
}

hand_entry!(
    SGD,
    "sgd",
    "SGD (torch.optim.SGD), learning rate tuned; few-shot: from a fresh initialisation"
);
hand_entry!(
    MOMENTUM,
    "momentum",
    "SGD with momentum 0.9, learning rate tuned; few-shot: from a fresh initialisation"
);
hand_entry!(
    NESTEROV,
    "nesterov",
    "Nesterov momentum 0.9, learning rate tuned; few-shot: from a fresh initialisation"
);
hand_entry!(
    RMSPROP,
    "rmsprop",
    "RMSProp (alpha 0.99), learning rate tuned; few-shot: from a fresh initialisation"
);
hand_entry!(
    ADAM,
    "adam",
    "Adam (0.9, 0.999), learning rate tuned; few-shot: from a fresh initialisation"
);

/// A hand-designed optimiser's few-shot entry as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandFewShotConfig {
    /// `sgd`, `momentum`, `nesterov`, `rmsprop` or `adam`.
    pub algorithm: String,
    /// Name in tables [default: the algorithm's name].
    pub label: Option<String>,
    /// A fixed learning rate (no tuning) [default: tuned].
    pub lr: Option<f64>,
    /// The rates tuning tries [default: half-decades 1e-4 .. 3].
    pub lr_grid: Option<Vec<f64>>,
    /// Training episodes per tuning step [default: 10].
    pub meta_batch: Option<usize>,
    /// Learner updates per episode, T [default: the meta-LSTM's].
    pub steps: Option<usize>,
    /// Updates at validation/test time [default: `steps`].
    pub steps_test: Option<usize>,
    /// Momentum mu (momentum, nesterov) [default: 0.9].
    pub momentum: Option<f64>,
}

/// Resolved: every value explicit (what `resolved.yaml` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandFewShotResolved {
    pub algorithm: String,
    pub label: String,
    /// A fixed rate, or none: tuned over `lr_grid`.
    pub lr: Option<f64>,
    pub lr_grid: Vec<f64>,
    pub meta_batch: usize,
    pub steps: usize,
    pub steps_test: usize,
    pub momentum: f64,
}

fn kind_of(name: &str) -> Result<HandKind> {
    HandKind::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| Error::Config {
            source_name: "algorithm".into(),
            reason: format!("not a hand-designed optimiser: `{name}`"),
        })
}

impl HandFewShotConfig {
    /// Fill in the defaults for `ctx` and check every value.
    pub fn resolve(&self, ctx: &Context) -> Result<HandFewShotResolved> {
        let kind = kind_of(&self.algorithm)?;
        let grid = match (&self.lr, &self.lr_grid) {
            (Some(_), Some(_)) => {
                return Err(Error::Config {
                    source_name: "lr_grid".into(),
                    reason: "give `lr` (no tuning) or `lr_grid`, not both".into(),
                })
            }
            (Some(lr), None) => vec![positive("lr", *lr)?],
            (None, g) => g.clone().unwrap_or_else(lr_grid),
        };
        if grid.is_empty() {
            return Err(Error::Config {
                source_name: "lr_grid".into(),
                reason: "give at least one learning rate".into(),
            });
        }
        for (i, &lr) in grid.iter().enumerate() {
            positive(&format!("lr_grid[{i}]"), lr)?;
        }
        let momentum = self.momentum.unwrap_or(0.9);
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::Config {
                source_name: "momentum".into(),
                reason: format!("must be in [0, 1), got {momentum}"),
            });
        }
        // As many updates as the meta-LSTM beside it takes by default.
        let default_steps = MetaLstmConfig::default().resolve(ctx)?.steps;
        let steps = at_least_one("steps", self.steps.unwrap_or(default_steps))?;
        Ok(HandFewShotResolved {
            algorithm: kind.name().into(),
            label: self.label.clone().unwrap_or_else(|| kind.name().into()),
            lr: self.lr,
            lr_grid: grid,
            meta_batch: at_least_one("meta_batch", self.meta_batch.unwrap_or(10))?,
            steps,
            steps_test: at_least_one("steps_test", self.steps_test.unwrap_or(steps))?,
            momentum,
        })
    }
}

/// A hand-designed optimiser from a fresh initialisation, its learning
/// rate tuned on training episodes.
pub struct HandFewShot {
    pub config: HandFewShotResolved,
    rule: HandConfig,
    ctx: Context,
    /// The fresh initialisation every episode starts from.
    theta0: Vec<f64>,
    /// Names and shapes of the learner's parameters.
    template: Params,
    /// Per grid rate: summed mean query loss of its meta-steps, and their
    /// count (the checkpointed state).
    loss_sum: Vec<f64>,
    count: Vec<f64>,
    /// The rate in use, as a meta-parameter (`lr [1]`).
    chosen: Params,
}

impl HandFewShot {
    /// Untuned: no rate tried yet.
    pub fn new(config: HandFewShotResolved, ctx: &Context) -> Result<Self> {
        let kind = kind_of(&config.algorithm)?;
        let template = ctx
            .learner
            .init(&mut Rng::derive(ctx.run_seed, &[0x1417]), &ctx.device)?;
        let theta0 = template
            .flatten()?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let g = config.lr_grid.len();
        let rule = HandConfig {
            momentum: config.momentum,
            ..HandConfig::new(kind)
        };
        let mut h = HandFewShot {
            config,
            rule,
            ctx: ctx.clone(),
            theta0,
            template,
            loss_sum: vec![0.0; g],
            count: vec![0.0; g],
            chosen: Params::new(vec![], vec![]),
        };
        h.choose()?;
        Ok(h)
    }

    /// The rate in use: the lowest finite mean query loss among the rates
    /// tried (ties: the smaller rate), else the smallest rate.
    pub fn lr(&self) -> f64 {
        let mut best: Option<(f64, f64)> = None;
        for ((&lr, &s), &c) in self
            .config
            .lr_grid
            .iter()
            .zip(&self.loss_sum)
            .zip(&self.count)
        {
            if c == 0.0 {
                continue;
            }
            let m = s / c;
            if m.is_finite() && best.is_none_or(|(bm, blr)| m < bm || (m == bm && lr < blr)) {
                best = Some((m, lr));
            }
        }
        best.map(|b| b.1).unwrap_or_else(|| {
            self.config
                .lr_grid
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
        })
    }

    /// Each grid rate's mean query loss so far (NaN where untried).
    pub fn tally(&self) -> Vec<(f64, f64)> {
        self.config
            .lr_grid
            .iter()
            .zip(self.loss_sum.iter().zip(&self.count))
            .map(|(&lr, (&s, &c))| (lr, if c > 0.0 { s / c } else { f64::NAN }))
            .collect()
    }

    fn choose(&mut self) -> Result<()> {
        let t = Tensor::new(&[self.lr() as f32], &self.ctx.device)?;
        self.chosen = Params::new(vec!["lr".into()], vec![t]);
        Ok(())
    }

    /// theta_T after `steps` updates at rate `lr` from the fresh
    /// initialisation on `(x, y)`, with the passes' running statistics
    /// when the protocol asks.
    fn adapt_with(&self, lr: f64, x: &Tensor, y: &Tensor, steps: usize) -> Result<Adapted> {
        let rule = HandConfig { lr, ..self.rule };
        let mut running = self.ctx.recorder();
        let mut theta = self.theta0.clone();
        let mut state = rule.start(theta.len());
        let n = theta.len();
        let dtype = self.template.tensors[0].dtype();
        let dev = &self.ctx.device;
        {
            let mut objective = Support {
                learner: &self.ctx.learner,
                template: &self.template,
                x,
                y,
                grad_div_batch: false,
                running: running.as_mut(),
            };
            for _ in 0..steps {
                let t = Tensor::from_slice(&theta, (1, n), dev)?.to_dtype(dtype)?;
                let (g, _) = objective.loss_and_grad(&t)?;
                let g = g.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                // theta_t = hand_rule(theta_{t-1}, g_t)   (torch.optim's step)
                rule.step(&mut state, &mut theta, &g);
            }
        }
        let t = Tensor::from_slice(&theta, n, dev)?.to_dtype(dtype)?;
        Ok(Adapted {
            params: self.template.unflatten_like(&t)?,
            running,
        })
    }
}

impl Algorithm for HandFewShot {
    /// `steps` support passes and the query scored, per episode of the
    /// meta-batch; no tape.
    fn step_cost(&self) -> super::StepCost {
        super::StepCost::episodic(
            self.config.steps,
            self.config.steps_test,
            self.ctx.spec,
            self.ctx.spec,
            self.config.meta_batch,
            &format!("steps {}", self.config.steps),
        )
    }
    fn label(&self) -> &str {
        &self.config.label
    }
    fn kind(&self) -> &'static str {
        kind_of(&self.config.algorithm)
            .map(HandKind::name)
            .unwrap_or("hand")
    }
    fn meta_batch(&self) -> usize {
        self.config.meta_batch
    }
    fn train_spec(&self) -> EpisodeSpec {
        self.ctx.spec
    }
    /// Tries rate `step mod G` on the meta-batch (episodes in parallel,
    /// their losses summed in episode order) and adds the mean query loss
    /// to its tally.
    fn meta_train_step(&mut self, episodes: &[Batch], progress: Progress) -> Result<EpisodeScore> {
        if episodes.is_empty() {
            return Err(Error::invalid("meta-batch", 0, "at least one episode"));
        }
        let k = (progress.step % self.config.lr_grid.len() as u64) as usize;
        let lr = self.config.lr_grid[k];
        let scores: Vec<EpisodeScore> = episodes
            .par_iter()
            .map(|b| {
                let a = self.adapt_with(lr, &b.support_x, &b.support_y, self.config.steps)?;
                self.ctx.score(&a, b)
            })
            .collect::<Result<_>>()?;
        let s = EpisodeScore::mean(&scores);
        self.loss_sum[k] += s.loss;
        self.count[k] += 1.0;
        self.choose()?;
        Ok(s)
    }
    fn adapt(&self, x: &Tensor, y: &Tensor, _episode: EpisodeId) -> Result<Adapted> {
        self.adapt_with(self.lr(), x, y, self.config.steps_test)
    }
    fn context(&self) -> &Context {
        &self.ctx
    }
    /// The rate in use, `lr [1]`.
    fn meta_params(&self) -> &Params {
        &self.chosen
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        let dev = &candle_core::Device::Cpu;
        Ok(HashMap::from([
            (
                "tune.lr_grid".to_string(),
                Tensor::new(self.config.lr_grid.as_slice(), dev)?,
            ),
            (
                "tune.loss_sum".to_string(),
                Tensor::new(self.loss_sum.as_slice(), dev)?,
            ),
            (
                "tune.count".to_string(),
                Tensor::new(self.count.as_slice(), dev)?,
            ),
        ]))
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        let read = |name: &str| -> Result<Vec<f64>> {
            let t = s.get(name).ok_or_else(|| Error::Config {
                source_name: "checkpoint".into(),
                reason: format!("tensor {name} missing"),
            })?;
            Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
        };
        let grid = read("tune.lr_grid")?;
        if grid != self.config.lr_grid {
            return Err(Error::Config {
                source_name: "checkpoint".into(),
                reason: format!(
                    "tuned over the learning rates {grid:?}, this entry's are {:?}",
                    self.config.lr_grid
                ),
            });
        }
        self.loss_sum = read("tune.loss_sum")?;
        self.count = read("tune.count")?;
        if self.loss_sum.len() != grid.len() || self.count.len() != grid.len() {
            return Err(Error::Config {
                source_name: "checkpoint".into(),
                reason: "tuning tallies of another length than the grid".into(),
            });
        }
        self.choose()
    }
    /// The tuned rate carries over whole: nothing of it is the learner's.
    fn load_rule(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        self.load_state(s)
    }
}
