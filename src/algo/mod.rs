//! Meta-learning algorithms: one [`Algorithm`] trait and one registry.
//!
//! Every algorithm speaks the same language: `meta_train_step` over a
//! meta-batch of episodes, `adapt` to a support set, `evaluate` on an
//! episode, and `state`/`load_state` for checkpoints. Its hyperparameters
//! live in its own file as a config struct that is parsed from the
//! benchmark YAML (unknown keys rejected), resolved against the benchmark
//! (dataset, ways, shots) to the published defaults, and saved resolved.
//!
//! Adding an algorithm (say Meta-SGD) is one new file `src/algo/meta_sgd.rs`
//! that defines a config struct, a type implementing [`Algorithm`] and a
//! `pub const ENTRY: Entry`, plus one line in [`registry`]. See
//! `docs/algorithms.md`.

pub mod maml;
pub mod meta_lstm;
pub mod reptile;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learner::{accuracy, cross_entropy, Learner};
use crate::params::Params;
use crate::sampler::{Batch, EpisodeSpec};

/// What an algorithm is built for: the benchmark's shape.
#[derive(Debug, Clone)]
pub struct Context {
    /// Dataset family (`omniglot`, `mini-imagenet`, `folder`).
    pub dataset: String,
    /// The evaluation episode shape.
    pub spec: EpisodeSpec,
    pub learner: Learner,
    /// Query predictions use the query batch's own batch-norm statistics
    /// (true) or the support set's (false, non-transductive).
    pub transductive: bool,
    pub seed: u64,
    pub device: Device,
}

impl Context {
    /// Logits for `query_x` from adapted parameters, with batch-norm
    /// statistics from the query batch (transductive) or from the support
    /// set (non-transductive).
    pub fn predict(&self, p: &Params, support_x: &Tensor, query_x: &Tensor) -> Result<Tensor> {
        if self.transductive {
            self.learner.forward(p, query_x)
        } else {
            let (_, stats) = self.learner.forward_with(p, support_x, None)?;
            Ok(self.learner.forward_with(p, query_x, Some(&stats))?.0)
        }
    }

    /// Query loss and accuracy of adapted parameters.
    pub fn score(&self, p: &Params, batch: &Batch) -> Result<EpisodeScore> {
        let logits = self.predict(p, &batch.support_x, &batch.query_x)?;
        let loss = cross_entropy(&logits, &batch.query_y)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        Ok(EpisodeScore {
            loss,
            accuracy: accuracy(&logits, &batch.query_y)?,
        })
    }
}

/// Query loss and accuracy on one episode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeScore {
    pub loss: f64,
    pub accuracy: f64,
}

/// Where meta-training stands, for schedules (Reptile's annealing).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// 0-based meta-step index.
    pub step: u64,
    /// Fraction of the budget used, in [0, 1].
    pub fraction: f64,
}

/// A meta-learning algorithm.
pub trait Algorithm: Send + Sync {
    /// Name shown in tables (the `label` of the benchmark entry).
    fn label(&self) -> &str;
    /// Registry name (`maml`, `reptile`, `meta-lstm`).
    fn kind(&self) -> &'static str;
    /// Episodes per meta-step.
    fn meta_batch(&self) -> usize;
    /// Shape of meta-training episodes (Reptile trains on more shots).
    fn train_spec(&self) -> EpisodeSpec;
    /// One meta-update from a meta-batch of training episodes; returns the
    /// mean query (or post-adaptation) loss and accuracy.
    fn meta_train_step(&mut self, episodes: &[Batch], progress: Progress) -> Result<EpisodeScore>;
    /// Adapted learner parameters for a support set.
    fn adapt(&self, support_x: &Tensor, support_y: &Tensor) -> Result<Params>;
    /// Adapt on the support set, then score the query set.
    fn evaluate(&self, batch: &Batch) -> Result<EpisodeScore> {
        let p = self.adapt(&batch.support_x, &batch.support_y)?;
        self.context().score(&p, batch)
    }
    /// The benchmark context it was built for.
    fn context(&self) -> &Context;
    /// Meta-parameters (for finiteness checks and reports).
    fn meta_params(&self) -> &Params;
    /// Everything a checkpoint needs (meta-parameters and optimiser state).
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Restore [`Algorithm::state`].
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// The fully resolved hyperparameters, as saved beside results.
    fn resolved_config(&self) -> serde_yaml::Value;
    /// Observation hook: the gate values a learned optimizer applies while
    /// adapting to `batch`'s support set. Algorithms without gates keep the
    /// default (`None`); the meta-learner LSTM reports its forget and input
    /// gates per step. Tracing reads this; it never branches inside an
    /// algorithm.
    fn gate_trace(&self, _batch: &Batch) -> Result<Option<GateTrace>> {
        Ok(None)
    }
    /// Whether [`Algorithm::gate_trace`] reports anything.
    fn has_gates(&self) -> bool {
        false
    }
}

/// Gate values of one adaptation, for [`crate::trace`].
#[derive(Debug, Clone)]
pub struct GateTrace {
    /// Learner layers and their coordinate ranges in the flat parameter
    /// vector.
    pub layers: Vec<(String, std::ops::Range<usize>)>,
    /// `(forget, input)` gate values over all coordinates, per step 1..=T.
    pub gates: Vec<(Vec<f32>, Vec<f32>)>,
}

/// A registry entry: how to build an algorithm from its YAML entry.
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub build: fn(&serde_yaml::Value, &Context) -> Result<Box<dyn Algorithm>>,
}

/// All algorithms. Adding one is one line here.
pub fn registry() -> &'static [Entry] {
    &[maml::ENTRY, reptile::ENTRY, meta_lstm::ENTRY]
}

/// Build the algorithm a benchmark entry names (`algorithm: <name>`).
pub fn build(entry: &serde_yaml::Value, ctx: &Context, field: &str) -> Result<Box<dyn Algorithm>> {
    let name = entry
        .get("algorithm")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::Config {
            source_name: field.to_string(),
            reason: "each algorithm entry needs `algorithm: <name>`".into(),
        })?;
    let known: Vec<&str> = registry().iter().map(|e| e.name).collect();
    let e = registry()
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| Error::Config {
            source_name: format!("{field}.algorithm"),
            reason: format!("unknown algorithm `{name}`; known: {}", known.join(", ")),
        })?;
    (e.build)(entry, ctx).map_err(|err| match err {
        Error::Config {
            source_name,
            reason,
        } => Error::Config {
            source_name: format!(
                "{field}{}",
                if source_name.is_empty() {
                    String::new()
                } else {
                    format!(".{source_name}")
                }
            ),
            reason,
        },
        other => other,
    })
}

/// Parse an algorithm's config struct from its YAML entry, naming the entry
/// in errors (unknown keys are rejected by the struct's
/// `deny_unknown_fields`).
pub fn parse_entry<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value) -> Result<T> {
    crate::spec::from_value(v.clone(), "")
}

/// Check that a hyperparameter is a positive finite number.
pub fn positive(field: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::Config {
            source_name: field.to_string(),
            reason: format!("must be a positive number, got {v}"),
        })
    }
}

/// Check that a count is at least 1.
pub fn at_least_one(field: &str, v: usize) -> Result<usize> {
    if v >= 1 {
        Ok(v)
    } else {
        Err(Error::Config {
            source_name: field.to_string(),
            reason: "must be at least 1".into(),
        })
    }
}

/// `steps` SGD steps from `theta` on `(x, y)` with batch statistics;
/// returns detached parameters (no meta-gradient flows through).
pub fn sgd_adapt(
    learner: &Learner,
    theta: &Params,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    steps: usize,
) -> Result<Params> {
    let mut p = theta.detach();
    for _ in 0..steps {
        let vars = p.to_vars()?;
        let pv = Params::from_vars(&p.names, &vars);
        let loss = cross_entropy(&learner.forward(&pv, x)?, y)?;
        let g = pv.grads(&loss.backward()?)?;
        p = p.sgd_step(&g, lr)?.detach();
    }
    Ok(p)
}

/// Per-tensor sum of a list of parameter sets.
pub fn sum_params(list: &[Params]) -> Result<Params> {
    let mut acc = list[0].clone();
    for p in &list[1..] {
        acc = acc.zip_map(p, |a, b| a + b)?;
    }
    Ok(acc)
}
