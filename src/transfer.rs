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

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::runner::{pair_with_best, AlgoResult, RunResults};
use crate::spec::{Benchmark, Select};
use crate::{algo, data, eval, train};

/// Where the evaluation of `run` on benchmark `name` is written.
pub fn out_dir(run: &Path, name: &str) -> PathBuf {
    run.join(crate::rundir::EVAL_DIR).join(name)
}

/// The benchmark a run was started with, from its `resolved.yaml`.
pub fn trained_benchmark(run: &Path) -> Result<Benchmark> {
    let path = run.join("resolved.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_yaml::from_str(&text).map_err(|e| Error::Config {
        source_name: path.display().to_string(),
        reason: format!("not a fewshot resolved benchmark: {e}"),
    })
}

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
pub fn evaluate_on(
    run: &Path,
    target: &Benchmark,
    data_dir: &Path,
    only: &[String],
    show_progress: bool,
) -> Result<RunResults> {
    let trained = trained_benchmark(run)?;
    check_compatible(&trained, target)?;
    for l in only {
        trained.algorithm(l)?;
    }
    let device = candle_core::Device::Cpu;
    // Trained as the run was; evaluated with the target's episode shape
    // and batch-norm evaluation protocol.
    let mut ctx = trained.context(&device);
    ctx.spec = target.episode;
    ctx.norm.eval = target.batch_norm.eval;
    let ds = data::open(&target.dataset, data_dir, &target.data)?;
    let out = out_dir(run, &target.name);
    crate::util::create_dir_durable(&out)?;
    let mut results = RunResults {
        benchmark: target.name.clone(),
        dataset: target.dataset.clone(),
        episode: target.episode,
        transductive: target.transductive,
        batch_norm: crate::norm::NormProtocol {
            meta_train: trained.batch_norm.meta_train,
            ..target.batch_norm
        },
        select: trained.select,
        seed: Some(target.seed),
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
        let state = train::load_checkpoint(&mut *algorithm, &dir)?;
        let selected = if trained.select == Select::Best && train::load_best(&mut *algorithm, &dir)?
        {
            format!("best@{}", state.best_step.unwrap_or(0))
        } else {
            format!("final@{}", state.step)
        };
        let ev = eval::evaluate(
            &*algorithm,
            &ds,
            data::Split::Test,
            target.episode,
            target.seed,
            target.test_episodes,
            show_progress,
        )?;
        tracing::info!(
            accuracy = format!("{:.4}", ev.mean),
            "tested on {}",
            target.name
        );
        let label_dir = out.join(&a.label);
        crate::util::create_dir_durable(&label_dir)?;
        crate::runner::write_episode_scores(&ev, &label_dir.join("test_episodes.csv"))?;
        results.results.push(AlgoResult {
            label: a.label.clone(),
            algorithm: a.algorithm.clone(),
            accuracy: ev.mean,
            ci95: ev.ci95.is_finite().then_some(ev.ci95),
            test_episodes: ev.episodes,
            meta_steps: state.step,
            train_episodes: state.train_episodes,
            train_seconds: state.train_seconds,
            test_seconds: ev.seconds,
            selected,
            best_val_accuracy: state.best_val_accuracy,
            vs_best: None,
            published: None,
            episode_accuracy: ev.scores.iter().map(|s| s.accuracy).collect(),
        });
    }
    pair_with_best(&mut results.results);
    let json = serde_json::to_string_pretty(&results).map_err(|e| Error::Config {
        source_name: "results.json".into(),
        reason: e.to_string(),
    })?;
    crate::util::write_atomic(&out.join("results.json"), json.as_bytes())?;
    crate::report::write_files(&results, &out)?;
    Ok(results)
}
