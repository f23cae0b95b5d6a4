//! `bench report`: one leaderboard across benchmarks.

use std::path::PathBuf;

use anyhow::Result;
use fewshot::report;
use fewshot::run::catalogue::load as load_results;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folders to include [default: the newest complete run of each
    /// benchmark under --runs]
    runs: Vec<PathBuf>,
    /// Folder of runs, `<benchmark>/<run>/` below it (without RUNS)
    #[arg(long, default_value = "runs")]
    root: PathBuf,
    /// text, md or json (an array of the runs' results, as `bench show
    /// --format json` prints each)
    #[arg(long, default_value = "text", value_parser = ["text", "md", "json"])]
    format: String,
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
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&runs)?),
        f => print!("{}", report::across(&runs, f == "md")),
    }
    Ok(())
}
