//! Cross-dataset evaluation: the trained algorithms of a finished run,
//! tested on another benchmark's fixed test episodes (e.g. meta-trained on
//! mini-ImageNet, tested on a user's class-per-folder data of the same image
//! size: the cross-domain protocol).
//!
//! The run's own `resolved.yaml` says what was trained (every algorithm's
//! resolved configuration, the learner); the other benchmark says what is
//! tested (dataset, episode shape, seed, number of test episodes and the
//! evaluation's batch-norm protocol). The learner must accept the other
//! benchmark's images and classes: same channels, image size and ways,
//! checked before anything is evaluated. Each algorithm is tested with the
//! parameters its run selected (`select: best`: the best validated state;
//! `final`: the last checkpoint). Results go to `<run>/eval/<benchmark>/`
//! (`results.json`, the leaderboard files, `<label>/test_episodes.csv`).
//!
//! Fixed episodes can also come from a file
//! ([`crate::data::episode_file::EpisodeFile`]), so that published fixed
//! episode sets are used as they are; images are decoded and normalised as
//! the benchmark's dataset does.

use std::path::Path;

use crate::algo::EpisodeScore;
use crate::data::episode_file::EpisodeFile;
use crate::data::ImageFormat;
use crate::error::{Error, Result};
use crate::model::learner::Learner;
use crate::report::results::{pair_with_best, write_episode_scores, RunResults};
use crate::run::train::Init;
use crate::run::{checkpoint, eval, train};
use crate::spec::Benchmark;
use crate::{algo, data};

/// Check that what `trained` learned can be tested on `target`.
pub fn check_compatible(trained: &Benchmark, target: &Benchmark) -> Result<()> {
    let (a, b) = (&trained.learner, &target.learner);
    for (what, x, y) in [
        ("image channels", a.in_channels, b.in_channels),
        ("image size", a.image_size, b.image_size),
        (
            "ways (the learner's output classes)",
            trained.episode.ways,
            target.episode.ways,
        ),
    ] {
        if x != y {
            return Err(Error::invalid(
                format!("{what} of {}", target.name),
                y,
                format!(
                    "{x}, as the run's learner was trained on {} ({})",
                    trained.name, trained.dataset
                ),
            ));
        }
    }
    Ok(())
}

/// How [`evaluate_on`] evaluates.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalOptions<'a> {
    /// The episodes of this file instead of the target's test episodes,
    /// preprocessed as the target's dataset; results go to
    /// `<run>/eval/<file stem>/`.
    pub file: Option<&'a EpisodeFile>,
    /// Only these labels (all when empty).
    pub only: &'a [String],
    pub show_progress: bool,
    /// Every algorithm starts from the learner's fresh initialisation
    /// ([`Algorithm::load_rule`](crate::algo::Algorithm::load_rule)):
    /// learned rules without their learned initialisation, MAML and Reptile
    /// not at all. Implied when the target's learner is not the run's.
    pub fresh_init: bool,
    /// Replace an earlier evaluation of the same name (else refused).
    pub force: bool,
}

/// Evaluate every algorithm of the run in `run` (or those in `opts.only`)
/// on `target`'s test episodes from `data_dir`; writes and returns the
/// results.
///
/// When `target`'s learner differs from the run's (wider, deeper: the
/// architecture-transfer question), the target's learner is the one
/// adapted, every algorithm starts from its fresh initialisation (the
/// draw every learned rule of a run starts from), algorithms that learn
/// only an initialisation are listed as not evaluated, and the results
/// say so in their notes; `opts.fresh_init` does the same on the run's
/// own learner (results in `<run>/eval/<name>-fresh-init/`).
pub fn evaluate_on(
    run: &Path,
    target: &Benchmark,
    data_dir: &Path,
    opts: EvalOptions,
    device: &candle_core::Device,
) -> Result<RunResults> {
    let EvalOptions {
        file,
        only,
        show_progress,
        ..
    } = opts;
    let trained = Benchmark::of_run(run)?;
    check_compatible(&trained, target)?;
    if let Some(f) = file {
        if f.spec.ways != trained.episode.ways {
            return Err(Error::invalid(
                format!("ways of the episodes in {}", f.path.display()),
                f.spec.ways,
                format!(
                    "{}, as the run's learner was trained for {} ways",
                    trained.episode.ways, trained.episode.ways
                ),
            ));
        }
    }
    let other_learner = !same_learner(&trained.learner, &target.learner);
    let fresh = opts.fresh_init || other_learner;
    let name = match file {
        Some(f) => f
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "episodes".into()),
        None => target.name.clone(),
    };
    let name = if opts.fresh_init && !other_learner {
        format!("{name}-fresh-init")
    } else {
        name
    };
    let episode = file.map(|f| f.spec).unwrap_or(target.episode);
    for l in only {
        trained.algorithm(l)?;
    }
    // Trained as the run was; evaluated with the target's episode shape
    // and batch-norm evaluation protocol.
    let mut ctx = trained.context(device);
    if other_learner {
        ctx.learner = crate::model::learner::Learner {
            kernels: ctx.learner.kernels,
            ..target.learner.clone()
        };
    }
    ctx.spec = episode;
    ctx.norm.eval = target.batch_norm.eval;
    let ds = data::open(&target.dataset, data_dir, &target.data)?;
    // Every image of the file decoded before any evaluation.
    let pixels = file.map(|f| f.decode_all(&ds.format)).transpose()?;
    // Which algorithms the run trained (a run of `--only` some).
    let mut untrained = vec![];
    for a in &trained.algorithms {
        if (only.is_empty() || only.contains(&a.label))
            && checkpoint::latest(&run.join(&a.label))?.is_none()
        {
            if only.contains(&a.label) {
                return Err(Error::MissingData {
                    what: format!("trained {}", a.label),
                    path: checkpoint::folder(&run.join(&a.label)),
                    hint: "the run has not trained it (was it run with --only?)".into(),
                });
            }
            untrained.push(a.label.clone());
        }
    }
    if untrained.len() == trained.algorithms.len() {
        return Err(Error::MissingData {
            what: "a trained algorithm".into(),
            path: run.to_path_buf(),
            hint: "the run has no checkpoints yet".into(),
        });
    }
    let folder = crate::run::rundir::eval_folder_with(run, &name, opts.force, only)?;
    let out = folder.dir.clone();
    // Rows of an earlier evaluation that this one adds to (`--only` of
    // algorithms it lacks).
    let previous = if opts.force {
        None
    } else {
        RunResults::read(&out).ok()
    };
    let count = file.map_or(target.test_episodes, |f| f.len());
    if let Some(p) = previous.as_ref().and_then(|p| p.results.first()) {
        if p.test_episodes != count {
            return Err(Error::RunDir {
                path: out.clone(),
                reason: format!(
                    "holds an evaluation on {} test episodes; this one would score {count}, so its rows could not be paired with them: give the same --test-episodes, or --force to replace it",
                    p.test_episodes
                ),
            });
        }
    }
    // The episodes' fingerprint; a file holding exactly the run's own test
    // episodes is scored as them (the same per-episode random choices, so
    // the same scores as the run's test).
    let (episodes_fp, file_split) = match (file, &pixels) {
        (Some(f), Some(px)) => {
            let fp = file_fingerprint(f, px, &ds.format)?;
            let own = RunResults::read(run)
                .ok()
                .and_then(|r| r.provenance)
                .and_then(|p| p.episodes_fingerprint);
            let same = own.as_deref() == Some(fp.as_str());
            if same {
                tracing::info!(
                    "{} holds the run's own test episodes ({fp})",
                    f.path.display()
                );
            }
            (fp, same.then_some(data::Split::Test))
        }
        _ => {
            let sampler = crate::data::sampler::Sampler::new(
                &ds,
                data::Split::Test,
                target.episode,
                target.seed,
            )?;
            (
                crate::data::fingerprint::episodes(&sampler, target.test_episodes)?,
                None,
            )
        }
    };
    // Rows added to an earlier evaluation must be of the same episodes.
    let earlier = previous
        .as_ref()
        .and_then(|p| p.provenance.as_ref())
        .and_then(|p| p.episodes_fingerprint.as_deref());
    if let Some(e) = earlier.filter(|e| *e != episodes_fp) {
        return Err(Error::RunDir {
            path: out.clone(),
            reason: format!(
                "holds an evaluation on other episodes ({e}); these are {episodes_fp}, so their rows could not be paired: give --force to replace it"
            ),
        });
    }
    let provenance = crate::report::results::Provenance::here(
        &crate::spec::variant_name(&ctx.learner.kernels.on(device)),
        file.is_none()
            .then(|| crate::data::fingerprint::data(&ds, &[data::Split::Test]))
            .transpose()?,
        Some(episodes_fp),
    );
    let mut results = RunResults {
        schema_version: crate::report::results::SCHEMA_VERSION,
        provenance: Some(provenance),
        benchmark: name.clone(),
        dataset: target.dataset.clone(),
        episode,
        transductive: target.transductive,
        batch_norm: crate::model::norm::NormProtocol {
            meta_train: trained.batch_norm.meta_train,
            ..target.batch_norm
        },
        select: trained.select,
        seed: file.is_none().then_some(target.seed),
        run_seed: Some(trained.run_seed),
        run_seeds: vec![],
        profile: Some(trained.profile.clone()),
        device: Some(if device.is_cpu() {
            "cpu".into()
        } else {
            format!("{:?}", device.location())
        }),
        run_dir: out.clone(),
        results: vec![],
        notes: vec![],
    };
    if !untrained.is_empty() {
        results.notes.push(format!(
            "not trained in this run (not evaluated): {}",
            untrained.join(", ")
        ));
    }
    if fresh {
        results.notes.push(format!(
            "every algorithm started from the learner's fresh initialisation, not a learned one{}",
            if other_learner {
                format!(
                    " (the learner of {}: {}; trained with {})",
                    target.name,
                    describe(&target.learner),
                    describe(&trained.learner)
                )
            } else {
                " (--fresh-init)".into()
            }
        ));
    }
    for (i, a) in trained.algorithms.iter().enumerate() {
        if (!only.is_empty() && !only.contains(&a.label)) || untrained.contains(&a.label) {
            continue;
        }
        let _span = tracing::info_span!("eval", label = a.label.as_str()).entered();
        let mut algorithm = algo::build(&a.config, &ctx, &format!("algorithms[{i}]"))?;
        let dir = run.join(&a.label);
        let init = if fresh { Init::Fresh } else { Init::Trained };
        let (state, selected) =
            match train::load_selected_as(&mut *algorithm, &dir, trained.select, init) {
                Err(Error::NotPortable { algorithm, reason }) => {
                    tracing::warn!("{algorithm} not evaluated: {reason}");
                    results
                        .notes
                        .push(format!("not evaluated: {algorithm} ({reason})"));
                    continue;
                }
                r => r?,
            };
        let selected = if fresh {
            format!("{selected}, fresh init")
        } else {
            selected
        };
        let ev = match (file, &pixels) {
            (Some(f), Some(px)) => evaluate_file(&*algorithm, f, px, &ds.format, file_split)?,
            _ => eval::evaluate(
                &*algorithm,
                &ds,
                data::Split::Test,
                target.episode,
                target.seed,
                target.test_episodes,
                show_progress,
            )?,
        };
        tracing::info!(accuracy = format!("{:.4}", ev.mean), "tested on {name}");
        let label_dir = out.join(&a.label);
        crate::util::create_dir_durable(&label_dir)?;
        write_episode_scores(&ev.scores, &label_dir.join(crate::layout::TEST_EPISODES))?;
        results
            .results
            .push(crate::run::runner::row(a, &state, &ev, selected));
    }
    if let Some(prev) = previous {
        let mut rows = prev.results;
        rows.append(&mut results.results);
        let order = |r: &crate::report::results::AlgoResult| {
            trained
                .algorithms
                .iter()
                .position(|x| x.label == r.label)
                .unwrap_or(usize::MAX)
        };
        rows.sort_by_key(order);
        results.results = rows;
        for n in prev.notes {
            if !results.notes.contains(&n) {
                results.notes.push(n);
            }
        }
        // Which entries are untrained is said again for the merged rows.
        results
            .notes
            .retain(|n| !n.starts_with("not trained in this run"));
        let still: Vec<&str> = trained
            .algorithms
            .iter()
            .filter(|a| !results.results.iter().any(|r| r.label == a.label))
            .filter(|a| {
                checkpoint::latest(&run.join(&a.label))
                    .ok()
                    .flatten()
                    .is_none()
            })
            .map(|a| a.label.as_str())
            .collect();
        if !still.is_empty() {
            results.notes.push(format!(
                "not trained in this run (not evaluated): {}",
                still.join(", ")
            ));
        }
    }
    pair_with_best(&mut results.results);
    crate::report::write_files(&results, &out)?;
    Ok(results)
}

/// Whether two learners have the same function and parameter shapes (the
/// kernels that compute it aside).
fn same_learner(a: &Learner, b: &Learner) -> bool {
    *a == Learner {
        kernels: a.kernels,
        ..b.clone()
    }
}

/// `64 filters, 4 blocks` (the shape a reader compares).
fn describe(l: &Learner) -> String {
    format!("{} filters, {} blocks", l.hidden, l.blocks)
}

/// The episode fingerprint of the episodes of `file`
/// ([`crate::data::fingerprint`]).
pub fn file_fingerprint(
    file: &EpisodeFile,
    pixels: &[Vec<Vec<u8>>],
    f: &ImageFormat,
) -> Result<String> {
    use rayon::prelude::*;
    let cpu = candle_core::Device::Cpu;
    let digests: Vec<[u8; 32]> = (0..file.len())
        .into_par_iter()
        .zip(pixels)
        .map(|(i, px)| crate::data::fingerprint::episode_digest(&file.batch(i, px, f, &cpu)?))
        .collect::<Result<_>>()?;
    Ok(crate::data::fingerprint::combine(&digests))
}

/// Score `algorithm` on every episode of `file` (parallel over episodes);
/// `split`: the split whose episodes the file holds (the run's own test
/// episodes, found by their fingerprint), which an algorithm's per-episode
/// random choices derive from, as in the run's own test.
pub fn evaluate_file(
    algorithm: &dyn algo::Algorithm,
    file: &EpisodeFile,
    pixels: &[Vec<Vec<u8>>],
    f: &ImageFormat,
    split: Option<data::Split>,
) -> Result<eval::Evaluation> {
    use rayon::prelude::*;
    let t = std::time::Instant::now();
    let scores: Vec<EpisodeScore> = (0..file.len())
        .into_par_iter()
        .zip(pixels)
        .map(|(i, px)| {
            let dev = &algorithm.context().device;
            let mut b = file.batch(i, px, f, dev)?;
            b.id.split = split;
            algorithm.evaluate(&b)
        })
        .collect::<Result<_>>()?;
    let accs: Vec<f64> = scores.iter().map(|s| s.accuracy).collect();
    let (mean, ci95) = eval::mean_ci95(&accs);
    Ok(eval::Evaluation {
        split: data::Split::Test,
        episodes: scores.len(),
        mean,
        ci95,
        mean_loss: scores.iter().map(|s| s.loss).sum::<f64>() / scores.len().max(1) as f64,
        seconds: t.elapsed().as_secs_f64(),
        scores,
    })
}
