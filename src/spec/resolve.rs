//! Resolution: a parsed benchmark file, its profile and overrides applied,
//! checked into a [`Benchmark`] with every default made explicit. Every
//! check of a benchmark happens here, once; errors name the file and the
//! field (`algorithms[1].inner_lr`) and what is allowed.

use std::collections::BTreeMap;

use super::file::BenchmarkFile;
use super::profile::{apply_overrides, Overrides};
use super::{cfg_err, AlgorithmSpec, Benchmark, Budget};
use crate::algo;
use crate::error::{Error, Result};
use crate::model::learner::Learner;
use crate::model::norm::{EvalStats, NormProtocol, TrainStats};
use crate::yaml::{from_value, variant_name};

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

/// Check a budget (the benchmark's or an algorithm's) at `field`.
fn check_budget(b: &Budget, source: &str, field: &str) -> Result<()> {
    b.check().map_err(|(limit, reason)| {
        let at = if limit.is_empty() {
            field.to_string()
        } else {
            format!("{field}.{limit}")
        };
        cfg_err(source, &at, reason)
    })
}

pub(super) fn resolve(mut f: BenchmarkFile, source: &str, o: &Overrides) -> Result<Benchmark> {
    let (profile, overlays, one_budget) = apply_overrides(&mut f, source, o)?;
    // The name names the default run folder (runs/<name>/...).
    check_label(&f.name).map_err(|r| cfg_err(source, "name", r.replace("label", "name")))?;
    f.episode
        .validate()
        .map_err(|e| cfg_err(source, "episode", e.to_string()))?;
    let data = f.data.clone().unwrap_or_default();
    let (learner, size) = learner(&f, &data, source)?;
    let batch_norm = batch_norm(&f, source)?;
    check_learner_size(&learner, &f, size, source)?;
    let s = schedule(&f, source)?;
    if f.algorithms.is_empty() {
        return Err(cfg_err(source, "algorithms", "list at least one algorithm"));
    }
    let kernels = f.kernels.unwrap_or_default();
    let mut bench = Benchmark {
        name: f.name.clone(),
        description: f.description.clone().unwrap_or_default(),
        task: f.task.unwrap_or_default(),
        dataset: f.dataset.clone(),
        data,
        episode: f.episode,
        seed: f.seed.unwrap_or(0),
        run_seed: o.run_seed.unwrap_or(0),
        profile,
        test_episodes: s.test_episodes,
        val_episodes: s.val_episodes,
        transductive: batch_norm.eval.transductive(),
        batch_norm,
        select: f.select.unwrap_or_default(),
        budget: f.budget,
        validate_every: s.validate_every,
        validate_every_minutes: f.validate_every_minutes,
        checkpoint_every: s.checkpoint_every,
        kernels,
        learner: Learner { kernels, ..learner },
        algorithms: vec![],
        published: BTreeMap::new(),
    };
    let labels = algorithms(&mut bench, &f, overlays, one_budget, source)?;
    published(&mut bench, f.published.unwrap_or_default(), &labels, source)?;
    Ok(bench)
}

/// The learner for the dataset's images: the dataset's facts (channels,
/// default image size) from its reader in the data registry, the file's
/// `data.image_size` and `learner:` options.
fn learner(
    f: &BenchmarkFile,
    data: &crate::data::DataOptions,
    source: &str,
) -> Result<(Learner, usize)> {
    // The dataset's facts come from its reader (the data registry).
    let reader = crate::data::reader(&f.dataset).map_err(|_| {
        let names: Vec<_> = crate::data::readers().iter().map(|r| r.name()).collect();
        cfg_err(
            source,
            "dataset",
            format!(
                "unknown dataset `{}`; allowed: {}",
                f.dataset,
                names.join(", ")
            ),
        )
    })?;
    let (channels, default_size) = (reader.channels(), reader.default_image_size());
    // Checked here too (the readers check it again), before the learner's
    // shapes are computed from it.
    let size = crate::data::image_side(data, default_size).map_err(|e| match e {
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
    Ok((learner, size))
}

/// The batch-norm protocol: `batch_norm:` with `transductive` as the
/// shorthand of its `eval`, and the meta-LSTM reference's momentum.
fn batch_norm(f: &BenchmarkFile, source: &str) -> Result<NormProtocol> {
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
    Ok(batch_norm)
}

/// A learner too small for its four halvings, or with an output layer
/// that would take gigabytes, is refused before anything is allocated.
fn check_learner_size(
    learner: &Learner,
    f: &BenchmarkFile,
    size: usize,
    source: &str,
) -> Result<()> {
    if learner.feature_side() == 0 {
        return Err(cfg_err(
            source,
            "data.image_size",
            format!(
                "{size} is too small for {} halvings (>= {})",
                learner.blocks,
                1usize << learner.blocks
            ),
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
    Ok(())
}

/// When and how much a run evaluates and checkpoints.
struct Schedule {
    test_episodes: usize,
    val_episodes: usize,
    validate_every: Option<u64>,
    checkpoint_every: u64,
}

/// The budget, the test and validation episodes, and the validation and
/// checkpoint intervals, checked.
fn schedule(f: &BenchmarkFile, source: &str) -> Result<Schedule> {
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
    Ok(Schedule {
        test_episodes,
        val_episodes,
        validate_every,
        checkpoint_every,
    })
}

/// Resolve every algorithm entry (the profile's fields for it applied, its
/// own budget checked, the task kinds it runs checked against the
/// benchmark's) into `bench.algorithms`; returns the labels.
fn algorithms(
    bench: &mut Benchmark,
    f: &BenchmarkFile,
    mut overlays: BTreeMap<String, crate::yaml::Mapping>,
    one_budget: bool,
    source: &str,
) -> Result<std::collections::HashSet<String>> {
    let ctx = bench.context(&candle_core::Device::Cpu);
    let mut labels = std::collections::HashSet::new();
    for (i, entry) in f.algorithms.iter().enumerate() {
        let field = format!("{source}: algorithms[{i}]");
        let mut entry = entry.clone();
        algo::check_task(&entry, bench.task, &field)?;
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
    if let Some(label) = overlays.keys().next() {
        return Err(unknown_label(
            &labels,
            format!("profiles.{}.algorithms.{}", key(&bench.profile), key(label)),
            label,
            source,
        ));
    }
    Ok(labels)
}

/// A profile or published number for a label no entry has.
fn unknown_label(
    labels: &std::collections::HashSet<String>,
    field: String,
    label: &str,
    source: &str,
) -> Error {
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
}

/// The published numbers shown beside ours, checked.
fn published(
    bench: &mut Benchmark,
    published: BTreeMap<String, super::Published>,
    labels: &std::collections::HashSet<String>,
    source: &str,
) -> Result<()> {
    for (label, p) in published {
        let field = format!("published.{}", key(&label));
        if !labels.contains(label.as_str()) {
            return Err(unknown_label(labels, field, &label, source));
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
    Ok(())
}
