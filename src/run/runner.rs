//! Running a benchmark: meta-train every algorithm, evaluate all of them on
//! the same fixed test episodes, write results.
//!
//! Run folder layout (`runs/<benchmark>/<run-id>/` by default):
//! - `resolved.yaml`: the benchmark with every default made explicit;
//! - `results.json`: the leaderboard (updated atomically after each
//!   algorithm; `--only` runs merge their rows into it), with every test
//!   episode's accuracy and each row's paired difference to the best;
//! - `leaderboard.md`, `leaderboard.csv`: the same table for readers and
//!   scripts ([`crate::report`]);
//! - `run.log`: every log line of the run, appended by each session;
//! - `<label>/`: `checkpoints/`, `curve.csv`, `test_episodes.csv` (accuracy
//!   and loss of every test episode).
//!
//! What happens to an existing folder (`--resume`, `--force`) is decided by
//! [`crate::run::rundir`] before anything is written. Every image of the train,
//! validation and test splits is decoded before the first meta-step, so
//! that a corrupt file is reported (all of them at once) in seconds rather
//! than after the training budget.

use std::path::{Path, PathBuf};

use crate::algo;
use crate::data::task::Task;
use crate::data::{self, Split};
use crate::error::{Error, Result};
use crate::report::results::{pair_with_best, write_episode_scores, AlgoResult, RunResults};
use crate::run::checkpoint::TrainState;
use crate::run::eval::{self, Evaluation};
use crate::run::rundir::{self, Mode};
use crate::run::train::{self, TrainOptions};
use crate::spec::{self, Benchmark};

/// Options of a run beyond the benchmark itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// New run, `--resume` or `--force` ([`crate::run::rundir`]).
    pub mode: Mode,
    /// Only these algorithm labels (empty: all). Their rows are merged into
    /// the run's existing `results.json`.
    pub only: Vec<String>,
    pub show_progress: bool,
    /// Record gate traces on this many test episodes for every algorithm
    /// that has gates (0: none).
    pub trace_episodes: usize,
    /// Where the tensors live.
    pub device: crate::device::DeviceSpec,
    /// What the run may cost ([`crate::run::cost`]).
    pub limits: crate::run::cost::Limits,
}

/// Record the gates of `algo` on test episodes `0..episodes` and write
/// `gates.{jsonl,csv,svg,png}` into `dir` (see `docs/traces.md`). Fails if
/// the algorithm has no gates.
pub fn trace(
    bench: &Benchmark,
    algo: &dyn algo::Algorithm,
    ds: &data::Dataset,
    episodes: usize,
    dir: &Path,
) -> Result<Vec<crate::report::trace::GateRecord>> {
    let _span = tracing::info_span!("trace", label = algo.label()).entered();
    let sampler = crate::data::sampler::Sampler::new(ds, Split::Test, bench.episode, bench.seed)?;
    if !crate::report::trace::traceable(algo.series()) {
        return Err(Error::Config {
            source_name: format!("algorithm `{}`", algo.label()),
            reason: format!(
                "{} has no gates to trace (only learned optimizers such as meta-lstm do)",
                algo.kind()
            ),
        });
    }
    let mut records = Vec::new();
    for i in 0..episodes as u64 {
        let b = sampler.instance(i, &algo.context().device)?;
        let mut gates = crate::report::trace::GateCollector::new(&bench.name, algo.label(), i, 5);
        algo.observe(&b, &mut gates)?;
        records.extend(gates.records());
    }
    let title = format!(
        "{}: {} gates on {} test episodes ({}-way {}-shot)",
        bench.name,
        algo.label(),
        episodes,
        bench.episode.ways,
        bench.episode.shots
    );
    let paths = crate::report::trace::write_all(dir, &records, &title)?;
    tracing::info!("gate trace written to {}", paths[0].display());
    Ok(records)
}

/// The algorithms of `bench` that `only` names (all when empty), built
/// fresh for `device`: (label, entry index, algorithm).
type Built = Vec<(String, usize, Box<dyn algo::Algorithm>)>;

fn build_selected(
    bench: &Benchmark,
    only: &[String],
    device: &candle_core::Device,
) -> Result<Built> {
    let ctx = bench.context(device);
    let mut built = vec![];
    for (i, a) in bench.algorithms.iter().enumerate() {
        if only.is_empty() || only.contains(&a.label) {
            built.push((
                a.label.clone(),
                i,
                algo::build(&a.config, &ctx, &format!("algorithms[{i}]"))?,
            ));
        }
    }
    Ok(built)
}

/// The cost of running the `built` algorithms of `bench` on the opened
/// dataset `ds`, no image decoded ([`crate::run::cost`]).
fn estimate(
    bench: &Benchmark,
    ds: &data::Dataset,
    built: &Built,
) -> Result<crate::run::cost::Cost> {
    crate::run::cost::estimate(
        bench,
        ds.images.len(),
        ds.archive_bytes() as f64,
        rayon::current_num_threads(),
        built,
    )
}

/// Open the data of `bench` and estimate its cost without decoding an
/// image or writing anything (`bench run --dry-run`).
pub fn dry_run(bench: &Benchmark, data_dir: &Path, opts: &RunOptions) -> Result<String> {
    let device = opts.device.open()?;
    let ds = data::open(&bench.dataset, data_dir, &bench.data)?;
    let cost = estimate(bench, &ds, &build_selected(bench, &opts.only, &device)?)?;
    let mut s = cost.describe();
    match cost.check(bench, &opts.limits) {
        Ok(warnings) => {
            for w in warnings {
                s.push_str(&format!("warning: {w}\n"));
            }
            s.push_str("within the limits: `bench run` would start\n");
        }
        Err(e) => s.push_str(&format!("refused: {e}\n")),
    }
    Ok(s)
}

/// Run a resolved benchmark on the data in `data_dir`.
pub fn run(bench: &Benchmark, data_dir: &Path, opts: &RunOptions) -> Result<RunResults> {
    let _span = tracing::info_span!("benchmark", name = %bench.name).entered();
    for l in &opts.only {
        bench.algorithm(l)?;
    }
    // Nothing is written before the run folder, the data and the episodes
    // are known to be usable.
    let device = opts.device.open()?;
    let mut plan = rundir::plan(&opts.run_dir, opts.mode, bench)?;
    // `Continue` is `New` or `Resume` by now.
    let resume = plan.mode == Mode::Resume;
    let ds = data::open(&bench.dataset, data_dir, &bench.data)?;
    tracing::info!("{}", ds.description);
    crate::data::sampler::Sampler::new(&ds, Split::Test, bench.episode, bench.seed)?;
    if bench.val_episodes > 0 && !ds.split(Split::Val).is_empty() {
        crate::data::sampler::Sampler::new(&ds, Split::Val, bench.episode, bench.seed)?;
    }
    // What it will cost, before any image is decoded.
    // Built once: estimated now, trained below.
    let built = build_selected(bench, &opts.only, &device)?;
    let cost = estimate(bench, &ds, &built)?;
    for w in cost.check(bench, &opts.limits)? {
        tracing::warn!("{w}");
    }
    let estimated = cost
        .algorithms
        .iter()
        .map(|a| a.peak_bytes)
        .fold(0.0, f64::max);
    check_images(&ds)?;
    // Held until the run ends: a second run on this folder is refused.
    let _lock = plan.commit(bench)?;
    let _log = crate::run::logfile::attach_scoped(&opts.run_dir.join(crate::layout::LOG))?;
    tracing::info!(
        "run {} of {} (fewshot {})",
        opts.run_dir.display(),
        bench.name,
        env!("CARGO_PKG_VERSION")
    );
    if bench.kernels.on(&device) != bench.kernels {
        tracing::info!(
            "on {}: the composed kernels (the fused ones are CPU code)",
            opts.device
        );
    }
    let provenance = provenance(bench, &ds, &device)?;
    let mut out = RunResults {
        schema_version: crate::report::results::SCHEMA_VERSION,
        provenance: Some(provenance),
        benchmark: bench.name.clone(),
        dataset: bench.dataset.clone(),
        episode: bench.episode,
        transductive: bench.transductive,
        batch_norm: bench.batch_norm,
        select: bench.select,
        seed: Some(bench.seed),
        run_seed: Some(bench.run_seed),
        run_seeds: vec![],
        profile: Some(bench.profile.clone()),
        device: Some(opts.device.to_string()),
        run_dir: opts.run_dir.clone(),
        results: plan.previous.map(|p| p.results).unwrap_or_default(),
        notes: vec![],
    };
    for (_, i, mut algorithm) in built {
        let a = &bench.algorithms[i];
        let _span = tracing::info_span!("algorithm", label = %a.label).entered();
        let dir = opts.run_dir.join(&a.label);
        if resume && already_done(bench, a, &dir, &out, opts, &*algorithm)? {
            tracing::info!(
                "{} finished and was evaluated in an earlier session; kept",
                a.label
            );
            continue;
        }
        train::meta_train(
            &mut *algorithm,
            &ds,
            &TrainOptions {
                budget: bench.budget_of(a),
                validate_every: bench.validate_every,
                validate_every_minutes: bench.validate_every_minutes,
                checkpoint_every: bench.checkpoint_every,
                val_episodes: bench.val_episodes,
                dir: dir.clone(),
                resume,
                config: rundir::fingerprint(bench, a),
                show_progress: opts.show_progress,
                stop_after_steps: None,
            },
        )?;
        let (state, selected) = train::load_selected(&mut *algorithm, &dir, bench.select)?;
        let ev = eval::evaluate(
            &*algorithm,
            &ds,
            Split::Test,
            bench.episode,
            bench.seed,
            bench.test_episodes,
            opts.show_progress,
        )?;
        write_episode_scores(&ev.scores, &dir.join(crate::layout::TEST_EPISODES))?;
        if opts.trace_episodes > 0 && crate::report::trace::traceable(algorithm.series()) {
            trace(bench, &*algorithm, &ds, opts.trace_episodes, &dir)?;
        }
        out.results.retain(|r| r.label != a.label);
        let mut r = row(a, &state, &ev, selected);
        r.published = bench.published.get(&a.label).cloned();
        out.results.push(r);
        // Rows in the benchmark's order, whichever session wrote them.
        // Imported rows (`bench import`) after the benchmark's.
        let order = |r: &AlgoResult| {
            bench
                .algorithms
                .iter()
                .position(|x| x.label == r.label)
                .unwrap_or(usize::MAX)
        };
        out.results.sort_by_key(order);
        pair_with_best(&mut out.results);
        crate::report::write_files(&out, &opts.run_dir)?;
    }
    if let Some(peak) = crate::run::cost::peak_rss() {
        tracing::info!(
            "peak memory {} (estimated {})",
            crate::run::cost::bytes(peak),
            crate::run::cost::bytes(estimated)
        );
    }
    Ok(out)
}

/// The provenance of a run's results: this program and machine, the data
/// fingerprint and the fingerprint of the benchmark's test episodes
/// ([`crate::data::fingerprint`]).
pub(crate) fn provenance(
    bench: &Benchmark,
    ds: &data::Dataset,
    device: &candle_core::Device,
) -> Result<crate::report::results::Provenance> {
    let t = std::time::Instant::now();
    let data = crate::data::fingerprint::data(ds, &Split::ALL)?;
    let sampler = crate::data::sampler::Sampler::new(ds, Split::Test, bench.episode, bench.seed)?;
    let episodes = crate::data::fingerprint::episodes(&sampler, bench.test_episodes)?;
    tracing::info!(
        "test episodes {episodes}, data {data} ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(crate::report::results::Provenance::here(
        &spec::variant_name(&bench.kernels.on(device)),
        Some(data),
        Some(episodes),
    ))
}

/// Decode every image of every split before training: a corrupt file is
/// found now, together with all the others, not after the budget.
fn check_images(ds: &data::Dataset) -> Result<()> {
    let t = std::time::Instant::now();
    let ids: Vec<usize> = [Split::Train, Split::Val, Split::Test]
        .into_iter()
        .flat_map(|s| ds.split_images(s))
        .collect();
    ds.ensure(&ids)?;
    tracing::info!(
        "decoded and checked {} images in {:.1}s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A resumed algorithm whose newest checkpoint already spent the budget
/// and whose row (same step, same test episodes) is in the results needs
/// no work.
fn already_done(
    bench: &Benchmark,
    a: &spec::AlgorithmSpec,
    dir: &Path,
    out: &RunResults,
    opts: &RunOptions,
    algorithm: &dyn algo::Algorithm,
) -> Result<bool> {
    let Some(r) = out.results.iter().find(|r| r.label == a.label) else {
        return Ok(false);
    };
    let Some(found) = crate::run::checkpoint::latest(dir)? else {
        return Ok(false);
    };
    let c = found.checkpoint;
    let traced = opts.trace_episodes == 0
        || !crate::report::trace::traceable(algorithm.series())
        || dir.join(crate::layout::GATES_JSONL).is_file();
    let budget = bench.budget_of(a);
    Ok(c.train.done(&budget)
        && c.train.budgets.last().is_none_or(|s| s.budget == budget)
        && r.meta_steps == c.train.step
        && r.test_episodes == bench.test_episodes
        && traced)
}

/// The row of one trained and tested algorithm.
pub(crate) fn row(
    a: &spec::AlgorithmSpec,
    st: &TrainState,
    ev: &Evaluation,
    selected: String,
) -> AlgoResult {
    AlgoResult {
        label: a.label.clone(),
        algorithm: a.algorithm.clone(),
        accuracy: ev.mean,
        ci95: ev.ci95.is_finite().then_some(ev.ci95),
        test_episodes: ev.episodes,
        meta_steps: st.step,
        train_episodes: st.train_episodes,
        train_seconds: st.train_seconds,
        test_seconds: ev.seconds,
        selected,
        best_val_accuracy: st.best_val_accuracy,
        vs_best: None,
        published: None,
        episode_accuracy: ev.scores.iter().map(|s| s.accuracy).collect(),
        seeds: vec![],
        seed_accuracy: vec![],
        seed_sd: None,
        budgets: st.budgets.clone(),
        imported: None,
    }
}

/// Default run folder: `runs/<benchmark>/<unix seconds>`.
pub fn default_run_dir(bench: &Benchmark) -> PathBuf {
    default_run_dir_of(&bench.name)
}

/// `runs/<name>/<unix time>`: the default run folder of benchmark `name`.
pub fn default_run_dir_of(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(name).join(secs.to_string())
}
