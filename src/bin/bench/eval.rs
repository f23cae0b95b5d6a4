//! `bench eval`: test a run's trained algorithms on another benchmark.

use std::path::{Path, PathBuf};

use anyhow::Result;
use fewshot::device::DeviceSpec;
use fewshot::spec::{Benchmark, Overrides};

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
    /// Override the number of test episodes (test problems) of --on
    #[arg(long, conflicts_with = "episodes")]
    test_episodes: Option<usize>,
    /// Evaluate on the fixed episodes of this CSV file instead
    /// (`episode,role,label,image`; images preprocessed as --on's dataset)
    #[arg(long)]
    episodes: Option<PathBuf>,
    /// Start every algorithm from the learner's fresh initialisation:
    /// learned rules without their learned initialisation, tuned
    /// hand-designed optimisers as trained, MAML and Reptile not at all
    /// (implied when --on's learner is not the run's: wider, deeper)
    #[arg(long)]
    fresh_init: bool,
    /// Replace an earlier evaluation of the same name (RUN/eval/NAME/)
    #[arg(long)]
    force: bool,
}

pub fn run(data_dir: &Path, device: DeviceSpec, a: Args) -> Result<()> {
    if fewshot::spec::task_of_file(&a.on)? == fewshot::data::task::TaskKind::Optimisation {
        anyhow::ensure!(
            !a.fresh_init,
            "--fresh-init is for few-shot benchmarks; {} is an optimisation benchmark (its rules never learn an initialisation)",
            a.on
        );
        anyhow::ensure!(
            a.episodes.is_none(),
            "--episodes is for few-shot benchmarks; {} is an optimisation benchmark",
            a.on
        );
        let o = Overrides {
            test_episodes: a.test_episodes,
            ..Default::default()
        };
        let (target, _) = fewshot::spec::optimisation::OptBenchmark::load_with(&a.on, &o)?;
        let r = fewshot::run::optimise::evaluate_on(&a.run, &target, data_dir, &a.only, a.force)?;
        println!("trained in {}, tested on {}:", a.run.display(), r.benchmark);
        print!("{}", fewshot::report::optimisation::terminal(&r));
        return Ok(());
    }
    if let Some(n) = a.test_episodes {
        anyhow::ensure!(n >= 1, "--test-episodes must be at least 1");
    }
    let o = Overrides {
        test_episodes: a.test_episodes,
        ..Default::default()
    };
    let (target, _) = Benchmark::load_with(&a.on, &o)?;
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let file = a
        .episodes
        .as_deref()
        .map(fewshot::data::episode_file::EpisodeFile::read)
        .transpose()?;
    let opts = fewshot::run::transfer::EvalOptions {
        file: file.as_ref(),
        only: &a.only,
        show_progress: show,
        fresh_init: a.fresh_init,
        force: a.force,
    };
    let r = fewshot::run::transfer::evaluate_on(&a.run, &target, data_dir, opts, &device.open()?)?;
    println!("trained in {}, tested on {}:", a.run.display(), r.benchmark);
    print!("{}", fewshot::report::terminal(&r));
    Ok(())
}
