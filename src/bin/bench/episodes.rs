//! `bench episodes`: sample and describe episodes on real data.

use std::path::Path;

use anyhow::Result;
use fewshot::data::sampler::{EpisodeSpec, Sampler};
use fewshot::data::{self, DataOptions, Split};

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
    /// How many episodes to describe
    #[arg(long, default_value_t = 3)]
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

pub fn run(data_dir: &Path, a: Args) -> Result<()> {
    let options = DataOptions {
        split_scheme: a.split_scheme.clone(),
        rotations: a.no_rotations.then_some(false),
        ..Default::default()
    };
    let ds = data::open(&a.dataset, data_dir, &options)?;
    let spec = EpisodeSpec {
        ways: a.ways,
        shots: a.shots,
        queries: a.queries,
    };
    let sampler = Sampler::new(&ds, a.split, spec, a.seed)?;
    println!("{}", ds.description);
    println!(
        "split {}: {} classes; {}-way {}-shot, {} queries per class; seed {}",
        a.split,
        ds.split(a.split).len(),
        a.ways,
        a.shots,
        a.queries,
        a.seed
    );
    let device = candle_core::Device::Cpu;
    for index in a.start..a.start + a.count {
        let ep = sampler.episode(index);
        let batch = sampler.batch(&ep, &device)?;
        println!(
            "\nepisode {index}: support_x {:?}, query_x {:?}",
            batch.support_x.dims(),
            batch.query_x.dims()
        );
        for (label, c) in ep.classes.iter().enumerate() {
            let name = ds.class_name(*c);
            let ids = |set: &[(usize, usize)]| {
                set.iter()
                    .filter(|p| p.1 == label)
                    .map(|p| short_id(&ds.images[p.0].id))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!("  label {label}: {name}");
            println!("    support: {}", ids(&ep.support));
            println!("    query:   {}", ids(&ep.query));
        }
    }
    Ok(())
}

/// The file name of an image id (the class is printed above it).
fn short_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}
