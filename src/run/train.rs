//! The meta-training loop: budgets, validation, checkpoints, resume.
//!
//! Meta-step `s` of an algorithm always trains on training episodes
//! `s * meta_batch .. (s + 1) * meta_batch` of the train split under the
//! run seed, and every algorithm-internal random choice is derived from
//! `(run seed, s)`; validation uses the fixed episodes of the episode seed. A checkpoint therefore needs only the step, the
//! algorithm's state (meta-parameters and optimiser moments), the best
//! state so far and the bookkeeping; a killed run resumed from it ends with
//! bit-identical parameters (for a meta-step or episode budget; a
//! wall-clock budget stops wherever the clock says).
//!
//! Files in an algorithm's run folder, all written atomically:
//! - `checkpoints/step-<n>.safetensors`: the newest two checkpoints, each
//!   one self-contained file ([`crate::run::checkpoint`]);
//! - `curve.csv`: the learning curve (validation accuracy against
//!   meta-training episodes and seconds), rewritten with every checkpoint.
//!
//! A NaN or infinite loss or parameter stops the run with
//! [`Error::NonFinite`]; the last good checkpoint is left untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;

use crate::algo::{Algorithm, Progress};
use crate::data::sampler::Sampler;
use crate::data::task::Task;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::run::checkpoint::{self, Checkpoint, CurvePoint, TrainState};
use crate::run::eval;
use crate::spec::{Budget, Select};
use crate::util::write_atomic;

/// How to meta-train one algorithm.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub budget: Budget,
    /// Validate every this many meta-steps (if set).
    pub validate_every: Option<u64>,
    /// Validate whenever this many minutes of training passed (if set).
    pub validate_every_minutes: Option<f64>,
    pub checkpoint_every: u64,
    pub val_episodes: usize,
    /// The algorithm's run folder.
    pub dir: PathBuf,
    /// Continue from the newest checkpoint in `dir` if there is one
    /// (otherwise an existing checkpoint is an error).
    pub resume: bool,
    /// The configuration that determines this training run (see
    /// [`crate::run::rundir::fingerprint`]); stored in every checkpoint, and a
    /// resumed checkpoint must have been written under the same one.
    pub config: serde_json::Value,
    pub show_progress: bool,
    /// End this session after this many meta-steps as if the process had
    /// been killed (checkpoint written, budget not finished), e.g. for
    /// preemptible machines or to test resumption. `None`: run to the end.
    pub stop_after_steps: Option<u64>,
}

fn save_checkpoint(
    algo: &dyn Algorithm,
    state: &TrainState,
    best: &Option<HashMap<String, Tensor>>,
    opts: &TrainOptions,
) -> Result<()> {
    checkpoint::save(
        &opts.dir,
        &Checkpoint {
            train: state.clone(),
            state: algo.state()?,
            best: best.clone(),
            config: opts.config.clone(),
        },
    )?;
    write_curve(&state.curve, &opts.dir.join(crate::layout::CURVE))
}

/// Restore a trained algorithm at the parameters its run tests: the
/// newest readable checkpoint of `dir`, then, when `select` is `best` and
/// validation kept a best state, that state. Returns the checkpoint's
/// bookkeeping and the row's `selected` label (`best@<step>` or `final`).
/// Every reader of a trained algorithm (the runner after training, `bench
/// eval`, `bench trace`) goes through here.
pub fn load_selected(
    algo: &mut dyn Algorithm,
    dir: &Path,
    select: Select,
) -> Result<(TrainState, String)> {
    load_selected_as(algo, dir, select, Init::Trained)
}

/// What [`load_selected_as`] restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// The whole trained state ([`Algorithm::load_state`]).
    Trained,
    /// The update rule only, the learner's initialisation left fresh
    /// ([`Algorithm::load_rule`]); an algorithm without a rule gives
    /// [`Error::NotPortable`], unwrapped.
    Fresh,
}

/// [`load_selected`], restoring the whole state or only the rule.
pub fn load_selected_as(
    algo: &mut dyn Algorithm,
    dir: &Path,
    select: Select,
    init: Init,
) -> Result<(TrainState, String)> {
    let Some(checkpoint::Found {
        path,
        checkpoint: c,
        ..
    }) = checkpoint::latest(dir)?
    else {
        return Err(Error::MissingData {
            what: format!("trained {}", algo.label()),
            path: checkpoint::folder(dir),
            hint: "no checkpoint: was this algorithm trained in this run folder?".into(),
        });
    };
    let load = |algo: &mut dyn Algorithm, state| {
        let r = match init {
            Init::Trained => algo.load_state(state),
            Init::Fresh => algo.load_rule(state),
        };
        r.map_err(|e| match e {
            e @ Error::NotPortable { .. } => e,
            e => Error::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            },
        })
    };
    load(algo, &c.state)?;
    let selected = match (&c.best, select) {
        (Some(best), Select::Best) => {
            load(algo, best)?;
            format!("best@{}", c.train.best_step.unwrap_or(0))
        }
        _ => "final".to_string(),
    };
    Ok((c.train, selected))
}

/// Record the budget the coming steps are taken under, and refuse a
/// resumed run whose budget changed when the run would not be the one it
/// claims: steps taken beyond the new budget, or an algorithm whose
/// schedule spans the budget (its steps so far followed another one).
fn check_budget_change(
    algo: &mut dyn Algorithm,
    state: &mut TrainState,
    budget: &crate::spec::Budget,
    dir: &Path,
) -> Result<()> {
    let last = state.budgets.last().map(|s| s.budget);
    if last == Some(*budget) {
        return Ok(());
    }
    let refuse = |why: String| {
        Error::RunDir {
        path: dir.to_path_buf(),
        reason: format!(
            "was trained for {} meta-steps under the budget {}; resuming under {} {why}. Resume with the original budget, or start over with --force",
            state.step,
            last.map_or("of an older fewshot".into(), |b| b.describe()),
            budget.describe()
        ),
    }
    };
    if state.step > 0 && last.is_none() {
        tracing::warn!(
            "this checkpoint does not record the budget its {} steps were taken under (an older fewshot); the results record only the budget from here",
            state.step
        );
    } else if state.step > 0 {
        let over = budget.meta_steps.is_some_and(|m| state.step > m)
            || budget.episodes.is_some_and(|e| state.train_episodes > e);
        if over {
            return Err(refuse(
                "would report more steps than the budget allows".into(),
            ));
        }
        if algo.schedule_spans_budget() {
            return Err(refuse(format!(
                "would not be the run it claims: {} follows a schedule over the whole budget, so the steps taken followed another one",
                algo.label()
            )));
        }
        tracing::warn!(
            "budget changed on resume: steps from {} on run under {} (the results record both)",
            state.step,
            budget.describe()
        );
    }
    state.budgets.push(crate::spec::BudgetSpan {
        from_step: state.step,
        budget: *budget,
    });
    Ok(())
}

fn write_curve(curve: &[CurvePoint], path: &Path) -> Result<()> {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let rows = curve.iter().map(|p| {
        [
            p.step.to_string(),
            p.train_episodes.to_string(),
            format!("{:.3}", p.train_seconds),
            format!("{:.6}", p.train_loss),
            opt(p.train_accuracy),
            opt(p.val_accuracy),
            opt(p.val_ci95),
        ]
    });
    let s = crate::util::csv_text(
        &[
            "step",
            "train_episodes",
            "train_seconds",
            "train_loss",
            "train_accuracy",
            "val_accuracy",
            "val_ci95",
        ],
        rows,
    );
    write_atomic(path, s.as_bytes())
}

/// Meta-train `algo` on the train split of `ds` until the budget is spent.
pub fn meta_train(
    algo: &mut dyn Algorithm,
    ds: &Dataset,
    opts: &TrainOptions,
) -> Result<TrainState> {
    let _span = tracing::info_span!("meta_train", algorithm = algo.label()).entered();
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
    checkpoint::remove_stale_temps(&opts.dir)?;
    let mut best: Option<HashMap<String, Tensor>> = None;
    let mut state = match checkpoint::latest(&opts.dir)? {
        Some(found) if opts.resume => {
            found.set_unreadable_aside()?;
            let (path, c) = (found.path, found.checkpoint);
            let diff = checkpoint::config_diff(&c.config, &opts.config);
            if !diff.is_empty() {
                return Err(Error::Checkpoint {
                    path,
                    reason: format!(
                        "was written under a different configuration; refusing to resume (give the original settings, or start over with --force):\n  {}",
                        diff.join("\n  ")
                    ),
                });
            }
            algo.load_state(&c.state).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            tracing::info!(step = c.train.step, "resumed from {}", path.display());
            best = c.best;
            c.train
        }
        Some(checkpoint::Found { path, .. }) => {
            return Err(Error::RunDir {
                path: opts.dir.clone(),
                reason: format!(
                    "holds a checkpoint ({}); resume it or start over with --force",
                    path.display()
                ),
            })
        }
        None if opts.dir.join("checkpoint.json").is_file() => {
            return Err(Error::RunDir {
                path: opts.dir.clone(),
                reason: "holds a checkpoint in the format of fewshot before one-file checkpoints (checkpoint.json + checkpoint.safetensors), which this version cannot continue; start over with --force".into(),
            })
        }
        None => TrainState {
            algorithm: algo.label().to_string(),
            ..Default::default()
        },
    };
    check_budget_change(&mut *algo, &mut state, &opts.budget, &opts.dir)?;
    // curve.csv is derived from the checkpoint, written right after it: a
    // kill between the two leaves the file a point short, which a resumed
    // run that is already finished would never write again. Rewrite it
    // from the checkpoint (found by tests/kill.rs: killed after the final
    // checkpoint's rename, the resumed run lacked the curve's last point).
    if state.step > 0 {
        write_curve(&state.curve, &opts.dir.join(crate::layout::CURVE))?;
    }
    // A resumed run continues until the (possibly larger) budget is spent.
    if state.done(&opts.budget) {
        state.finished = true;
        return Ok(state);
    }
    let ctx = algo.context().clone();
    let train = Sampler::new(ds, Split::Train, algo.train_spec(), ctx.run_seed)?;
    let validate = opts.val_episodes > 0 && !ds.split(Split::Val).is_empty();
    if validate {
        Sampler::new(ds, Split::Val, ctx.spec, ctx.episode_seed)?;
    }
    ds.preload(Some(Split::Train))?;
    let mb = algo.meta_batch() as u64;
    // The bar runs over the budget (whichever limit binds first: steps,
    // minutes or episodes), in thousandths, so its ETA is the budget's.
    let pb = if opts.show_progress {
        let pb = crate::util::progress(1000, algo.label());
        pb.set_position((1000.0 * state.fraction(&opts.budget)) as u64);
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let session = (Instant::now(), state.train_episodes);
    let label = algo.label().to_string();
    let status = |st: &TrainState| {
        let secs = session.0.elapsed().as_secs_f64().max(1e-9);
        let rate = (st.train_episodes - session.1) as f64 / secs;
        let val = st
            .best_val_accuracy
            .map(|v| format!(", best val {:.1}%", 100.0 * v))
            .unwrap_or_default();
        format!("{label} step {}, {rate:.1} ep/s{val}", st.step)
    };
    let session_end = opts.stop_after_steps.map(|n| state.step + n);
    while !state.done(&opts.budget) {
        if session_end.is_some_and(|e| state.step >= e) {
            save_checkpoint(&*algo, &state, &best, opts)?;
            break;
        }
        let t = Instant::now();
        let step = state.step;
        let batches = (0..mb)
            .map(|j| train.instance(step * mb + j, &ctx.device))
            .collect::<Result<Vec<_>>>()?;
        let progress = Progress {
            step,
            fraction: state.fraction(&opts.budget),
        };
        let score = algo.meta_train_step(&batches, progress)?;
        if !score.loss.is_finite() || !algo.meta_params().all_finite()? {
            return Err(Error::NonFinite {
                algorithm: algo.label().to_string(),
                what: if score.loss.is_finite() {
                    "meta-parameter".into()
                } else {
                    format!("loss ({})", score.loss)
                },
                step: step as usize,
                checkpoint: checkpoint::list(&opts.dir)?
                    .first()
                    .map(|(_, p)| p.display().to_string())
                    .unwrap_or_else(|| "(none written yet)".into()),
            });
        }
        state.step += 1;
        state.train_episodes += mb;
        state.train_seconds += t.elapsed().as_secs_f64();
        state.pending_loss += score.loss;
        state.pending_accuracy += score.accuracy;
        state.pending_steps += 1;
        pb.set_position((1000.0 * state.fraction(&opts.budget)) as u64);
        pb.set_message(status(&state));
        let done = state.done(&opts.budget);
        let last_val_seconds = state.curve.last().map(|p| p.train_seconds).unwrap_or(0.0);
        let due_by_steps = opts.validate_every.is_some_and(|v| state.step % v == 0);
        let due_by_time = opts
            .validate_every_minutes
            .is_some_and(|m| state.train_seconds - last_val_seconds >= 60.0 * m);
        if due_by_steps || due_by_time || done {
            let (val_accuracy, val_ci95) = if validate {
                let v = eval::evaluate(
                    &*algo,
                    ds,
                    Split::Val,
                    ctx.spec,
                    ctx.episode_seed,
                    opts.val_episodes,
                    false,
                )?;
                (Some(v.mean), v.ci95.is_finite().then_some(v.ci95))
            } else {
                (None, None)
            };
            let point = CurvePoint {
                step: state.step,
                train_episodes: state.train_episodes,
                train_seconds: state.train_seconds,
                train_loss: state.pending_loss / state.pending_steps as f64,
                train_accuracy: Some(state.pending_accuracy / state.pending_steps as f64),
                val_accuracy,
                val_ci95,
                val_loss: None,
            };
            tracing::info!(
                step = point.step,
                episodes = point.train_episodes,
                seconds = format!("{:.0}", point.train_seconds),
                train_loss = format!("{:.3}", point.train_loss),
                val_accuracy = val_accuracy
                    .map(|v| format!("{:.3}", v))
                    .unwrap_or_default(),
                "validation"
            );
            (
                state.pending_loss,
                state.pending_accuracy,
                state.pending_steps,
            ) = (0.0, 0.0, 0);
            if let Some(v) = val_accuracy {
                if state.best_val_accuracy.is_none_or(|b| v > b) {
                    state.best_val_accuracy = Some(v);
                    state.best_step = Some(state.step);
                    best = Some(algo.state()?);
                }
            }
            state.curve.push(point);
        }
        if state.step % opts.checkpoint_every == 0 || due_by_time || done {
            state.finished = done;
            save_checkpoint(&*algo, &state, &best, opts)?;
        }
    }
    pb.finish_and_clear();
    Ok(state)
}
