//! `bench run`: meta-train and evaluate every algorithm of a benchmark.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use fewshot::rundir::Mode;
use fewshot::runner::{self, RunOptions};
use fewshot::spec::{Benchmark, Budget};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Benchmark name (benchmarks/<name>.yaml) or path to a YAML file
    benchmark: String,
    /// Override the budget: minutes of meta-training per algorithm
    #[arg(long)]
    minutes: Option<f64>,
    /// Override the budget: meta-steps per algorithm
    #[arg(long)]
    meta_steps: Option<u64>,
    /// Override the budget: meta-training episodes per algorithm
    #[arg(long)]
    train_episodes: Option<u64>,
    /// Override the number of fixed test episodes
    #[arg(long)]
    test_episodes: Option<usize>,
    /// Quick profile for tests and smoke checks: 100 meta-steps, 100 test and
    /// 20 validation episodes (other overrides still apply on top)
    #[arg(long)]
    smoke: bool,
    /// Only these algorithm labels (comma separated); their rows are merged
    /// into the run's results.json
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run folder [default: runs/<benchmark>/<unix time>]; must not hold a
    /// run unless --resume or --force is given
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its newest checkpoints (the
    /// benchmark and options must be those it was started with; the budget
    /// may grow)
    #[arg(long, requires = "run_dir")]
    resume: bool,
    /// Discard the run in --run-dir (what is discarded is logged) and start
    /// over
    #[arg(long, requires = "run_dir", conflicts_with = "resume")]
    force: bool,
    /// Record gate traces (forget/input gates per step and layer) on this
    /// many test episodes for algorithms that have gates (meta-lstm)
    #[arg(long, default_value_t = 0)]
    trace: usize,
}

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    let (mut bench, path) = Benchmark::load(&a.benchmark)?;
    tracing::info!("benchmark {} from {}", bench.name, path.display());
    if a.smoke {
        bench.budget = Budget {
            minutes: None,
            meta_steps: Some(100),
            episodes: None,
        };
        bench.test_episodes = 100;
        bench.val_episodes = 20;
        bench.validate_every = Some(50);
        bench.validate_every_minutes = None;
        bench.checkpoint_every = 50;
    }
    if a.minutes.is_some() || a.meta_steps.is_some() || a.train_episodes.is_some() {
        anyhow::ensure!(
            a.minutes.is_none_or(|m| m.is_finite() && m > 0.0),
            "--minutes must be a finite number > 0, got {}",
            a.minutes.unwrap_or_default()
        );
        anyhow::ensure!(a.meta_steps != Some(0), "--meta-steps must be >= 1");
        anyhow::ensure!(a.train_episodes != Some(0), "--train-episodes must be >= 1");
        bench.budget = Budget {
            minutes: a.minutes,
            meta_steps: a.meta_steps,
            episodes: a.train_episodes,
        };
    }
    if let Some(n) = a.test_episodes {
        anyhow::ensure!(n >= 1, "--test-episodes must be at least 1");
        bench.test_episodes = n;
    }
    for l in &a.only {
        bench.algorithm(l).with_context(|| format!("--only {l}"))?;
    }
    let run_dir = a.run_dir.unwrap_or_else(|| runner::default_run_dir(&bench));
    let results = runner::run(
        &bench,
        data_dir,
        &RunOptions {
            run_dir,
            mode: if a.resume {
                Mode::Resume
            } else if a.force {
                Mode::Force
            } else {
                Mode::New
            },
            only: a.only,
            show_progress: true,
            trace_episodes: a.trace,
        },
    )?;
    print!("{}", fewshot::report::terminal(&results));
    Ok(())
}
