//! Benchmarks are data: `benchmarks/<name>.yaml`, parsed with unknown keys
//! rejected, then checked into a resolved [`Benchmark`] that is saved beside
//! every result. Nothing else receives an unchecked spec.
//!
//! All YAML goes through [`crate::yaml`] (serde_yaml is deprecated
//! upstream; that one module keeps it swappable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::algo::{self, Context};
use crate::data::sampler::EpisodeSpec;
use crate::data::DataOptions;
use crate::error::{Error, Result};
use crate::model::learner::{Learner, LearnerOptions};
use crate::model::norm::{EvalStats, NormProtocol, TrainStats};
pub use crate::yaml::{from_str, from_value, to_string, variant_name};

/// Meta-training budget per algorithm. Any limit may be absent; at least
/// one must be present. Training stops at whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Wall-clock minutes of meta-training (validation excluded).
    #[serde(default)]
    pub minutes: Option<f64>,
    /// Meta-steps (meta-updates).
    #[serde(default)]
    pub meta_steps: Option<u64>,
    /// Meta-training episodes (meta-steps x meta-batch).
    #[serde(default)]
    pub episodes: Option<u64>,
}

/// A benchmark file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
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
    /// Other profiles than the default [`DEFAULT_PROFILE`] (the file's own
    /// fields), chosen with `bench run --profile NAME`.
    #[serde(default)]
    pub profiles: Option<BTreeMap<String, ProfileFile>>,
}

/// The profile a benchmark file's own fields describe.
pub const DEFAULT_PROFILE: &str = "budgeted";

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

/// What `bench run` changes in a benchmark file before it is resolved, so
/// that every check happens once, in [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A profile of the file's `profiles` (default: the file's own fields).
    pub profile: Option<String>,
    /// The smoke profile for tests: 100 meta-steps, 100 test and 20
    /// validation episodes, validation and checkpoints every 50 steps.
    pub smoke: bool,
    /// One budget for every algorithm (replacing per-algorithm budgets).
    pub budget: Option<Budget>,
    pub test_episodes: Option<usize>,
    /// The run seed (initialisation and training episodes) [default: 0].
    pub run_seed: Option<u64>,
}

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
        resolve(f, source, o)
    }

    /// Load `benchmarks/<name>.yaml` (from the current directory, then from
    /// the crate's own folder), or a path to a YAML file.
    pub fn load(name_or_path: &str) -> Result<(Benchmark, PathBuf)> {
        Benchmark::load_with(name_or_path, &Overrides::default())
    }

    /// [`Benchmark::load`] with overrides applied before resolving.
    pub fn load_with(name_or_path: &str, o: &Overrides) -> Result<(Benchmark, PathBuf)> {
        let path = find(name_or_path)?;
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
        let kernels = if device.is_cpu() {
            self.kernels
        } else {
            crate::model::kernels::Kernels::Composed
        };
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
            kernels,
        }
    }
}

impl Budget {
    /// The limits that are set, e.g. `30 min` or `60000 meta-steps`.
    pub fn describe(&self) -> String {
        let mut v = vec![];
        if let Some(m) = self.minutes {
            v.push(format!("{m} min"));
        }
        if let Some(s) = self.meta_steps {
            v.push(format!("{s} meta-steps"));
        }
        if let Some(e) = self.episodes {
            v.push(format!("{e} episodes"));
        }
        v.join(", ")
    }
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

/// Every `*.yaml` of `dir` (not its subfolders), by name, each parsed:
/// a broken file is listed with its error instead of hiding the others.
pub fn list_benchmarks(dir: &Path) -> Result<Vec<(PathBuf, Result<Benchmark>)>> {
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
                .and_then(|t| Benchmark::parse(&t, &p.display().to_string()));
            (p, b)
        })
        .collect())
}

fn find(name_or_path: &str) -> Result<PathBuf> {
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

/// `entry` without the mapping key `key`.
fn without(entry: &crate::yaml::Value, key: &str) -> crate::yaml::Value {
    let mut e = entry.clone();
    if let Some(m) = e.as_mapping_mut() {
        m.remove(key);
    }
    e
}

/// A mapping key as one segment of a field path: as written when it is a
/// plain name (letters, digits, `_`, `-`), else quoted
/// (`published."r eptile"`), so that the path reads unambiguously.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn cfg_err(source: &str, field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        source_name: format!("{source}: {field}"),
        reason: reason.into(),
    }
}

/// Most fixed test or validation episodes a benchmark may ask for (the
/// field's standard is 600; 100,000 already takes hours).
pub const MAX_EPISODES: usize = 100_000;

/// An algorithm label names its folder in the run folder: letters, digits
/// and `-_.`, starting with a letter or digit (so never `..` or a path).
pub fn check_label(label: &str) -> std::result::Result<(), String> {
    let ok_start = label
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    // Names the run folder itself uses.
    if crate::layout::is_reserved(label) {
        Err(format!(
            "`{label}` is reserved: the run folder has a file of that name"
        ))
    } else if ok_start && ok_chars && label.len() <= 64 {
        Ok(())
    } else {
        Err(format!(
            "`{label}` is not a usable label: it names the algorithm's folder, so use letters, digits and `-_.` (starting with a letter or digit, at most 64 characters)"
        ))
    }
}

/// Apply the chosen profile and then `o` to the file's fields. Returns the
/// profile's name, its algorithm overlays by label, and whether
/// per-algorithm budgets are replaced by one budget.
fn apply_overrides(
    f: &mut BenchmarkFile,
    source: &str,
    o: &Overrides,
) -> Result<(String, BTreeMap<String, crate::yaml::Mapping>, bool)> {
    let profiles = f.profiles.take().unwrap_or_default();
    if profiles.contains_key(DEFAULT_PROFILE) {
        return Err(cfg_err(
            source,
            &format!("profiles.{DEFAULT_PROFILE}"),
            format!(
                "`{DEFAULT_PROFILE}` is the file's own fields; name the other profiles differently"
            ),
        ));
    }
    let mut overlays = BTreeMap::new();
    let name = o.profile.clone().unwrap_or_else(default_profile);
    if name != DEFAULT_PROFILE {
        let Some(p) = profiles.get(&name) else {
            let mut known = vec![DEFAULT_PROFILE.to_string()];
            known.extend(profiles.keys().cloned());
            return Err(cfg_err(
                source,
                "profiles",
                format!("no profile `{name}`; profiles: {}", known.join(", ")),
            ));
        };
        let p = p.clone();
        if let Some(d) = p.description {
            f.description = Some(format!(
                "{} Profile {name}: {d}",
                f.description.as_deref().unwrap_or("").trim()
            ));
        }
        f.budget = p.budget.unwrap_or(f.budget);
        f.test_episodes = p.test_episodes.or(f.test_episodes);
        f.val_episodes = p.val_episodes.or(f.val_episodes);
        f.select = p.select.or(f.select);
        f.validate_every = p.validate_every.or(f.validate_every);
        f.validate_every_minutes = p.validate_every_minutes.or(f.validate_every_minutes);
        f.checkpoint_every = p.checkpoint_every.or(f.checkpoint_every);
        overlays = p.algorithms;
    }
    let mut one_budget = false;
    if o.smoke {
        f.budget = Budget {
            minutes: None,
            meta_steps: Some(100),
            episodes: None,
        };
        f.test_episodes = Some(100);
        f.val_episodes = Some(20);
        f.validate_every = Some(50);
        f.validate_every_minutes = None;
        f.checkpoint_every = Some(50);
        one_budget = true;
    }
    if let Some(b) = o.budget {
        f.budget = b;
        one_budget = true;
    }
    if let Some(n) = o.test_episodes {
        f.test_episodes = Some(n);
    }
    Ok((name, overlays, one_budget))
}

/// Check a budget (the benchmark's or an algorithm's) at `field`.
fn check_budget(b: &Budget, source: &str, field: &str) -> Result<()> {
    if b.minutes.is_none() && b.meta_steps.is_none() && b.episodes.is_none() {
        return Err(cfg_err(
            source,
            field,
            "give `minutes`, `meta_steps` and/or `episodes`",
        ));
    }
    if b.episodes == Some(0) {
        return Err(cfg_err(
            source,
            &format!("{field}.episodes"),
            "must be >= 1",
        ));
    }
    if let Some(m) = b.minutes {
        if !(m.is_finite() && m > 0.0) {
            return Err(cfg_err(
                source,
                &format!("{field}.minutes"),
                format!("must be a finite number > 0, got {m}"),
            ));
        }
    }
    if b.meta_steps == Some(0) {
        return Err(cfg_err(
            source,
            &format!("{field}.meta_steps"),
            "must be >= 1",
        ));
    }
    Ok(())
}

fn resolve(mut f: BenchmarkFile, source: &str, o: &Overrides) -> Result<Benchmark> {
    let (profile, mut overlays, one_budget) = apply_overrides(&mut f, source, o)?;
    // The name names the default run folder (runs/<name>/...).
    check_label(&f.name).map_err(|r| cfg_err(source, "name", r.replace("label", "name")))?;
    f.episode
        .validate()
        .map_err(|e| cfg_err(source, "episode", e.to_string()))?;
    let data = f.data.unwrap_or_default();
    let (channels, default_size) = match f.dataset.as_str() {
        "omniglot" => (1, 28),
        "mini-imagenet" | "folder" => (3, 84),
        other => {
            return Err(cfg_err(
                source,
                "dataset",
                format!("unknown dataset `{other}`; allowed: omniglot, mini-imagenet, folder"),
            ))
        }
    };
    // Checked here too (the readers check it again), before the learner's
    // shapes are computed from it.
    let size = crate::data::image_side(&data, default_size).map_err(|e| match e {
        Error::Invalid {
            field,
            value,
            allowed,
        } => cfg_err(source, &field, format!("must be {allowed}, got {value}")),
        other => other,
    })?;
    let learner = Learner::for_dataset(&f.dataset, channels, size, f.episode.ways)
        .with_options(&f.learner.clone().unwrap_or_default())
        .map_err(|e| cfg_err(source, "learner", e.to_string()))?;
    let bn = f.batch_norm.clone().unwrap_or_default();
    let eval = match (f.transductive, bn.eval) {
        (None, None) => EvalStats::Support,
        (Some(t), None) => {
            if t {
                EvalStats::Query
            } else {
                EvalStats::Support
            }
        }
        (None, Some(e)) => e,
        (Some(t), Some(e)) => {
            if t != e.transductive() {
                return Err(cfg_err(
                    source,
                    "batch_norm.eval",
                    format!(
                        "`transductive: {t}` contradicts `batch_norm.eval: {}`; give one of them",
                        variant_name(&e)
                    ),
                ));
            }
            e
        }
    };
    // The meta-LSTM reference's BN_momentum: 0.9 in
    // config/lstm/train-imagenet-1shot.lua, 0.95 in ...-5shot.lua.
    let momentum = bn
        .momentum
        .unwrap_or(if f.episode.shots >= 5 { 0.95 } else { 0.9 });
    if !(momentum.is_finite() && momentum > 0.0 && momentum <= 1.0) {
        return Err(cfg_err(
            source,
            "batch_norm.momentum",
            format!("must be in (0, 1], got {momentum}"),
        ));
    }
    let batch_norm = NormProtocol {
        meta_train: bn.meta_train.unwrap_or(TrainStats::Query),
        eval,
        momentum,
    };
    if learner.feature_side() == 0 {
        return Err(cfg_err(
            source,
            "data.image_size",
            format!("{size} is too small for four halvings (>= 16)"),
        ));
    }
    let head = learner.features().saturating_mul(f.episode.ways);
    if head > 50_000_000 {
        return Err(cfg_err(
            source,
            "learner",
            format!(
                "the output layer would have {head} weights ({} features x {} ways); use a smaller data.image_size, learner.hidden or ways, or head: mean-pool",
                learner.features(),
                f.episode.ways
            ),
        ));
    }
    let b = f.budget;
    check_budget(&b, source, "budget")?;
    let test_episodes = f.test_episodes.unwrap_or(600);
    let val_episodes = f.val_episodes.unwrap_or(100);
    if test_episodes == 0 {
        return Err(cfg_err(source, "test_episodes", "must be >= 1"));
    }
    for (field, v) in [
        ("test_episodes", test_episodes),
        ("val_episodes", val_episodes),
    ] {
        if v > MAX_EPISODES {
            return Err(cfg_err(
                source,
                field,
                format!("{v} is more than the {MAX_EPISODES} episodes fewshot evaluates"),
            ));
        }
    }
    let validate_every = match (f.validate_every, f.validate_every_minutes) {
        (None, None) => Some(100),
        (v, _) => v,
    };
    if validate_every == Some(0) {
        return Err(cfg_err(source, "validate_every", "must be >= 1"));
    }
    if let Some(m) = f.validate_every_minutes {
        if !(m.is_finite() && m > 0.0) {
            return Err(cfg_err(
                source,
                "validate_every_minutes",
                format!("must be a finite number > 0, got {m}"),
            ));
        }
    }
    let checkpoint_every = f.checkpoint_every.unwrap_or(validate_every.unwrap_or(100));
    if checkpoint_every == 0 {
        return Err(cfg_err(source, "checkpoint_every", "must be >= 1"));
    }
    if f.algorithms.is_empty() {
        return Err(cfg_err(source, "algorithms", "list at least one algorithm"));
    }
    let mut bench = Benchmark {
        name: f.name,
        description: f.description.unwrap_or_default(),
        dataset: f.dataset,
        data,
        episode: f.episode,
        seed: f.seed.unwrap_or(0),
        run_seed: o.run_seed.unwrap_or(0),
        profile,
        test_episodes,
        val_episodes,
        transductive: eval.transductive(),
        batch_norm,
        select: f.select.unwrap_or_default(),
        budget: b,
        validate_every,
        validate_every_minutes: f.validate_every_minutes,
        checkpoint_every,
        kernels: f.kernels.unwrap_or_default(),
        learner: Learner {
            kernels: f.kernels.unwrap_or_default(),
            ..learner
        },
        algorithms: vec![],
        published: BTreeMap::new(),
    };
    let ctx = bench.context(&candle_core::Device::Cpu);
    let mut labels = std::collections::HashSet::new();
    for (i, entry) in f.algorithms.iter().enumerate() {
        let field = format!("{source}: algorithms[{i}]");
        let mut entry = entry.clone();
        let mut a = algo::resolve(&without(&entry, "budget"), &ctx, &field)?;
        // The profile's fields for this entry, then the entry again.
        if let Some(ov) = overlays.remove(&a.label) {
            let (Some(m), false) = (entry.as_mapping_mut(), ov.contains_key("label")) else {
                return Err(cfg_err(
                    source,
                    &format!(
                        "profiles.{}.algorithms.{}",
                        key(&bench.profile),
                        key(&a.label)
                    ),
                    "set hyperparameters or `budget`, not `label`",
                ));
            };
            for (k, v) in ov {
                m.insert(k, v);
            }
            a = algo::resolve(&without(&entry, "budget"), &ctx, &field)?;
        }
        let budget = match entry.get("budget") {
            Some(_) if one_budget => None,
            Some(v) => {
                let b: Budget = from_value(v.clone(), &format!("{field}.budget"))?;
                check_budget(&b, &field, "budget")?;
                Some(b)
            }
            None => None,
        };
        check_label(&a.label).map_err(|reason| Error::Config {
            source_name: format!("{field}.label"),
            reason,
        })?;
        if !labels.insert(a.label.clone()) {
            return Err(Error::Config {
                source_name: format!("{field}.label"),
                reason: format!(
                    "label `{}` is used twice; give each entry its own `label`",
                    a.label
                ),
            });
        }
        let kind = entry
            .get("algorithm")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        bench.algorithms.push(AlgorithmSpec {
            label: a.label,
            algorithm: kind.to_string(),
            config: a.config,
            budget,
        });
    }
    // A profile or published number for a label no entry has.
    let unknown_label = |field: String, label: &str| {
        let mut known: Vec<&str> = labels.iter().map(|l| l.as_str()).collect();
        known.sort();
        cfg_err(
            source,
            &field,
            format!(
                "no algorithm is labelled `{label}`; labels: {}",
                known.join(", ")
            ),
        )
    };
    if let Some(label) = overlays.keys().next() {
        return Err(unknown_label(
            format!("profiles.{}.algorithms.{}", key(&bench.profile), key(label)),
            label,
        ));
    }
    for (label, p) in f.published.unwrap_or_default() {
        let field = format!("published.{}", key(&label));
        if !labels.contains(label.as_str()) {
            return Err(unknown_label(field, &label));
        }
        if !(p.accuracy.is_finite() && (0.0..=100.0).contains(&p.accuracy)) {
            return Err(cfg_err(
                source,
                &format!("{field}.accuracy"),
                format!("a percentage in [0, 100], got {}", p.accuracy),
            ));
        }
        if let Some(c) = p.ci95 {
            if !(c.is_finite() && (0.0..=100.0).contains(&c)) {
                return Err(cfg_err(
                    source,
                    &format!("{field}.ci95"),
                    format!("a half-width in percent, got {c}"),
                ));
            }
        }
        if p.source.trim().is_empty() {
            return Err(cfg_err(
                source,
                &format!("{field}.source"),
                "name the paper and table",
            ));
        }
        bench.published.insert(label, p);
    }
    Ok(bench)
}
