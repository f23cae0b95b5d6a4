//! The two learned rules of [`crate::algo::learned_optimizer`] on few-shot
//! episodes (task kind `episodic`), each with a learned initialisation
//! theta_0 as the meta-learner LSTM has, so that they sit beside MAML,
//! Reptile and the meta-LSTM on the same fixed test episodes:
//!
//! - `lstm-optimizer`: Andrychowicz et al.'s coordinate-wise LSTM stack
//!   proposes the update, theta_t = theta_{t-1} + scale (W_out h_t +
//!   b_out) ([`crate::algo::learned::andrychowicz`]);
//! - `two-level`: that LSTM proposes the candidate z_t of Ravi &
//!   Larochelle's gated cell, theta_t = f_t theta_{t-1} + i_t z_t
//!   ([`crate::algo::learned::two_level`]).
//!
//! Per episode, as the meta-LSTM ([`crate::algo::meta_lstm`]) does:
//!
//! ```text
//! theta_0                        learned (a fresh learner's parameters at first)
//! for t = 1..=T:
//!     g_t, L_t = grad L_support(theta_{t-1}), L_support(theta_{t-1})   constants
//!     theta_t  = rule_phi(theta_{t-1}, g_t[, L_t])
//! meta-loss    = L_query(theta_T)
//! ```
//!
//! with L the learner's mean cross-entropy, its gradient divided once more
//! by the support size as the meta-LSTM's reference does
//! (`grad_div_batch`, [`crate::algo::learned::objective::Support`]), the
//! query pass normalised as the benchmark's protocol says for
//! meta-training ([`Context::predict_train`]). The unroll is
//! [`crate::algo::learned::unroll()`]: the fused kernel
//! ([`crate::algo::learned::fused`], one candle op) with the learner's
//! fused kernels and the shipped shape, else the composed candle graph;
//! candle's autograd gives the meta-gradient with respect to the rule's
//! weights phi and theta_0 through every step (no second derivatives: g_t
//! and L_t are inputs). One episode per meta-update, Adam (learning rate
//! 1e-3) after a global gradient-norm clip of 0.25: the meta-LSTM's
//! meta-training.
//!
//! The meta-parameters are the rule's weights under the names the rule
//! gives them (`l1.w_ih`, ..., `out.w`, `out.b`; the two-level rule then
//! `cell.w_f`, `cell.w_i`, `cell.b_f`, `cell.b_i`), then `theta0 [1, n]`;
//! checkpoints store them as `meta.<name>` and Adam's moments as
//! `adam.<name>`. Fresh weights are those the same rule draws on
//! optimisation problems under the same run seed; theta_0 is the
//! learner's initialisation the meta-LSTM starts from (the same draw), so
//! the three learned rows of a benchmark start from one theta_0.
//!
//! Hyperparameters follow [`crate::algo::learned_optimizer`] (`preset`,
//! `hidden`, `layers`, `preprocess`, `scale`, `candidate`) and the
//! meta-LSTM (`steps`, `steps_test`, `meta_lr`, `clip`, `grad_div_batch`);
//! docs/algorithms.md ("Learned rules on few-shot episodes") has the
//! table.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::learned::andrychowicz::{AndrychowiczConfig, AndrychowiczRule, AndrychowiczWeights};
use super::learned::objective::{self, Objective, Replay, Support};
use super::learned::two_level::{TwoLevelConfig, TwoLevelRule, TwoLevelWeights};
use super::learned::{self, UnrollOptions, Unrolled};
use super::learned_optimizer::Preset;
use super::meta_lstm::MetaLstmConfig;
use super::{
    at_least_one, positive, Adapted, Algorithm, Context, Entry, EpisodeScore, Observer, Progress,
};
use crate::data::sampler::{Batch, EpisodeId, EpisodeSpec};
use crate::data::task::TaskKind;
use crate::error::{Error, Result};
use crate::model::learner::cross_entropy;
use crate::model::norm::RunningStats;
use crate::model::optim::{clip_global_norm, Adam, AdamConfig};
use crate::model::params::Params;
use crate::rng::Rng;

/// The name of the learned initialisation among the meta-parameters.
pub const THETA0: &str = "theta0";

/// Bytes the composed unroll keeps per coordinate and update for its
/// backward (two LSTM layers of 20 units: gates, cells, hidden states and
/// their intermediates; set from the peak RSS of a run, docs/benchmarks.md
/// "Before any training").
pub const TAPE_BYTES_PER_STEP: f64 = 5_500.0;

/// The fused kernel's tape per coordinate, update and LSTM layer
/// (`learned/fused.rs`: i, f, g, o, c and tanh c of 20 units in float32,
/// with the per-step inputs and gates rounded in).
pub const FUSED_TAPE_BYTES_PER_LAYER_STEP: f64 = 520.0;

/// Registry entry of Andrychowicz et al.'s LSTM optimizer on few-shot
/// episodes (its optimisation side is
/// [`crate::algo::learned_optimizer::LSTM_OPTIMIZER`]).
pub const LSTM_OPTIMIZER_FEWSHOT: Entry = Entry {
    name: "lstm-optimizer",
    about: "Andrychowicz et al. 2016: a two-layer coordinate-wise LSTM proposes the update \
            (few-shot: with a learned initialisation)",
    tasks: &[TaskKind::Episodic, TaskKind::Optimisation],
    resolve: |v, ctx| super::resolve_as(v, ctx, LearnedFewShotConfig::resolve),
    build: |v, ctx| super::build_as(v, ctx, LearnedFewShotConfig::resolve, LearnedFewShot::new),
};

/// Registry entry of the two-level rule on few-shot episodes (its
/// optimisation side is [`crate::algo::learned_optimizer::TWO_LEVEL`]).
pub const TWO_LEVEL_FEWSHOT: Entry = Entry {
    name: "two-level",
    about: "a gradient-memory LSTM proposes the candidate of a gated cell whose state is theta \
            (few-shot: with a learned initialisation)",
    tasks: &[TaskKind::Episodic, TaskKind::Optimisation],
    resolve: |v, ctx| super::resolve_as(v, ctx, LearnedFewShotConfig::resolve),
    build: |v, ctx| super::build_as(v, ctx, LearnedFewShotConfig::resolve, LearnedFewShot::new),
};

/// Which of the two rules an entry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `lstm-optimizer`: [`AndrychowiczRule`].
    LstmOptimizer,
    /// `two-level`: [`TwoLevelRule`].
    TwoLevel,
}

impl RuleKind {
    /// The registry name.
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::LstmOptimizer => "lstm-optimizer",
            RuleKind::TwoLevel => "two-level",
        }
    }

    /// The rule a registry name names.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "lstm-optimizer" => Ok(RuleKind::LstmOptimizer),
            "two-level" => Ok(RuleKind::TwoLevel),
            other => Err(Error::Config {
                source_name: "algorithm".into(),
                reason: format!("`lstm-optimizer` or `two-level`, got `{other}`"),
            }),
        }
    }

    /// The series the rule records (`update`; the two-level rule's
    /// `forget`, `input`, `update`).
    pub fn series(self) -> &'static [&'static str] {
        match self {
            RuleKind::LstmOptimizer => &learned::andrychowicz::SERIES,
            RuleKind::TwoLevel => &learned::two_level::SERIES,
        }
    }
}

/// A few-shot learned rule's entry as written in a benchmark file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedFewShotConfig {
    /// `lstm-optimizer` or `two-level`.
    pub algorithm: String,
    /// Name in tables [default: the algorithm's name].
    pub label: Option<String>,
    /// Whose defaults `preprocess` and `scale` take: `paper` (p = 10,
    /// scale 0.1) or `code` (deepmind/learning-to-learn: k = 5 with the
    /// float32 epsilon, scale 0.01) [default: paper].
    pub preset: Option<Preset>,
    /// Hidden units per LSTM layer [default: 20].
    pub hidden: Option<usize>,
    /// LSTM layers [default: 2].
    pub layers: Option<usize>,
    /// Log/sign preprocessing constant of the gradient; 0: none, the raw
    /// gradient [default: the preset's, 10 or 5].
    pub preprocess: Option<f64>,
    /// Output scale of the proposed step, `scale * (W_out h + b_out)`
    /// [default: the preset's, 0.1 or 0.01].
    pub scale: Option<f64>,
    /// Learner updates per episode, T [default: the meta-LSTM's, 10 on
    /// Omniglot; on mini-ImageNet 12 for 1-shot and 8 for 5-shot].
    pub steps: Option<usize>,
    /// Updates at validation/test time [default: `steps`].
    pub steps_test: Option<usize>,
    /// Adam learning rate of the meta-parameters [default: 1e-3].
    pub meta_lr: Option<f64>,
    /// Global gradient-norm clip of the meta-gradient [default: 0.25, the
    /// meta-LSTM's].
    pub clip: Option<f64>,
    /// Divide the learner's mean-loss gradient by the support size before
    /// the rule sees it, as the meta-LSTM does [default: true].
    pub grad_div_batch: Option<bool>,
    /// two-level only: the candidate step z_t, `learned` (the read-out)
    /// or `gradient` (-g_t) [default: learned].
    pub candidate: Option<String>,
}

/// Resolved: every value explicit (what `resolved.yaml` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedFewShotResolved {
    pub algorithm: String,
    pub label: String,
    pub preset: Preset,
    pub hidden: usize,
    pub layers: usize,
    /// 0: no preprocessing.
    pub preprocess: f64,
    pub scale: f64,
    pub steps: usize,
    pub steps_test: usize,
    pub meta_lr: f64,
    pub clip: f64,
    pub grad_div_batch: bool,
    /// two-level: `learned` or `gradient`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

impl LearnedFewShotConfig {
    /// Fill in the defaults for `ctx` and check every value.
    pub fn resolve(&self, ctx: &Context) -> Result<LearnedFewShotResolved> {
        let kind = RuleKind::from_name(&self.algorithm)?;
        let preset = self.preset.unwrap_or_default();
        let (pre, scale) = match preset {
            Preset::Paper => (10.0, 0.1),
            Preset::Code => (5.0, 0.01),
        };
        let preprocess = self.preprocess.unwrap_or(pre);
        if !(preprocess.is_finite() && preprocess >= 0.0) {
            return Err(Error::Config {
                source_name: "preprocess".into(),
                reason: format!("must be a number >= 0 (0: none), got {preprocess}"),
            });
        }
        let candidate = match (kind, &self.candidate) {
            (RuleKind::TwoLevel, c) => {
                let c = c.clone().unwrap_or_else(|| "learned".into());
                if !["learned", "gradient"].contains(&c.as_str()) {
                    return Err(Error::Config {
                        source_name: "candidate".into(),
                        reason: format!("`learned` or `gradient`, got `{c}`"),
                    });
                }
                Some(c)
            }
            (RuleKind::LstmOptimizer, None) => None,
            (RuleKind::LstmOptimizer, Some(_)) => {
                return Err(Error::Config {
                    source_name: "candidate".into(),
                    reason: "only the two-level rule has a candidate to choose".into(),
                })
            }
        };
        // As many updates as the meta-LSTM beside it takes by default.
        let default_steps = MetaLstmConfig::default().resolve(ctx)?.steps;
        let steps = at_least_one("steps", self.steps.unwrap_or(default_steps))?;
        Ok(LearnedFewShotResolved {
            algorithm: kind.name().into(),
            label: self.label.clone().unwrap_or_else(|| kind.name().into()),
            preset,
            hidden: at_least_one("hidden", self.hidden.unwrap_or(20))?,
            layers: at_least_one("layers", self.layers.unwrap_or(2))?,
            preprocess,
            scale: positive("scale", self.scale.unwrap_or(scale))?,
            steps,
            steps_test: at_least_one("steps_test", self.steps_test.unwrap_or(steps))?,
            meta_lr: positive("meta_lr", self.meta_lr.unwrap_or(1e-3))?,
            clip: positive("clip", self.clip.unwrap_or(0.25))?,
            grad_div_batch: self.grad_div_batch.unwrap_or(true),
            candidate,
        })
    }
}

impl LearnedFewShotResolved {
    /// Which rule this entry runs.
    pub fn kind(&self) -> Result<RuleKind> {
        RuleKind::from_name(&self.algorithm)
    }

    /// The LSTM stack's (the two-level rule's first level's) configuration:
    /// the preset's, with this entry's shape, preprocessing and scale.
    pub fn lstm_config(&self) -> AndrychowiczConfig {
        self.preset
            .lstm_config(self.hidden, self.layers, self.preprocess, self.scale)
    }

    /// The two-level rule's configuration: learned gates, the entry's
    /// candidate.
    pub fn two_level_config(&self) -> TwoLevelConfig {
        super::learned_optimizer::two_level_config(self.lstm_config(), self.candidate.as_deref())
    }
}

/// One of the two rules, built from its weights.
enum AnyRule {
    Lstm(AndrychowiczRule),
    TwoLevel(TwoLevelRule),
}

/// Run `$body` with `$r` bound to the concrete rule of `$any`.
macro_rules! with_rule {
    ($any:expr, $r:ident => $body:expr) => {
        match $any {
            AnyRule::Lstm($r) => $body,
            AnyRule::TwoLevel($r) => $body,
        }
    };
}

/// A learned rule with a learned initialisation, meta-trained on few-shot
/// episodes.
pub struct LearnedFewShot {
    pub config: LearnedFewShotResolved,
    kind: RuleKind,
    ctx: Context,
    /// The meta-parameters by name: the rule's weights, then [`THETA0`]
    /// (`[1, n]`), as Adam and checkpoints see them.
    pub params: Params,
    /// Names and shapes of the learner's parameters (values unused).
    template: Params,
    adam: Adam,
}

impl LearnedFewShot {
    /// Fresh meta-parameters under the run seed: the rule's weights as the
    /// optimisation side draws them, theta_0 the learner's initialisation
    /// the meta-LSTM starts from.
    pub fn new(config: LearnedFewShotResolved, ctx: &Context) -> Result<Self> {
        let kind = config.kind()?;
        let dev = &ctx.device;
        let template = ctx
            .learner
            .init(&mut Rng::derive(ctx.run_seed, &[0x1417]), dev)?;
        let n = template.numel();
        let theta0 = template.flatten()?.reshape((1, n))?;
        let mut rng = Rng::derive(ctx.run_seed, &[0x0b7, 0]);
        let weights = match kind {
            RuleKind::LstmOptimizer => {
                AndrychowiczWeights::init(&config.lstm_config(), &mut rng, dev)?.to_params()
            }
            RuleKind::TwoLevel => {
                TwoLevelWeights::init(&config.two_level_config(), &mut rng, dev)?.to_params()
            }
        };
        let mut names = weights.names;
        let mut tensors = weights.tensors;
        names.push(THETA0.into());
        tensors.push(theta0);
        let params = Params::new(names, tensors);
        let adam = Adam::new(AdamConfig::with_lr(config.meta_lr), &params)?;
        Ok(LearnedFewShot {
            config,
            kind,
            ctx: ctx.clone(),
            params,
            template,
            adam,
        })
    }

    /// Which rule this is.
    pub fn rule_kind(&self) -> RuleKind {
        self.kind
    }

    /// Coordinate ranges of each learner layer (`conv1`..`conv4`, `head`)
    /// in the flat parameter vector.
    pub fn layer_ranges(&self) -> Vec<(String, Range<usize>)> {
        objective::layer_ranges(&self.template)
    }

    /// Learner parameters viewed from a flat `[1, n]` vector.
    pub fn learner_params(&self, theta: &Tensor) -> Result<Params> {
        self.template.unflatten_like(&theta.flatten_all()?)
    }

    /// The objective the rule updates: the learner's mean cross-entropy on
    /// `(x, y)`, its gradient divided by the batch size when
    /// `grad_div_batch`; every pass's batch-norm statistics go into
    /// `running` when given.
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

    /// The rule with the weights in `mp` (plain tensors or autograd leaves).
    fn rule(&self, mp: &Params) -> Result<AnyRule> {
        Ok(match self.kind {
            RuleKind::LstmOptimizer => AnyRule::Lstm(AndrychowiczRule::new(
                AndrychowiczWeights::from_params(mp)?,
                self.config.lstm_config(),
            )?),
            RuleKind::TwoLevel => AnyRule::TwoLevel(TwoLevelRule::new(
                TwoLevelWeights::from_params(mp)?,
                self.config.two_level_config(),
            )?),
        })
    }

    /// `steps` updates of the rule with meta-parameters `mp` from their
    /// theta_0 on `objective`, as one candle graph (the rule's series at
    /// every step when `record`): the fused kernel where the learner's
    /// kernels are fused and it runs the rule, one op in the graph.
    pub fn unroll(
        &self,
        mp: &Params,
        objective: &mut dyn Objective,
        steps: usize,
        record: bool,
    ) -> Result<Unrolled> {
        let theta0 = mp.get(THETA0)?;
        let opts = UnrollOptions {
            record,
            kernels: self.ctx.learner.kernels,
            ..UnrollOptions::new(steps)
        };
        with_rule!(&self.rule(mp)?, r => learned::unroll(r, theta0, objective, &opts))
    }

    /// Meta-loss (the query cross-entropy at theta_T after `steps` updates
    /// on the support set) and its score, at meta-parameters `mp`.
    /// `frozen` plays back recorded `(gradient, loss)` inputs instead of
    /// computing them (finite-difference checks).
    pub fn meta_loss(
        &self,
        mp: &Params,
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(Tensor, EpisodeScore)> {
        let mut objective: Box<dyn Objective + '_> = match frozen {
            Some(f) => Box::new(Replay::new(f)),
            None => Box::new(self.support(&b.support_x, &b.support_y, None)),
        };
        let u = self.unroll(mp, &mut *objective, self.config.steps, false)?;
        let p = self.learner_params(&u.theta)?;
        let logits = self.ctx.predict_train(&p, &b.support_x, &b.query_x)?;
        let loss = cross_entropy(&logits, &b.query_y)?;
        Ok((loss, EpisodeScore::of(&logits, &b.query_y)?))
    }

    /// Meta-loss, score and meta-gradient (by candle autograd, in `mp`'s
    /// order) of one episode at meta-parameters `mp`.
    pub fn meta_gradient(
        &self,
        mp: &Params,
        b: &Batch,
        frozen: Option<&[(Tensor, f64)]>,
    ) -> Result<(f64, EpisodeScore, Params)> {
        let vars = mp.to_vars()?;
        let mv = Params::from_vars(&mp.names, &vars);
        let (loss, score) = self.meta_loss(&mv, b, frozen)?;
        let g = mv.grads(&loss.backward()?)?;
        Ok((super::scalar(&loss)?, score, g))
    }

    /// Cast the meta-parameters (float64 gradient checks); Adam starts
    /// afresh.
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        self.params = self.params.to_dtype(dtype)?;
        self.template = self.template.to_dtype(dtype)?;
        self.adam = Adam::new(self.adam.config, &self.params)?;
        Ok(())
    }
}

impl Algorithm for LearnedFewShot {
    /// `steps` support passes and the query pass per episode; the tape is
    /// the fused kernel's ([`FUSED_TAPE_BYTES_PER_LAYER_STEP`] per layer)
    /// where it runs, else the composed graph's
    /// ([`TAPE_BYTES_PER_STEP`]), per coordinate and step.
    fn step_cost(&self) -> super::StepCost {
        let mut sc = super::StepCost::episodic(
            self.config.steps,
            self.config.steps_test,
            self.ctx.spec,
            self.ctx.spec,
            1,
            &format!("steps {}", self.config.steps),
        );
        let fused = self.ctx.learner.kernels == crate::model::kernels::Kernels::Fused
            && self.ctx.device.is_cpu()
            && self
                .rule(&self.params)
                .is_ok_and(|r| with_rule!(&r, x => learned::rule::Rule::fused(x).is_some()));
        let per_step = if fused {
            FUSED_TAPE_BYTES_PER_LAYER_STEP * self.config.layers as f64
        } else {
            TAPE_BYTES_PER_STEP
        };
        sc.tape_bytes_per_param = per_step * self.config.steps as f64;
        sc
    }
    fn label(&self) -> &str {
        &self.config.label
    }
    fn kind(&self) -> &'static str {
        self.kind.name()
    }
    /// One episode per meta-update, as the meta-LSTM.
    fn meta_batch(&self) -> usize {
        1
    }
    fn train_spec(&self) -> EpisodeSpec {
        self.ctx.spec
    }
    /// Adam on the mean meta-gradient of `episodes` (one, normally),
    /// clipped to global norm `clip`; the query score at theta_T.
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
        let (g, _norm) = clip_global_norm(&g, self.config.clip)?;
        self.params = self.adam.step(&self.params, &g)?;
        Ok(EpisodeScore::mean(&scores))
    }
    /// theta_T after `steps_test` updates on the support set (no graph),
    /// with the passes' running statistics when the protocol asks.
    fn adapt(&self, x: &Tensor, y: &Tensor, _episode: EpisodeId) -> Result<Adapted> {
        let mut running = self.ctx.recorder();
        let u = {
            let mut objective = self.support(x, y, running.as_mut());
            self.unroll(&self.params, &mut objective, self.config.steps_test, false)?
        };
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
        super::load_rule_params(s, "meta.", &mut self.params, THETA0)
    }
    /// The rule's series: `update` (lstm-optimizer); `forget`, `input`,
    /// `update` (two-level).
    fn series(&self) -> &[&'static str] {
        self.kind.series()
    }
    /// The rule's series at every test-time step (`steps_test`) of an
    /// adaptation to `b`'s support set, per learner layer.
    fn observe(&self, b: &Batch, obs: &mut dyn Observer) -> Result<()> {
        let u = {
            let mut objective = self.support(&b.support_x, &b.support_y, None);
            self.unroll(&self.params, &mut objective, self.config.steps_test, true)?
        };
        let layers = self.layer_ranges();
        for (t, series) in u.recorded.iter().enumerate() {
            for (name, values) in self.kind.series().iter().zip(series) {
                let v = values
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?;
                for (layer, r) in &layers {
                    obs.record(name, t + 1, layer, &v[r.clone()]);
                }
            }
        }
        Ok(())
    }
}
