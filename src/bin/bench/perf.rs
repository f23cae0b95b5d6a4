//! `bench perf`: speed of the data pipeline, of each algorithm of a
//! benchmark and of the learner (fewshot::run::perf), one row as each
//! measurement is made. Numbers belong in docs/perf.md with the command
//! that produced them.

use std::path::Path;

use anyhow::Result;
use fewshot::run::perf::{self, AlgorithmTiming, AlgorithmsSetup, Decode, EpisodeRate, PeakRss};

#[derive(clap::Subcommand, Debug)]
pub enum PerfCommand {
    /// Decode throughput and episodes per second on the real datasets.
    Data {
        /// Seconds to spend on each episodes-per-second measurement
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Milliseconds per meta-training episode and test episode, and peak
    /// memory, of every algorithm of a benchmark.
    Algorithms {
        /// Benchmark name or YAML path
        #[arg(default_value = "fewshot-5way1shot")]
        benchmark: String,
        /// Timed meta-steps per algorithm (after one warm-up step)
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Timed test episodes per algorithm
        #[arg(long, default_value_t = 50)]
        episodes: usize,
        /// Also time the meta-LSTM with these numbers of update steps
        #[arg(long, value_delimiter = ',')]
        lstm_steps: Vec<usize>,
        /// Only this algorithm label (run one per process for clean peak memory)
        #[arg(long)]
        only: Option<String>,
        /// Override the benchmark's kernels: fused or composed
        #[arg(long)]
        kernels: Option<String>,
    },
    /// Milliseconds per meta-training step (one problem of T steps) and
    /// per optimised test problem of every learned optimiser of an
    /// optimisation benchmark, one problem at a time (candle's own threads
    /// inside each operation).
    Optimizers {
        /// Optimisation benchmark name or YAML path
        #[arg(default_value = "quadratic-10d")]
        benchmark: String,
        /// Timed meta-steps per optimiser (after one warm-up step)
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Only this optimiser label
        #[arg(long)]
        only: Option<String>,
        /// The learned rules' kernels: fused (default) or composed
        #[arg(long)]
        kernels: Option<String>,
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

pub fn run(data_dir: &Path, device: fewshot::device::DeviceSpec, cmd: PerfCommand) -> Result<()> {
    let device = device.open()?;
    match cmd {
        PerfCommand::Optimizers {
            benchmark,
            steps,
            only,
            kernels,
        } => {
            let kernels = match kernels {
                Some(k) => fewshot::spec::from_str(&k, "--kernels")?,
                None => Default::default(),
            };
            println!(
                "{benchmark}: {steps} timed meta-steps per learned optimiser (medians), {} kernels, {} rayon threads",
                fewshot::spec::variant_name(&kernels),
                rayon::current_num_threads()
            );
            println!(
                "{:<20} {:>16} {:>18}",
                "optimiser", "ms/meta-step", "ms/test problem"
            );
            for t in perf::optimizers(data_dir, &benchmark, only.as_deref(), steps, kernels)? {
                println!(
                    "{:<20} {:>16.1} {:>18.1}",
                    t.label, t.meta_step_ms, t.optimise_ms
                );
            }
        }
        PerfCommand::Data { seconds } => {
            println!("threads: {} (rayon)", rayon::current_num_threads());
            println!("{:<44} {:>12} {:>14}", "measurement", "images", "result");
            perf::data(data_dir, seconds, &mut Rows)?;
        }
        PerfCommand::Algorithms {
            benchmark,
            steps,
            episodes,
            lstm_steps,
            only,
            kernels,
        } => {
            let o = perf::AlgorithmsOptions {
                benchmark,
                steps,
                episodes,
                lstm_steps,
                only,
                kernels,
            };
            perf::algorithms(data_dir, &o, &device, &mut Rows)?;
        }
        PerfCommand::Learner {
            dataset,
            batch,
            reps,
        } => {
            let t = perf::learner(&dataset, batch, reps, &device)?;
            println!(
                "{} learner, batch {}: forward {:.1} ms, forward+backward {:.1} ms",
                t.dataset,
                t.batch,
                t.forward_seconds * 1e3,
                t.forward_backward_seconds * 1e3
            );
        }
    }
    Ok(())
}

/// Prints each measurement as a table row when it is made.
struct Rows;

impl perf::Observer for Rows {
    fn decoded(&mut self, d: &Decode) {
        println!(
            "{:<44} {:>12} {:>12.2} s",
            format!(
                "{}: index + decode + cache (index {:.2} s)",
                d.dataset, d.index_seconds
            ),
            d.images,
            d.seconds
        );
    }

    fn episodes(&mut self, r: &EpisodeRate) {
        let s = r.spec;
        println!(
            "{:<44} {:>12} {:>10.0} ep/s",
            format!(
                "{}: {}-way {}-shot {}-query episodes (1 thread)",
                r.dataset, s.ways, s.shots, s.queries
            ),
            "",
            r.per_second
        );
    }

    fn setup(&mut self, s: &AlgorithmsSetup) {
        println!(
            "decoded-image cache: {} images ({:.0} MiB, included in peak RSS)",
            s.cached_images, s.cache_mib
        );
        println!(
            "{} ({}-way {}-shot, {} queries), {} kernels on {:?}, {} meta-steps and {} test episodes per algorithm, {} rayon threads",
            s.benchmark,
            s.episode.ways,
            s.episode.shots,
            s.episode.queries,
            s.kernels,
            s.location,
            s.steps,
            s.episodes,
            s.threads
        );
        println!(
            "{:<24} {:>12} {:>14} {:>16} {:>14}",
            "algorithm", "meta-step", "ms/train ep", "ms/test episode", "peak RSS MiB"
        );
    }

    fn algorithm(&mut self, t: &AlgorithmTiming) {
        let peak = match t.peak_rss {
            PeakRss::Mib(m) => format!("{m:.0}"),
            PeakRss::Unread => String::new(),
            PeakRss::NotMeasured => "n/a".into(),
        };
        // No test episode timed (`--episodes 0`): "-", not inf.
        let test = t
            .test_episode_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}"));
        println!(
            "{:<24} {:>9.0} ms {:>14.1} {:>16} {:>14}",
            t.label, t.meta_step_ms, t.train_episode_ms, test, peak
        );
    }
}
