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

mod shipped {
    include!(concat!(env!("OUT_DIR"), "/shipped_benchmarks.rs"));
}

/// The folder of shipped benchmarks: `./benchmarks` when it exists (a
/// checkout, or a user's own folder), else the files embedded in this
/// binary, written once to a folder of the user's cache named after their
/// contents ([`shipped_dir`]): an installed `bench` never reads the source
/// tree it was built from.
pub fn benchmarks_dir() -> PathBuf {
    let here = PathBuf::from("benchmarks");
    if here.is_dir() {
        here
    } else {
        shipped_dir().unwrap_or(here)
    }
}

/// The embedded benchmark files as a folder:
/// `$XDG_CACHE_HOME/fewshot/benchmarks-<version>-<hash>` (else
/// `~/.cache/...`, else the temp folder), written atomically (a temporary
/// folder renamed into place) the first time; `None` if it cannot be
/// written.
pub fn shipped_dir() -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, text) in shipped::SHIPPED {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("fewshot");
    let dir = base.join(format!("benchmarks-{}-{hash}", env!("CARGO_PKG_VERSION")));
    if dir.is_dir() {
        return Some(dir);
    }
    let tmp = base.join(format!(".benchmarks-{hash}-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        for (name, text) in shipped::SHIPPED {
            let p = tmp.join(name);
            std::fs::create_dir_all(p.parent().unwrap_or(&tmp))?;
            std::fs::write(p, text)?;
        }
        Ok(())
    };
    let ok = write().is_ok() && (std::fs::rename(&tmp, &dir).is_ok() || dir.is_dir());
    let _ = std::fs::remove_dir_all(&tmp);
    ok.then_some(dir)
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
    let file = format!("{name_or_path}.yaml");
    let local = PathBuf::from("benchmarks").join(&file);
    if local.is_file() {
        return Ok(local);
    }
    if shipped::SHIPPED.iter().any(|(n, _)| *n == file) {
        if let Some(p) = shipped_dir().map(|d| d.join(&file)).filter(|p| p.is_file()) {
            return Ok(p);
        }
    }
    let mut known: Vec<String> = std::fs::read_dir(benchmarks_dir())
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
        path: local,
        hint: format!("known benchmarks: {}", known.join(", ")),
    })
}
