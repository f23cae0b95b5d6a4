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
//! [`crate::rundir`] before anything is written. Every image of the train,
//! validation and test splits is decoded before the first meta-step, so
//! that a corrupt file is reported (all of them at once) in seconds rather
//! than after the training budget.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::algo;
use crate::data::{self, Split};
use crate::error::{Error, Result};
use crate::eval::{self, Evaluation};
use crate::norm::NormProtocol;
use crate::rundir::{self, Mode};
use crate::spec::{self, Benchmark, Select};
use crate::stats::{paired_difference, Interval};
use crate::train::{self, TrainOptions, TrainState};
use crate::util::write_atomic;

/// One leaderboard row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlgoResult {
    pub label: String,
    pub algorithm: String,
    /// Mean test accuracy in [0, 1] and its 95% half-width (`None` below
    /// two test episodes).
    pub accuracy: f64,
    pub ci95: Option<f64>,
    pub test_episodes: usize,
    pub meta_steps: u64,
    pub train_episodes: u64,
    pub train_seconds: f64,
    pub test_seconds: f64,
    /// Which parameters were tested: `best@<step>` (validation) or `final`.
    pub selected: String,
    pub best_val_accuracy: Option<f64>,
    /// Paired difference to the most accurate row over the same test
    /// episodes (this row minus the best; [`crate::stats`]), `None` for the
    /// best row itself and for rows scored on other episodes.
    #[serde(default)]
    pub vs_best: Option<Interval>,
    /// The benchmark's published result for this row (shown beside ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<spec::Published>,
    /// Accuracy of every test episode, in episode order (over several run
    /// seeds: each episode's mean over the seeds).
    #[serde(default)]
    pub episode_accuracy: Vec<f64>,
    /// The run seeds this row averages ([`crate::seeds`]); empty for a
    /// single run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Test accuracy of each run seed, in the order of `seeds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_accuracy: Vec<f64>,
    /// Standard deviation of `seed_accuracy` across seeds (`None` below
    /// two seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_sd: Option<f64>,
}

impl AlgoResult {
    /// A row for `label` that scored `episode_accuracy` on its test
    /// episodes, with the mean and its interval; the training fields are
    /// zero (for tools and tests that build results by hand).
    pub fn scored(label: &str, episode_accuracy: &[f64]) -> AlgoResult {
        let i = crate::stats::mean_interval(episode_accuracy);
        AlgoResult {
            label: label.into(),
            algorithm: label.into(),
            accuracy: i.mean,
            ci95: i.ci95,
            test_episodes: episode_accuracy.len(),
            meta_steps: 0,
            train_episodes: 0,
            train_seconds: 0.0,
            test_seconds: 0.0,
            selected: "final".into(),
            best_val_accuracy: None,
            vs_best: None,
            published: None,
            episode_accuracy: episode_accuracy.to_vec(),
            seeds: vec![],
            seed_accuracy: vec![],
            seed_sd: None,
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub benchmark: String,
    pub dataset: String,
    pub episode: crate::sampler::EpisodeSpec,
    pub transductive: bool,
    /// The batch-norm protocol (query statistics in meta-training and at
    /// test time).
    #[serde(default)]
    pub batch_norm: NormProtocol,
    /// Which model was tested: `best` on validation or `final`.
    #[serde(default)]
    pub select: Select,
    /// The episode seed, which fixes the test episodes (absent in runs
    /// written before it was recorded).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The run seed (initialisation and training episodes) of a single run;
    /// `None` for runs written before it existed (seed 0) and for the
    /// merge of several seeds.
    #[serde(default)]
    pub run_seed: Option<u64>,
    /// The run seeds a merged multi-seed run averages ([`crate::seeds`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_seeds: Vec<u64>,
    /// The benchmark profile (`budgeted`, `protocol`, ...).
    #[serde(default)]
    pub profile: Option<String>,
    /// The device the run computed on (`cpu`, `cuda:0`; absent: cpu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub run_dir: PathBuf,
    pub results: Vec<AlgoResult>,
}

/// Options of a run beyond the benchmark itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// New run, `--resume` or `--force` ([`crate::rundir`]).
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
) -> Result<Vec<crate::trace::GateRecord>> {
    let _span = tracing::info_span!("trace", label = algo.label()).entered();
    let sampler = crate::sampler::Sampler::new(ds, Split::Test, bench.episode, bench.seed)?;
    let mut records = Vec::new();
    for i in 0..episodes as u64 {
        let b = sampler.batch(&sampler.episode(i), &algo.context().device)?;
        let Some(g) = algo.gate_trace(&b)? else {
            return Err(Error::Config {
                source_name: format!("algorithm `{}`", algo.label()),
                reason: format!(
                    "{} has no gates to trace (only learned optimizers such as meta-lstm do)",
                    algo.kind()
                ),
            });
        };
        records.extend(crate::trace::summarize_episode(
            &bench.name,
            algo.label(),
            i,
            &g.layers,
            &g.gates,
            5,
        ));
    }
    let title = format!(
        "{}: {} gates on {} test episodes ({}-way {}-shot)",
        bench.name,
        algo.label(),
        episodes,
        bench.episode.ways,
        bench.episode.shots
    );
    let paths = crate::trace::write_all(dir, &records, &title)?;
    tracing::info!("gate trace written to {}", paths[0].display());
    Ok(records)
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
    crate::sampler::Sampler::new(&ds, Split::Test, bench.episode, bench.seed)?;
    if bench.val_episodes > 0 && !ds.split(Split::Val).is_empty() {
        crate::sampler::Sampler::new(&ds, Split::Val, bench.episode, bench.seed)?;
    }
    check_images(&ds)?;
    // Held until the run ends: a second run on this folder is refused.
    let _lock = plan.commit(bench)?;
    let _log = crate::logfile::attach_scoped(&opts.run_dir.join(crate::logfile::FILE))?;
    tracing::info!(
        "run {} of {} (fewshot {})",
        opts.run_dir.display(),
        bench.name,
        env!("CARGO_PKG_VERSION")
    );
    if !device.is_cpu() {
        tracing::info!(
            "on {}: the composed kernels (the fused ones are CPU code)",
            opts.device
        );
    }
    let ctx = bench.context(&device);
    let mut out = RunResults {
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
    };
    for (i, a) in bench.algorithms.iter().enumerate() {
        if !opts.only.is_empty() && !opts.only.contains(&a.label) {
            continue;
        }
        let mut algorithm = algo::build(&a.config, &ctx, &format!("algorithms[{i}]"))?;
        let _span = tracing::info_span!("algorithm", label = %a.label).entered();
        let dir = opts.run_dir.join(&a.label);
        if resume && already_done(bench, a, &dir, &out, opts, &*algorithm)? {
            tracing::info!(
                "{} finished and was evaluated in an earlier session; kept",
                a.label
            );
            continue;
        }
        let state = train::meta_train(
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
        let selected = if bench.select == Select::Best && train::load_best(&mut *algorithm, &dir)? {
            format!("best@{}", state.best_step.unwrap_or(0))
        } else {
            "final".to_string()
        };
        let ev = eval::evaluate(
            &*algorithm,
            &ds,
            Split::Test,
            bench.episode,
            bench.seed,
            bench.test_episodes,
            opts.show_progress,
        )?;
        write_episode_scores(&ev, &dir.join("test_episodes.csv"))?;
        if opts.trace_episodes > 0 && algorithm.has_gates() {
            trace(bench, &*algorithm, &ds, opts.trace_episodes, &dir)?;
        }
        out.results.retain(|r| r.label != a.label);
        let mut r = row(a, &state, &ev, selected);
        r.published = bench.published.get(&a.label).cloned();
        out.results.push(r);
        // Rows in the benchmark's order, whichever session wrote them.
        let order = |r: &AlgoResult| bench.algorithms.iter().position(|x| x.label == r.label);
        out.results.sort_by_key(order);
        pair_with_best(&mut out.results);
        let json = serde_json::to_string_pretty(&out).map_err(|e| Error::Config {
            source_name: "results.json".into(),
            reason: e.to_string(),
        })?;
        write_atomic(&opts.run_dir.join("results.json"), json.as_bytes())?;
        crate::report::write_files(&out, &opts.run_dir)?;
    }
    Ok(out)
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
    let Some(found) = crate::checkpoint::latest(dir)? else {
        return Ok(false);
    };
    let c = found.checkpoint;
    let traced = opts.trace_episodes == 0
        || !algorithm.has_gates()
        || dir.join(crate::trace::JSONL_FILE).is_file();
    Ok(c.train.done(&bench.budget_of(a))
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
    }
}

/// Read a finished or partial run's `results.json` (any version of
/// fewshot's; a multi-seed run's units are merged, [`crate::seeds`]): rows written before per-episode accuracies were kept get
/// them from `<label>/test_episodes.csv`, and every row's paired difference
/// to the best is (re)computed.
pub fn load_results(run_dir: &Path) -> Result<RunResults> {
    if crate::seeds::is_multi_seed(run_dir) {
        return crate::seeds::merge(run_dir);
    }
    let path = run_dir.join("results.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut r: RunResults = serde_json::from_str(&text).map_err(|e| Error::Csv {
        path: path.clone(),
        reason: format!("not a fewshot results file: {e}"),
    })?;
    r.run_dir = run_dir.to_path_buf();
    for row in &mut r.results {
        if row.episode_accuracy.is_empty() {
            let csv = run_dir.join(&row.label).join("test_episodes.csv");
            if csv.is_file() {
                row.episode_accuracy = read_episode_accuracy(&csv)?;
            }
        }
        if !row.episode_accuracy.is_empty() && row.episode_accuracy.len() != row.test_episodes {
            return Err(Error::Csv {
                path: run_dir.join(&row.label).join("test_episodes.csv"),
                reason: format!(
                    "{} episode scores for row `{}`, which reports {} test episodes",
                    row.episode_accuracy.len(),
                    row.label,
                    row.test_episodes
                ),
            });
        }
    }
    pair_with_best(&mut r.results);
    Ok(r)
}

/// The accuracy column of a `test_episodes.csv` (episodes in order).
fn read_episode_accuracy(path: &Path) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, why: &str| Error::Csv {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why}"),
    };
    let mut lines = text.lines();
    if lines.next() != Some("episode,accuracy,loss") {
        return Err(bad(1, "expected the header `episode,accuracy,loss`"));
    }
    lines
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split(',').collect();
            match (f.len(), f.first().and_then(|e| e.parse::<usize>().ok())) {
                (3, Some(e)) if e == i => f[1]
                    .parse::<f64>()
                    .map_err(|_| bad(i + 2, "accuracy is not a number")),
                _ => Err(bad(i + 2, &format!("expected `{i},<accuracy>,<loss>`"))),
            }
        })
        .collect()
}

/// The row with the highest mean accuracy (the first of equals).
pub fn best_row(rows: &[AlgoResult]) -> Option<usize> {
    (0..rows.len()).reduce(|b, i| {
        if rows[i].accuracy > rows[b].accuracy {
            i
        } else {
            b
        }
    })
}

/// Fill every row's paired difference to the best row.
pub fn pair_with_best(rows: &mut [AlgoResult]) {
    let Some(b) = best_row(rows) else { return };
    let best = rows[b].episode_accuracy.clone();
    for (i, r) in rows.iter_mut().enumerate() {
        r.vs_best = (i != b)
            .then(|| paired_difference(&r.episode_accuracy, &best))
            .flatten();
    }
}

/// `episode,accuracy,loss` for every test episode.
pub fn write_episode_scores(ev: &Evaluation, path: &Path) -> Result<()> {
    let mut s = String::from("episode,accuracy,loss\n");
    for (i, sc) in ev.scores.iter().enumerate() {
        s.push_str(&format!("{i},{:.6},{:.6}\n", sc.accuracy, sc.loss));
    }
    write_atomic(path, s.as_bytes())
}

/// Default run folder: `runs/<benchmark>/<unix seconds>`.
pub fn default_run_dir(bench: &Benchmark) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs")
        .join(&bench.name)
        .join(secs.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row scored `acc` on its episodes (tests of the reporters too).
    pub(crate) fn row(label: &str, acc: &[f64]) -> AlgoResult {
        AlgoResult {
            meta_steps: 1,
            train_episodes: 1,
            train_seconds: 1.0,
            test_seconds: 1.0,
            ..AlgoResult::scored(label, acc)
        }
    }

    /// A run of `rows` on benchmark `t`, in folder `runs/t`.
    pub(crate) fn results(rows: Vec<AlgoResult>) -> RunResults {
        RunResults {
            benchmark: "t".into(),
            dataset: "omniglot".into(),
            episode: crate::sampler::EpisodeSpec {
                ways: 5,
                shots: 1,
                queries: 1,
            },
            transductive: false,
            batch_norm: NormProtocol::default(),
            select: Select::default(),
            seed: Some(0),
            run_seed: Some(0),
            run_seeds: vec![],
            profile: None,
            device: None,
            run_dir: PathBuf::from("runs/t"),
            results: rows,
        }
    }

    #[test]
    fn leaderboard_marks_paired_differences() {
        // b is best; a trails it on every episode by 0.02-0.06 (separate
        // intervals overlap, the paired one excludes 0); c is noise around b.
        let b = [0.64, 0.86, 0.44, 0.92, 0.74];
        let a = [0.60, 0.80, 0.40, 0.90, 0.70];
        let c = [0.66, 0.84, 0.45, 0.90, 0.73];
        let mut rows = vec![row("a", &a), row("b", &b), row("c", &c)];
        pair_with_best(&mut rows);
        assert!(rows[1].vs_best.is_none());
        let da = rows[0].vs_best.unwrap();
        assert!((da.mean + 0.04).abs() < 1e-12 && da.excludes_zero());
        assert!(!rows[2].vs_best.unwrap().excludes_zero());
        let r = results(rows);
        let table = crate::report::terminal(&r);
        let line = |l: &str| {
            table
                .lines()
                .find(|x| x.get(2..).is_some_and(|y| y.starts_with(&format!("{l} "))))
                .unwrap_or_else(|| panic!("{table}"))
                .to_string()
        };
        assert!(line("b").starts_with('*'), "{table}");
        assert!(line("a").starts_with("  "), "{table}");
        assert!(line("a").contains("-4.00 +/- 1.76"), "{table}");
        assert!(line("c").starts_with('~'), "{table}");
    }

    #[test]
    fn load_results_reads_old_runs_and_names_bad_files() {
        // A results.json written before rows kept their episodes: the
        // accuracies come from <label>/test_episodes.csv.
        let dir = tempfile::tempdir().unwrap();
        let mut a = row("a", &[0.6, 0.8, 0.4]);
        let mut b = row("b", &[0.7, 0.9, 0.5]);
        for r in [&mut a, &mut b] {
            let csv: String = std::iter::once("episode,accuracy,loss\n".to_string())
                .chain(
                    r.episode_accuracy
                        .iter()
                        .enumerate()
                        .map(|(i, x)| format!("{i},{x:.6},0.5\n")),
                )
                .collect();
            std::fs::create_dir(dir.path().join(&r.label)).unwrap();
            std::fs::write(dir.path().join(&r.label).join("test_episodes.csv"), csv).unwrap();
            r.episode_accuracy.clear();
        }
        let r = results(vec![a, b]);
        let mut v = serde_json::to_value(&r).unwrap();
        for row in v["results"].as_array_mut().unwrap() {
            let o = row.as_object_mut().unwrap();
            o.remove("episode_accuracy");
            o.remove("vs_best");
        }
        std::fs::write(dir.path().join("results.json"), v.to_string()).unwrap();
        let got = load_results(dir.path()).unwrap();
        assert_eq!(got.run_dir, dir.path());
        let d = got.results[0].vs_best.unwrap();
        assert!((d.mean + 0.1).abs() < 1e-9, "{d:?}");
        assert!(d.ci95.unwrap() < 1e-12);
        // A damaged score file is named with its line.
        std::fs::write(
            dir.path().join("a/test_episodes.csv"),
            "episode,accuracy,loss\n0,x,1\n",
        )
        .unwrap();
        let e = load_results(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("a/test_episodes.csv") && e.contains("line 2"),
            "{e}"
        );
        std::fs::write(dir.path().join("results.json"), "{").unwrap();
        let e = load_results(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("results.json") && e.contains("not a fewshot results file"),
            "{e}"
        );
    }
}
