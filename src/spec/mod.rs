//! Benchmarks are data: `benchmarks/<name>.yaml`, parsed with unknown keys
//! rejected, then checked into a resolved [`Benchmark`] that is saved beside
//! every result. Nothing else receives an unchecked spec.
//!
//! All YAML goes through [`crate::yaml`] (one module owns the YAML crate,
//! so swapping it touches nothing else).
//!
//! - `file`: the file's shapes as serde parses them, and where benchmark
//!   files are found;
//! - `profile`: profiles and `bench run`'s overrides, applied before
//!   resolution;
//! - `budget`: the meta-training budget and its one check;
//! - `resolve`: every check, once, into the resolved [`Benchmark`]
//!   (dataset facts from the data registry, the learner, the batch-norm
//!   protocol, the evaluation schedule, the algorithms and the task kinds
//!   they run, published numbers);
//! - [`optimisation`]: optimisation benchmarks (`task: optimisation`),
//!   their own file shape resolved into an
//!   [`optimisation::OptBenchmark`];
//! - `summary`: a folder's benchmark files summarised, every profile
//!   resolved ([`summaries`], `bench list`).

mod budget;
mod file;
pub mod optimisation;
mod profile;
mod resolve;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::algo::Context;
use crate::data::sampler::EpisodeSpec;
use crate::data::task::TaskKind;
use crate::data::DataOptions;
use crate::error::{Error, Result};
use crate::model::learner::Learner;
use crate::model::norm::NormProtocol;
pub use crate::yaml::{from_str, from_value, to_string, variant_name};

pub use budget::{describe_spans, Budget, BudgetSpan};
pub use file::{benchmarks_dir, BatchNormFile, BenchmarkFile, ProfileFile};
pub use profile::{Overrides, DEFAULT_PROFILE};
pub use resolve::{check_label, MAX_EPISODES};
pub use summary::{broken, summaries, Listed, ProfileSummary, Summary};

/// A published result, shown beside ours and labelled published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Test accuracy in percent.
    pub accuracy: f64,
    /// Half-width of its 95% interval in percent, where the source gives one.
    #[serde(default)]
    pub ci95: Option<f64>,
    /// Paper and table.
    pub source: String,
    /// Whether the number was obtained transductively (query-batch
    /// statistics at test time).
    pub transductive: bool,
}

/// Which meta-parameters are tested after meta-training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The checkpoint with the best validation accuracy (fewshot's
    /// default; model selection on the validation split).
    #[default]
    Best,
    /// The final meta-parameters (what the reference codes test).
    Final,
}

/// One resolved algorithm entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlgorithmSpec {
    pub label: String,
    pub algorithm: String,
    /// All hyperparameters, defaults filled in.
    pub config: crate::yaml::Value,
    /// This algorithm's own budget (`budget:` in its entry), replacing the
    /// benchmark's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// A checked benchmark with every default made explicit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Benchmark {
    pub name: String,
    pub description: String,
    /// What the benchmark's problems are (absent in runs written before
    /// task kinds existed: episodic).
    #[serde(default)]
    pub task: TaskKind,
    pub dataset: String,
    pub data: DataOptions,
    pub episode: EpisodeSpec,
    /// The episode seed: validation and test episodes.
    pub seed: u64,
    /// The run seed: initialisation, training episodes and every random
    /// choice of meta-training (absent in runs written before it existed: 0).
    #[serde(default)]
    pub run_seed: u64,
    /// The profile this benchmark was resolved with.
    #[serde(default = "default_profile")]
    pub profile: String,
    pub test_episodes: usize,
    pub val_episodes: usize,
    /// Whether evaluation is transductive (`batch_norm.eval == query`).
    pub transductive: bool,
    pub batch_norm: NormProtocol,
    pub select: Select,
    pub budget: Budget,
    pub validate_every: Option<u64>,
    pub validate_every_minutes: Option<f64>,
    pub checkpoint_every: u64,
    /// Fused kernels or the composed path.
    #[serde(default)]
    pub kernels: crate::model::kernels::Kernels,
    pub learner: Learner,
    pub algorithms: Vec<AlgorithmSpec>,
    /// Published results by algorithm label (shown, never computed).
    #[serde(default)]
    pub published: BTreeMap<String, Published>,
}

/// A configuration error at `field` of the benchmark file `source`.
fn cfg_err(source: &str, field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        source_name: format!("{source}: {field}"),
        reason: reason.into(),
    }
}

fn default_profile() -> String {
    DEFAULT_PROFILE.to_string()
}

impl Benchmark {
    /// Parse and resolve a benchmark from YAML text.
    pub fn parse(text: &str, source: &str) -> Result<Benchmark> {
        Benchmark::parse_with(text, source, &Overrides::default())
    }

    /// Parse a benchmark, apply `o` to the file, and resolve it.
    pub fn parse_with(text: &str, source: &str, o: &Overrides) -> Result<Benchmark> {
        let f: BenchmarkFile = from_str(text, source)?;
        resolve::resolve(f, source, o)
    }

    /// Load `benchmarks/<name>.yaml` (from the current directory, then from
    /// the crate's own folder), or a path to a YAML file.
    pub fn load(name_or_path: &str) -> Result<(Benchmark, PathBuf)> {
        Benchmark::load_with(name_or_path, &Overrides::default())
    }

    /// [`Benchmark::load`] with overrides applied before resolving.
    pub fn load_with(name_or_path: &str, o: &Overrides) -> Result<(Benchmark, PathBuf)> {
        let path = file::find(name_or_path)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok((
            Benchmark::parse_with(&text, &path.display().to_string(), o)?,
            path,
        ))
    }

    /// The benchmark a run was started with, from the `resolved.yaml` in
    /// its folder `run`.
    pub fn of_run(run: &Path) -> Result<Benchmark> {
        let path = run.join(crate::layout::RESOLVED);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        from_str(&text, &path.display().to_string()).map_err(|e| match e {
            Error::Config {
                source_name,
                reason,
            } => Error::Config {
                source_name,
                reason: format!("not a fewshot resolved benchmark: {reason}"),
            },
            other => other,
        })
    }

    /// The profiles of the benchmark file at `path`: the default first, then
    /// the file's own, each with its description.
    pub fn profiles(path: &Path) -> Result<Vec<(String, String)>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let f: BenchmarkFile = from_str(&text, &path.display().to_string())?;
        let mut v = vec![(DEFAULT_PROFILE.to_string(), String::new())];
        for (name, p) in f.profiles.unwrap_or_default() {
            v.push((name, p.description.unwrap_or_default()));
        }
        Ok(v)
    }

    /// The budget of the algorithm `a`: its own, else the benchmark's.
    pub fn budget_of(&self, a: &AlgorithmSpec) -> Budget {
        a.budget.unwrap_or(self.budget)
    }

    /// The budgets on one line: `15 min`, or per label when they differ.
    pub fn describe_budget(&self) -> String {
        let all: Vec<Budget> = self.algorithms.iter().map(|a| self.budget_of(a)).collect();
        if all.iter().all(|b| *b == self.budget) {
            self.budget.describe()
        } else {
            self.algorithms
                .iter()
                .map(|a| format!("{}: {}", a.label, self.budget_of(a).describe()))
                .collect::<Vec<_>>()
                .join("; ")
        }
    }

    /// Index and entry of the algorithm labelled `label`; the error names
    /// the benchmark and lists its labels.
    pub fn algorithm(&self, label: &str) -> Result<(usize, &AlgorithmSpec)> {
        self.algorithms
            .iter()
            .enumerate()
            .find(|(_, a)| a.label == label)
            .ok_or_else(|| {
                let labels: Vec<&str> = self.algorithms.iter().map(|a| a.label.as_str()).collect();
                Error::invalid(
                    "algorithm label",
                    label,
                    format!("labels in {}: {}", self.name, labels.join(", ")),
                )
            })
    }

    /// The context algorithms are built for.
    /// On any device but the CPU the fused kernels (CPU code) give way to
    /// the composed candle path.
    pub fn context(&self, device: &candle_core::Device) -> Context {
        let kernels = self.kernels.on(device);
        Context {
            dataset: self.dataset.clone(),
            spec: self.episode,
            learner: Learner {
                kernels,
                ..self.learner.clone()
            },
            norm: self.batch_norm,
            run_seed: self.run_seed,
            episode_seed: self.seed,
            device: device.clone(),
        }
    }
}

/// A benchmark file of either task kind, resolved.
#[derive(Debug)]
pub enum AnyBenchmark {
    Episodic(Benchmark),
    Optimisation(optimisation::OptBenchmark),
}

/// Every `*.yaml` of `dir` (not its subfolders), by name, each parsed as
/// the task kind it declares: a broken file is listed with its error
/// instead of hiding the others.
pub fn list_benchmarks(dir: &Path) -> Result<Vec<(PathBuf, Result<AnyBenchmark>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let b = std::fs::read_to_string(&p)
                .map_err(|e| Error::io(&p, e))
                .and_then(|t| parse_any(&t, &p.display().to_string(), &Overrides::default()));
            (p, b)
        })
        .collect())
}

/// Parse a benchmark file as the task kind its `task:` names.
pub fn parse_any(text: &str, source: &str, o: &Overrides) -> Result<AnyBenchmark> {
    Ok(match optimisation::task_of(text, source)? {
        TaskKind::Episodic => AnyBenchmark::Episodic(Benchmark::parse_with(text, source, o)?),
        TaskKind::Optimisation => {
            AnyBenchmark::Optimisation(optimisation::OptBenchmark::parse_with(text, source, o)?)
        }
    })
}

/// The task kind of the benchmark file `name_or_path` (a name from
/// `benchmarks/` or a path), read before it is parsed as one kind.
pub fn task_of_file(name_or_path: &str) -> Result<TaskKind> {
    let path = file::find(name_or_path)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    optimisation::task_of(&text, &path.display().to_string())
}
