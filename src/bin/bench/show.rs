//! `bench show`: reprint a run's leaderboard from its folder.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder (holding results.json)
    run: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let r = fewshot::runner::load_results(&a.run)?;
    print!("{}", fewshot::runner::leaderboard(&r));
    Ok(())
}
