//! Optimisers on optimisation problems (task kind `optimisation`): the
//! one trait every optimiser of an optimisation benchmark implements,
//! learned (meta-trained on training problems) or hand-designed (its
//! learning rate tuned on training problems), and their registry.
//!
//! An optimiser is scored the way deepmind/learning-to-learn scores it
//! (`util.py` ~27-40, "log mean final error"): run from each evaluation
//! problem's theta_0 for the benchmark's number of steps, and record the
//! loss at theta_0, ..., theta_T (the whole curve); the final loss is
//! f(theta_T).
//!
//! Adding an optimiser is one file with a config struct, a type
//! implementing [`Optimizer`] and a `pub const` [`OptEntry`], plus one line
//! in [`super::optimizers`].

use std::collections::HashMap;

use candle_core::Tensor;

use super::problem::{Problem, ProblemData, ProblemSpec};
use super::{Resolved, TaskKind};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::yaml::Value;

/// What an optimiser is built for: the benchmark's problem family and
/// horizon.
#[derive(Debug, Clone)]
pub struct OptContext {
    pub problem: ProblemSpec,
    /// Optimisation steps per problem, T.
    pub steps: usize,
    /// The run seed: initialisation of learned optimisers and training
    /// problems.
    pub run_seed: u64,
    /// The learned rules' fused kernel or the composed candle graph
    /// [default: fused].
    pub kernels: crate::model::kernels::Kernels,
}

/// A numbered source of problems of one split under one seed: problem
/// `i` is always the same problem.
pub struct Problems<'a> {
    pub spec: &'a ProblemSpec,
    pub data: &'a ProblemData,
    pub seed: u64,
    pub split: Split,
}

impl<'a> Problems<'a> {
    /// Problem `index`.
    pub fn get(&self, index: u64) -> Result<Problem<'a>> {
        self.spec.instance(self.data, self.seed, self.split, index)
    }
}

/// What tuning chose, recorded in the results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// The chosen value, e.g. `lr = 0.01`.
    pub chosen: String,
    /// Every candidate with the mean final loss it reached on the tuning
    /// problems (non-finite: diverged).
    pub grid: Vec<(f64, f64)>,
    /// Training problems each candidate was run on.
    pub problems: usize,
}

/// An optimiser of an optimisation benchmark.
pub trait Optimizer: Send + Sync {
    /// Name shown in tables (the entry's `label`).
    fn label(&self) -> &str;
    /// Registry name (`adam`, `lstm-optimizer`, ...).
    fn kind(&self) -> &'static str;
    /// Whether it is meta-trained (learned) rather than tuned.
    fn learned(&self) -> bool;
    /// Hand-designed optimisers: choose the learning rate on training
    /// problems before anything is evaluated. Learned ones: nothing.
    fn tune(&mut self, _train: &Problems, _steps: usize) -> Result<Option<Tuning>> {
        Ok(None)
    }
    /// One meta-training step (an epoch of the reference's `train.py`:
    /// one fresh training problem optimised for T steps, the optimiser
    /// updated after every truncated unroll); returns f(theta_T).
    fn meta_train_step(&mut self, problem: &mut Problem) -> Result<f64>;
    /// Optimise `problem` from its theta_0 for `steps` steps; the loss at
    /// theta_0, ..., theta_steps (`steps + 1` values).
    fn optimise(&self, problem: &mut Problem, steps: usize) -> Result<Vec<f64>>;
    /// Named per-coordinate series the optimiser can report while it
    /// optimises (a learned rule's gates and updates); empty: none.
    fn series(&self) -> &[&'static str] {
        &[]
    }
    /// Optimise `problem` for `steps` steps handing every one of
    /// [`Optimizer::series`] to `obs`, step by step and group by group.
    fn observe(
        &self,
        _problem: &mut Problem,
        _steps: usize,
        _obs: &mut dyn super::Observer,
    ) -> Result<()> {
        Ok(())
    }
    /// Everything a checkpoint needs (empty for hand-designed ones, whose
    /// tuned learning rate the results record).
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Restore [`Optimizer::state`].
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// A registry entry of an optimiser.
pub struct OptEntry {
    pub name: &'static str,
    pub about: &'static str,
    /// Check an entry and fill in its defaults.
    pub resolve: fn(&Value, &OptContext) -> Result<Resolved>,
    /// Build the optimiser from an entry, resolved or not.
    pub build: fn(&Value, &OptContext) -> Result<Box<dyn Optimizer>>,
}

/// The optimiser entry an algorithm entry names, or an error naming the
/// field and what runs `optimisation` tasks (an episodic-only algorithm
/// is named as such).
fn entry_for(entry: &Value, field: &str) -> Result<&'static OptEntry> {
    let name = super::algorithm_name(entry, field)?;
    if let Some(e) = super::optimizers().iter().find(|e| e.name == name) {
        return Ok(e);
    }
    let known: Vec<&str> = super::optimizers().iter().map(|e| e.name).collect();
    let reason = if super::registry().iter().any(|e| e.name == name) {
        format!(
            "`{name}` cannot run `{}` tasks, which this benchmark's `task` is (it runs: episodic); \
             optimisers: {}",
            TaskKind::Optimisation,
            known.join(", ")
        )
    } else {
        format!(
            "unknown algorithm `{name}`; optimisers: {}",
            known.join(", ")
        )
    };
    Err(Error::Config {
        source_name: format!("{field}.algorithm"),
        reason,
    })
}

/// Check an optimiser entry and fill in its defaults; errors name `field`.
pub fn resolve(entry: &Value, ctx: &OptContext, field: &str) -> Result<Resolved> {
    (entry_for(entry, field)?.resolve)(entry, ctx).map_err(|e| super::in_entry(field, e))
}

/// Build the optimiser an entry names.
pub fn build(entry: &Value, ctx: &OptContext, field: &str) -> Result<Box<dyn Optimizer>> {
    (entry_for(entry, field)?.build)(entry, ctx).map_err(|e| super::in_entry(field, e))
}

/// Whether `name` runs optimisation problems.
pub fn runs_optimisation(name: &str) -> bool {
    super::optimizers().iter().any(|e| e.name == name)
}

/// [`OptEntry::build`] from the config's `resolve` and the optimiser's
/// `new`.
pub fn build_as<C: serde::de::DeserializeOwned, R, A: Optimizer + 'static>(
    entry: &Value,
    ctx: &OptContext,
    resolve: fn(&C, &OptContext) -> Result<R>,
    new: fn(R, &OptContext) -> Result<A>,
) -> Result<Box<dyn Optimizer>> {
    Ok(Box::new(new(
        resolve(&super::parse_entry(entry)?, ctx)?,
        ctx,
    )?))
}
