//! The hand-designed optimisers on optimisation problems: SGD, SGD with
//! momentum, Nesterov momentum, RMSProp and Adam, the baselines of
//! Andrychowicz et al. 2016 (figures 2-5), each computing what
//! `torch.optim` computes ([`crate::model::hand`], tested step for step
//! against a PyTorch fixture).
//!
//! Each one's learning rate is tuned on training problems before anything
//! is evaluated: every rate of a log grid ([`crate::model::hand::lr_grid`],
//! half-decades from 1e-4 to 3, or the entry's `lr_grid`) optimises the
//! same `tune_problems` training problems for T steps, and the rate with
//! the lowest mean final loss wins (a diverged rate, non-finite loss,
//! never does). The grid, each rate's mean final loss and the chosen rate
//! are recorded in results.json. An entry that gives `lr` skips tuning.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::optimizer::{OptContext, OptEntry, Optimizer, Problems, Tuning};
use super::problem::Problem;
use crate::error::{Error, Result};
use crate::model::hand::{lr_grid, HandConfig, HandKind};

/// A hand-designed optimiser's entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandEntry {
    pub algorithm: String,
    /// Name in tables [default: the algorithm name].
    #[serde(default)]
    pub label: Option<String>,
    /// A fixed learning rate (no tuning) [default: tuned].
    #[serde(default)]
    pub lr: Option<f64>,
    /// The learning rates tuning tries [default: half-decades 1e-4 .. 3].
    #[serde(default)]
    pub lr_grid: Option<Vec<f64>>,
    /// Training problems each rate is run on [default: 10].
    #[serde(default)]
    pub tune_problems: Option<usize>,
    /// Momentum mu (momentum, nesterov) [default: 0.9].
    #[serde(default)]
    pub momentum: Option<f64>,
}

/// Resolved: every field given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandResolved {
    pub algorithm: String,
    pub label: String,
    pub lr: Option<f64>,
    pub lr_grid: Vec<f64>,
    pub tune_problems: usize,
    pub momentum: f64,
}

fn kind_of(name: &str) -> HandKind {
    HandKind::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .expect("a registered hand-designed optimiser")
}

impl HandEntry {
    pub fn resolve(&self, _ctx: &OptContext) -> Result<HandResolved> {
        let grid = self.lr_grid.clone().unwrap_or_else(lr_grid);
        if grid.is_empty() {
            return Err(Error::Config {
                source_name: "lr_grid".into(),
                reason: "give at least one learning rate".into(),
            });
        }
        for (i, &lr) in grid.iter().enumerate() {
            super::positive(&format!("lr_grid[{i}]"), lr)?;
        }
        if let Some(lr) = self.lr {
            super::positive("lr", lr)?;
        }
        let momentum = self.momentum.unwrap_or(0.9);
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::Config {
                source_name: "momentum".into(),
                reason: format!("must be in [0, 1), got {momentum}"),
            });
        }
        Ok(HandResolved {
            algorithm: self.algorithm.clone(),
            label: self.label.clone().unwrap_or_else(|| self.algorithm.clone()),
            lr: self.lr,
            lr_grid: grid,
            tune_problems: super::at_least_one("tune_problems", self.tune_problems.unwrap_or(10))?,
            momentum,
        })
    }
}

/// A hand-designed optimiser and its (tuned) learning rate.
pub struct Hand {
    pub config: HandResolved,
    rule: HandConfig,
    kind: HandKind,
}

impl Hand {
    pub fn new(config: HandResolved, _ctx: &OptContext) -> Result<Self> {
        let kind = kind_of(&config.algorithm);
        let rule = HandConfig {
            momentum: config.momentum,
            lr: config.lr.unwrap_or(f64::NAN),
            ..HandConfig::new(kind)
        };
        Ok(Hand { config, rule, kind })
    }

    /// The learning rate in use (NaN before tuning).
    pub fn lr(&self) -> f64 {
        self.rule.lr
    }

    /// The losses at theta_0..theta_steps with learning rate `lr`.
    fn run(&self, lr: f64, problem: &mut Problem, steps: usize) -> Vec<f64> {
        let rule = HandConfig { lr, ..self.rule };
        let mut theta = problem.theta0.clone();
        let mut state = rule.start(theta.len());
        let mut losses = Vec::with_capacity(steps + 1);
        for _ in 0..steps {
            let (loss, grad) = problem.eval_f64(&theta);
            losses.push(loss);
            if !loss.is_finite() {
                // Diverged: the rest of the curve is lost too.
                losses.resize(steps + 1, f64::NAN);
                return losses;
            }
            rule.step(&mut state, &mut theta, &grad);
        }
        losses.push(problem.eval_f64(&theta).0);
        losses
    }
}

impl Optimizer for Hand {
    fn label(&self) -> &str {
        &self.config.label
    }
    fn kind(&self) -> &'static str {
        self.kind.name()
    }
    fn learned(&self) -> bool {
        false
    }

    fn tune(&mut self, train: &Problems, steps: usize) -> Result<Option<Tuning>> {
        if let Some(lr) = self.config.lr {
            self.rule.lr = lr;
            return Ok(None);
        }
        let n = self.config.tune_problems;
        let mut grid = Vec::with_capacity(self.config.lr_grid.len());
        for &lr in &self.config.lr_grid {
            let mut total = 0.0;
            for i in 0..n as u64 {
                let mut p = train.get(i)?;
                total += *self.run(lr, &mut p, steps).last().expect("T + 1 losses");
            }
            grid.push((lr, total / n as f64));
        }
        let best = grid
            .iter()
            .filter(|(_, l)| l.is_finite())
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| {
                Error::invalid(
                    "tuned learning rate",
                    self.config.label.clone(),
                    "a rate of `lr_grid` whose final loss stays finite (every one diverged)",
                )
            })?;
        self.rule.lr = best.0;
        let (lo, hi) = grid
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), (lr, _)| {
                (a.min(*lr), b.max(*lr))
            });
        if best.0 == lo || best.0 == hi {
            tracing::warn!(
                "{}: the tuned learning rate {} is at the edge of the grid; the best rate may lie beyond it (give `lr_grid`)",
                self.config.label,
                best.0
            );
        }
        tracing::info!(
            "{}: tuned lr = {} (mean final loss {:.4e} on {n} training problems)",
            self.config.label,
            best.0,
            best.1
        );
        Ok(Some(Tuning {
            chosen: format!("lr = {}", best.0),
            grid,
            problems: n,
        }))
    }

    /// Nothing to meta-train: the tuned rule is the optimiser.
    fn meta_train_step(&mut self, _problem: &mut Problem) -> Result<f64> {
        Err(Error::invalid(
            "meta-training step",
            self.config.label.clone(),
            "a learned optimiser (hand-designed ones are tuned, not meta-trained)",
        ))
    }

    fn optimise(&self, problem: &mut Problem, steps: usize) -> Result<Vec<f64>> {
        if !self.rule.lr.is_finite() {
            return Err(Error::invalid(
                "learning rate",
                self.config.label.clone(),
                "tuned (Optimizer::tune) or given (`lr:`) before optimising",
            ));
        }
        Ok(self.run(self.rule.lr, problem, steps))
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }
    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

macro_rules! hand_entry {
    ($const:ident, $name:literal, $about:literal) => {
        pub const $const: OptEntry = OptEntry {
            name: $name,
            about: $about,
            resolve: |v, ctx| super::resolve_as(v, ctx, HandEntry::resolve),
            build: |v, ctx| super::optimizer::build_as(v, ctx, HandEntry::resolve, Hand::new),
        };
    };
}

hand_entry!(SGD, "sgd", "SGD, learning rate tuned on training problems");
hand_entry!(
    MOMENTUM,
    "momentum",
    "SGD with momentum 0.9 (torch.optim.SGD), learning rate tuned"
);
hand_entry!(
    NESTEROV,
    "nesterov",
    "Nesterov momentum 0.9 (torch.optim.SGD nesterov=True), learning rate tuned"
);
hand_entry!(
    RMSPROP,
    "rmsprop",
    "RMSProp (torch.optim.RMSprop: alpha 0.99, eps 1e-8), learning rate tuned"
);
hand_entry!(
    ADAM,
    "adam",
    "Adam (torch.optim.Adam: betas 0.9, 0.999, eps 1e-8), learning rate tuned"
);
