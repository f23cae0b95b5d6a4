//! `bench plan`: split a multi-seed run into independent units for a job
//! array (Slurm) or any runner of plain commands (fewshot::run::plan):
//! writes the run folder's `plan.json`, then prints the script or the
//! commands; `bench show` / `bench report` merge the units' results.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use fewshot::run::plan::{self, absolute, Emit, JobArray};

use crate::run::Spec;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: Spec,
    /// The multi-seed run folder the units write into [default:
    /// runs/<benchmark>/<unix time>]
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// `slurm`: an sbatch job-array script (one unit per task index);
    /// `list`: one `bench run ... --unit I` command per line
    #[arg(long, default_value = "slurm", value_parser = ["slurm", "list"])]
    emit: String,
    /// Extra `#SBATCH` lines for the script (e.g. `--partition=cpu`,
    /// `--time=02:00:00`); repeat for several
    #[arg(long = "sbatch")]
    sbatch: Vec<String>,
    /// CPUs per task in the script (also the task's worker threads)
    #[arg(long, default_value_t = 2)]
    cpus_per_task: usize,
}

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    anyhow::ensure!(
        !a.spec.seeds.is_empty(),
        "give the run seeds with --seeds (e.g. --seeds 0,1,2)"
    );
    let (bench, path) = a.spec.load()?;
    let run_dir = absolute(
        &a.run_dir
            .clone()
            .unwrap_or_else(|| fewshot::run::runner::default_run_dir(&bench)),
    )?;
    // Units run from any folder: every path in their command is absolute.
    let mut seed_plan = a.spec.plan(&bench)?;
    seed_plan.args = a.spec.words(&absolute(&path)?.display().to_string());
    let job = JobArray {
        run_dir,
        data_dir: data_dir.to_path_buf(),
        bench: std::env::current_exe().context("cannot find the bench executable")?,
        emit: match a.emit.as_str() {
            "list" => Emit::List,
            _ => Emit::Slurm,
        },
        sbatch: a.sbatch,
        cpus_per_task: a.cpus_per_task,
    };
    print!("{}", plan::write(&seed_plan, &job)?);
    tracing::info!(
        "{} units of {} planned in {} ({})",
        seed_plan.units().len(),
        seed_plan.benchmark,
        job.run_dir.display(),
        fewshot::layout::PLAN
    );
    Ok(())
}
