//! Several run seeds, and runs split into independent units.
//!
//! Two seeds decide a run. The **episode seed** (the benchmark's `seed`)
//! fixes the validation and test episodes: every algorithm and every run
//! seed answers the same ones. The **run seed** decides the rest:
//! initialisation, the training episodes and every random choice of
//! meta-training. `bench run B --seeds 0,1,2` trains each algorithm once per
//! run seed, and the table reports, per algorithm, the mean over seeds with
//! the across-seed standard deviation beside the 95% interval over the test
//! episodes.
//!
//! Each (run seed, algorithm) pair is a **unit**: an ordinary run folder of
//! that one algorithm (`--only`), independent of every other unit, so that
//! units can run as separate processes or as the tasks of a job array
//! (`bench plan`, `bench run ... --unit I`). A multi-seed run folder `R`:
//!
//! - `R/plan.json`: the [`SeedPlan`] (benchmark, profile, seeds, labels, the
//!   options every unit runs with), written before any unit starts;
//! - `R/seed-<s>/<label>/`: a unit, with its own `resolved.yaml` (run seed
//!   `s`), `results.json`, `run.log` and checkpoints;
//! - `R/leaderboard.md`, `R/leaderboard.csv`: the merged table, written by
//!   `bench run --seeds` after its last unit (`bench show R` and
//!   `bench report` merge the units whenever they read `R`, so a job
//!   array needs no final step).
//!
//! Merging ([`merge`]) checks that the units agree on everything but the
//! run seed (benchmark, resolved configuration, budgets, test episodes),
//! then gives one row per algorithm: the mean of the seeds' accuracies, the
//! per-episode accuracies averaged over seeds (the same episodes, so the
//! episode interval and the paired differences to the best row are those of
//! the seed-averaged scores), and the across-seed standard deviation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::report::results::{combine, pair_with_best, AlgoResult, RunResults};
use crate::run::rundir::Mode;
use crate::run::runner::{self, RunOptions};
use crate::spec::Benchmark;
use crate::util::write_atomic;

/// What a multi-seed run is: written once, checked by every unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedPlan {
    pub benchmark: String,
    pub profile: String,
    /// Run seeds, in the order units are numbered.
    pub seeds: Vec<u64>,
    /// Algorithm labels, in the benchmark's order.
    pub labels: Vec<String>,
    /// The `bench run` options every unit runs with (benchmark, profile,
    /// budget overrides), as command-line words.
    pub args: Vec<String>,
}

/// One (run seed, algorithm) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub seed: u64,
    pub label: String,
}

impl Unit {
    /// The unit's run folder in the multi-seed folder `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        crate::layout::unit_dir(root, self.seed, &self.label)
    }
}

impl SeedPlan {
    /// The plan for `bench` over `seeds`, restricted to `only` (empty: all).
    pub fn new(
        bench: &Benchmark,
        seeds: &[u64],
        only: &[String],
        args: Vec<String>,
    ) -> Result<SeedPlan> {
        if seeds.is_empty() {
            return Err(Error::invalid("--seeds", "", "give at least one run seed"));
        }
        let mut sorted = seeds.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != seeds.len() {
            return Err(Error::invalid(
                "--seeds",
                format!("{seeds:?}"),
                "a run seed is given twice",
            ));
        }
        for l in only {
            bench.algorithm(l)?;
        }
        Ok(SeedPlan {
            benchmark: bench.name.clone(),
            profile: bench.profile.clone(),
            seeds: seeds.to_vec(),
            labels: bench
                .algorithms
                .iter()
                .filter(|a| only.is_empty() || only.contains(&a.label))
                .map(|a| a.label.clone())
                .collect(),
            args,
        })
    }

    /// Every unit, seed-major: unit `i` is seed `i / labels`, label
    /// `i % labels` (the task index of a job array).
    pub fn units(&self) -> Vec<Unit> {
        self.seeds
            .iter()
            .flat_map(|&seed| {
                self.labels.iter().map(move |l| Unit {
                    seed,
                    label: l.clone(),
                })
            })
            .collect()
    }

    /// Unit `i`, or an error saying how many there are.
    pub fn unit(&self, i: usize) -> Result<Unit> {
        let units = self.units();
        let n = units.len();
        units.into_iter().nth(i).ok_or_else(|| {
            Error::invalid(
                "--unit",
                i.to_string(),
                format!("this plan has {n} units (0..={})", n.saturating_sub(1)),
            )
        })
    }

    /// Write the plan into `root`, or check that the plan already there is
    /// this one (a unit of another plan would mix two experiments).
    pub fn write_or_check(&self, root: &Path) -> Result<()> {
        let path = root.join(crate::layout::PLAN);
        if path.is_file() {
            let old = read_plan(root)?;
            // The options are recorded, not compared (a name and a path
            // give the same benchmark); [`merge`] checks the units'
            // resolved configurations instead.
            let key = |p: &SeedPlan| {
                (
                    p.benchmark.clone(),
                    p.profile.clone(),
                    p.seeds.clone(),
                    p.labels.clone(),
                )
            };
            if key(&old) != key(self) {
                return Err(Error::RunDir {
                    path: root.to_path_buf(),
                    reason: format!(
                        "holds another multi-seed run ({}: seeds {:?}, algorithms {}, options `{}`); this one is {}: seeds {:?}, algorithms {}, options `{}`. Give another --run-dir",
                        old.benchmark,
                        old.seeds,
                        old.labels.join(","),
                        old.args.join(" "),
                        self.benchmark,
                        self.seeds,
                        self.labels.join(","),
                        self.args.join(" ")
                    ),
                });
            }
            return Ok(());
        }
        if root.is_file() {
            return Err(Error::RunDir {
                path: root.to_path_buf(),
                reason: "is a file, not a folder; give a folder for --run-dir".into(),
            });
        }
        if root.join(crate::layout::RESOLVED).is_file() {
            return Err(Error::RunDir {
                path: root.to_path_buf(),
                reason: "holds a single-seed run; give another --run-dir for a multi-seed run"
                    .into(),
            });
        }
        crate::util::create_dir_durable(root)?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Config {
            source_name: crate::layout::PLAN.into(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, json.as_bytes())
    }
}

/// Whether `dir` is a multi-seed run folder (it has a plan).
pub fn is_multi_seed(dir: &Path) -> bool {
    dir.join(crate::layout::PLAN).is_file()
}

/// The plan of the multi-seed folder `root`.
pub fn read_plan(root: &Path) -> Result<SeedPlan> {
    let path = root.join(crate::layout::PLAN);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        source_name: path.display().to_string(),
        reason: format!("not a fewshot plan: {e}"),
    })
}

/// Whether every unit of the plan in `root` has its row.
pub fn complete(root: &Path) -> bool {
    let Ok(plan) = read_plan(root) else {
        return false;
    };
    plan.units().iter().all(|u| {
        RunResults::read(&u.dir(root)).is_ok_and(|r| r.results.iter().any(|x| x.label == u.label))
    })
}

/// What must agree between two units of one multi-seed run: the resolved
/// benchmark without its run seed, and the unit's budget.
fn agreement(b: &Benchmark) -> serde_json::Value {
    let mut b = b.clone();
    b.run_seed = 0;
    serde_json::json!({
        "run": crate::run::rundir::run_fingerprint(&b),
        "budgets": b.algorithms.iter().map(|a| b.budget_of(a).describe()).collect::<Vec<_>>(),
        "test_episodes": b.test_episodes,
        "select": b.select,
    })
}

/// The merged results of the multi-seed folder `root`: one row per
/// algorithm over the seeds whose unit has finished (module docs).
pub fn merge(root: &Path) -> Result<RunResults> {
    let plan = read_plan(root)?;
    let mut first: Option<(PathBuf, serde_json::Value, RunResults)> = None;
    // (label, seed, row) of every finished unit.
    let mut rows: Vec<(String, u64, AlgoResult)> = vec![];
    for u in plan.units() {
        let dir = u.dir(root);
        if !dir.join(crate::layout::RESULTS).is_file() {
            continue;
        }
        let r = RunResults::read(&dir)?;
        let Some(row) = r.results.iter().find(|x| x.label == u.label) else {
            continue;
        };
        let b = Benchmark::of_run(&dir)?;
        if b.run_seed != u.seed {
            return Err(Error::RunDir {
                path: dir.clone(),
                reason: format!(
                    "was run with run seed {}, but its folder is seed-{}",
                    b.run_seed, u.seed
                ),
            });
        }
        let a = agreement(&b);
        match &first {
            None => first = Some((dir.clone(), a, r.clone())),
            Some((d0, a0, _)) => {
                let diff = crate::run::checkpoint::config_diff(a0, &a);
                if !diff.is_empty() {
                    return Err(Error::RunDir {
                        path: dir.clone(),
                        reason: format!(
                            "was run with another configuration than {} (units of one multi-seed run must differ in the run seed only):\n  {}",
                            d0.display(),
                            diff.join("\n  ")
                        ),
                    });
                }
            }
        }
        rows.push((u.label.clone(), u.seed, row.clone()));
    }
    let Some((_, _, base)) = first else {
        return Err(Error::MissingData {
            what: format!("finished units of the multi-seed run of {}", plan.benchmark),
            path: root.to_path_buf(),
            hint: format!(
                "none of its {} units has results yet; run them with `bench run ... --unit I` or `bench run --seeds`",
                plan.units().len()
            ),
        });
    };
    let mut results = vec![];
    for label in &plan.labels {
        let of: Vec<&(String, u64, AlgoResult)> =
            rows.iter().filter(|(l, _, _)| l == label).collect();
        if !of.is_empty() {
            results.push(combine(
                &of.iter()
                    .map(|(_, s, r)| (*s, r.clone()))
                    .collect::<Vec<_>>(),
            ));
        }
    }
    pair_with_best(&mut results);
    let mut seeds: Vec<u64> = rows.iter().map(|(_, s, _)| *s).collect();
    seeds.sort_unstable();
    seeds.dedup();
    Ok(RunResults {
        run_seed: None,
        run_seeds: seeds,
        run_dir: root.to_path_buf(),
        results,
        ..base
    })
}

/// How a multi-seed run is run.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// The multi-seed run folder.
    pub run_dir: PathBuf,
    /// New run, `--resume` or `--force` of the whole folder.
    pub mode: Mode,
    /// Run only this unit (a job-array task), which continues whatever an
    /// earlier attempt left.
    pub unit: Option<usize>,
    pub show_progress: bool,
    /// Gate traces on this many test episodes ([`RunOptions`]).
    pub trace_episodes: usize,
    pub device: DeviceSpec,
    /// What a unit may cost ([`crate::run::cost`]).
    pub limits: crate::run::cost::Limits,
}

/// Run the units of `plan` for `bench` (all of them, or `opts.unit`), each
/// an ordinary run in its unit folder. Returns the unit's results for one
/// unit; after all units, the merged results, with the merged leaderboard
/// written into the multi-seed folder.
pub fn run(
    bench: &Benchmark,
    plan: &SeedPlan,
    data_dir: &Path,
    opts: &SeedOptions,
) -> Result<RunResults> {
    let root = &opts.run_dir;
    if opts.mode == Mode::New && opts.unit.is_none() && is_multi_seed(root) {
        return Err(Error::RunDir {
            path: root.clone(),
            reason: "already holds a multi-seed run; continue it with --resume, or discard it and start over with --force".into(),
        });
    }
    plan.write_or_check(root)?;
    let units = match opts.unit {
        Some(i) => vec![plan.unit(i)?],
        None => plan.units(),
    };
    // A unit of a job array continues whatever an earlier attempt left; a
    // resumed multi-seed run starts the units it never reached.
    let unit_mode = match (opts.unit, opts.mode) {
        (Some(_), _) | (None, Mode::Resume) => Mode::Continue,
        (None, m) => m,
    };
    let mut last = None;
    for u in &units {
        let mut b = bench.clone();
        b.run_seed = u.seed;
        tracing::info!("unit: run seed {}, {}", u.seed, u.label);
        last = Some(runner::run(
            &b,
            data_dir,
            &RunOptions {
                run_dir: u.dir(root),
                mode: unit_mode,
                only: vec![u.label.clone()],
                show_progress: opts.show_progress,
                trace_episodes: opts.trace_episodes,
                device: opts.device,
                limits: opts.limits,
            },
        )?);
    }
    if opts.unit.is_some() {
        return last.ok_or_else(|| Error::RunDir {
            path: root.clone(),
            reason: "the plan has no units".into(),
        });
    }
    let merged = merge(root)?;
    crate::report::write_leaderboards(&merged, root)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_numbered_seed_major() {
        let plan = SeedPlan {
            benchmark: "b".into(),
            profile: "budgeted".into(),
            seeds: vec![3, 5],
            labels: vec!["a".into(), "b".into(), "c".into()],
            args: vec![],
        };
        let u = plan.units();
        assert_eq!(u.len(), 6);
        assert_eq!(
            plan.unit(4).unwrap(),
            Unit {
                seed: 5,
                label: "b".into()
            }
        );
        assert_eq!(u[2].dir(Path::new("R")), Path::new("R/seed-3/c"));
        assert!(plan.unit(6).unwrap_err().to_string().contains("6 units"));
    }
}
