//! Running an optimisation benchmark (`task: optimisation`): tune every
//! hand-designed optimiser's learning rate and meta-train every learned
//! one on training problems, then run all of them on the same fixed test
//! problems and write the results.
//!
//! Meta-step `s` of a learned optimiser optimises training problem `s`
//! (under the run seed) for T steps, updating the optimiser after every
//! truncated unroll; every `validate_every` steps the optimiser runs on
//! the fixed validation problems (problem seed) and the state with the
//! lowest mean final loss is kept. Checkpoints (`<label>/checkpoints/`)
//! carry the state, the best state and the bookkeeping, so a killed run
//! continues with `--resume` where it stopped, to the same bits (for a
//! meta-step budget).
//!
//! The run folder holds what a few-shot run's holds (`resolved.yaml`,
//! `results.json`, `leaderboard.md`/`.csv`, `run.log`, one folder per
//! optimiser with `checkpoints/`, `curve.csv` and `test_problems.csv`),
//! plus every optimiser's loss curve over the T steps (`loss_curves.csv`
//! and `loss_curves.svg`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::algo::optimizer::{self, Optimizer, Problems};
use crate::algo::problem::ProblemData;
use crate::algo::Observer;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::layout;
use crate::report::optimisation::{pair_with_best, OptResults, OptRow};
use crate::run::checkpoint::{self, Checkpoint, CurvePoint, TrainState};
use crate::run::rundir::{self, Mode};
use crate::spec::optimisation::OptBenchmark;
use crate::spec::Select;
use crate::util::write_atomic;

/// Options of an optimisation run beyond the benchmark.
#[derive(Debug, Clone, Default)]
pub struct OptRunOptions {
    pub run_dir: PathBuf,
    pub mode: Mode,
    /// Only these labels (empty: all); their rows are merged into the
    /// run's results.
    pub only: Vec<String>,
    pub show_progress: bool,
    /// End each learned optimiser's session after this many meta-steps as
    /// if killed (checkpoint written), to test resumption.
    pub stop_after_steps: Option<u64>,
}

/// What decides a run's numbers (a resumed run must match it; the budget
/// may grow).
fn fingerprint(b: &OptBenchmark) -> serde_json::Value {
    let mut v = serde_json::to_value(b).expect("a resolved benchmark serialises");
    if let Some(m) = v.as_object_mut() {
        for k in ["budget", "profile", "description", "published"] {
            m.remove(k);
        }
    }
    v
}

/// Check the run folder for `mode`, take its lock and write
/// `resolved.yaml`; returns the lock and the previous results (resume).
fn prepare(bench: &OptBenchmark, o: &OptRunOptions) -> Result<(rundir::Lock, Option<OptResults>)> {
    let dir = &o.run_dir;
    let err = |reason: String| Error::RunDir {
        path: dir.clone(),
        reason,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(err(
            "is a file, not a folder; give a folder for --run-dir".into()
        ));
    }
    let resolved = dir.join(layout::RESOLVED);
    let holds_run = resolved.is_file();
    let mode = match o.mode {
        Mode::Continue if holds_run => Mode::Resume,
        Mode::Continue => Mode::New,
        m => m,
    };
    let others: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != layout::LOCK && !crate::util::is_temp_name(n))
                .collect()
        })
        .unwrap_or_default();
    if !holds_run && !others.is_empty() && mode != Mode::Force {
        return Err(err(format!(
            "is not empty ({}) and holds no fewshot run (no resolved.yaml); give a new or empty --run-dir",
            others.join(", ")
        )));
    }
    crate::util::create_dir_durable(dir)?;
    let lock = rundir::lock(dir)?;
    let mut previous = None;
    match mode {
        Mode::New if holds_run => {
            return Err(err(
                "already holds a run; continue it with --resume, or discard it and start over with --force"
                    .into(),
            ))
        }
        Mode::Resume if !holds_run => {
            return Err(err(
                "holds no run to resume (no resolved.yaml); start a new run without --resume".into(),
            ))
        }
        Mode::Resume => {
            let old = OptBenchmark::of_run(dir).map_err(|e| {
                err(format!("its resolved.yaml cannot be read ({e}); start over with --force"))
            })?;
            let diff = checkpoint::config_diff(&fingerprint(&old), &fingerprint(bench));
            if !diff.is_empty() {
                return Err(err(format!(
                    "was started with a different configuration; refusing to resume:\n  {}",
                    diff.join("\n  ")
                )));
            }
            previous = OptResults::read(dir).ok();
        }
        Mode::Force => {
            for name in &others {
                let p = dir.join(name);
                let ours = layout::RUN_FILES.contains(&name.as_str())
                    || name == layout::EVAL_DIR
                    || (p.is_dir() && layout::ALGORITHM_FILES.iter().any(|f| p.join(f).exists()));
                if !ours {
                    return Err(err(format!(
                        "holds `{name}`, which no run writes; --force discards only a run's own files"
                    )));
                }
            }
            for name in &others {
                let p = dir.join(name);
                tracing::warn!("--force: discarding {}", p.display());
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
                } else {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        _ => {}
    }
    write_atomic(&resolved, bench.to_yaml()?.as_bytes())?;
    Ok((lock, previous))
}

/// Run the benchmark: every optimiser (or `o.only`), then the results.
pub fn run(bench: &OptBenchmark, data_dir: &Path, o: &OptRunOptions) -> Result<OptResults> {
    for l in &o.only {
        bench.algorithm(l)?;
    }
    // The data first: a missing or corrupt file fails before any work.
    let data = bench.problem.open(data_dir)?;
    let (_lock, previous) = prepare(bench, o)?;
    let _log = crate::run::logfile::attach_scoped(&o.run_dir.join(layout::LOG))?;
    tracing::info!(
        "run {} of {} ({}; {} steps; fewshot {})",
        o.run_dir.display(),
        bench.name,
        bench.problem.describe(),
        bench.steps,
        env!("CARGO_PKG_VERSION")
    );
    let mut out = OptResults {
        benchmark: bench.name.clone(),
        task: bench.task.to_string(),
        problem: bench.problem.describe(),
        steps: bench.steps,
        seed: bench.seed,
        run_seed: bench.run_seed,
        profile: bench.profile.clone(),
        test_problems: bench.test_problems,
        run_dir: o.run_dir.clone(),
        results: previous.map(|p| p.results).unwrap_or_default(),
        published: bench.published.clone(),
    };
    let ctx = bench.context();
    for (i, spec) in bench.algorithms.iter().enumerate() {
        if !o.only.is_empty() && !o.only.contains(&spec.label) {
            continue;
        }
        let _span = tracing::info_span!("optimiser", label = spec.label.as_str()).entered();
        let mut opt = optimizer::build(&spec.config, &ctx, &format!("algorithms[{i}]"))?;
        let row = run_one(bench, &data, opt.as_mut(), o)?;
        out.results.retain(|r| r.label != row.label);
        out.results.push(row);
        // Rows in the benchmark's order.
        out.results.sort_by_key(|r| {
            bench
                .algorithms
                .iter()
                .position(|a| a.label == r.label)
                .unwrap_or(usize::MAX)
        });
        pair_with_best(&mut out.results);
        out.write_all(&o.run_dir)?;
    }
    Ok(out)
}

/// Tune or meta-train one optimiser, then test it.
fn run_one(
    bench: &OptBenchmark,
    data: &ProblemData,
    opt: &mut dyn Optimizer,
    o: &OptRunOptions,
) -> Result<OptRow> {
    let dir = o.run_dir.join(opt.label());
    crate::util::create_dir_durable(&dir)?;
    let train = Problems {
        spec: &bench.problem,
        data,
        seed: bench.run_seed,
        split: Split::Train,
    };
    let tuning = opt.tune(&train, bench.steps)?;
    let (state, selected) = if opt.learned() {
        let state = meta_train(bench, data, opt, &dir, o)?;
        if !state.finished {
            return Err(Error::invalid(
                "run",
                opt.label(),
                format!(
                    "to finish its budget: it stopped after meta-step {} as asked; continue it with --resume",
                    state.step
                ),
            ));
        }
        let sel = select(bench, opt, &dir, &state)?;
        (state, Some(sel))
    } else {
        (TrainState::default(), None)
    };
    let test = Problems {
        spec: &bench.problem,
        data,
        seed: bench.seed,
        split: Split::Test,
    };
    let t0 = Instant::now();
    let curves = optimise_all(&*opt, &test, bench.test_problems, bench.steps)?;
    let mut row = OptRow::scored(opt.label(), opt.kind(), opt.learned(), &curves);
    row.test_seconds = t0.elapsed().as_secs_f64();
    row.tuning = tuning;
    row.meta_steps = state.step;
    row.train_seconds = state.train_seconds;
    row.selected = selected;
    let csv = crate::util::csv_text(
        &["problem", "final_loss"],
        row.final_loss
            .iter()
            .enumerate()
            .map(|(i, l)| [i.to_string(), l.to_string()]),
    );
    write_atomic(&dir.join(layout::TEST_PROBLEMS), csv.as_bytes())?;
    if opt.learned() && !opt.series().is_empty() {
        trace(bench, &*opt, &test, &dir)?;
    }
    tracing::info!(
        "{}: log10 mean final loss {:.3} on {} test problems ({:.1} s)",
        row.label,
        row.log10_loss,
        bench.test_problems,
        row.test_seconds
    );
    Ok(row)
}

/// Test problems whose series a learned optimiser's trace records.
pub const TRACE_PROBLEMS: u64 = 3;

/// Record `opt`'s series on the first [`TRACE_PROBLEMS`] test problems:
/// their statistics per step and parameter group (`series.csv`), and for a
/// gated rule the gate figure and files of the few-shot traces
/// (`gates.*`, docs/traces.md).
fn trace(bench: &OptBenchmark, opt: &dyn Optimizer, test: &Problems, dir: &Path) -> Result<()> {
    use crate::report::optimisation::SeriesStats;
    use crate::report::trace::{self, GateCollector};
    let mut stats = SeriesStats::default();
    let mut records = vec![];
    for i in 0..TRACE_PROBLEMS.min(bench.test_problems as u64) {
        if trace::traceable(opt.series()) {
            // One optimisation feeds both observers.
            let mut gates = GateCollector::new(&bench.name, opt.label(), i, 64);
            opt.observe(
                &mut test.get(i)?,
                bench.steps,
                &mut Both(&mut stats, &mut gates),
            )?;
            records.extend(gates.records());
        } else {
            opt.observe(&mut test.get(i)?, bench.steps, &mut stats)?;
        }
    }
    write_atomic(&dir.join(layout::SERIES), stats.csv().as_bytes())?;
    if !records.is_empty() {
        trace::write_all(
            dir,
            &records,
            &format!(
                "{}: {} on {}",
                bench.name,
                opt.label(),
                bench.problem.name()
            ),
        )?;
    }
    Ok(())
}

/// Two observers fed by one run.
struct Both<'a>(&'a mut dyn Observer, &'a mut dyn Observer);

impl Observer for Both<'_> {
    fn record(&mut self, series: &str, step: usize, layer: &str, values: &[f32]) {
        self.0.record(series, step, layer, values);
        self.1.record(series, step, layer, values);
    }
}

/// The loss curves of `n` problems of `problems`, in parallel (each
/// problem is a pure function of its index: same numbers for any thread
/// count).
pub fn optimise_all(
    opt: &dyn Optimizer,
    problems: &Problems,
    n: usize,
    steps: usize,
) -> Result<Vec<Vec<f64>>> {
    (0..n as u64)
        .into_par_iter()
        .map(|i| opt.optimise(&mut problems.get(i)?, steps))
        .collect()
}

/// Mean final loss over the validation problems.
fn validate(bench: &OptBenchmark, data: &ProblemData, opt: &dyn Optimizer) -> Result<f64> {
    let val = Problems {
        spec: &bench.problem,
        data,
        seed: bench.seed,
        split: Split::Val,
    };
    let curves = optimise_all(opt, &val, bench.val_problems, bench.steps)?;
    Ok(curves.iter().map(|c| c[c.len() - 1]).sum::<f64>() / curves.len() as f64)
}

/// Load the state `bench.select` names; returns its label (`best@300`).
fn select(
    bench: &OptBenchmark,
    opt: &mut dyn Optimizer,
    dir: &Path,
    state: &TrainState,
) -> Result<String> {
    let Some((_, path)) = checkpoint::list(dir)?.into_iter().next() else {
        return Ok(format!("final@{}", state.step));
    };
    let c = checkpoint::read(&path)?;
    match (bench.select, c.best, state.best_step) {
        (Select::Best, Some(best), Some(step)) => {
            opt.load_state(&best)?;
            Ok(format!("best@{step}"))
        }
        _ => {
            opt.load_state(&c.state)?;
            Ok(format!("final@{}", state.step))
        }
    }
}

/// Meta-train a learned optimiser to its budget, from its newest
/// checkpoint when the run is resumed.
fn meta_train(
    bench: &OptBenchmark,
    data: &ProblemData,
    opt: &mut dyn Optimizer,
    dir: &Path,
    o: &OptRunOptions,
) -> Result<TrainState> {
    let config = serde_json::to_value(bench.algorithm(opt.label())?)
        .map_err(|e| Error::invalid("algorithm config", e.to_string(), "JSON"))?;
    let mut state = TrainState {
        algorithm: opt.label().to_string(),
        ..Default::default()
    };
    let mut best: Option<HashMap<String, Tensor>> = None;
    let resuming = matches!(o.mode, Mode::Resume | Mode::Continue);
    if let Some(found) = checkpoint::latest(dir)? {
        if !resuming {
            return Err(Error::RunDir {
                path: dir.to_path_buf(),
                reason: "holds checkpoints; continue with --resume or start over with --force"
                    .into(),
            });
        }
        let c = found.checkpoint;
        let diff = checkpoint::config_diff(&c.config, &config);
        if !diff.is_empty() {
            return Err(Error::Checkpoint {
                path: found.path,
                reason: format!(
                    "written under another configuration:\n  {}",
                    diff.join("\n  ")
                ),
            });
        }
        opt.load_state(&c.state)?;
        state = c.train;
        best = c.best;
        tracing::info!("resumed at meta-step {}", state.step);
    }
    let train = Problems {
        spec: &bench.problem,
        data,
        seed: bench.run_seed,
        split: Split::Train,
    };
    let bar = o
        .show_progress
        .then(|| crate::util::progress(bench.budget.meta_steps.unwrap_or(0), opt.label()));
    let session_start = state.step;
    while !state.done(&bench.budget) {
        let t0 = Instant::now();
        let mut problem = train.get(state.step)?;
        let loss = opt.meta_train_step(&mut problem)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                algorithm: opt.label().into(),
                what: "final training loss".into(),
                step: state.step as usize,
                checkpoint: "the newest checkpoint is the last good state".into(),
            });
        }
        state.train_seconds += t0.elapsed().as_secs_f64();
        state.step += 1;
        state.train_episodes += 1;
        state.pending_loss += loss;
        state.pending_steps += 1;
        if let Some(b) = &bar {
            b.inc(1);
        }
        let done = state.done(&bench.budget);
        if state.step.is_multiple_of(bench.validate_every) || done {
            let v = validate(bench, data, opt)?;
            let point = CurvePoint {
                step: state.step,
                train_episodes: state.train_episodes,
                train_seconds: state.train_seconds,
                train_loss: state.pending_loss / state.pending_steps.max(1) as f64,
                train_accuracy: None,
                val_accuracy: None,
                val_ci95: None,
                val_loss: Some(v),
            };
            tracing::info!(
                step = state.step,
                seconds = format!("{:.0}", state.train_seconds),
                train_final_loss = format!("{:.4e}", point.train_loss),
                val_final_loss = format!("{v:.4e}"),
                "validation"
            );
            state.curve.push(point);
            state.pending_loss = 0.0;
            state.pending_steps = 0;
            if v.is_finite() && state.best_val_loss.is_none_or(|b| v < b) {
                state.best_val_loss = Some(v);
                state.best_step = Some(state.step);
                best = Some(opt.state()?);
            }
        }
        let stop = o
            .stop_after_steps
            .is_some_and(|n| state.step - session_start >= n);
        if state.step.is_multiple_of(bench.checkpoint_every) || done || stop {
            state.finished = done;
            checkpoint::save(
                dir,
                &Checkpoint {
                    train: state.clone(),
                    state: opt.state()?,
                    best: best.clone(),
                    config: config.clone(),
                },
            )?;
            write_curve(dir, &state)?;
        }
        if stop {
            break;
        }
    }
    if state.done(&bench.budget) {
        state.finished = true;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(state)
}

fn write_curve(dir: &Path, s: &TrainState) -> Result<()> {
    let rows = s.curve.iter().map(|p| {
        [
            p.step.to_string(),
            format!("{:.3}", p.train_seconds),
            p.train_loss.to_string(),
            p.val_loss.map_or(String::new(), |v| v.to_string()),
        ]
    });
    let csv = crate::util::csv_text(
        &[
            "step",
            "train_seconds",
            "train_final_loss",
            "val_final_loss",
        ],
        rows,
    );
    write_atomic(&dir.join(layout::CURVE), csv.as_bytes())
}

/// Test the optimisers of the optimisation run in `run` on `target`'s
/// fixed test problems without retraining the learned ones (their state
/// as the run selected it); hand-designed ones re-tune their learning
/// rate on `target`'s training problems, as a user of them would. Writes
/// the results into `<run>/eval/<target>/` and returns them: one column of
/// the transfer matrix (Andrychowicz et al. 2016, figure 5).
pub fn evaluate_on(
    run: &Path,
    target: &OptBenchmark,
    data_dir: &Path,
    only: &[String],
    force: bool,
) -> Result<OptResults> {
    let trained = OptBenchmark::of_run(run)?;
    for l in only {
        trained.algorithm(l)?;
    }
    let data = target.problem.open(data_dir)?;
    let folder = rundir::eval_folder(run, &target.name, force)?;
    let out_dir = folder.dir.clone();
    let mut ctx = target.context();
    ctx.run_seed = trained.run_seed;
    let mut out = OptResults {
        benchmark: target.name.clone(),
        task: target.task.to_string(),
        problem: target.problem.describe(),
        steps: target.steps,
        seed: target.seed,
        run_seed: trained.run_seed,
        profile: target.profile.clone(),
        test_problems: target.test_problems,
        run_dir: out_dir.clone(),
        results: vec![],
        published: Default::default(),
    };
    for (i, spec) in trained.algorithms.iter().enumerate() {
        if !only.is_empty() && !only.contains(&spec.label) {
            continue;
        }
        let mut opt = optimizer::build(&spec.config, &ctx, &format!("algorithms[{i}]"))?;
        let mut selected = None;
        let tuning = if opt.learned() {
            let dir = run.join(&spec.label);
            let state = checkpoint::latest(&dir)?
                .ok_or_else(|| Error::Checkpoint {
                    path: checkpoint::folder(&dir),
                    reason: "no checkpoint: the run has not trained this optimiser".into(),
                })?
                .checkpoint
                .train;
            selected = Some(select(&trained, opt.as_mut(), &dir, &state)?);
            None
        } else {
            let train = Problems {
                spec: &target.problem,
                data: &data,
                seed: trained.run_seed,
                split: Split::Train,
            };
            opt.tune(&train, target.steps)?
        };
        let test = Problems {
            spec: &target.problem,
            data: &data,
            seed: target.seed,
            split: Split::Test,
        };
        let t0 = Instant::now();
        let curves = optimise_all(&*opt, &test, target.test_problems, target.steps)?;
        let mut row = OptRow::scored(opt.label(), opt.kind(), opt.learned(), &curves);
        row.test_seconds = t0.elapsed().as_secs_f64();
        row.tuning = tuning;
        row.selected = selected;
        out.results.push(row);
    }
    pair_with_best(&mut out.results);
    out.write_all(&out_dir)?;
    Ok(out)
}
