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

pub mod hand;
pub mod hand_fewshot;
pub mod learned;
pub mod learned_fewshot;
pub mod learned_optimizer;
pub mod maml;
pub mod meta_lstm;
pub mod optimizer;
pub mod problem;
pub mod reptile;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::sampler::{Batch, EpisodeId, EpisodeSpec};
use crate::data::task::TaskKind;
use crate::error::{Error, Result};
use crate::model::learner::{accuracy, cross_entropy, Learner};
use crate::model::norm::{EvalStats, NormProtocol, RunningStats, TrainStats};
use crate::model::params::Params;
use crate::yaml::Value;

/// What an algorithm is built for: the benchmark's shape.
#[derive(Debug, Clone)]
pub struct Context {
    /// Dataset family (`omniglot`, `mini-imagenet`, `folder`).
    pub dataset: String,
    /// The evaluation episode shape.
    pub spec: EpisodeSpec,
    /// The learner, with the kernels that run on `device` (its
    /// `kernels` field: fused or the composed candle path).
    pub learner: Learner,
    /// Which batch normalises the query pass in meta-training and in
    /// evaluation ([`crate::model::norm`]).
    pub norm: NormProtocol,
    /// The run seed: initialisation, training episodes and the algorithm's
    /// own random choices.
    pub run_seed: u64,
    /// The episode seed: validation and test episodes (the same for every
    /// run seed).
    pub episode_seed: u64,
    pub device: Device,
}

/// Adapted learner parameters, with the running batch-norm statistics of
/// the adaptation when the protocol asks for them (`eval: running`).
#[derive(Debug, Clone)]
pub struct Adapted {
    pub params: Params,
    pub running: Option<RunningStats>,
}

impl Context {
    /// Logits for `query_x` in meta-training: batch-norm statistics of the
    /// query batch (`meta_train: query`) or of the support set.
    pub fn predict_train(
        &self,
        p: &Params,
        support_x: &Tensor,
        query_x: &Tensor,
    ) -> Result<Tensor> {
        match self.norm.meta_train {
            TrainStats::Query => self.learner.forward(p, query_x),
            TrainStats::Support => self.predict_with_support_stats(p, support_x, query_x, true),
        }
    }

    /// Logits for `query_x` at validation/test time, with the statistics
    /// the protocol's `eval` mode names.
    pub fn predict_eval(
        &self,
        a: &Adapted,
        support_x: &Tensor,
        query_x: &Tensor,
    ) -> Result<Tensor> {
        let p = &a.params;
        match self.norm.eval {
            EvalStats::Query => self.learner.forward(p, query_x),
            EvalStats::Support => self.predict_with_support_stats(p, support_x, query_x, false),
            EvalStats::SupportPlusOne => {
                // openai/supervised-reptile reptile.py `_test_predictions`:
                // each query is appended to the support set and predicted
                // with that batch's statistics; only its own row is kept.
                let s = support_x.dim(0)?;
                let rows = (0..query_x.dim(0)?)
                    .map(|j| {
                        let x = Tensor::cat(&[support_x, &query_x.narrow(0, j, 1)?], 0)?;
                        Ok(self.learner.forward(p, &x)?.narrow(0, s, 1)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&rows, 0)?)
            }
            EvalStats::Running => {
                let stats = a.running.as_ref().and_then(|r| r.get()).ok_or_else(|| {
                    Error::invalid(
                        "batch_norm.eval",
                        "running",
                        "an algorithm whose adaptation records running statistics",
                    )
                })?;
                Ok(self.learner.forward_with(p, query_x, Some(stats))?.0)
            }
        }
    }

    /// Query logits normalised with the support set's statistics. When the
    /// gradient must flow through those statistics (meta-training), the
    /// support pass is composed: fused blocks return their statistics as
    /// constants.
    fn predict_with_support_stats(
        &self,
        p: &Params,
        support_x: &Tensor,
        query_x: &Tensor,
        differentiable: bool,
    ) -> Result<Tensor> {
        let composed;
        let l = if differentiable {
            composed = self.learner.composed();
            &composed
        } else {
            &self.learner
        };
        let (_, stats) = l.forward_with(p, support_x, None)?;
        Ok(self.learner.forward_with(p, query_x, Some(&stats))?.0)
    }

    /// Running statistics for an adaptation, when the protocol uses them.
    pub fn recorder(&self) -> Option<RunningStats> {
        crate::model::norm::recorder(&self.norm)
    }

    /// Query loss and accuracy of adapted parameters (evaluation).
    pub fn score(&self, a: &Adapted, batch: &Batch) -> Result<EpisodeScore> {
        let logits = self.predict_eval(a, &batch.support_x, &batch.query_x)?;
        EpisodeScore::of(&logits, &batch.query_y)
    }
}

/// Query loss and accuracy on one episode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeScore {
    pub loss: f64,
    pub accuracy: f64,
}

impl EpisodeScore {
    /// Mean cross-entropy and accuracy of `logits` against labels `y`.
    pub fn of(logits: &Tensor, y: &Tensor) -> Result<EpisodeScore> {
        Ok(EpisodeScore {
            loss: scalar(&cross_entropy(logits, y)?)?,
            accuracy: accuracy(logits, y)?,
        })
    }

    /// Mean of several scores.
    pub fn mean(scores: &[EpisodeScore]) -> EpisodeScore {
        let n = scores.len().max(1) as f64;
        EpisodeScore {
            loss: scores.iter().map(|s| s.loss).sum::<f64>() / n,
            accuracy: scores.iter().map(|s| s.accuracy).sum::<f64>() / n,
        }
    }
}

/// A scalar tensor as f64.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
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
    /// mean training loss and accuracy (the query set's after adaptation,
    /// or what the algorithm measures anyway: Reptile's inner mini-batches).
    fn meta_train_step(&mut self, episodes: &[Batch], progress: Progress) -> Result<EpisodeScore>;
    /// Adapted learner parameters for a support set (with the running
    /// batch-norm statistics of the adaptation when
    /// [`Context::recorder`] asks for them).
    /// `episode` names the episode (for per-episode random choices).
    fn adapt(&self, support_x: &Tensor, support_y: &Tensor, episode: EpisodeId) -> Result<Adapted>;
    /// Adapt on the support set, then score the query set.
    fn evaluate(&self, batch: &Batch) -> Result<EpisodeScore> {
        let a = self.adapt(&batch.support_x, &batch.support_y, batch.id)?;
        self.context().score(&a, batch)
    }
    /// The benchmark context it was built for.
    fn context(&self) -> &Context;
    /// Meta-parameters (for finiteness checks and reports).
    fn meta_params(&self) -> &Params;
    /// Everything a checkpoint needs (meta-parameters and optimiser state).
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Restore [`Algorithm::state`].
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// What one meta-step and one evaluation episode ask of the learner
    /// and of memory, for the cost check before a run (`run::cost`).
    fn step_cost(&self) -> StepCost;
    /// Whether meta-training follows a schedule over the whole budget
    /// (Reptile's annealed outer step), so that the steps taken under one
    /// budget are not those of another: a resumed run may then not change
    /// its budget. Default: no.
    fn schedule_spans_budget(&self) -> bool {
        false
    }
    /// Restore only what of a trained [`Algorithm::state`] is an update
    /// rule (a learned rule's weights, a tuned learning rate), keeping this
    /// algorithm's own fresh learner initialisation: how a rule trained
    /// with one learner is applied to a learner of another shape, or
    /// tested without its learned initialisation. The default refuses
    /// ([`Error::NotPortable`]): MAML's and Reptile's meta-knowledge is the
    /// initialisation itself.
    fn load_rule(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Err(Error::NotPortable {
            algorithm: self.label().to_string(),
            reason: "everything it learns is the learner's initialisation".into(),
        })
    }
    /// Names of the per-coordinate series [`Algorithm::observe`] reports
    /// (a learned optimizer's gates or updates, say). Empty, the default:
    /// nothing to observe.
    fn series(&self) -> &[&'static str] {
        &[]
    }
    /// Observation hook: adapt to `batch`'s support set as at test time and
    /// hand every one of [`Algorithm::series`] to `obs`, step by step and
    /// learner layer by layer. The default reports nothing. Tracing reads
    /// this; it never branches inside an algorithm.
    fn observe(&self, _batch: &Batch, _obs: &mut dyn Observer) -> Result<()> {
        Ok(())
    }
}

/// The work and memory of an algorithm's meta-step and evaluation
/// episode, in learner images and bytes (counts as `f64`: a typo of many
/// zeros must not overflow before it is refused).
#[derive(Debug, Clone, PartialEq)]
pub struct StepCost {
    /// Images through the learner per meta-step, each forward and backward
    /// (second-order passes counted twice).
    pub step_images: f64,
    /// The same for adapting to and scoring one evaluation episode.
    pub eval_images: f64,
    /// Images whose activations one episode holds at once.
    pub alive_images: f64,
    /// Bytes per learner parameter one episode holds besides (a learned
    /// rule's tape through its T updates).
    pub tape_bytes_per_param: f64,
    /// The entry's fields that set `step_images`, with their values
    /// (`inner_iters 10 x inner_batch 10 x meta_batch 5`).
    pub driver: String,
}

impl StepCost {
    /// Episodes of `steps` support passes of `support` images and one
    /// query pass of `query` images, `meta_batch` of them per meta-step.
    pub fn episodic(
        steps: usize,
        steps_test: usize,
        spec: EpisodeSpec,
        train: EpisodeSpec,
        meta_batch: usize,
        fields: &str,
    ) -> StepCost {
        let s = (train.ways * train.shots) as f64;
        let q = (train.ways * train.queries) as f64;
        let (es, eq) = (
            (spec.ways * spec.shots) as f64,
            (spec.ways * spec.queries) as f64,
        );
        StepCost {
            step_images: meta_batch as f64 * (steps as f64 * s + q),
            eval_images: steps_test as f64 * es + eq,
            alive_images: s.max(q).max(es).max(eq),
            tape_bytes_per_param: 0.0,
            driver: format!(
                "{fields} x {} support + {} query images, x meta_batch {meta_batch}",
                s, q
            ),
        }
    }
}

/// Receives the named series an algorithm reports while it adapts
/// ([`Algorithm::observe`]); `crate::report::trace` is one.
pub trait Observer {
    /// The values of series `series` after update step `step` (1-based)
    /// over the coordinates of learner layer `layer`, in parameter order.
    fn record(&mut self, series: &str, step: usize, layer: &str, values: &[f32]);
}

/// An algorithm entry resolved: its label and every hyperparameter with
/// the defaults filled in (what `resolved.yaml` records). Nothing is built.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub label: String,
    pub config: Value,
}

/// A registry entry: how to check and build an algorithm from its YAML
/// entry.
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    /// The task kinds it can run (a benchmark of another kind that lists
    /// it is refused, naming both).
    pub tasks: &'static [TaskKind],
    /// Check an entry and fill in its defaults for the context.
    pub resolve: fn(&Value, &Context) -> Result<Resolved>,
    /// Build the algorithm (fresh meta-parameters from the run seed) from an
    /// entry, resolved or not.
    pub build: fn(&Value, &Context) -> Result<Box<dyn Algorithm>>,
}

/// All algorithms. Adding one is one line here.
pub fn registry() -> &'static [Entry] {
    &[
        maml::ENTRY,
        reptile::ENTRY,
        meta_lstm::ENTRY,
        learned_fewshot::LSTM_OPTIMIZER_FEWSHOT,
        learned_fewshot::TWO_LEVEL_FEWSHOT,
        hand_fewshot::SGD,
        hand_fewshot::MOMENTUM,
        hand_fewshot::NESTEROV,
        hand_fewshot::RMSPROP,
        hand_fewshot::ADAM,
    ]
}

/// Every optimiser that runs optimisation problems
/// ([`optimizer::Optimizer`]; `task: optimisation`). Adding one is one line
/// here. A name that is also in [`registry`] is the same algorithm on the
/// other task kind, and its entry there lists both kinds.
pub fn optimizers() -> &'static [optimizer::OptEntry] {
    &[
        hand::SGD,
        hand::MOMENTUM,
        hand::NESTEROV,
        hand::RMSPROP,
        hand::ADAM,
        learned_optimizer::LSTM_OPTIMIZER,
        learned_optimizer::TWO_LEVEL,
        learned_optimizer::META_LSTM,
    ]
}

/// The name an algorithm entry gives (`algorithm: <name>`), or an error
/// naming `field`.
fn algorithm_name<'a>(entry: &'a Value, field: &str) -> Result<&'a str> {
    entry
        .get("algorithm")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::Config {
            source_name: field.to_string(),
            reason: "each algorithm entry needs `algorithm: <name>`".into(),
        })
}

/// The registry entry an algorithm entry names (`algorithm: <name>`).
fn entry_for(entry: &Value, field: &str) -> Result<&'static Entry> {
    let name = algorithm_name(entry, field)?;
    let known: Vec<&str> = registry().iter().map(|e| e.name).collect();
    registry()
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| Error::Config {
            source_name: format!("{field}.algorithm"),
            reason: format!("unknown algorithm `{name}`; known: {}", known.join(", ")),
        })
}

/// A config error inside an entry, named from the entry (`field`) on.
fn in_entry(field: &str, err: Error) -> Error {
    match err {
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
    }
}

/// Check that the algorithm entry at `field` can run tasks of `kind`.
pub fn check_task(entry: &Value, kind: TaskKind, field: &str) -> Result<()> {
    let name = entry
        .get("algorithm")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if kind == TaskKind::Episodic
        && optimizer::runs_optimisation(name)
        && !registry().iter().any(|e| e.name == name)
    {
        return Err(Error::Config {
            source_name: format!("{field}.algorithm"),
            reason: format!(
                "`{name}` cannot run `{kind}` tasks, which this benchmark's `task` is (it runs: {})",
                TaskKind::Optimisation
            ),
        });
    }
    let e = entry_for(entry, field)?;
    supports(e, kind, field)
}

fn supports(e: &Entry, kind: TaskKind, field: &str) -> Result<()> {
    if e.tasks.contains(&kind) {
        return Ok(());
    }
    let runs: Vec<&str> = e.tasks.iter().map(|k| k.name()).collect();
    Err(Error::Config {
        source_name: format!("{field}.algorithm"),
        reason: format!(
            "`{}` cannot run `{kind}` tasks, which this benchmark's `task` is (it runs: {})",
            e.name,
            if runs.is_empty() {
                "none".to_string()
            } else {
                runs.join(", ")
            }
        ),
    })
}

/// Check a benchmark's algorithm entry and fill in its defaults; errors
/// name `field` (`algorithms[0]`).
pub fn resolve(entry: &Value, ctx: &Context, field: &str) -> Result<Resolved> {
    (entry_for(entry, field)?.resolve)(entry, ctx).map_err(|e| in_entry(field, e))
}

/// Build the algorithm a benchmark entry names (`algorithm: <name>`).
pub fn build(entry: &Value, ctx: &Context, field: &str) -> Result<Box<dyn Algorithm>> {
    (entry_for(entry, field)?.build)(entry, ctx).map_err(|e| in_entry(field, e))
}

/// [`Entry::resolve`] for an algorithm whose entry parses as `C` and
/// resolves with `f` into a struct that has a `label` field.
/// The context `X` is the task kind's: [`Context`] for episodes,
/// [`optimizer::OptContext`] for optimisation problems.
pub fn resolve_as<C: serde::de::DeserializeOwned, R: serde::Serialize, X>(
    entry: &Value,
    ctx: &X,
    f: fn(&C, &X) -> Result<R>,
) -> Result<Resolved> {
    let config = crate::yaml::to_value(&f(&parse_entry(entry)?, ctx)?)?;
    let label = config
        .get("label")
        .and_then(|l| l.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Resolved { label, config })
}

/// [`Entry::build`] for an algorithm whose entry parses as `C`, resolves
/// with `resolve` and is built from the resolved config by `new`: with
/// [`resolve_as`], the whole of an entry's plumbing,
/// `resolve: |v, ctx| super::resolve_as(v, ctx, MyConfig::resolve),
/// build: |v, ctx| super::build_as(v, ctx, MyConfig::resolve, My::new)`.
pub fn build_as<C: serde::de::DeserializeOwned, R, A: Algorithm + 'static>(
    entry: &Value,
    ctx: &Context,
    resolve: fn(&C, &Context) -> Result<R>,
    new: fn(R, &Context) -> Result<A>,
) -> Result<Box<dyn Algorithm>> {
    Ok(Box::new(new(resolve(&parse_entry(entry)?, ctx)?, ctx)?))
}

/// [`Algorithm::state`] of an algorithm whose state is its
/// meta-parameters and one Adam optimiser: each under its checkpoint
/// prefix (`theta.`, `adam.`).
pub fn params_and_adam_state(
    params: (&str, &Params),
    adam: (&str, &crate::model::optim::Adam),
) -> Result<HashMap<String, Tensor>> {
    let mut m = params.1.to_named(params.0);
    m.extend(adam.1.to_named(adam.0)?);
    Ok(m)
}

/// The inverse of [`params_and_adam_state`]: restore both from a
/// checkpoint's tensors, or fail naming the missing or mis-shaped one.
pub fn load_params_and_adam(
    state: &HashMap<String, Tensor>,
    params: (&str, &mut Params),
    adam: (&str, &mut crate::model::optim::Adam),
) -> Result<()> {
    *params.1 = params.1.from_named_like(params.0, state)?;
    adam.1.load_named(adam.0, state)
}

/// [`Algorithm::load_rule`] for meta-parameters that are a rule's weights
/// plus a learned initialisation named `init`: every tensor of `params`
/// but `init` from `state` (under `prefix`, shapes checked), `init` kept.
pub fn load_rule_params(
    state: &HashMap<String, Tensor>,
    prefix: &str,
    params: &mut Params,
    init: &str,
) -> Result<()> {
    let mut full = state.clone();
    let own = params.get(init)?.clone();
    full.insert(format!("{prefix}{init}"), own);
    *params = params.from_named_like(prefix, &full)?;
    Ok(())
}

/// Parse an algorithm's config struct from its YAML entry
/// ([`crate::yaml::from_entry`]).
pub use crate::yaml::from_entry as parse_entry;

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

/// `steps` SGD steps from `theta` on `(x, y)` with batch statistics,
/// `theta_{k+1} = theta_k - lr * scale * grad L(theta_k)` with L the mean
/// cross-entropy (`scale` rescales the loss, e.g. MAML's reference
/// sum(CE)/K), only on the tensors `adapt` selects; returns detached
/// parameters (no meta-gradient flows through). Every pass is folded into
/// `running` when given.
pub fn sgd_adapt(
    learner: &Learner,
    theta: &Params,
    x: &Tensor,
    y: &Tensor,
    step: &InnerSgd,
    steps: usize,
    mut running: Option<&mut RunningStats>,
) -> Result<Params> {
    let mut p = theta.detach();
    for _ in 0..steps {
        let (_, g, stats) = learner.loss_and_grad(&p, x, y)?;
        if let Some(r) = running.as_deref_mut() {
            r.update(&stats)?;
        }
        p = step.apply(&p, &g)?.detach();
    }
    Ok(p)
}

/// One inner SGD step: learning rate, loss scale, and which tensors adapt.
#[derive(Debug, Clone)]
pub struct InnerSgd {
    pub lr: f64,
    /// Multiplier of the mean loss (1, or MAML's reference N*K/K).
    pub loss_scale: f64,
    /// Per tensor: adapted in the inner loop (false: outer-only, e.g.
    /// MAML's batch-norm offsets).
    pub adapt: Vec<bool>,
}

impl InnerSgd {
    /// Plain SGD on the mean loss over every tensor of `p`.
    pub fn plain(lr: f64, p: &Params) -> Self {
        InnerSgd {
            lr,
            loss_scale: 1.0,
            adapt: vec![true; p.len()],
        }
    }

    /// `p - lr * loss_scale * g` on the adapted tensors, `p` elsewhere.
    pub fn apply(&self, p: &Params, g: &Params) -> Result<Params> {
        let lr = self.lr * self.loss_scale;
        let tensors = p
            .tensors
            .iter()
            .zip(&g.tensors)
            .zip(&self.adapt)
            .map(|((p, g), &a)| if a { p - (g * lr)? } else { Ok(p.clone()) })
            .collect::<candle_core::Result<_>>()?;
        Ok(Params::new(p.names.clone(), tensors))
    }
}

/// Per-tensor sum of a list of parameter sets.
pub fn sum_params(list: &[Params]) -> Result<Params> {
    let mut acc = list[0].clone();
    for p in &list[1..] {
        acc = acc.zip_map(p, |a, b| a + b)?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tasks: &'static [TaskKind]) -> Entry {
        Entry {
            name: "toy",
            about: "",
            tasks,
            resolve: |_, _| unreachable!(),
            build: |_, _| unreachable!(),
        }
    }

    #[test]
    fn an_algorithm_runs_only_the_task_kinds_its_entry_lists() {
        assert!(supports(&entry(&[TaskKind::Episodic]), TaskKind::Episodic, "f").is_ok());
        let e = supports(&entry(&[]), TaskKind::Episodic, "bench.yaml: algorithms[1]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("algorithms[1].algorithm")
                && e.contains("`toy` cannot run `episodic` tasks")
                && e.contains("it runs: none"),
            "{e}"
        );
        // Every registered algorithm runs few-shot episodes today.
        for e in registry() {
            assert!(e.tasks.contains(&TaskKind::Episodic), "{}", e.name);
        }
    }

    #[test]
    fn the_two_registries_agree_on_who_runs_optimisation_problems() {
        // An entry that lists `optimisation` has an optimiser entry of the
        // same name, and an optimiser entry that shares a name with a
        // few-shot entry is listed there as running optimisation.
        for e in registry() {
            assert_eq!(
                e.tasks.contains(&TaskKind::Optimisation),
                optimizer::runs_optimisation(e.name),
                "{}",
                e.name
            );
        }
        let mut names: Vec<&str> = optimizers().iter().map(|e| e.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "an optimiser is registered twice");
    }
}
