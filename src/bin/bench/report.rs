//! `bench report`: one leaderboard across benchmarks, or one HTML page
//! with every run's leaderboard, figures and provenance.

use std::path::PathBuf;

use anyhow::Result;
use fewshot::report;
use fewshot::run::catalogue::load as load_results;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folders to include [default: the newest complete run of each
    /// benchmark under --root]
    runs: Vec<PathBuf>,
    /// Folder of runs, `<benchmark>/<run>/` below it (without RUNS)
    #[arg(long, default_value = "runs")]
    root: PathBuf,
    /// text, md, json (an array of the runs' results, as `bench show
    /// --format json` prints each) or html (one self-contained page: each
    /// run's leaderboard, validation curves, gate figures and provenance;
    /// opens offline)
    #[arg(long, default_value = "text", value_parser = ["text", "md", "json", "html"])]
    format: String,
    /// Write the report to FILE (atomically) instead of stdout, e.g.
    /// `--format html --out report.html`
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let mut runs = if a.runs.is_empty() {
        fewshot::run::catalogue::latest_runs(&a.root)?
    } else {
        a.runs
            .iter()
            .map(|r| load_results(r))
            .collect::<fewshot::error::Result<Vec<_>>>()?
    };
    anyhow::ensure!(
        !runs.is_empty(),
        "no complete run found under {} (give run folders, or --root)",
        a.root.display()
    );
    runs.iter_mut().for_each(report::fill_published);
    let text = match a.format.as_str() {
        "json" => format!("{}\n", serde_json::to_string_pretty(&runs)?),
        "html" => report::html::page(&runs)?,
        f => report::across(&runs, f == "md"),
    };
    match a.out {
        Some(path) => {
            fewshot::util::write_atomic(&path, text.as_bytes())?;
            tracing::info!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
