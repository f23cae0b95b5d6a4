//! Running a benchmark: meta-train every algorithm, evaluate all of them on
//! the same fixed test episodes, write results.
//!
//! Run folder layout (`runs/<benchmark>/<run-id>/` by default):
//! - `resolved.yaml`: the benchmark with every default made explicit;
//! - `results.json`: the leaderboard (updated atomically after each
//!   algorithm);
//! - `<label>/`: checkpoints, `curve.csv`, `test_episodes.csv` (accuracy
//!   and loss of every test episode).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::algo;
use crate::data::{self, Split};
use crate::error::{Error, Result};
use crate::eval::{self, Evaluation};
use crate::norm::NormProtocol;
use crate::spec::{self, Benchmark, Select};
use crate::train::{self, TrainOptions, TrainState};
use crate::util::write_atomic;

/// One leaderboard row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlgoResult {
    pub label: String,
    pub algorithm: String,
    /// Mean test accuracy in [0, 1] and its 95% half-width.
    pub accuracy: f64,
    pub ci95: f64,
    pub test_episodes: usize,
    pub meta_steps: u64,
    pub train_episodes: u64,
    pub train_seconds: f64,
    pub test_seconds: f64,
    /// Which parameters were tested: `best@<step>` (validation) or `final`.
    pub selected: String,
    pub best_val_accuracy: Option<f64>,
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
    pub run_dir: PathBuf,
    pub results: Vec<AlgoResult>,
}

/// Options of a run beyond the benchmark itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    pub show_progress: bool,
    /// Record gate traces on this many test episodes for every algorithm
    /// that has gates (0: none).
    pub trace_episodes: usize,
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
    std::fs::create_dir_all(&opts.run_dir).map_err(|e| Error::io(&opts.run_dir, e))?;
    write_atomic(
        &opts.run_dir.join("resolved.yaml"),
        spec::to_string(bench)?.as_bytes(),
    )?;
    let ds = data::open(&bench.dataset, data_dir, &bench.data)?;
    tracing::info!("{}", ds.description);
    // Fail early, before any training, if the test episodes cannot be drawn.
    crate::sampler::Sampler::new(&ds, Split::Test, bench.episode, bench.seed)?;
    let device = candle_core::Device::Cpu;
    let ctx = bench.context(&device);
    let mut out = RunResults {
        benchmark: bench.name.clone(),
        dataset: bench.dataset.clone(),
        episode: bench.episode,
        transductive: bench.transductive,
        batch_norm: bench.batch_norm,
        select: bench.select,
        run_dir: opts.run_dir.clone(),
        results: vec![],
    };
    for (i, a) in bench.algorithms.iter().enumerate() {
        let mut algorithm = algo::build(&a.config, &ctx, &format!("algorithms[{i}]"))?;
        let _span = tracing::info_span!("algorithm", label = %a.label).entered();
        let dir = opts.run_dir.join(&a.label);
        let state = train::meta_train(
            &mut *algorithm,
            &ds,
            &TrainOptions {
                budget: bench.budget,
                validate_every: bench.validate_every,
                validate_every_minutes: bench.validate_every_minutes,
                checkpoint_every: bench.checkpoint_every,
                val_episodes: bench.val_episodes,
                dir: dir.clone(),
                resume: opts.resume,
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
        out.results.push(row(a, &state, &ev, selected));
        let json = serde_json::to_string_pretty(&out).map_err(|e| Error::Config {
            source_name: "results.json".into(),
            reason: e.to_string(),
        })?;
        write_atomic(&opts.run_dir.join("results.json"), json.as_bytes())?;
    }
    Ok(out)
}

fn row(a: &spec::AlgorithmSpec, st: &TrainState, ev: &Evaluation, selected: String) -> AlgoResult {
    AlgoResult {
        label: a.label.clone(),
        algorithm: a.algorithm.clone(),
        accuracy: ev.mean,
        ci95: ev.ci95,
        test_episodes: ev.episodes,
        meta_steps: st.step,
        train_episodes: st.train_episodes,
        train_seconds: st.train_seconds,
        test_seconds: ev.seconds,
        selected,
        best_val_accuracy: st.best_val_accuracy,
    }
}

fn write_episode_scores(ev: &Evaluation, path: &Path) -> Result<()> {
    let mut s = String::from("episode,accuracy,loss\n");
    for (i, sc) in ev.scores.iter().enumerate() {
        s.push_str(&format!("{i},{:.6},{:.6}\n", sc.accuracy, sc.loss));
    }
    write_atomic(path, s.as_bytes())
}

/// The leaderboard as a text table: accuracy +/- 95% CI, episodes, time.
/// Rows whose interval overlaps the best row's are marked `~` (not
/// distinguishable from the best at this sample size); the best is `*`.
pub fn leaderboard(r: &RunResults) -> String {
    let mut s = format!(
        "{} ({}, {}-way {}-shot, {} queries, {}; batch norm: meta-train {}, test {})\n",
        r.benchmark,
        r.dataset,
        r.episode.ways,
        r.episode.shots,
        r.episode.queries,
        if r.transductive {
            "transductive"
        } else {
            "non-transductive"
        },
        spec::variant_name(&r.batch_norm.meta_train),
        spec::variant_name(&r.batch_norm.eval),
    );
    s.push_str(&format!(
        "{:<2}{:<14} {:>16} {:>8} {:>10} {:>12} {:>10} {:>9} {:>10}\n",
        "",
        "algorithm",
        "accuracy (%)",
        "test ep",
        "meta-steps",
        "train ep",
        "train",
        "test",
        "tested"
    ));
    let best = r
        .results
        .iter()
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy));
    for x in &r.results {
        let mark = match best {
            Some(b) if std::ptr::eq(b, x) => "*",
            Some(b) if x.accuracy + x.ci95 >= b.accuracy - b.ci95 => "~",
            _ => "",
        };
        s.push_str(&format!(
            "{:<2}{:<14} {:>9.2} +/- {:<4.2} {:>8} {:>10} {:>12} {:>9.0}s {:>8.1}s {:>10}\n",
            mark,
            x.label,
            100.0 * x.accuracy,
            100.0 * x.ci95,
            x.test_episodes,
            x.meta_steps,
            x.train_episodes,
            x.train_seconds,
            x.test_seconds,
            x.selected
        ));
    }
    s.push_str(&format!(
        "results: {}\n",
        r.run_dir.join("results.json").display()
    ));
    s
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
