//! `bench episodes`: describe seeded episodes on real data
//! (fewshot::data::describe::episodes), or export them for methods written
//! elsewhere (fewshot::data::export).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fewshot::data::sampler::{EpisodeSpec, Sampler};
use fewshot::data::{describe, DataOptions, Split};
use fewshot::spec::Benchmark;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A few-shot benchmark (name or YAML path: its dataset, data options,
    /// episode shape and seed, so these are its fixed episodes), or a
    /// dataset: omniglot, mini-imagenet or folder
    source: String,
    /// Split: train, val or test
    #[arg(long, default_value = "test")]
    split: Split,
    /// How many episodes (at most 100,000) [default: a benchmark's
    /// test_episodes or val_episodes for --split test or val; 3 otherwise]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    count: Option<u64>,
    /// Index of the first episode described (not with --export, which
    /// writes episodes 0..count)
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Write the episodes into this new folder: episodes.csv (what `bench
    /// eval --episodes` reads), the images, episodes.safetensors (the
    /// learner's tensors and labels) and export.json, with the episodes'
    /// fingerprint (docs/interop.md)
    #[arg(long)]
    export: Option<PathBuf>,
    /// Classes per episode (N) [dataset only; default 5]
    #[arg(long)]
    ways: Option<usize>,
    /// Support images per class (K) [dataset only; default 1]
    #[arg(long)]
    shots: Option<usize>,
    /// Query images per class (Q) [dataset only; default 15]
    #[arg(long)]
    queries: Option<usize>,
    /// Episode seed [dataset only; default 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Omniglot class split: vinyals or lake [dataset only]
    #[arg(long)]
    split_scheme: Option<String>,
    /// Turn off rotation augmentation of meta-train classes [dataset only]
    #[arg(long)]
    no_rotations: bool,
}

/// The most episodes one command describes: the largest fixed episode
/// sets in use hold 10,000 (a typo of a few zeros is refused, not run).
const MAX_COUNT: u64 = 100_000;

/// Where the episodes come from.
struct Source {
    dataset: String,
    options: DataOptions,
    spec: EpisodeSpec,
    seed: u64,
    /// The benchmark, when one was named.
    benchmark: Option<Benchmark>,
}

fn source(a: &Args) -> Result<Source> {
    if fewshot::data::reader(&a.source).is_ok() {
        return Ok(Source {
            dataset: a.source.clone(),
            options: DataOptions {
                split_scheme: a.split_scheme.clone(),
                rotations: a.no_rotations.then_some(false),
                ..Default::default()
            },
            spec: EpisodeSpec {
                ways: a.ways.unwrap_or(5),
                shots: a.shots.unwrap_or(1),
                queries: a.queries.unwrap_or(15),
            },
            seed: a.seed.unwrap_or(0),
            benchmark: None,
        });
    }
    let task = fewshot::spec::task_of_file(&a.source).with_context(|| {
        format!(
            "`{}` is neither a dataset (omniglot, mini-imagenet, folder) nor a benchmark",
            a.source
        )
    })?;
    anyhow::ensure!(
        task == fewshot::data::task::TaskKind::Episodic,
        "{} is an optimisation benchmark: it has no episodes",
        a.source
    );
    let (b, _) = Benchmark::load(&a.source)?;
    for (flag, given) in [
        ("--ways", a.ways.is_some()),
        ("--shots", a.shots.is_some()),
        ("--queries", a.queries.is_some()),
        ("--seed", a.seed.is_some()),
        ("--split-scheme", a.split_scheme.is_some()),
        ("--no-rotations", a.no_rotations),
    ] {
        anyhow::ensure!(
            !given,
            "{flag} is for a dataset; {} fixes it (its episodes would not be the benchmark's otherwise)",
            b.name
        );
    }
    Ok(Source {
        dataset: b.dataset.clone(),
        options: b.data.clone(),
        spec: b.episode,
        seed: b.seed,
        benchmark: Some(b),
    })
}

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    let src = source(&a)?;
    let count = match (a.count, &src.benchmark, a.split) {
        (Some(n), _, _) => n,
        (None, Some(b), Split::Test) => b.test_episodes as u64,
        (None, Some(b), Split::Val) => b.val_episodes as u64,
        (None, _, Split::Train) if a.export.is_some() => {
            anyhow::bail!("--split train has no fixed number of episodes: give --count")
        }
        (None, _, _) => 3,
    };
    anyhow::ensure!(
        count >= 1,
        "no episodes to describe (the benchmark has 0 {} episodes): give --count",
        a.split
    );
    if let Some(dir) = &a.export {
        anyhow::ensure!(
            a.start == 0,
            "--export writes episodes 0..count (the fixed episodes as numbered); drop --start"
        );
        return export(data_dir, &src, a.split, count as usize, dir);
    }
    let end = a.start.checked_add(count).ok_or_else(|| {
        anyhow::anyhow!(
            "--start {} + --count {} is past the last episode index",
            a.start,
            count
        )
    })?;
    let episodes = describe::episodes(
        &src.dataset,
        data_dir,
        &src.options,
        a.split,
        src.spec,
        src.seed,
        a.start..end,
    )?;
    if let Some(b) = &src.benchmark {
        println!("{}: {}", b.name, b.description.trim());
    }
    println!("{}", episodes.dataset.description);
    println!(
        "split {}: {} classes; {}-way {}-shot, {} queries per class; seed {}",
        a.split,
        episodes.split_classes(),
        src.spec.ways,
        src.spec.shots,
        src.spec.queries,
        src.seed
    );
    for ep in episodes.iter() {
        let ep = ep?;
        println!(
            "\nepisode {}: support_x {:?}, query_x {:?}",
            ep.index, ep.support_shape, ep.query_shape
        );
        for c in &ep.classes {
            println!("  label {}: {}", c.label, c.name);
            println!("    support: {}", c.support.join(" "));
            println!("    query:   {}", c.query.join(" "));
        }
    }
    Ok(())
}

fn export(data_dir: &Path, src: &Source, split: Split, count: usize, dir: &Path) -> Result<()> {
    let ds = fewshot::data::open(&src.dataset, data_dir, &src.options)?;
    let sampler = Sampler::new(&ds, split, src.spec, src.seed)?;
    let mut meta = BTreeMap::new();
    if let Some(b) = &src.benchmark {
        meta.insert("benchmark".to_string(), b.name.clone());
        if split == Split::Test && count == b.test_episodes {
            meta.insert(
                "note".to_string(),
                format!("the {count} fixed test episodes of {}", b.name),
            );
        }
    }
    let t = std::time::Instant::now();
    let e = fewshot::data::export::export(&sampler, count, dir, meta)?;
    println!(
        "exported {} {split} episodes ({} images) of {} into {} in {:.1}s",
        e.episodes,
        e.images,
        src.benchmark
            .as_ref()
            .map_or(src.dataset.as_str(), |b| b.name.as_str()),
        e.dir.display(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "  {}: episode,role,label,image (bench eval RUN --on {} --episodes {})",
        fewshot::data::export::CSV,
        src.benchmark
            .as_ref()
            .map_or("<benchmark>", |b| b.name.as_str()),
        e.dir.join(fewshot::data::export::CSV).display()
    );
    println!(
        "  {}: support_x, support_y, query_x, query_y ({:.1} MiB)",
        fewshot::data::export::TENSORS,
        e.tensor_bytes as f64 / (1 << 20) as f64
    );
    println!("  fingerprint {}", e.fingerprint);
    Ok(())
}
