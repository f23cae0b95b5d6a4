//! A run's results: the one [`RunResults`] with its rows, read and written
//! in one place.
//!
//! `results.json` ([`layout::RESULTS`]) holds every row with the
//! accuracy of every test episode, so that each row's paired difference to
//! the best ([`crate::report::stats`]) can be recomputed by any reader;
//! `<label>/test_episodes.csv` keeps each episode's accuracy and loss
//! beside the algorithm's checkpoints. This module knows results; it never
//! runs anything.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::algo::EpisodeScore;
use crate::error::{Error, Result};
use crate::layout;
use crate::model::norm::NormProtocol;
use crate::report::stats::{paired_difference, Interval};
use crate::spec::{self, Select};
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
    /// episodes (this row minus the best; [`crate::report::stats`]), `None` for the
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
    /// The run seeds this row averages (`bench run --seeds`); empty for a
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
    /// Every budget the row was meta-trained under, in order (one, unless
    /// a resumed run's budget changed; empty in results from before they
    /// were recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<spec::BudgetSpan>,
    /// Set on a row added by `bench import`: scored outside fewshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
}

/// Where an imported row's scores came from (`bench import`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imported {
    /// The scores file as given.
    pub file: PathBuf,
    /// `sha256:<hex>` of the file's bytes.
    pub sha256: String,
    /// `episode accuracy` or `query predictions`.
    pub scores: String,
    /// The episode fingerprint the file was checked against.
    pub fingerprint: String,
    /// When it was imported (UTC, RFC 3339).
    pub at: String,
}

/// The version of the `results.json` layout this fewshot writes
/// (docs/results-schema.md). Files without the field are version 1.
pub const SCHEMA_VERSION: u32 = 2;

fn schema_v1() -> u32 {
    1
}

/// What made a result: the program, the machine's threads and kernels,
/// the data and the exact test episodes (docs/results-schema.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The fewshot version (Cargo.toml).
    pub fewshot_version: String,
    /// The git commit the binary was built from (`None` outside a git
    /// checkout), with `-dirty` when its sources had uncommitted changes.
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Worker threads (rayon) the run computed with.
    pub threads: usize,
    /// `fused` or `composed` (the learner's kernels on this device).
    pub kernels: String,
    /// When the session that computed the rows started (UTC, RFC 3339;
    /// a resumed run: its latest session).
    #[serde(default, alias = "written")]
    pub started: String,
    /// The data fingerprint of the dataset ([`crate::data::fingerprint`]).
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// The episode fingerprint of the test episodes the rows were scored on.
    #[serde(default)]
    pub episodes_fingerprint: Option<String>,
}

impl Provenance {
    /// This program on this machine, now; the fingerprints as given.
    pub fn here(
        kernels: &str,
        data_fingerprint: Option<String>,
        episodes_fingerprint: Option<String>,
    ) -> Provenance {
        Provenance {
            fewshot_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: option_env!("FEWSHOT_GIT_COMMIT")
                .filter(|c| !c.is_empty())
                .map(String::from),
            threads: rayon::current_num_threads(),
            kernels: kernels.into(),
            started: crate::util::utc_now(),
            data_fingerprint,
            episodes_fingerprint,
        }
    }
}

impl AlgoResult {
    /// A row for `label` that scored `episode_accuracy` on its test
    /// episodes, with the mean and its interval; the training fields are
    /// zero (for tools and tests that build results by hand).
    pub fn scored(label: &str, episode_accuracy: &[f64]) -> AlgoResult {
        let i = crate::report::stats::mean_interval(episode_accuracy);
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
            budgets: vec![],
            imported: None,
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    /// The layout version ([`SCHEMA_VERSION`]; absent: 1).
    #[serde(default = "schema_v1")]
    pub schema_version: u32,
    /// What made these results (absent in files of schema 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    pub benchmark: String,
    pub dataset: String,
    pub episode: crate::data::sampler::EpisodeSpec,
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
    /// The run seeds a merged multi-seed run averages (`bench run --seeds`).
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
    /// What a reader must know to read the rows (an evaluation from fresh
    /// initialisations, the algorithms it could not evaluate and why),
    /// printed under the leaderboard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunResults {
    /// Read the `results.json` of the results folder `run_dir` (any version
    /// of fewshot's): rows written before per-episode accuracies were kept get
    /// them from `<label>/test_episodes.csv`, and every row's paired difference
    /// to the best is (re)computed. A multi-seed run folder has no results of
    /// its own: `crate::run::catalogue::load` merges its units'.
    pub fn read(run_dir: &Path) -> Result<RunResults> {
        let path = run_dir.join(layout::RESULTS);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut r: RunResults = serde_json::from_str(&text).map_err(|e| Error::Results {
            path: path.clone(),
            reason: format!("not a fewshot results file: {e}"),
        })?;
        if r.schema_version > SCHEMA_VERSION {
            return Err(Error::Results {
                path,
                reason: format!(
                    "written with results schema {}, newer than this fewshot reads ({SCHEMA_VERSION}): update fewshot",
                    r.schema_version
                ),
            });
        }
        r.run_dir = run_dir.to_path_buf();
        for row in &mut r.results {
            if row.episode_accuracy.is_empty() {
                let csv = run_dir.join(&row.label).join(layout::TEST_EPISODES);
                if csv.is_file() {
                    row.episode_accuracy = read_episode_accuracy(&csv)?;
                }
            }
            if !row.episode_accuracy.is_empty() && row.episode_accuracy.len() != row.test_episodes {
                return Err(Error::Csv {
                    path: run_dir.join(&row.label).join(layout::TEST_EPISODES),
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

    /// Write `results.json` into `dir` atomically (the leaderboard files
    /// beside it: [`crate::report::write_files`]).
    pub fn write_json(&self, dir: &Path) -> Result<()> {
        let path = dir.join(layout::RESULTS);
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Results {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, json.as_bytes())
    }
}

/// The accuracy column of a `test_episodes.csv`, in episode order: columns
/// found by header name (extra columns, quoting and a byte order mark are
/// fine, [`crate::data::table`]); the `episode` column must count 0, 1, ...
fn read_episode_accuracy(path: &Path) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, why: String| Error::Csv {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why}"),
    };
    crate::data::table::read(path, &text, &["episode", "accuracy"])?
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            if row.values[0].parse::<usize>().ok() != Some(i) {
                return Err(bad(
                    row.line,
                    format!(
                        "episode `{}`, expected {i} (episodes in order from 0)",
                        row.values[0]
                    ),
                ));
            }
            row.values[1].parse::<f64>().map_err(|_| {
                bad(
                    row.line,
                    format!("accuracy `{}` is not a number", row.values[1]),
                )
            })
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
pub fn write_episode_scores(scores: &[EpisodeScore], path: &Path) -> Result<()> {
    let rows = scores.iter().enumerate().map(|(i, sc)| {
        [
            i.to_string(),
            format!("{:.6}", sc.accuracy),
            format!("{:.6}", sc.loss),
        ]
    });
    let s = crate::util::csv_text(&["episode", "accuracy", "loss"], rows);
    write_atomic(path, s.as_bytes())
}

/// One row from the rows of several run seeds of one algorithm.
pub fn combine(per_seed: &[(u64, AlgoResult)]) -> AlgoResult {
    let n = per_seed.len();
    let mean =
        |f: &dyn Fn(&AlgoResult) -> f64| per_seed.iter().map(|(_, r)| f(r)).sum::<f64>() / n as f64;
    let r0 = &per_seed[0].1;
    let episodes = r0.episode_accuracy.len();
    let same_episodes = per_seed
        .iter()
        .all(|(_, r)| r.episode_accuracy.len() == episodes);
    let episode_accuracy: Vec<f64> = if same_episodes {
        (0..episodes)
            .map(|e| {
                per_seed
                    .iter()
                    .map(|(_, r)| r.episode_accuracy[e])
                    .sum::<f64>()
                    / n as f64
            })
            .collect()
    } else {
        vec![]
    };
    let seed_accuracy: Vec<f64> = per_seed.iter().map(|(_, r)| r.accuracy).collect();
    let interval = crate::report::stats::mean_interval(&episode_accuracy);
    let vals: Vec<f64> = per_seed
        .iter()
        .filter_map(|(_, r)| r.best_val_accuracy)
        .collect();
    AlgoResult {
        label: r0.label.clone(),
        algorithm: r0.algorithm.clone(),
        accuracy: mean(&|r| r.accuracy),
        ci95: if same_episodes { interval.ci95 } else { None },
        test_episodes: r0.test_episodes,
        meta_steps: mean(&|r| r.meta_steps as f64).round() as u64,
        train_episodes: mean(&|r| r.train_episodes as f64).round() as u64,
        train_seconds: mean(&|r| r.train_seconds),
        test_seconds: mean(&|r| r.test_seconds),
        selected: per_seed
            .iter()
            .map(|(_, r)| r.selected.as_str())
            .collect::<Vec<_>>()
            .join(","),
        best_val_accuracy: (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64),
        vs_best: None,
        published: r0.published.clone(),
        episode_accuracy,
        seeds: per_seed.iter().map(|(s, _)| *s).collect(),
        seed_sd: crate::report::stats::sample_sd(&seed_accuracy),
        seed_accuracy,
        budgets: r0.budgets.clone(),
        imported: None,
    }
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
            schema_version: SCHEMA_VERSION,
            provenance: None,
            benchmark: "t".into(),
            dataset: "omniglot".into(),
            episode: crate::data::sampler::EpisodeSpec {
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
            notes: vec![],
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
        let got = RunResults::read(dir.path()).unwrap();
        assert_eq!(got.run_dir, dir.path());
        let d = got.results[0].vs_best.unwrap();
        assert!((d.mean + 0.1).abs() < 1e-9, "{d:?}");
        assert!(d.ci95.unwrap() < 1e-12);
        // Written by another tool (an index column, quoted, CRLF), the
        // scores read the same.
        std::fs::write(
            dir.path().join("a/test_episodes.csv"),
            "\u{feff},\"accuracy\",episode,loss\r\n0,0.5,0,1\r\n1,0.75,1,1\r\n",
        )
        .unwrap();
        assert_eq!(
            super::read_episode_accuracy(&dir.path().join("a/test_episodes.csv")).unwrap(),
            [0.5, 0.75]
        );
        // A damaged score file is named with its line.
        std::fs::write(
            dir.path().join("a/test_episodes.csv"),
            "episode,accuracy,loss\n0,x,1\n",
        )
        .unwrap();
        let e = RunResults::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("a/test_episodes.csv") && e.contains("line 2"),
            "{e}"
        );
        std::fs::write(dir.path().join("results.json"), "{").unwrap();
        let e = RunResults::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("results.json") && e.contains("not a fewshot results file"),
            "{e}"
        );
    }

    #[test]
    fn rows_of_several_seeds_average_episode_by_episode() {
        let a = row("x", &[1.0, 0.0, 0.5, 0.5]);
        let b = row("x", &[0.0, 0.0, 1.0, 0.5]);
        let c = combine(&[(0, a), (1, b)]);
        assert_eq!(c.episode_accuracy, vec![0.5, 0.0, 0.75, 0.5]);
        // Seed accuracies 0.5 and 0.375: mean 0.4375, sd |0.5-0.375|/sqrt(2).
        assert!((c.accuracy - 0.4375).abs() < 1e-12);
        assert!((c.seed_sd.unwrap() - 0.125 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(c.seeds, vec![0, 1]);
        // The interval is over the 4 seed-averaged episodes: mean 0.4375,
        // sample sd sqrt(0.0859375/3), t_{0.975,3} = 3.182446.
        let sd =
            (((0.0625f64).powi(2) + 0.4375f64.powi(2) + 0.3125f64.powi(2) + 0.0625f64.powi(2))
                / 3.0)
                .sqrt();
        assert!((c.ci95.unwrap() - 3.182446305284263 * sd / 2.0).abs() < 1e-9);
        let one = combine(&[(7, row("x", &[1.0, 0.0]))]);
        assert_eq!(one.seed_sd, None);
    }
}
