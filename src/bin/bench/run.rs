//! `bench run`: meta-train and evaluate every algorithm of a benchmark, for
//! one run seed or several (`--seeds`), whole or one unit (`--unit`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use fewshot::data::task::TaskKind;
use fewshot::device::DeviceSpec;
use fewshot::run::rundir::Mode;
use fewshot::run::runner::{self, RunOptions};
use fewshot::run::seeds::{self, SeedOptions, SeedPlan};
use fewshot::spec::{Benchmark, Budget, Overrides};

/// What is run: the benchmark and everything that changes it. Shared by
/// `bench run` and `bench plan`, which writes these options into every
/// unit's command.
#[derive(clap::Args, Debug, Clone)]
pub struct Spec {
    /// Benchmark name (benchmarks/<name>.yaml) or path to a YAML file
    pub benchmark: String,
    /// Profile of the benchmark file: `budgeted` (the default, sized for a
    /// 2-core machine) or one of its `profiles` (e.g. `protocol`)
    #[arg(long)]
    pub profile: Option<String>,
    /// Override the budget: minutes of meta-training per algorithm
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Override the budget: meta-steps per algorithm
    #[arg(long)]
    pub meta_steps: Option<u64>,
    /// Override the budget: meta-training episodes per algorithm
    #[arg(long)]
    pub train_episodes: Option<u64>,
    /// Override the number of fixed test episodes
    #[arg(long)]
    pub test_episodes: Option<usize>,
    /// Quick profile for tests and smoke checks: 100 meta-steps, 100 test and
    /// 20 validation episodes (other overrides still apply on top)
    #[arg(long)]
    pub smoke: bool,
    /// Only these algorithm labels (comma separated); their rows are merged
    /// into the run's results.json
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run seeds (comma separated): train every algorithm once per seed, in
    /// its own unit folder `<run-dir>/seed-<s>/<label>/`, and report the
    /// mean over seeds with the across-seed standard deviation. The test
    /// and validation episodes (the benchmark's episode seed) are the same
    /// for every run seed. Without it: one run with run seed 0.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
}

impl Spec {
    /// The overrides, checked (errors name the flag).
    pub fn overrides(&self) -> Result<Overrides> {
        let budget = Budget {
            minutes: self.minutes,
            meta_steps: self.meta_steps,
            episodes: self.train_episodes,
        };
        // The benchmark file's check, with the flags' names.
        let budget = match budget.check() {
            Ok(()) => Some(budget),
            Err(("", _)) => None,
            Err((limit, why)) => {
                let flag = match limit {
                    "minutes" => "--minutes",
                    "meta_steps" => "--meta-steps",
                    _ => "--train-episodes",
                };
                anyhow::bail!("{flag} {why}")
            }
        };
        if let Some(n) = self.test_episodes {
            anyhow::ensure!(n >= 1, "--test-episodes must be at least 1");
        }
        Ok(Overrides {
            profile: self.profile.clone(),
            smoke: self.smoke,
            budget,
            test_episodes: self.test_episodes,
            run_seed: None,
        })
    }

    /// The resolved benchmark and its file.
    pub fn load(&self) -> Result<(Benchmark, PathBuf)> {
        let (bench, path) = Benchmark::load_with(&self.benchmark, &self.overrides()?)?;
        for l in &self.only {
            bench.algorithm(l).with_context(|| format!("--only {l}"))?;
        }
        Ok((bench, path))
    }

    /// These options as `bench run` words (without `--seeds`), with the
    /// benchmark given as `benchmark` (a name or an absolute path).
    pub fn words(&self, benchmark: &str) -> Vec<String> {
        let mut w = vec![benchmark.to_string()];
        let mut flag = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                w.push(format!("--{name}"));
                w.push(v);
            }
        };
        flag("profile", self.profile.clone());
        flag("minutes", self.minutes.map(|v| v.to_string()));
        flag("meta-steps", self.meta_steps.map(|v| v.to_string()));
        flag("train-episodes", self.train_episodes.map(|v| v.to_string()));
        flag("test-episodes", self.test_episodes.map(|v| v.to_string()));
        flag("only", (!self.only.is_empty()).then(|| self.only.join(",")));
        if self.smoke {
            w.push("--smoke".into());
        }
        w
    }

    /// The multi-seed plan of these options.
    pub fn plan(&self, bench: &Benchmark) -> Result<SeedPlan> {
        let plan = SeedPlan::new(bench, &self.seeds, &self.only, self.words(&self.benchmark))?;
        Ok(plan)
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    spec: Spec,
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
    /// Run only unit I of the multi-seed run in --run-dir (units are
    /// numbered seed-major: seed I / algorithms, algorithm I % algorithms;
    /// `bench plan` lists them). A unit continues from its checkpoints when
    /// it was started before (a preempted job-array task).
    #[arg(long, requires_all = ["run_dir", "seeds"], conflicts_with_all = ["resume", "force"])]
    unit: Option<usize>,
    /// Record gate traces (forget/input gates per step and layer) on this
    /// many test episodes for algorithms that have gates (meta-lstm)
    #[arg(long, default_value_t = 0)]
    trace: usize,
    /// Print the estimated peak memory and the time of one meta-step and
    /// one test episode of every algorithm, check them against the limits,
    /// and stop (nothing decoded, trained or written)
    #[arg(long)]
    dry_run: bool,
    /// Refuse a run whose estimated peak memory exceeds this (e.g. 8G,
    /// 512M; default: the memory available now)
    #[arg(long, value_parser = parse_bytes)]
    max_memory: Option<f64>,
    /// Refuse a run one of whose meta-steps or test episodes is estimated
    /// to take longer than this many minutes (or than a time budget)
    #[arg(long, default_value_t = 60.0)]
    max_step_minutes: f64,
}

/// `8G`, `512M`, `1.5GiB`, `1000000` (bytes).
fn parse_bytes(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, ""), |i| (&t[..i], &t[i..]));
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: a size such as 8G or 512M"))?;
    let k = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024f64.powi(4),
        _ => return Err(format!("`{s}`: a size such as 8G or 512M")),
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}`: a positive size"));
    }
    Ok(v * k)
}

impl Args {
    /// What `--resume` and `--force` ask of the run folder.
    fn mode(&self) -> Mode {
        if self.resume {
            Mode::Resume
        } else if self.force {
            Mode::Force
        } else {
            Mode::New
        }
    }
}

pub fn run(data_dir: &Path, device: DeviceSpec, a: Args) -> Result<()> {
    if fewshot::spec::task_of_file(&a.spec.benchmark)? == TaskKind::Optimisation {
        return run_optimisation(data_dir, a);
    }
    let (bench, path) = a.spec.load()?;
    tracing::info!(
        "benchmark {} from {} (profile {})",
        bench.name,
        path.display(),
        bench.profile
    );
    let mode = a.mode();
    let limits = fewshot::run::cost::Limits {
        max_memory: a.max_memory,
        max_step_minutes: a.max_step_minutes,
    };
    anyhow::ensure!(
        a.max_step_minutes.is_finite() && a.max_step_minutes > 0.0,
        "--max-step-minutes must be a positive number"
    );
    let run_dir = a.run_dir.unwrap_or_else(|| runner::default_run_dir(&bench));
    if a.dry_run {
        let opts = RunOptions {
            run_dir,
            mode,
            only: a.spec.only,
            show_progress: false,
            trace_episodes: 0,
            device,
            limits,
        };
        print!("{}", runner::dry_run(&bench, data_dir, &opts)?);
        return Ok(());
    }
    if a.spec.seeds.is_empty() {
        let results = runner::run(
            &bench,
            data_dir,
            &RunOptions {
                run_dir,
                mode,
                only: a.spec.only,
                show_progress: true,
                trace_episodes: a.trace,
                device,
                limits,
            },
        )?;
        print!("{}", fewshot::report::terminal(&results));
        return Ok(());
    }
    let plan = a.spec.plan(&bench)?;
    let results = seeds::run(
        &bench,
        &plan,
        data_dir,
        &SeedOptions {
            run_dir,
            mode,
            unit: a.unit,
            show_progress: true,
            trace_episodes: a.trace,
            device,
            limits,
        },
    )?;
    print!("{}", fewshot::report::terminal(&results));
    Ok(())
}

/// `bench run` of an optimisation benchmark (`task: optimisation`):
/// one run seed, every optimiser tuned or meta-trained, then tested on
/// the fixed test problems (fewshot::run::optimise).
fn run_optimisation(data_dir: &Path, a: Args) -> Result<()> {
    anyhow::ensure!(
        a.spec.seeds.len() <= 1 && a.unit.is_none() && a.trace == 0,
        "{}: optimisation benchmarks run one run seed per call (--seeds S with one seed), without --unit or --trace",
        a.spec.benchmark
    );
    let o = Overrides {
        run_seed: a.spec.seeds.first().copied(),
        ..a.spec.overrides()?
    };
    let (bench, path) =
        fewshot::spec::optimisation::OptBenchmark::load_with(&a.spec.benchmark, &o)?;
    for l in &a.spec.only {
        bench.algorithm(l).with_context(|| format!("--only {l}"))?;
    }
    tracing::info!(
        "benchmark {} from {} (profile {})",
        bench.name,
        path.display(),
        bench.profile
    );
    let mode = a.mode();
    let run_dir = a
        .run_dir
        .unwrap_or_else(|| runner::default_run_dir_of(&bench.name));
    if a.dry_run {
        // The benchmark is parsed and checked above; no cost model covers
        // optimisation tasks, so the dry run says what would run.
        let labels: Vec<&str> = bench
            .algorithms
            .iter()
            .filter(|x| a.spec.only.is_empty() || a.spec.only.contains(&x.label))
            .map(|x| x.label.as_str())
            .collect();
        println!(
            "{} (profile {}): {} into {}; budget {}; {} test problems of {} steps",
            bench.name,
            bench.profile,
            labels.join(", "),
            run_dir.display(),
            bench.budget.describe(),
            bench.test_problems,
            bench.steps
        );
        println!("(checked, nothing run: no time estimate for optimisation benchmarks)");
        return Ok(());
    }
    let results = fewshot::run::optimise::run(
        &bench,
        data_dir,
        &fewshot::run::optimise::OptRunOptions {
            run_dir,
            mode,
            only: a.spec.only,
            show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            stop_after_steps: None,
        },
    )?;
    print!("{}", fewshot::report::optimisation::terminal(&results));
    Ok(())
}
