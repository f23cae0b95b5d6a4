//! `bench trace`: gate-value traces of a learned optimizer on test episodes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use fewshot::run::{runner, train};
use fewshot::spec::Benchmark;
use fewshot::{algo, data};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Benchmark name (benchmarks/<name>.yaml) or path to a YAML file
    benchmark: String,
    /// Label of the algorithm entry to trace (e.g. meta-lstm)
    #[arg(long = "algo")]
    label: String,
    /// Number of fixed test episodes (0..K) to trace
    #[arg(long, default_value_t = 20)]
    episodes: usize,
    /// Run folder whose trained meta-learner to trace, at the parameters
    /// the run tests (the benchmark's `select`: the best validated state of
    /// <run-dir>/<label>'s newest checkpoint, or its final state); files
    /// are written beside it
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Trace a freshly initialised meta-learner instead (writes to --out)
    #[arg(long, conflicts_with = "run_dir")]
    untrained: bool,
    /// Output folder for --untrained [default: runs/<benchmark>/untrained/<label>]
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(data_dir: &Path, device: fewshot::device::DeviceSpec, a: Args) -> Result<()> {
    anyhow::ensure!(a.episodes >= 1, "--episodes must be at least 1");
    let (bench, _) = Benchmark::load(&a.benchmark)?;
    let (i, spec) = bench
        .algorithm(&a.label)
        .with_context(|| format!("--algo {}", a.label))?;
    let device = device.open()?;
    let ctx = bench.context(&device);
    let mut algorithm = algo::build(&spec.config, &ctx, &format!("algorithms[{i}]"))?;
    anyhow::ensure!(
        fewshot::report::trace::traceable(algorithm.series()),
        "{} ({}) has no gates to trace; only learned optimizers such as meta-lstm do",
        a.label,
        algorithm.kind()
    );
    let dir = if let Some(run_dir) = &a.run_dir {
        let dir = run_dir.join(&a.label);
        train::load_selected(&mut *algorithm, &dir, bench.select)
            .with_context(|| format!("no trained {} in {}", a.label, dir.display()))?;
        dir
    } else if a.untrained {
        a.out.clone().unwrap_or_else(|| {
            PathBuf::from("runs")
                .join(&bench.name)
                .join("untrained")
                .join(&a.label)
        })
    } else {
        bail!("give --run-dir <folder of a `bench run`> to trace a trained meta-learner, or --untrained");
    };
    let ds = data::open(&bench.dataset, data_dir, &bench.data)?;
    let records = runner::trace(&bench, &*algorithm, &ds, a.episodes, &dir)?;
    println!(
        "{} gate records ({} episodes) written to {}",
        records.len(),
        a.episodes,
        dir.display()
    );
    for f in [
        fewshot::layout::GATES_JSONL,
        fewshot::layout::GATES_CSV,
        fewshot::layout::GATES_SVG,
        fewshot::layout::GATES_PNG,
    ] {
        println!("  {}", dir.join(f).display());
    }
    Ok(())
}
