//! `bench show`: reprint a run's leaderboard from its folder.

use std::path::PathBuf;

use anyhow::Result;
use fewshot::report;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder (holding results.json)
    run: PathBuf,
    /// text (the terminal table), md, csv or json (the run's results with
    /// every row, its interval, paired difference and per-episode scores)
    #[arg(long, default_value = "text", value_parser = ["text", "md", "csv", "json"])]
    format: String,
}

pub fn run(a: Args) -> Result<()> {
    let mut r = fewshot::run::catalogue::load(&a.run)?;
    report::fill_published(&mut r);
    let out = match a.format.as_str() {
        "md" => report::markdown(&r),
        "csv" => report::csv(&r),
        "json" => format!("{}\n", serde_json::to_string_pretty(&r)?),
        _ => report::terminal(&r),
    };
    print!("{out}");
    Ok(())
}
