//! The names of everything a run folder holds, in one place: every module
//! that writes or reads a run joins these names (never a string literal of
//! its own), and a benchmark's algorithm labels may not take them.
//!
//! A run folder (`runs/<benchmark>/<run-id>/` by default):
//! - [`RESOLVED`]: the benchmark with every default made explicit;
//! - [`RESULTS`]: the leaderboard with every test episode's score;
//! - [`LEADERBOARD_MD`], [`LEADERBOARD_CSV`]: the same table for readers
//!   and scripts;
//! - [`CURVES_SVG`], [`CURVES_PNG`]: every algorithm's validation accuracy
//!   against meta-training time and training episodes (few-shot runs);
//! - [`LOG`]: every log line of the run, appended by each session;
//! - [`LOCK`]: held while a process works on the folder;
//! - [`EVAL_DIR`]`/<name>/`: the run's evaluations on other benchmarks or
//!   episode files (`bench eval`), each a results folder of its own;
//! - `<label>/`: one algorithm's [`CHECKPOINTS`], [`CURVE`],
//!   [`TEST_EPISODES`] and gate traces ([`GATES_JSONL`] ...);
//! - optimisation benchmarks: [`LOSS_CURVES`] and [`LOSS_CURVES_SVG`] at
//!   the top (every optimiser's loss curve over the T steps), and
//!   [`TEST_PROBLEMS`] in each `<label>/` instead of [`TEST_EPISODES`].
//!
//! A multi-seed run folder holds [`PLAN`] and one unit folder per (run
//! seed, algorithm): [`unit_dir`].

use std::path::{Path, PathBuf};

/// The resolved benchmark a run was started with.
pub const RESOLVED: &str = "resolved.yaml";
/// The run's results (rows, per-episode scores, provenance).
pub const RESULTS: &str = "results.json";
/// The leaderboard as Markdown.
pub const LEADERBOARD_MD: &str = "leaderboard.md";
/// The leaderboard as CSV.
pub const LEADERBOARD_CSV: &str = "leaderboard.csv";
/// The validation curves of every algorithm as one figure
/// ([`crate::report::curves`]).
pub const CURVES_SVG: &str = "curves.svg";
/// See [`CURVES_SVG`].
pub const CURVES_PNG: &str = "curves.png";
/// The run's log file.
pub const LOG: &str = "run.log";
/// The lock file of a run folder.
pub const LOCK: &str = ".lock";
/// The folder of a run's evaluations on other benchmarks (`bench eval`),
/// discarded with the run by `--force`.
pub const EVAL_DIR: &str = "eval";
/// The plan file of a multi-seed run folder.
pub const PLAN: &str = "plan.json";
/// An optimisation run's loss curves (mean and spread per step).
pub const LOSS_CURVES: &str = "loss_curves.csv";
/// See [`LOSS_CURVES`]: the figure.
pub const LOSS_CURVES_SVG: &str = "loss_curves.svg";

/// The files a run writes at the top of its folder (algorithm labels may
/// not take these names, nor [`EVAL_DIR`]'s).
pub const RUN_FILES: [&str; 9] = [
    RESOLVED,
    RESULTS,
    LEADERBOARD_MD,
    LEADERBOARD_CSV,
    CURVES_SVG,
    CURVES_PNG,
    LOG,
    LOSS_CURVES,
    LOSS_CURVES_SVG,
];

/// An algorithm folder's checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// An algorithm folder's validation curve.
pub const CURVE: &str = "curve.csv";
/// An algorithm folder's score of every test episode.
pub const TEST_EPISODES: &str = "test_episodes.csv";
/// A learned optimiser's series (updates, gates) summarised per step and
/// parameter group on test problems.
pub const SERIES: &str = "series.csv";
/// An optimiser folder's final loss on every test problem.
pub const TEST_PROBLEMS: &str = "test_problems.csv";
/// What marks a folder as an algorithm's: any of these inside it.
pub const ALGORITHM_FILES: [&str; 4] = [CHECKPOINTS, CURVE, TEST_EPISODES, TEST_PROBLEMS];

/// Gate traces inside an algorithm folder (docs/traces.md).
pub const GATES_JSONL: &str = "gates.jsonl";
/// See [`GATES_JSONL`].
pub const GATES_CSV: &str = "gates.csv";
/// See [`GATES_JSONL`].
pub const GATES_SVG: &str = "gates.svg";
/// See [`GATES_JSONL`].
pub const GATES_PNG: &str = "gates.png";

/// Whether `label` is a name the run folder itself uses.
pub fn is_reserved(label: &str) -> bool {
    RUN_FILES
        .iter()
        .chain([&EVAL_DIR])
        .any(|r| r.eq_ignore_ascii_case(label))
}

/// The unit folder of run seed `seed` and algorithm `label` in the
/// multi-seed run folder `root`.
pub fn unit_dir(root: &Path, seed: u64, label: &str) -> PathBuf {
    root.join(format!("seed-{seed}")).join(label)
}

/// Where the evaluation of a run on benchmark (or episode file) `name` is
/// written.
pub fn eval_dir(run: &Path, name: &str) -> PathBuf {
    run.join(EVAL_DIR).join(name)
}
