//! Job arrays (`bench plan`): a multi-seed run ([`crate::run::seeds`])
//! written as independent units for a job array (a Slurm `sbatch` script,
//! one unit per task index) or for any runner of plain commands (GNU
//! parallel, Kubernetes Jobs: one `bench run ... --unit I` per line).
//!
//! [`write`] writes the run folder's `plan.json` first (or checks that the
//! plan already there is this one), then returns the script or the
//! commands. Units run from any folder: every path in their command is
//! absolute. `bench show` / `bench report` merge the units' results.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::run::seeds::SeedPlan;

/// What [`write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// An sbatch job-array script.
    Slurm,
    /// One `bench run ... --unit I` command per line.
    List,
}

/// How the units of a plan are run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobArray {
    /// The multi-seed run folder the units write into (absolute:
    /// [`absolute`]).
    pub run_dir: PathBuf,
    /// The data folder the units read (made absolute by [`write`]).
    pub data_dir: PathBuf,
    /// The `bench` executable the units run.
    pub bench: PathBuf,
    pub emit: Emit,
    /// Extra `#SBATCH` lines for the script (e.g. `--partition=cpu`).
    pub sbatch: Vec<String>,
    /// CPUs per task in the script (also the task's worker threads).
    pub cpus_per_task: usize,
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

/// `p` as an absolute path: resolved through the file system where it
/// exists (no `..`, no symbolic links), else joined to the current folder.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(_) => std::path::absolute(p).map_err(|source| Error::Absolute {
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// Write `plan` into `job.run_dir` (its `plan.json`, or check the one
/// there), and return the job array that runs its units: the Slurm script,
/// or one command per unit, each line ending in a newline.
pub fn write(plan: &SeedPlan, job: &JobArray) -> Result<String> {
    plan.write_or_check(&job.run_dir)?;
    let run_dir = job.run_dir.display().to_string();
    let exe = job.bench.display().to_string();
    let seeds: Vec<String> = plan.seeds.iter().map(|s| s.to_string()).collect();
    let mut words = vec![
        "--data-dir".to_string(),
        absolute(&job.data_dir)?.display().to_string(),
        "run".into(),
    ];
    words.extend(plan.args.iter().cloned());
    words.extend([
        "--seeds".into(),
        seeds.join(","),
        "--run-dir".into(),
        run_dir.clone(),
        "--unit".into(),
    ]);
    let command = words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    let units = plan.units();
    let mut s = String::new();
    match job.emit {
        Emit::List => {
            for i in 0..units.len() {
                s.push_str(&format!("{} {command} {i}\n", shell_word(&exe)));
            }
        }
        Emit::Slurm => {
            s.push_str("#!/usr/bin/env bash\n");
            s.push_str(&format!(
                "# fewshot job array: {} (profile {}), run seeds {}, {} units.\n",
                plan.benchmark,
                plan.profile,
                seeds.join(","),
                units.len()
            ));
            s.push_str(&format!(
                "# Unit I = run seed I / {n}, algorithm I % {n} ({}); each writes\n# {run_dir}/seed-<seed>/<algorithm>/.\n",
                plan.labels.join(", "),
                n = plan.labels.len()
            ));
            s.push_str("# Submit with `sbatch <this file>`. A preempted or failed task continues\n# from its checkpoints when requeued or resubmitted. When all are done:\n");
            s.push_str(&format!("#   bench show {}\n", shell_word(&run_dir)));
            s.push_str(&format!("#SBATCH --job-name=fewshot-{}\n", plan.benchmark));
            s.push_str(&format!("#SBATCH --array=0-{}\n", units.len() - 1));
            s.push_str(&format!("#SBATCH --cpus-per-task={}\n", job.cpus_per_task));
            s.push_str(&format!("#SBATCH --output={run_dir}/slurm-%A_%a.out\n"));
            s.push_str("#SBATCH --requeue\n");
            for extra in &job.sbatch {
                s.push_str(&format!("#SBATCH {extra}\n"));
            }
            s.push_str("set -euo pipefail\n");
            s.push_str(&format!(
                "export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n",
                job.cpus_per_task
            ));
            s.push_str(&format!("BENCH=\"${{BENCH:-{exe}}}\"\n"));
            s.push_str(&format!(
                "exec \"$BENCH\" {command} \"${{SLURM_ARRAY_TASK_ID:?run this script with sbatch, or set SLURM_ARRAY_TASK_ID}}\"\n"
            ));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("--seeds"), "--seeds");
        assert_eq!(shell_word("/a/b c"), "'/a/b c'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    fn plan() -> SeedPlan {
        SeedPlan {
            benchmark: "b".into(),
            profile: "budgeted".into(),
            seeds: vec![3, 5],
            labels: vec!["fomaml".into(), "reptile".into()],
            args: vec!["/bench files/b.yaml".into(), "--smoke".into()],
        }
    }

    fn job(root: &Path, emit: Emit) -> JobArray {
        JobArray {
            run_dir: root.join("run"),
            data_dir: root.to_path_buf(),
            bench: PathBuf::from("/opt/bench"),
            emit,
            sbatch: vec!["--partition=cpu".into(), "--time=02:00:00".into()],
            cpus_per_task: 4,
        }
    }

    #[test]
    fn the_list_has_one_command_per_unit() {
        let tmp = tempfile::tempdir().unwrap();
        let root = absolute(tmp.path()).unwrap();
        let text = write(&plan(), &job(&root, Emit::List)).unwrap();
        let run = root.join("run").display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                *l,
                format!(
                    "/opt/bench --data-dir {} run '/bench files/b.yaml' --smoke --seeds 3,5 --run-dir {run} --unit {i}",
                    root.display()
                )
            );
        }
        assert!(text.ends_with('\n'));
        // The plan is written before the units are listed.
        let written = crate::run::seeds::read_plan(&root.join("run")).unwrap();
        assert_eq!(written, plan());
    }

    #[test]
    fn the_script_is_a_job_array_over_the_units() {
        let tmp = tempfile::tempdir().unwrap();
        let root = absolute(tmp.path()).unwrap();
        let text = write(&plan(), &job(&root, Emit::Slurm)).unwrap();
        let run = root.join("run").display().to_string();
        let expected = format!(
            "#!/usr/bin/env bash
# fewshot job array: b (profile budgeted), run seeds 3,5, 4 units.
# Unit I = run seed I / 2, algorithm I % 2 (fomaml, reptile); each writes
# {run}/seed-<seed>/<algorithm>/.
# Submit with `sbatch <this file>`. A preempted or failed task continues
# from its checkpoints when requeued or resubmitted. When all are done:
#   bench show {run}
#SBATCH --job-name=fewshot-b
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --output={run}/slurm-%A_%a.out
#SBATCH --requeue
#SBATCH --partition=cpu
#SBATCH --time=02:00:00
set -euo pipefail
export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-4}}\"
BENCH=\"${{BENCH:-/opt/bench}}\"
exec \"$BENCH\" --data-dir {data} run '/bench files/b.yaml' --smoke --seeds 3,5 --run-dir {run} --unit \"${{SLURM_ARRAY_TASK_ID:?run this script with sbatch, or set SLURM_ARRAY_TASK_ID}}\"
",
            data = root.display()
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn another_plan_in_the_folder_is_refused_before_anything_is_emitted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = absolute(tmp.path()).unwrap();
        write(&plan(), &job(&root, Emit::List)).unwrap();
        let mut other = plan();
        other.seeds.push(7);
        let e = write(&other, &job(&root, Emit::List)).unwrap_err();
        assert!(
            e.to_string().contains("holds another multi-seed run"),
            "{e}"
        );
    }

    #[test]
    fn absolute_paths_resolve_what_exists_and_keep_what_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let root = absolute(tmp.path()).unwrap();
        assert!(root.is_absolute());
        let missing = root.join("a/../b");
        assert_eq!(absolute(&missing).unwrap(), missing);
        let e = absolute(Path::new("")).unwrap_err();
        assert!(e.to_string().starts_with("cannot make  absolute: "), "{e}");
    }
}
