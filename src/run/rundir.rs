//! Run folders: a run is never overwritten or continued by mistake.
//!
//! A folder holds a run when it has a `resolved.yaml`. What `bench run`
//! does with a folder depends on how it was asked ([`Mode`]):
//!
//! | folder                 | new run        | `--resume`                | `--force`                  |
//! | ---------------------- | -------------- | ------------------------- | -------------------------- |
//! | missing or empty       | start          | error: nothing to resume  | start                      |
//! | holds a run            | error          | continue (same config)    | discard it (listed), start |
//! | run parts, no resolved.yaml (a `--force` killed midway) | error | error | discard them, start |
//! | holds other files      | error          | error                     | error (never deleted)      |
//! | is a file              | error          | error                     | error                      |
//!
//! A run holds an exclusive lock on `<run-dir>/.lock` from the moment it
//! writes into the folder until it ends, so a second `bench run` on the
//! same folder is refused instead of deleting the first one's files.
//!
//! "Same config" is checked field by field on the run's [`run_fingerprint`]:
//! everything that changes what meta-training computes (dataset, data
//! options, episode shape, seed, batch-norm protocol, learner, validation,
//! every algorithm's resolved hyperparameters). The budget may grow on
//! resume (training continues until the new budget is spent), and
//! evaluation-only fields (`test_episodes`, `select`) and
//! `checkpoint_every` may change. Each checkpoint stores its algorithm's
//! [`fingerprint`] as well, so that a checkpoint copied into another run
//! is refused too ([`crate::run::train::meta_train`]).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
use crate::layout;
use crate::report::results::RunResults;
use crate::run::checkpoint;
use crate::spec::{self, AlgorithmSpec, Benchmark};
use crate::util::{is_temp_name, write_atomic};

/// How `bench run` treats an existing run folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Start a run; the folder must not hold one.
    #[default]
    New,
    /// Continue the run in the folder from its checkpoints.
    Resume,
    /// Discard the run in the folder (saying what) and start over.
    Force,
    /// Resume the run in the folder if it holds one, else start it: a unit
    /// of a job array, restarted after preemption ([`crate::run::seeds`]).
    Continue,
}

/// The benchmark-level fields that determine meta-training.
fn benchmark_part(b: &Benchmark) -> serde_json::Value {
    let mut v = json!({
        "dataset": b.dataset,
        "data": b.data,
        "episode": b.episode,
        "seed": b.seed,
        "val_episodes": b.val_episodes,
        "validate_every": b.validate_every,
        "validate_every_minutes": b.validate_every_minutes,
        "batch_norm": b.batch_norm,
        "learner": b.learner,
        "kernels": b.kernels,
    });
    // The run seed joined the fingerprint later: seed 0, the only one of
    // older runs, is left out so that their checkpoints still resume.
    if b.run_seed != 0 {
        v["run_seed"] = json!(b.run_seed);
    }
    v
}

fn algorithm_part(a: &AlgorithmSpec) -> serde_json::Value {
    json!({
        "label": a.label,
        "algorithm": a.algorithm,
        "config": a.config,
    })
}

/// What determines one algorithm's meta-training: stored in its
/// checkpoints and compared on resume.
pub fn fingerprint(b: &Benchmark, a: &AlgorithmSpec) -> serde_json::Value {
    json!({
        "benchmark": benchmark_part(b),
        "algorithm": algorithm_part(a),
    })
}

/// What determines a whole run (every algorithm), compared on resume.
pub fn run_fingerprint(b: &Benchmark) -> serde_json::Value {
    json!({
        "benchmark": benchmark_part(b),
        "algorithms": b.algorithms.iter().map(algorithm_part).collect::<Vec<_>>(),
    })
}

/// Entries of a folder other than fewshot's temporary files and lock
/// (sorted).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let file = e.file_type().is_ok_and(|t| t.is_file());
                    !(file && (is_temp_name(&n) || n == layout::LOCK))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether an entry of a run folder is something a run writes: one of
/// [`layout::RUN_FILES`], or an algorithm folder (it has `checkpoints/`,
/// `curve.csv` or `test_episodes.csv`).
fn run_part(dir: &Path, name: &str) -> bool {
    let p = dir.join(name);
    if layout::RUN_FILES.contains(&name) {
        return p.is_file();
    }
    if name == layout::EVAL_DIR {
        return p.is_dir();
    }
    p.is_dir() && layout::ALGORITHM_FILES.iter().any(|f| p.join(f).exists())
}

/// The results of the run in `dir`, if it has any.
fn load_results(dir: &Path) -> Result<Option<RunResults>> {
    if dir.join(layout::RESULTS).is_file() {
        RunResults::read(dir).map(Some)
    } else {
        Ok(None)
    }
}

/// A checked plan for a run folder: nothing is written until
/// [`Plan::commit`] (other than the lock file of a folder that already
/// holds a run), so a run refused by a later check (bad data) leaves the
/// folder as it was.
#[derive(Debug)]
pub struct Plan {
    pub dir: PathBuf,
    pub mode: Mode,
    /// Results of the previous session of a resumed run.
    pub previous: Option<RunResults>,
    /// Paths `--force` removes, with what each held.
    discard: Vec<(PathBuf, String)>,
    /// The folder's lock, taken as soon as the folder is known to hold a
    /// run (so a run in progress is reported before any other check).
    lock: Option<Lock>,
}

/// Check what `bench run` may do with `dir` for `bench` (table in the
/// module docs).
pub fn plan(dir: &Path, mode: Mode, bench: &Benchmark) -> Result<Plan> {
    let err = |reason: String| Error::RunDir {
        path: dir.to_path_buf(),
        reason,
    };
    let resolved = dir.join(layout::RESOLVED);
    if dir.exists() && !dir.is_dir() {
        return Err(err(
            "is a file, not a folder; give a folder for --run-dir".into()
        ));
    }
    let holds_run = resolved.is_file();
    let mode = match mode {
        Mode::Continue if holds_run => Mode::Resume,
        Mode::Continue => Mode::New,
        m => m,
    };
    let others = entries(dir);
    // What a `--force` killed midway leaves: run parts without resolved.yaml.
    let leftovers = !holds_run && !others.is_empty() && others.iter().all(|n| run_part(dir, n));
    let mut out = Plan {
        dir: dir.to_path_buf(),
        mode,
        previous: None,
        discard: vec![],
        lock: None,
    };
    if holds_run || leftovers {
        out.lock = Some(lock(dir)?);
    }
    if leftovers && mode != Mode::Force {
        return Err(err(format!(
            "holds parts of a run ({}) but no resolved.yaml (a --force that was interrupted?); discard them with --force",
            others.join(", ")
        )));
    }
    if !holds_run && !leftovers && !others.is_empty() {
        return Err(err(format!(
            "is not empty ({}) and holds no fewshot run (no resolved.yaml); give a new or empty --run-dir",
            others.join(", ")
        )));
    }
    match mode {
        Mode::New if holds_run => Err(err(format!(
            "already holds a run ({}); continue it with --resume, or discard it and start over with --force",
            describe(&run_contents(dir, bench))
        ))),
        Mode::New => Ok(out),
        Mode::Resume if !holds_run => Err(err(if dir.exists() {
            "holds no run to resume (no resolved.yaml); start a new run without --resume".into()
        } else {
            "does not exist, so there is nothing to resume; check the path, or start a new run without --resume".into()
        })),
        Mode::Resume => {
            let text = std::fs::read_to_string(&resolved).map_err(|e| Error::io(&resolved, e))?;
            let old: Benchmark =
                spec::from_str(&text, &resolved.display().to_string()).map_err(|e| {
                    err(format!(
                        "its resolved.yaml is damaged, so the run's configuration cannot be checked ({e}); restore it, or start over with --force"
                    ))
                })?;
            let diff = checkpoint::config_diff(&run_fingerprint(&old), &run_fingerprint(bench));
            if !diff.is_empty() {
                return Err(err(format!(
                    "was started with a different configuration; refusing to resume (give the original benchmark and options, or start over with --force):\n  {}",
                    diff.join("\n  ")
                )));
            }
            out.previous = match load_results(dir) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}; ignoring it: the rows are rebuilt from the checkpoints");
                    None
                }
            };
            Ok(out)
        }
        Mode::Continue => unreachable!("Continue is New or Resume by now"),
        Mode::Force => {
            if holds_run || leftovers {
                let text = std::fs::read_to_string(&resolved).unwrap_or_default();
                let old = spec::from_str::<Benchmark>(&text, "").ok();
                let mut labels: Vec<String> = bench.algorithms.iter().map(|a| a.label.clone()).collect();
                if let Some(o) = &old {
                    labels.extend(o.algorithms.iter().map(|a| a.label.clone()));
                }
                // And whatever algorithm folders a run left.
                labels.extend(others.iter().filter(|n| run_part(dir, n)).cloned());
                labels.retain(|l| l != layout::RESULTS && l != layout::RESOLVED);
                labels.sort();
                labels.dedup();
                out.discard = contents(dir, &labels);
            }
            Ok(out)
        }
    }
}

fn run_contents(dir: &Path, bench: &Benchmark) -> Vec<(PathBuf, String)> {
    let labels: Vec<String> = bench.algorithms.iter().map(|a| a.label.clone()).collect();
    contents(dir, &labels)
}

/// The files of a run: resolved.yaml, results.json, the leaderboard files
/// and the algorithm folders, each with a short description.
fn contents(dir: &Path, labels: &[String]) -> Vec<(PathBuf, String)> {
    let mut v = Vec::new();
    if dir.join(layout::RESOLVED).is_file() {
        v.push((dir.join(layout::RESOLVED), layout::RESOLVED.to_string()));
    }
    if let Ok(Some(r)) = load_results(dir) {
        v.push((
            dir.join(layout::RESULTS),
            format!("results.json with {} row(s)", r.results.len()),
        ));
    } else if dir.join(layout::RESULTS).exists() {
        v.push((dir.join(layout::RESULTS), layout::RESULTS.into()));
    }
    for f in &layout::RUN_FILES[2..] {
        if dir.join(f).is_file() {
            v.push((dir.join(f), f.to_string()));
        }
    }
    if dir.join(layout::EVAL_DIR).is_dir() {
        v.push((
            dir.join(layout::EVAL_DIR),
            format!("{}/ (bench eval results)", layout::EVAL_DIR),
        ));
    }
    for l in labels {
        let d = dir.join(l);
        if !d.is_dir() {
            continue;
        }
        let what = match checkpoint::list(&d)
            .ok()
            .and_then(|c| c.first().map(|x| x.0))
        {
            Some(step) => format!("{l}/ (checkpoint at meta-step {step})"),
            None => format!("{l}/ (no checkpoint)"),
        };
        v.push((d, what));
    }
    v
}

fn describe(c: &[(PathBuf, String)]) -> String {
    c.iter()
        .map(|(_, w)| w.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The exclusive lock a run holds on its folder (released when dropped,
/// or by the kernel when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

/// Whether a process holds `dir`'s lock (a `bench run` in progress), by a
/// momentary try of it; a folder without a lock file is not in progress.
pub fn in_progress(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(layout::LOCK))
    else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// Lock `dir` for this process, or say that another run holds it.
pub fn lock(dir: &Path) -> Result<Lock> {
    let p = dir.join(layout::LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Lock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::RunDir {
            path: dir.to_path_buf(),
            reason: "is in use by another `bench run` (it holds the folder's lock); wait for it to end or stop it".into(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&p, e)),
    }
}

/// A results folder of an evaluation of a finished run, ready to write:
/// the run's own lock and the folder's, held until dropped.
#[derive(Debug)]
pub struct EvalFolder {
    pub dir: PathBuf,
    _run: Lock,
    _eval: Lock,
}

/// Prepare `<run>/eval/<name>/` for an evaluation (`bench eval`): refused
/// while a `bench run` holds the run folder (the lock is then held for the
/// whole evaluation, so no run starts in it meanwhile), and when an
/// earlier evaluation of that name is there, unless `force`, which
/// discards it (and logs so).
pub fn eval_folder(run: &Path, name: &str, force: bool) -> Result<EvalFolder> {
    eval_folder_with(run, name, force, &[])
}

/// [`eval_folder`], where an earlier evaluation of that name is kept
/// (not refused) when it has a row for none of `adding` (non-empty): the
/// new rows join it, as `bench run --only` joins a run's results.
pub fn eval_folder_with(
    run: &Path,
    name: &str,
    force: bool,
    adding: &[String],
) -> Result<EvalFolder> {
    if !run.is_dir() {
        return Err(Error::RunDir {
            path: run.to_path_buf(),
            reason: "no such run folder".into(),
        });
    }
    let run_lock = lock(run).map_err(|e| match e {
        Error::RunDir { path, .. } => Error::RunDir {
            path,
            reason: "a `bench run` (or another `bench eval`) is still using it: it holds the folder's lock; evaluate when it has finished".into(),
        },
        e => e,
    })?;
    let dir = layout::eval_dir(run, name);
    if !force && !adding.is_empty() {
        if let Ok(Some(prev)) = load_results(&dir) {
            if !prev.results.iter().any(|r| adding.contains(&r.label)) {
                let eval_lock = lock(&dir)?;
                return Ok(EvalFolder {
                    dir,
                    _run: run_lock,
                    _eval: eval_lock,
                });
            }
        }
    }
    if !entries(&dir).is_empty() {
        if !force {
            return Err(Error::RunDir {
                path: dir,
                reason: "holds an earlier evaluation of that name (with a row of an algorithm asked for, or unreadable); give --force to replace it, or --only algorithms it lacks to add them"
                    .into(),
            });
        }
        let eval_lock = lock(&dir)?;
        tracing::warn!(
            "--force: discarding the earlier evaluation in {}",
            dir.display()
        );
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let p = e.map_err(|e| Error::io(&dir, e))?.path();
            if p.file_name().is_some_and(|n| n == layout::LOCK) {
                continue;
            }
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| Error::io(&p, e))?;
        }
        return Ok(EvalFolder {
            dir,
            _run: run_lock,
            _eval: eval_lock,
        });
    }
    crate::util::create_dir_durable(&dir)?;
    let eval_lock = lock(&dir)?;
    Ok(EvalFolder {
        dir,
        _run: run_lock,
        _eval: eval_lock,
    })
}

impl Plan {
    /// Carry the plan out: create and lock the folder, discard what
    /// `--force` replaces (algorithm folders and results first, the old
    /// `resolved.yaml` last, by writing the new one over it), remove stale
    /// temporary files. Returns the lock, to hold until the run ends.
    pub fn commit(&mut self, bench: &Benchmark) -> Result<Lock> {
        crate::util::create_dir_durable(&self.dir)?;
        let lock = match self.lock.take() {
            Some(l) => l,
            None => lock(&self.dir)?,
        };
        if !self.discard.is_empty() {
            tracing::warn!(
                "--force: discarding the previous run in {}: {}",
                self.dir.display(),
                describe(&self.discard)
            );
            for (p, _) in self
                .discard
                .iter()
                .filter(|(p, _)| !p.ends_with(layout::RESOLVED))
            {
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(p, e)),
                }
            }
            crate::util::sync_dir(&self.dir)?;
        }
        checkpoint::remove_stale_temps(&self.dir)?;
        write_atomic(
            &self.dir.join(layout::RESOLVED),
            spec::to_string(bench)?.as_bytes(),
        )?;
        Ok(lock)
    }
}
