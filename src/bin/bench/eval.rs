//! `bench eval`: test a run's trained algorithms on another benchmark.

use std::path::{Path, PathBuf};

use anyhow::Result;
use fewshot::spec::Benchmark;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folder of a `bench run` (its resolved.yaml and checkpoints)
    run: PathBuf,
    /// Benchmark whose fixed test episodes to use (name or YAML path); its
    /// images must fit the run's learner (channels, size, ways)
    #[arg(long)]
    on: String,
    /// Only these algorithm labels (comma separated)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Override the number of test episodes of --on
    #[arg(long, conflicts_with = "episodes")]
    test_episodes: Option<usize>,
    /// Evaluate on the fixed episodes of this CSV file instead
    /// (`episode,role,label,image`; images preprocessed as --on's dataset)
    #[arg(long)]
    episodes: Option<PathBuf>,
}

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    let (mut target, _) = Benchmark::load(&a.on)?;
    if let Some(n) = a.test_episodes {
        anyhow::ensure!(n >= 1, "--test-episodes must be at least 1");
        target.test_episodes = n;
    }
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let file = a
        .episodes
        .as_deref()
        .map(fewshot::transfer::EpisodeFile::read)
        .transpose()?;
    let r =
        fewshot::transfer::evaluate_on(&a.run, &target, file.as_ref(), data_dir, &a.only, show)?;
    println!("trained in {}, tested on {}:", a.run.display(), r.benchmark);
    print!("{}", fewshot::report::terminal(&r));
    Ok(())
}
