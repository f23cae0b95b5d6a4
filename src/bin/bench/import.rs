//! `bench import`: put scores computed outside fewshot on a run's
//! leaderboard (fewshot::report::import).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fewshot::report;
use fewshot::report::results::RunResults;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Results folder: a run (`runs/<benchmark>/<id>`) or one of its
    /// evaluations (`RUN/eval/<name>`)
    run: PathBuf,
    /// The row's label (not one the leaderboard has)
    #[arg(long)]
    label: String,
    /// CSV of per-episode accuracy (`episode,accuracy,fingerprint`) or
    /// per-query predictions (`episode,query,prediction,fingerprint`) on
    /// the exported test episodes (docs/interop.md)
    #[arg(long)]
    scores: PathBuf,
}

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    fewshot::spec::check_label(&a.label).map_err(|e| anyhow::anyhow!("--label: {e}"))?;
    // A label of the run's benchmark is the row its own algorithm writes
    // (a later `--resume`, `--only` or `bench eval` would replace or refuse
    // the imported row); an evaluation folder's run is two levels up.
    let bench = fewshot::spec::Benchmark::of_run(&a.run).ok();
    let of_eval = a
        .run
        .parent()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == fewshot::layout::EVAL_DIR)
        })
        .and_then(|p| p.parent())
        .and_then(|run| fewshot::spec::Benchmark::of_run(run).ok());
    if let Some(b) = bench.as_ref().or(of_eval.as_ref()) {
        anyhow::ensure!(
            b.algorithm(&a.label).is_err(),
            "--label {}: {} has an algorithm of that label; choose another",
            a.label,
            b.name
        );
    }
    // Held while the results are rewritten: a run working on the folder
    // refuses to start, and this refuses while one works.
    let _lock = fewshot::run::rundir::lock(&a.run)?;
    let mut r = RunResults::read(&a.run)?;
    let recorded = r
        .provenance
        .as_ref()
        .and_then(|p| p.episodes_fingerprint.clone());
    let fingerprint = match recorded {
        Some(f) => f,
        None => {
            // Results written before fingerprints were recorded: the run's
            // own benchmark says which episodes its rows were scored on.
            let b = bench.with_context(|| {
                format!(
                    "{} records no episode fingerprint, and it is not a run folder whose benchmark gives them",
                    a.run.display()
                )
            })?;
            fewshot::run::eval::test_fingerprint(&b, data_dir)?
        }
    };
    let i = report::import::import(&mut r, &a.label, &a.scores, &fingerprint)?;
    report::write_files(&r, &a.run)?;
    let row = &r.results[i];
    let imported = row.imported.as_ref().expect("an imported row");
    println!(
        "imported `{}` from {} ({}, {} episodes): {:.2}%",
        row.label,
        a.scores.display(),
        imported.scores,
        row.test_episodes,
        100.0 * row.accuracy
    );
    report::fill_published(&mut r);
    print!("{}", report::terminal(&r));
    Ok(())
}
