//! Benchmark files as written (`benchmarks/<name>.yaml`): the shapes serde
//! parses with unknown keys rejected, and where the files are found. Nothing
//! here is checked beyond its type: [`super::resolve`] checks everything
//! once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Budget, Published, Select};
use crate::data::sampler::EpisodeSpec;
use crate::data::task::TaskKind;
use crate::data::DataOptions;
use crate::error::{Error, Result};
use crate::model::learner::LearnerOptions;
use crate::model::norm::{EvalStats, TrainStats};

/// A benchmark file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// What the benchmark's problems are [default: episodic]
    /// ([`crate::data::task`]).
    #[serde(default)]
    pub task: Option<TaskKind>,
    /// `omniglot`, `mini-imagenet` or `folder`.
    pub dataset: String,
    #[serde(default)]
    pub data: Option<DataOptions>,
    pub episode: EpisodeSpec,
    /// Episode seed: fixes the validation and test episodes every
    /// algorithm and every run seed sees [default: 0]. (The run seed, which
    /// seeds initialisation and training episodes, is `bench run --seeds`.)
    #[serde(default, alias = "episode_seed")]
    pub seed: Option<u64>,
    /// Fixed test episodes every algorithm sees [default: 600].
    #[serde(default)]
    pub test_episodes: Option<usize>,
    /// Fixed validation episodes for model selection [default: 100].
    #[serde(default)]
    pub val_episodes: Option<usize>,
    /// Evaluation only: query predictions with the query batch's statistics
    /// (true) or the support set's (false) [default: false]. Shorthand for
    /// `batch_norm.eval: query | support`.
    #[serde(default)]
    pub transductive: Option<bool>,
    /// Where batch norm takes its statistics (see `fewshot::model::norm`).
    #[serde(default)]
    pub batch_norm: Option<BatchNormFile>,
    /// Overrides of the dataset's standard learner (reference networks).
    #[serde(default)]
    pub learner: Option<LearnerOptions>,
    /// Test the `best` checkpoint on validation or the `final` one
    /// [default: best].
    #[serde(default)]
    pub select: Option<Select>,
    pub budget: Budget,
    /// Validate every this many meta-steps [default: 100 when
    /// `validate_every_minutes` is absent, else never by steps].
    #[serde(default)]
    pub validate_every: Option<u64>,
    /// Also validate whenever this many minutes of meta-training passed
    /// since the last validation (useful with wall-clock budgets, where
    /// algorithms take very different numbers of steps).
    #[serde(default)]
    pub validate_every_minutes: Option<f64>,
    /// Checkpoint every this many meta-steps [default: validate_every].
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// `fused` kernels or the `composed` candle path they replace
    /// [default: fused] (`fewshot::model::kernels::Kernels`).
    #[serde(default)]
    pub kernels: Option<crate::model::kernels::Kernels>,
    /// Algorithm entries, each `{algorithm: <name>, ...hyperparameters}`.
    pub algorithms: Vec<crate::yaml::Value>,
    /// Published results to show beside ours, by algorithm label.
    #[serde(default)]
    pub published: Option<BTreeMap<String, Published>>,
    /// Other profiles than the default [`super::DEFAULT_PROFILE`] (the file's own
    /// fields), chosen with `bench run --profile NAME`.
    #[serde(default)]
    pub profiles: Option<BTreeMap<String, ProfileFile>>,
}

/// A profile: fields that replace the benchmark file's own when it is
/// chosen (e.g. `protocol`: the published training length of every
/// algorithm). Parsed strictly with the file; resolved when chosen
/// (`bench list` resolves every profile of every shipped file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// What the profile is for (shown by `bench list`).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub test_episodes: Option<usize>,
    #[serde(default)]
    pub val_episodes: Option<usize>,
    #[serde(default)]
    pub select: Option<Select>,
    #[serde(default)]
    pub validate_every: Option<u64>,
    #[serde(default)]
    pub validate_every_minutes: Option<f64>,
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// Fields set in algorithm entries, by label (e.g. `{fomaml: {budget:
    /// {meta_steps: 60000}}}`); each replaces the entry's field.
    #[serde(default)]
    pub algorithms: BTreeMap<String, crate::yaml::Mapping>,
}

/// The `batch_norm:` block as written; absent fields take the defaults of
/// [`NormProtocol`] (`eval` from `transductive`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormFile {
    #[serde(default)]
    pub meta_train: Option<TrainStats>,
    #[serde(default)]
    pub eval: Option<EvalStats>,
    #[serde(default)]
    pub momentum: Option<f64>,
}

/// The folder of shipped benchmarks: `./benchmarks` when it exists, else
/// the crate's own.
pub fn benchmarks_dir() -> PathBuf {
    let here = PathBuf::from("benchmarks");
    if here.is_dir() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benchmarks")
    }
}

pub(super) fn find(name_or_path: &str) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if p.extension().is_some() || name_or_path.contains('/') {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::MissingData {
                what: "benchmark file".into(),
                path: p.to_path_buf(),
                hint: "give a benchmark name from benchmarks/ or a path to a YAML file".into(),
            })
        };
    }
    let candidates = [
        PathBuf::from("benchmarks").join(format!("{name_or_path}.yaml")),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benchmarks")
            .join(format!("{name_or_path}.yaml")),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    let mut known: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("benchmarks"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_suffix(".yaml")
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
    known.sort();
    Err(Error::MissingData {
        what: format!("benchmark `{name_or_path}`"),
        path: candidates[0].clone(),
        hint: format!("known benchmarks: {}", known.join(", ")),
    })
}
