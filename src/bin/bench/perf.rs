//! `bench perf`: performance benchmarks of the data pipeline.
//!
//! Reports time to index + decode + cache a whole dataset and episodes per
//! second from the cache into tensors. Numbers belong in docs/perf.md with
//! the command that produced them.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use fewshot::data::{self, DataOptions, Split};
use fewshot::sampler::{EpisodeSpec, Sampler};

#[derive(clap::Subcommand, Debug)]
pub enum PerfCommand {
    /// Decode throughput and episodes per second on the real datasets.
    Data {
        /// Seconds to spend on each episodes-per-second measurement
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Forward and forward+backward time of the conv-4 learner.
    Learner {
        /// omniglot or mini-imagenet
        #[arg(default_value = "omniglot")]
        dataset: String,
        /// Batch size (75 = a 5-way 15-query set)
        #[arg(long, default_value_t = 75)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
}

pub fn run(data_dir: &Path, cmd: PerfCommand) -> Result<()> {
    match cmd {
        PerfCommand::Data { seconds } => perf_data(data_dir, seconds),
        PerfCommand::Learner {
            dataset,
            batch,
            reps,
        } => perf_learner(&dataset, batch, reps),
    }
}

fn perf_data(data_dir: &Path, seconds: f64) -> Result<()> {
    println!("threads: {} (rayon)", rayon::current_num_threads());
    println!("{:<44} {:>12} {:>14}", "measurement", "images", "result");
    for name in ["omniglot", "mini-imagenet"] {
        let t = Instant::now();
        let ds = data::open(name, data_dir, &DataOptions::default())?;
        let t_index = t.elapsed().as_secs_f64();
        ds.preload(None)?;
        let t_all = t.elapsed().as_secs_f64();
        println!(
            "{:<44} {:>12} {:>12.2} s",
            format!("{name}: index + decode + cache (index {t_index:.2} s)"),
            ds.cached(),
            t_all
        );
        let specs: &[(Split, usize, usize, usize)] = if name == "omniglot" {
            &[(Split::Train, 5, 1, 15), (Split::Train, 20, 5, 15)]
        } else {
            &[(Split::Train, 5, 5, 15), (Split::Train, 5, 1, 15)]
        };
        for &(split, ways, shots, queries) in specs {
            let spec = EpisodeSpec {
                ways,
                shots,
                queries,
            };
            let s = Sampler::new(&ds, split, spec, 0)?;
            let device = candle_core::Device::Cpu;
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed().as_secs_f64() < seconds {
                for _ in 0..50 {
                    let ep = s.episode(n);
                    let b = s.batch(&ep, &device)?;
                    std::hint::black_box(&b);
                    n += 1;
                }
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!(
                "{:<44} {:>12} {:>10.0} ep/s",
                format!("{name}: {ways}-way {shots}-shot {queries}-query episodes (1 thread)"),
                "",
                rate
            );
        }
    }
    Ok(())
}

/// Time forward and forward+backward of the learner on a query-sized batch.
pub fn perf_learner(dataset: &str, batch: usize, reps: usize) -> Result<()> {
    use candle_core::{DType, Device, Tensor};
    use fewshot::learner::{cross_entropy, Learner};
    use fewshot::params::Params;
    let l = if dataset == "omniglot" {
        Learner::omniglot(5, 28)
    } else {
        Learner::mini_imagenet(5, 84)
    };
    let dev = Device::Cpu;
    let p = l.init(&mut fewshot::rng::Rng::new(0), &dev)?;
    let x = Tensor::randn(
        0f32,
        1.,
        (batch, l.in_channels, l.image_size, l.image_size),
        &dev,
    )?;
    let y = Tensor::zeros(batch, DType::U32, &dev)?;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(l.forward(&p, &x)?);
    }
    let fwd = t.elapsed().as_secs_f64() / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        let vars = p.to_vars()?;
        let pv = Params::from_vars(&p.names, &vars);
        let loss = cross_entropy(&l.forward(&pv, &x)?, &y)?;
        std::hint::black_box(loss.backward()?);
    }
    let fb = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{dataset} learner, batch {batch}: forward {:.1} ms, forward+backward {:.1} ms",
        fwd * 1e3,
        fb * 1e3
    );
    Ok(())
}
