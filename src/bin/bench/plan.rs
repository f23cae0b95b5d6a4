//! `bench plan`: split a multi-seed run into independent units for a job
//! array (Slurm) or any runner of plain commands (GNU parallel, Kubernetes
//! Jobs). Writes the run folder's `plan.json`, then the script or the
//! commands; `bench show` / `bench report` merge the units' results.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

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

/// A word quoted for a POSIX shell when it needs it.
pub fn shell_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// `p` as an absolute path without `..` (resolved through the file system
/// where it exists).
fn absolute(p: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(_) => {
            std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
        }
    }
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
    let mut plan = a.spec.plan(&bench)?;
    let bench_path = absolute(&path)?;
    plan.args = a.spec.words(&bench_path.display().to_string());
    plan.write_or_check(&run_dir)?;
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let seeds: Vec<String> = plan.seeds.iter().map(|s| s.to_string()).collect();
    let mut words = vec![
        "--data-dir".to_string(),
        absolute(data_dir)?.display().to_string(),
        "run".into(),
    ];
    words.extend(plan.args.iter().cloned());
    words.extend([
        "--seeds".into(),
        seeds.join(","),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--unit".into(),
    ]);
    let command = words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    let units = plan.units();
    match a.emit.as_str() {
        "list" => {
            for i in 0..units.len() {
                println!("{} {command} {i}", shell_word(&exe.display().to_string()));
            }
        }
        _ => {
            let mut s = String::from("#!/usr/bin/env bash\n");
            s.push_str(&format!(
                "# fewshot job array: {} (profile {}), run seeds {}, {} units.\n",
                plan.benchmark,
                plan.profile,
                seeds.join(","),
                units.len()
            ));
            s.push_str(&format!(
                "# Unit I = run seed I / {n}, algorithm I % {n} ({}); each writes\n# {}/seed-<seed>/<algorithm>/.\n",
                plan.labels.join(", "),
                run_dir.display(),
                n = plan.labels.len()
            ));
            s.push_str("# Submit with `sbatch <this file>`. A preempted or failed task continues\n# from its checkpoints when requeued or resubmitted. When all are done:\n");
            s.push_str(&format!(
                "#   bench show {}\n",
                shell_word(&run_dir.display().to_string())
            ));
            s.push_str(&format!("#SBATCH --job-name=fewshot-{}\n", plan.benchmark));
            s.push_str(&format!("#SBATCH --array=0-{}\n", units.len() - 1));
            s.push_str(&format!("#SBATCH --cpus-per-task={}\n", a.cpus_per_task));
            s.push_str(&format!(
                "#SBATCH --output={}/slurm-%A_%a.out\n",
                run_dir.display()
            ));
            s.push_str("#SBATCH --requeue\n");
            for extra in &a.sbatch {
                s.push_str(&format!("#SBATCH {extra}\n"));
            }
            s.push_str("set -euo pipefail\n");
            s.push_str(&format!(
                "export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n",
                a.cpus_per_task
            ));
            s.push_str(&format!("BENCH=\"${{BENCH:-{}}}\"\n", exe.display()));
            s.push_str(&format!(
                "exec \"$BENCH\" {command} \"${{SLURM_ARRAY_TASK_ID:?run this script with sbatch, or set SLURM_ARRAY_TASK_ID}}\"\n"
            ));
            print!("{s}");
        }
    }
    tracing::info!(
        "{} units of {} planned in {} ({})",
        units.len(),
        plan.benchmark,
        run_dir.display(),
        fewshot::layout::PLAN
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("--seeds"), "--seeds");
        assert_eq!(shell_word("/a/b c"), "'/a/b c'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
