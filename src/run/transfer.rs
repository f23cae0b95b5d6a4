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
use crate::report::results::{pair_with_best, write_episode_scores, RunResults};
use crate::run::{eval, train};
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

/// Evaluate every algorithm of the run in `run` (or those in `only`) on
/// `target`'s test episodes from `data_dir`; writes and returns the results.
///
/// With `file`, the episodes are the file's instead of `target`'s test
/// episodes, preprocessed as `target`'s dataset; results go to
/// `<run>/eval/<file stem>/`.
pub fn evaluate_on(
    run: &Path,
    target: &Benchmark,
    file: Option<&EpisodeFile>,
    data_dir: &Path,
    only: &[String],
    show_progress: bool,
    device: &candle_core::Device,
) -> Result<RunResults> {
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
    let name = match file {
        Some(f) => f
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "episodes".into()),
        None => target.name.clone(),
    };
    let episode = file.map(|f| f.spec).unwrap_or(target.episode);
    for l in only {
        trained.algorithm(l)?;
    }
    // Trained as the run was; evaluated with the target's episode shape
    // and batch-norm evaluation protocol.
    let mut ctx = trained.context(device);
    ctx.spec = episode;
    ctx.norm.eval = target.batch_norm.eval;
    let ds = data::open(&target.dataset, data_dir, &target.data)?;
    // Every image of the file decoded before any evaluation.
    let pixels = file.map(|f| f.decode_all(&ds.format)).transpose()?;
    let out = crate::layout::eval_dir(run, &name);
    crate::util::create_dir_durable(&out)?;
    let mut results = RunResults {
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
    };
    for (i, a) in trained.algorithms.iter().enumerate() {
        if !only.is_empty() && !only.contains(&a.label) {
            continue;
        }
        let _span = tracing::info_span!("eval", label = a.label.as_str()).entered();
        let mut algorithm = algo::build(&a.config, &ctx, &format!("algorithms[{i}]"))?;
        let dir = run.join(&a.label);
        let (state, selected) = train::load_selected(&mut *algorithm, &dir, trained.select)?;
        let ev = match (file, &pixels) {
            (Some(f), Some(px)) => evaluate_file(&*algorithm, f, px, &ds.format)?,
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
    pair_with_best(&mut results.results);
    crate::report::write_files(&results, &out)?;
    Ok(results)
}

/// Score `algorithm` on every episode of `file` (parallel over episodes).
pub fn evaluate_file(
    algorithm: &dyn algo::Algorithm,
    file: &EpisodeFile,
    pixels: &[Vec<Vec<u8>>],
    f: &ImageFormat,
) -> Result<eval::Evaluation> {
    use rayon::prelude::*;
    let t = std::time::Instant::now();
    let scores: Vec<EpisodeScore> = (0..file.len())
        .into_par_iter()
        .zip(pixels)
        .map(|(i, px)| {
            let dev = &algorithm.context().device;
            algorithm.evaluate(&file.batch(i, px, f, dev)?)
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
