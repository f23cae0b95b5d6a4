//! `bench episodes`: sample and describe episodes on real data
//! (fewshot::data::describe::episodes).

use std::path::Path;

use anyhow::Result;
use fewshot::data::sampler::EpisodeSpec;
use fewshot::data::{describe, DataOptions, Split};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset: omniglot, mini-imagenet or folder
    dataset: String,
    /// Classes per episode (N)
    #[arg(long, default_value_t = 5)]
    ways: usize,
    /// Support images per class (K)
    #[arg(long, default_value_t = 1)]
    shots: usize,
    /// Query images per class (Q)
    #[arg(long, default_value_t = 15)]
    queries: usize,
    /// How many episodes to describe (at most 100,000)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    count: u64,
    /// Index of the first episode
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Split: train, val or test
    #[arg(long, default_value = "test")]
    split: Split,
    /// Episode seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Omniglot class split: vinyals or lake
    #[arg(long)]
    split_scheme: Option<String>,
    /// Turn off rotation augmentation of meta-train classes
    #[arg(long)]
    no_rotations: bool,
}

/// The most episodes one command describes: the largest fixed episode
/// sets in use hold 10,000 (a typo of a few zeros is refused, not run).
const MAX_COUNT: u64 = 100_000;

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    let end = a.start.checked_add(a.count).ok_or_else(|| {
        anyhow::anyhow!(
            "--start {} + --count {} is past the last episode index",
            a.start,
            a.count
        )
    })?;
    let options = DataOptions {
        split_scheme: a.split_scheme.clone(),
        rotations: a.no_rotations.then_some(false),
        ..Default::default()
    };
    let spec = EpisodeSpec {
        ways: a.ways,
        shots: a.shots,
        queries: a.queries,
    };
    let episodes = describe::episodes(
        &a.dataset,
        data_dir,
        &options,
        a.split,
        spec,
        a.seed,
        a.start..end,
    )?;
    println!("{}", episodes.dataset.description);
    println!(
        "split {}: {} classes; {}-way {}-shot, {} queries per class; seed {}",
        a.split,
        episodes.split_classes(),
        a.ways,
        a.shots,
        a.queries,
        a.seed
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
