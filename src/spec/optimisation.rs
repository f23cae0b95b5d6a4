//! Optimisation benchmarks (`task: optimisation`): a problem family, a
//! horizon T, fixed evaluation problems and a list of optimisers,
//! parsed strictly and resolved once into an [`OptBenchmark`] that is
//! saved beside every result (`resolved.yaml`).
//!
//! ```yaml
//! name: quadratic-10d
//! task: optimisation
//! problem: {kind: quadratic, dims: 10, functions: 128, draw: gaussian}
//! steps: 100            # T, optimisation steps per problem
//! seed: 0               # problem seed: validation and test problems
//! test_problems: 100    # fixed problems every optimiser is scored on
//! val_problems: 20      # fixed problems that select a learned optimiser
//! budget: {meta_steps: 300}   # meta-training problems per learned optimiser
//! validate_every: 50
//! algorithms:
//!   - algorithm: adam   # learning rate tuned on training problems
//!   - algorithm: lstm-optimizer
//! profiles:
//!   protocol: {budget: {meta_steps: 10000}, validate_every: 1000}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{cfg_err, from_str, AlgorithmSpec, Budget, Overrides, Select, DEFAULT_PROFILE};
use crate::algo::optimizer::{self, OptContext};
use crate::algo::problem::ProblemSpec;
use crate::data::task::TaskKind;
use crate::error::{Error, Result};

/// A published result: log10 of the mean final loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedLoss {
    pub log10_loss: f64,
    /// Paper, figure or issue.
    pub source: String,
}

/// An optimisation benchmark file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptBenchmarkFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Must be `optimisation`.
    pub task: TaskKind,
    pub problem: ProblemSpec,
    /// Optimisation steps per problem, T [100].
    #[serde(default)]
    pub steps: Option<usize>,
    /// Problem seed: validation and test problems [0].
    #[serde(default)]
    pub seed: Option<u64>,
    /// Fixed test problems [100].
    #[serde(default)]
    pub test_problems: Option<usize>,
    /// Fixed validation problems [20].
    #[serde(default)]
    pub val_problems: Option<usize>,
    /// `best` on validation or `final` [best].
    #[serde(default)]
    pub select: Option<Select>,
    /// Meta-training budget of every learned optimiser (one meta-step is
    /// one training problem optimised for T steps).
    pub budget: Budget,
    /// Validate every this many meta-steps [budget / 10, at least 1].
    #[serde(default)]
    pub validate_every: Option<u64>,
    /// Checkpoint every this many meta-steps [validate_every].
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    pub algorithms: Vec<crate::yaml::Value>,
    #[serde(default)]
    pub published: Option<BTreeMap<String, PublishedLoss>>,
    #[serde(default)]
    pub profiles: Option<BTreeMap<String, OptProfileFile>>,
}

/// A profile of an optimisation benchmark: fields that replace the file's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptProfileFile {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub test_problems: Option<usize>,
    #[serde(default)]
    pub val_problems: Option<usize>,
    #[serde(default)]
    pub validate_every: Option<u64>,
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

/// A checked optimisation benchmark with every default explicit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptBenchmark {
    pub name: String,
    pub description: String,
    pub task: TaskKind,
    pub problem: ProblemSpec,
    pub steps: usize,
    pub seed: u64,
    pub run_seed: u64,
    pub profile: String,
    pub test_problems: usize,
    pub val_problems: usize,
    pub select: Select,
    pub budget: Budget,
    pub validate_every: u64,
    pub checkpoint_every: u64,
    pub algorithms: Vec<AlgorithmSpec>,
    #[serde(default)]
    pub published: BTreeMap<String, PublishedLoss>,
}

/// The task kind a benchmark file declares (`task:`, default episodic),
/// read before the file is parsed as one kind or the other.
pub fn task_of(text: &str, source: &str) -> Result<TaskKind> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default)]
        task: Option<TaskKind>,
    }
    Ok(from_str::<Peek>(text, source)?.task.unwrap_or_default())
}

/// The most test or validation problems a benchmark may ask for.
pub const MAX_PROBLEMS: usize = 100_000;

impl OptBenchmark {
    /// Parse and resolve an optimisation benchmark from YAML text.
    pub fn parse_with(text: &str, source: &str, o: &Overrides) -> Result<OptBenchmark> {
        let f: OptBenchmarkFile = from_str(text, source)?;
        resolve(f, source, o)
    }

    /// Load `benchmarks/<name>.yaml` or a path, with overrides.
    pub fn load_with(name_or_path: &str, o: &Overrides) -> Result<(OptBenchmark, PathBuf)> {
        let path = super::file::find(name_or_path)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok((
            OptBenchmark::parse_with(&text, &path.display().to_string(), o)?,
            path,
        ))
    }

    /// The benchmark a run was started with (`resolved.yaml` of `run`).
    pub fn of_run(run: &Path) -> Result<OptBenchmark> {
        let path = run.join(crate::layout::RESOLVED);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        from_str(&text, &path.display().to_string())
    }

    /// What its optimisers are built for.
    pub fn context(&self) -> OptContext {
        OptContext {
            problem: self.problem.clone(),
            steps: self.steps,
            run_seed: self.run_seed,
            kernels: Default::default(),
        }
    }

    /// The entry labelled `label`, or an error listing the labels.
    pub fn algorithm(&self, label: &str) -> Result<&AlgorithmSpec> {
        self.algorithms
            .iter()
            .find(|a| a.label == label)
            .ok_or_else(|| {
                let labels: Vec<&str> = self.algorithms.iter().map(|a| a.label.as_str()).collect();
                Error::invalid(
                    "algorithm label",
                    label,
                    format!("labels in {}: {}", self.name, labels.join(", ")),
                )
            })
    }

    /// Resolved YAML, as saved in `resolved.yaml`.
    pub fn to_yaml(&self) -> Result<String> {
        super::to_string(self)
    }
}

fn resolve(mut f: OptBenchmarkFile, source: &str, o: &Overrides) -> Result<OptBenchmark> {
    if f.task != TaskKind::Optimisation {
        return Err(cfg_err(
            source,
            "task",
            format!(
                "an optimisation benchmark has `task: optimisation`, not `{}`",
                f.task
            ),
        ));
    }
    // Profiles, then the flags.
    let profiles = f.profiles.take().unwrap_or_default();
    let profile = o.profile.clone().unwrap_or_else(|| DEFAULT_PROFILE.into());
    if profiles.contains_key(DEFAULT_PROFILE) {
        return Err(cfg_err(
            source,
            &format!("profiles.{DEFAULT_PROFILE}"),
            format!(
                "`{DEFAULT_PROFILE}` is the file's own fields; name the other profiles differently"
            ),
        ));
    }
    if profile != DEFAULT_PROFILE {
        let p = profiles.get(&profile).ok_or_else(|| {
            let mut known = vec![DEFAULT_PROFILE.to_string()];
            known.extend(profiles.keys().cloned());
            cfg_err(
                source,
                "profiles",
                format!("no profile `{profile}`; profiles: {}", known.join(", ")),
            )
        })?;
        if let Some(d) = &p.description {
            f.description = Some(format!(
                "{} Profile {profile}: {d}",
                f.description.as_deref().unwrap_or("").trim()
            ));
        }
        f.budget = p.budget.unwrap_or(f.budget);
        f.test_problems = p.test_problems.or(f.test_problems);
        f.val_problems = p.val_problems.or(f.val_problems);
        f.validate_every = p.validate_every.or(f.validate_every);
        f.checkpoint_every = p.checkpoint_every.or(f.checkpoint_every);
    }
    if o.smoke {
        f.budget = Budget {
            minutes: None,
            meta_steps: Some(20),
            episodes: None,
        };
        f.test_problems = Some(20);
        f.val_problems = Some(5);
        f.validate_every = Some(10);
        f.checkpoint_every = Some(10);
    }
    if let Some(b) = o.budget {
        f.budget = b;
    }
    if let Some(n) = o.test_episodes {
        f.test_problems = Some(n);
    }
    super::check_label(&f.name).map_err(|r| cfg_err(source, "name", r.replace("label", "name")))?;
    f.problem
        .check("problem")
        .map_err(|e| in_source(source, e))?;
    if let Err((limit, why)) = f.budget.check() {
        let field = if limit.is_empty() {
            "budget".to_string()
        } else {
            format!("budget.{limit}")
        };
        return Err(cfg_err(source, &field, why));
    }
    if f.budget.episodes.is_some() {
        return Err(cfg_err(
            source,
            "budget.episodes",
            "optimisation benchmarks count meta-steps (one training problem each) or minutes",
        ));
    }
    let steps = f.steps.unwrap_or(100);
    if steps == 0 {
        return Err(cfg_err(source, "steps", "must be at least 1"));
    }
    let count = |field: &str, v: usize| -> Result<usize> {
        if (1..=MAX_PROBLEMS).contains(&v) {
            Ok(v)
        } else {
            Err(cfg_err(
                source,
                field,
                format!("must be in 1..={MAX_PROBLEMS}, got {v}"),
            ))
        }
    };
    let test_problems = count("test_problems", f.test_problems.unwrap_or(100))?;
    let val_problems = count("val_problems", f.val_problems.unwrap_or(20))?;
    let validate_every = f
        .validate_every
        .unwrap_or_else(|| f.budget.meta_steps.map_or(100, |m| (m / 10).max(1)));
    if validate_every == 0 {
        return Err(cfg_err(source, "validate_every", "must be at least 1"));
    }
    let checkpoint_every = f.checkpoint_every.unwrap_or(validate_every);
    if checkpoint_every == 0 {
        return Err(cfg_err(source, "checkpoint_every", "must be at least 1"));
    }
    if f.algorithms.is_empty() {
        return Err(cfg_err(source, "algorithms", "list at least one optimiser"));
    }
    let mut bench = OptBenchmark {
        name: f.name.clone(),
        description: f.description.clone().unwrap_or_default().trim().to_string(),
        task: f.task,
        problem: f.problem.clone(),
        steps,
        seed: f.seed.unwrap_or(0),
        run_seed: o.run_seed.unwrap_or(0),
        profile,
        test_problems,
        val_problems,
        select: f.select.unwrap_or_default(),
        budget: f.budget,
        validate_every,
        checkpoint_every,
        algorithms: vec![],
        published: f.published.clone().unwrap_or_default(),
    };
    let ctx = bench.context();
    let mut labels = std::collections::BTreeSet::new();
    for (i, a) in f.algorithms.iter().enumerate() {
        let field = format!("{source}: algorithms[{i}]");
        let r = optimizer::resolve(a, &ctx, &field)?;
        super::check_label(&r.label)
            .map_err(|why| cfg_err(source, &format!("algorithms[{i}].label"), why))?;
        if !labels.insert(r.label.clone()) {
            return Err(cfg_err(
                source,
                &format!("algorithms[{i}].label"),
                format!(
                    "label `{}` is used twice; give one entry a `label:`",
                    r.label
                ),
            ));
        }
        bench.algorithms.push(AlgorithmSpec {
            label: r.label,
            algorithm: a
                .get("algorithm")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            config: r.config,
            budget: None,
        });
    }
    for label in bench.published.keys() {
        if !labels.contains(label) {
            return Err(cfg_err(
                source,
                &format!("published.{label}"),
                "names no algorithm label of this benchmark",
            ));
        }
    }
    Ok(bench)
}

/// A config error from a part, placed in `source`.
fn in_source(source: &str, e: Error) -> Error {
    match e {
        Error::Config {
            source_name,
            reason,
        } => cfg_err(source, &source_name, reason),
        other => other,
    }
}
