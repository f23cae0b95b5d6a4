//! The catalogue of runs: what `bench show`, `bench report` and `bench
//! compare` read. A run folder is either a single run (its own
//! `results.json`) or a multi-seed run whose units are merged on every
//! read ([`crate::run::seeds`]); [`load`] reads both, [`latest_runs`] finds
//! the newest complete run of every benchmark under a folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout;
use crate::report::results::RunResults;
use crate::run::seeds;
use crate::spec::Benchmark;

/// The results of the run folder `dir`: its `results.json`, or for a
/// multi-seed run the merge of its finished units.
pub fn load(dir: &Path) -> Result<RunResults> {
    let going = crate::run::rundir::in_progress(dir);
    let mut r = if seeds::is_multi_seed(dir) {
        let mut r = seeds::merge(dir)?;
        let plan = seeds::read_plan(dir)?;
        let missing: Vec<String> = plan
            .units()
            .iter()
            // A merged row lists the seeds whose unit it averages.
            .filter(|u| {
                !r.results
                    .iter()
                    .any(|row| row.label == u.label && row.seeds.contains(&u.seed))
            })
            .map(|u| format!("{} (seed {})", u.label, u.seed))
            .collect();
        if !missing.is_empty() {
            r.notes.push(format!(
                "incomplete: {} of {} units have no results yet: {}; the rows average the finished ones",
                missing.len(),
                plan.units().len(),
                missing.join(", ")
            ));
        }
        r
    } else {
        match RunResults::read(dir) {
            Err(Error::Io { .. }) if going && !dir.join(crate::layout::RESULTS).is_file() => {
                return Err(Error::RunDir {
                    path: dir.to_path_buf(),
                    reason: "a `bench run` is still going in it (it holds the folder's lock): results appear when its first algorithm has been tested".into(),
                })
            }
            r => r?,
        }
    };
    if !seeds::is_multi_seed(dir) {
        if let Ok(b) = Benchmark::of_run(dir) {
            let missing: Vec<&str> = b
                .algorithms
                .iter()
                .filter(|a| !r.results.iter().any(|x| x.label == a.label))
                .map(|a| a.label.as_str())
                .collect();
            if !missing.is_empty() {
                r.notes.push(format!(
                    "incomplete: no results yet for {}{}",
                    missing.join(", "),
                    if going {
                        " (a `bench run` is still going in this folder)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Ok(r)
}

/// Whether a run has a row for every algorithm its `resolved.yaml` lists
/// (runs from before resolved.yaml are taken as complete).
pub fn complete(r: &RunResults) -> bool {
    if seeds::is_multi_seed(&r.run_dir) {
        return seeds::complete(&r.run_dir);
    }
    match Benchmark::of_run(&r.run_dir) {
        Ok(b) => b
            .algorithms
            .iter()
            .all(|a| r.results.iter().any(|x| x.label == a.label)),
        Err(_) => !r.results.is_empty(),
    }
}

/// The newest complete run (by the time its results.json was written) in
/// each benchmark folder of `root` (`runs/<benchmark>/<run>/`), sorted by
/// benchmark name. Folders that are not runs are skipped.
pub fn latest_runs(root: &Path) -> Result<Vec<RunResults>> {
    let mut out = vec![];
    let mut benches: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    benches.sort();
    for b in benches {
        let mut best: Option<(std::time::SystemTime, RunResults)> = None;
        let Ok(rd) = std::fs::read_dir(&b) else {
            continue;
        };
        for run in rd.filter_map(|e| e.ok().map(|e| e.path())) {
            let Some(t) = written(&run) else {
                continue;
            };
            let Ok(r) = load(&run) else {
                continue;
            };
            if complete(&r) && best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, r));
            }
        }
        out.extend(best.map(|(_, r)| r));
    }
    Ok(out)
}

/// When a run's results were last written: its results.json, or for a
/// multi-seed run the newest of its units'.
fn written(run: &Path) -> Option<std::time::SystemTime> {
    let time = |d: &Path| {
        d.join(layout::RESULTS)
            .metadata()
            .and_then(|m| m.modified())
            .ok()
    };
    if seeds::is_multi_seed(run) {
        let plan = seeds::read_plan(run).ok()?;
        plan.units().iter().filter_map(|u| time(&u.dir(run))).max()
    } else {
        time(run)
    }
}
