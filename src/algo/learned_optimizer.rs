//! Learned optimisers on optimisation problems: a coordinate-wise learned
//! rule ([`crate::algo::learned`]) meta-trained the way Andrychowicz et
//! al. 2016 train theirs (deepmind/learning-to-learn `train.py`,
//! `meta.py`):
//!
//! - every meta-step draws a fresh training problem and its theta_0
//!   (`reset`, `meta.py:367-371`), zeroes the rule's state, and optimises
//!   it for T steps in segments of `unroll` steps (`num_unrolls = T //
//!   unroll_length`, `train.py:52`);
//! - after each segment the rule's weights take one Adam step (learning
//!   rate `meta_lr`, `train.py:47`: 0.001) on the segment's meta-loss, the
//!   unweighted sum of f along it with the gradients treated as constants
//!   ([`crate::algo::learned::unroll::unroll_segment`]); theta and the
//!   rule's state carry into the next segment, cut from the graph
//!   (truncated backpropagation through time);
//! - the returned training score is f(theta_T) (`fx_final`, the cost
//!   `util.py:run_epoch` returns).
//!
//! Three rules run here, each one registry entry:
//! - `lstm-optimizer`: Andrychowicz et al.'s two-layer LSTM proposing the
//!   update, theta_t = theta_{t-1} + scale * (W h_t + b);
//! - `two-level`: that LSTM proposing the candidate of a Ravi–Larochelle
//!   gated cell whose state is theta, theta_t = f_t theta_{t-1} + i_t z_t;
//! - `meta-lstm`: Ravi & Larochelle's rule, theta_t = f_t theta_{t-1} -
//!   i_t g_t, with its learned initialisation off (every problem draws its
//!   own theta_0).
//!
//! Defaults follow the paper (`preset: paper`: log/sign preprocessing with
//! p = 10, output scale 0.1); `preset: code` takes the official code's
//! (k = 5 with float32 epsilon and scale 0.01; on quadratics no
//! preprocessing and scale 1, `util.py:87-94`). docs/fidelity.md lists the
//! departures with their sources.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::learned::andrychowicz::{AndrychowiczConfig, AndrychowiczRule, AndrychowiczWeights};
use super::learned::lstm::LstmLayer;
use super::learned::ravi::{MetaCell, RaviRule, RaviWeights};
use super::learned::two_level::{Candidate, TwoLevelConfig, TwoLevelRule, TwoLevelWeights};
use super::learned::unroll::{unroll_segment, UnrollOptions};
use super::learned::{Inputs, Preprocess, Rule};
use super::optimizer::{OptContext, OptEntry, Optimizer};
use super::problem::{Problem, ProblemSpec};
use super::Observer;
use crate::error::{Error, Result};
use crate::model::kernels::Kernels;
use crate::model::optim::{Adam, AdamConfig};
use crate::model::params::Params;
use crate::rng::Rng;

/// Whose defaults an entry starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The paper's (NIPS 2016): preprocessing p = 10, scale 0.1 [default].
    #[default]
    Paper,
    /// The official code's: `LogAndSign(k = 5)`, scale 0.01; on quadratics
    /// no preprocessing and scale 1 (`util.py:50-60, 87-94`).
    Code,
}

/// A learned optimiser's entry as written (every field optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedEntry {
    pub algorithm: String,
    #[serde(default)]
    pub label: Option<String>,
    /// Whose defaults [paper].
    #[serde(default)]
    pub preset: Option<Preset>,
    /// LSTM hidden units per layer [20].
    #[serde(default)]
    pub hidden: Option<usize>,
    /// LSTM layers (lstm-optimizer, two-level) [2].
    #[serde(default)]
    pub layers: Option<usize>,
    /// Log/sign preprocessing constant; `0` for none [preset].
    #[serde(default)]
    pub preprocess: Option<f64>,
    /// Output scale of the proposed step (lstm-optimizer, two-level)
    /// [preset].
    #[serde(default)]
    pub scale: Option<f64>,
    /// Steps per truncated unroll [20].
    #[serde(default)]
    pub unroll: Option<usize>,
    /// Adam learning rate of the meta-optimiser [0.001].
    #[serde(default)]
    pub meta_lr: Option<f64>,
    /// two-level: `learned` candidate or the `gradient` [learned].
    #[serde(default)]
    pub candidate: Option<String>,
}

/// Resolved: every value explicit (what resolved.yaml records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearnedResolved {
    pub algorithm: String,
    pub label: String,
    pub preset: Preset,
    pub hidden: usize,
    pub layers: usize,
    /// 0: no preprocessing.
    pub preprocess: f64,
    pub scale: f64,
    pub unroll: usize,
    pub meta_lr: f64,
    /// two-level: `learned` or `gradient`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

impl LearnedEntry {
    pub fn resolve(&self, ctx: &OptContext) -> Result<LearnedResolved> {
        let preset = self.preset.unwrap_or_default();
        let quadratic = matches!(ctx.problem, ProblemSpec::Quadratic(_));
        let (pre, scale) = match (preset, quadratic) {
            (Preset::Paper, _) => (10.0, 0.1),
            (Preset::Code, false) => (5.0, 0.01),
            (Preset::Code, true) => (0.0, 1.0),
        };
        let meta_lstm = self.algorithm == "meta-lstm";
        // The meta-LSTM's own reference preprocesses with p = 10
        // (twitter-research/meta-learning-lstm `lstm-helper.lua:6-57`).
        let pre = if meta_lstm { 10.0 } else { pre };
        let preprocess = self.preprocess.unwrap_or(pre);
        if !(preprocess.is_finite() && preprocess >= 0.0) {
            return Err(Error::Config {
                source_name: "preprocess".into(),
                reason: format!("must be a number >= 0 (0: none), got {preprocess}"),
            });
        }
        if meta_lstm && preprocess == 0.0 {
            return Err(Error::Config {
                source_name: "preprocess".into(),
                reason: "the meta-LSTM reads preprocessed inputs; give p > 0".into(),
            });
        }
        let unroll = super::at_least_one("unroll", self.unroll.unwrap_or(20))?;
        if !ctx.steps.is_multiple_of(unroll) {
            return Err(Error::Config {
                source_name: "unroll".into(),
                reason: format!(
                    "must divide the benchmark's {} steps (the reference unrolls T / unroll times)",
                    ctx.steps
                ),
            });
        }
        let candidate = if self.algorithm == "two-level" {
            let c = self.candidate.clone().unwrap_or_else(|| "learned".into());
            if !["learned", "gradient"].contains(&c.as_str()) {
                return Err(Error::Config {
                    source_name: "candidate".into(),
                    reason: format!("`learned` or `gradient`, got `{c}`"),
                });
            }
            Some(c)
        } else if self.candidate.is_some() {
            return Err(Error::Config {
                source_name: "candidate".into(),
                reason: "only the two-level rule has a candidate to choose".into(),
            });
        } else {
            None
        };
        Ok(LearnedResolved {
            algorithm: self.algorithm.clone(),
            label: self.label.clone().unwrap_or_else(|| self.algorithm.clone()),
            preset,
            hidden: super::at_least_one("hidden", self.hidden.unwrap_or(20))?,
            layers: if meta_lstm {
                1
            } else {
                super::at_least_one("layers", self.layers.unwrap_or(2))?
            },
            preprocess,
            scale: super::positive("scale", self.scale.unwrap_or(scale))?,
            unroll,
            meta_lr: super::positive("meta_lr", self.meta_lr.unwrap_or(0.001))?,
            candidate,
        })
    }
}

impl LearnedResolved {
    /// The first level's (or the whole rule's) Andrychowicz configuration.
    fn lstm_config(&self) -> AndrychowiczConfig {
        self.preset
            .lstm_config(self.hidden, self.layers, self.preprocess, self.scale)
    }

    fn two_level_config(&self) -> TwoLevelConfig {
        two_level_config(self.lstm_config(), self.candidate.as_deref())
    }
}

impl Preset {
    /// The Andrychowicz configuration of this preset with an entry's
    /// shape, preprocessing constant (0: none) and output scale.
    pub fn lstm_config(
        self,
        hidden: usize,
        layers: usize,
        preprocess: f64,
        scale: f64,
    ) -> AndrychowiczConfig {
        let base = match self {
            Preset::Paper => AndrychowiczConfig::paper(),
            Preset::Code => AndrychowiczConfig::code(),
        };
        AndrychowiczConfig {
            hidden,
            layers,
            preprocess: (preprocess > 0.0).then_some(preprocess),
            scale,
            ..base
        }
    }
}

/// The two-level rule's configuration over the first level `lstm`, with
/// learned gates and the entry's `candidate` (`gradient`, else learned).
pub fn two_level_config(lstm: AndrychowiczConfig, candidate: Option<&str>) -> TwoLevelConfig {
    TwoLevelConfig {
        lstm,
        candidate: if candidate == Some("gradient") {
            Candidate::Gradient
        } else {
            Candidate::Learned
        },
        ..TwoLevelConfig::default()
    }
}

/// One of the three rules, built from its weights.
enum AnyRule {
    Lstm(AndrychowiczRule),
    TwoLevel(TwoLevelRule),
    Ravi(RaviRule),
}

/// Run `$body` with `$r` bound to the concrete rule of `$any`.
macro_rules! with_rule {
    ($any:expr, $r:ident => $body:expr) => {
        match $any {
            AnyRule::Lstm($r) => $body,
            AnyRule::TwoLevel($r) => $body,
            AnyRule::Ravi($r) => $body,
        }
    };
}

/// A learned optimiser: the rule's weights and their Adam state.
pub struct LearnedOptimizer {
    pub config: LearnedResolved,
    steps: usize,
    /// The rule's weights, by name (float32).
    pub params: Params,
    adam: Adam,
    dev: Device,
    /// The rules' fused kernel or the composed graph ([`OptContext::kernels`]).
    kernels: Kernels,
}

impl LearnedOptimizer {
    pub fn new(config: LearnedResolved, ctx: &OptContext) -> Result<Self> {
        let dev = Device::Cpu;
        let mut rng = Rng::derive(ctx.run_seed, &[0x0b7, 0]);
        let params = match config.algorithm.as_str() {
            "lstm-optimizer" => {
                AndrychowiczWeights::init(&config.lstm_config(), &mut rng, &dev)?.to_params()
            }
            "two-level" => {
                TwoLevelWeights::init(&config.two_level_config(), &mut rng, &dev)?.to_params()
            }
            _ => {
                let inputs = Inputs::GradientAndLoss;
                let lstm = LstmLayer::uniform(
                    inputs.count(),
                    config.hidden,
                    (-0.01, 0.01),
                    &mut rng,
                    &dev,
                )?;
                let cell = MetaCell::init(config.hidden, &mut rng, &dev)?;
                let (names, tensors) = lstm
                    .named("lstm")
                    .into_iter()
                    .chain(cell.named("cell"))
                    .unzip();
                Params::new(names, tensors)
            }
        }
        .to_dtype(DType::F32)?;
        let adam = Adam::new(AdamConfig::with_lr(config.meta_lr), &params)?;
        Ok(LearnedOptimizer {
            config,
            steps: ctx.steps,
            params,
            adam,
            kernels: ctx.kernels.on(&dev),
            dev,
        })
    }

    /// The rule with weights `p` (plain tensors or autograd leaves).
    fn rule(&self, p: &Params) -> Result<AnyRule> {
        Ok(match self.config.algorithm.as_str() {
            "lstm-optimizer" => AnyRule::Lstm(AndrychowiczRule::new(
                AndrychowiczWeights::from_params(p)?,
                self.config.lstm_config(),
            )?),
            "two-level" => AnyRule::TwoLevel(TwoLevelRule::new(
                TwoLevelWeights::from_params(p)?,
                self.config.two_level_config(),
            )?),
            _ => {
                let weights = RaviWeights {
                    lstm: LstmLayer::from_params(p, "lstm")?,
                    cell: MetaCell::from_params(p, "cell")?,
                    // Unused: every problem brings its own theta_0.
                    theta0: Tensor::zeros((1, 1), DType::F32, &self.dev)?,
                };
                AnyRule::Ravi(RaviRule::new(
                    weights,
                    Preprocess {
                        p: self.config.preprocess,
                    },
                    Inputs::GradientAndLoss,
                )?)
            }
        })
    }

    /// `steps` updates with this optimiser's kernels.
    fn options(&self, steps: usize, record: bool) -> UnrollOptions {
        UnrollOptions {
            kernels: self.kernels,
            record,
            ..UnrollOptions::new(steps)
        }
    }

    fn theta0(&self, problem: &Problem) -> Result<Tensor> {
        let v: Vec<f32> = problem.theta0.iter().map(|&x| x as f32).collect();
        let n = v.len();
        Ok(Tensor::from_vec(v, (1, n), &self.dev)?)
    }

    /// Optimise `problem` for `steps` steps with the current weights (no
    /// graph); the losses and, with `record`, the recorded series.
    fn run(
        &self,
        problem: &mut Problem,
        steps: usize,
        record: bool,
    ) -> Result<(Vec<f64>, Vec<Vec<Tensor>>)> {
        let theta = self.theta0(problem)?;
        let rule = self.rule(&self.params)?;
        with_rule!(&rule, r => {
            let mut state = r.start(&theta)?;
            let seg = unroll_segment(r, &mut state, &theta, problem, &self.options(steps, record))?;
            Ok((seg.losses, seg.recorded))
        })
    }
}

impl Optimizer for LearnedOptimizer {
    fn label(&self) -> &str {
        &self.config.label
    }
    fn kind(&self) -> &'static str {
        match self.config.algorithm.as_str() {
            "lstm-optimizer" => "lstm-optimizer",
            "two-level" => "two-level",
            _ => "meta-lstm",
        }
    }
    fn learned(&self) -> bool {
        true
    }

    fn meta_train_step(&mut self, problem: &mut Problem) -> Result<f64> {
        let mut theta = self.theta0(problem)?;
        let segments = self.steps / self.config.unroll;
        // The rule's state carried between segments (cut from the graph).
        let mut carried: Option<Box<dyn std::any::Any>> = None;
        let mut last = f64::NAN;
        for _ in 0..segments {
            let vars = self.params.to_vars()?;
            let mp = Params::from_vars(&self.params.names, &vars);
            let rule = self.rule(&mp)?;
            let (surrogate, next, final_loss) = with_rule!(&rule, r => {
                let mut state = match carried.take() {
                    Some(s) => *s.downcast().map_err(|_| {
                        Error::invalid("carried rule state", "another rule's", "this rule's")
                    })?,
                    None => r.start(&theta)?,
                };
                let opts = self.options(self.config.unroll, false);
                let seg = unroll_segment(r, &mut state, &theta, problem, &opts)?;
                r.detach(&mut state);
                carried = Some(Box::new(state));
                (seg.surrogate, seg.theta.detach(), *seg.losses.last().expect("T + 1 losses"))
            });
            let grads = mp.grads(&surrogate.backward()?)?;
            self.params = self.adam.step(&self.params, &grads)?;
            theta = next;
            last = final_loss;
        }
        Ok(last)
    }

    fn optimise(&self, problem: &mut Problem, steps: usize) -> Result<Vec<f64>> {
        Ok(self.run(problem, steps, false)?.0)
    }

    fn series(&self) -> &[&'static str] {
        match self.config.algorithm.as_str() {
            "lstm-optimizer" => &super::learned::andrychowicz::SERIES,
            "two-level" => &super::learned::two_level::SERIES,
            _ => &super::learned::ravi::SERIES,
        }
    }

    fn observe(&self, problem: &mut Problem, steps: usize, obs: &mut dyn Observer) -> Result<()> {
        use super::learned::Objective;
        let groups = problem.groups();
        let (_, recorded) = self.run(problem, steps, true)?;
        let rule = self.rule(&self.params)?;
        let names: &[&str] = with_rule!(&rule, r => r.series());
        for (t, series) in recorded.iter().enumerate() {
            for (name, values) in names.iter().zip(series) {
                let v: Vec<f32> = values.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                for (g, range) in &groups {
                    obs.record(name, t + 1, g, &v[range.clone()]);
                }
            }
        }
        Ok(())
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        super::params_and_adam_state(("rule.", &self.params), ("adam.", &self.adam))
    }
    fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        super::load_params_and_adam(s, ("rule.", &mut self.params), ("adam.", &mut self.adam))
    }
}

macro_rules! learned_entry {
    ($const:ident, $name:literal, $about:literal) => {
        pub const $const: OptEntry = OptEntry {
            name: $name,
            about: $about,
            resolve: |v, ctx| super::resolve_as(v, ctx, LearnedEntry::resolve),
            build: |v, ctx| {
                super::optimizer::build_as(v, ctx, LearnedEntry::resolve, LearnedOptimizer::new)
            },
        };
    };
}

learned_entry!(
    LSTM_OPTIMIZER,
    "lstm-optimizer",
    "Andrychowicz et al. 2016: a two-layer coordinate-wise LSTM proposes the update"
);
learned_entry!(
    TWO_LEVEL,
    "two-level",
    "a gradient-memory LSTM proposes the candidate of a gated cell whose state is theta"
);
learned_entry!(
    META_LSTM,
    "meta-lstm",
    "Ravi & Larochelle's gated cell (learned initialisation off on optimisation problems)"
);
