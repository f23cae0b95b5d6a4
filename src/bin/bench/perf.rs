//! `bench perf`: performance benchmarks of the data pipeline.
//!
//! Reports time to index + decode + cache a whole dataset and episodes per
//! second from the cache into tensors. Numbers belong in docs/perf.md with
//! the command that produced them.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use fewshot::data::sampler::{EpisodeSpec, Sampler};
use fewshot::data::{self, DataOptions, Split};

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
        PerfCommand::Data { seconds } => perf_data(data_dir, seconds),
        PerfCommand::Algorithms {
            benchmark,
            steps,
            episodes,
            lstm_steps,
            only,
            kernels,
        } => perf_algorithms(
            data_dir,
            &benchmark,
            steps,
            episodes,
            &lstm_steps,
            only.as_deref(),
            kernels.as_deref(),
            &device,
        ),
        PerfCommand::Learner {
            dataset,
            batch,
            reps,
        } => perf_learner(&dataset, batch, reps, &device),
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
pub fn perf_learner(
    dataset: &str,
    batch: usize,
    reps: usize,
    dev: &candle_core::Device,
) -> Result<()> {
    use candle_core::{DType, Tensor};
    use fewshot::model::learner::{cross_entropy, Learner};
    use fewshot::model::params::Params;
    let l = if dataset == "omniglot" {
        Learner::omniglot(5, 28)
    } else {
        Learner::mini_imagenet(5, 84)
    };
    let dev = dev.clone();
    let p = l.init(&mut fewshot::rng::Rng::new(0), &dev)?;
    let x = Tensor::randn(
        0f32,
        1.,
        (batch, l.in_channels, l.image_size, l.image_size),
        &dev,
    )?;
    let y = Tensor::zeros(batch, DType::U32, &dev)?;
    // One warm-up repetition, then the median of `reps` (as
    // benchmarks/reference/perf_torch.py times PyTorch).
    // (A GPU works asynchronously: each repetition ends with a sync.)
    let fwd = median_secs(reps, || {
        std::hint::black_box(l.forward(&p, &x)?);
        Ok(dev.synchronize()?)
    })?;
    let fb = median_secs(reps, || {
        let vars = p.to_vars()?;
        let pv = Params::from_vars(&p.names, &vars);
        let loss = cross_entropy(&l.forward(&pv, &x)?, &y)?;
        std::hint::black_box(loss.backward()?);
        Ok(dev.synchronize()?)
    })?;
    println!(
        "{dataset} learner, batch {batch}: forward {:.1} ms, forward+backward {:.1} ms",
        fwd * 1e3,
        fb * 1e3
    );
    Ok(())
}

/// Seconds of `f`: one warm-up call, then the median of `reps` calls.
fn median_secs(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f().map(|()| s.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak-RSS counter (Linux >= 4.0); false where unsupported.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Milliseconds per meta-training episode and per test episode, and peak
/// memory, for each algorithm of a benchmark.
pub fn perf_algorithms(
    data_dir: &Path,
    benchmark: &str,
    steps: u64,
    episodes: usize,
    lstm_steps: &[usize],
    only: Option<&str>,
    kernels: Option<&str>,
    device: &candle_core::Device,
) -> Result<()> {
    use fewshot::algo::{self, Progress};
    use fewshot::spec::Benchmark;
    let (mut bench, _) = Benchmark::load(benchmark)?;
    if let Some(k) = kernels {
        bench.kernels = fewshot::spec::from_str(k, "--kernels")?;
    }
    let ds = data::open(&bench.dataset, data_dir, &bench.data)?;
    ds.preload(Some(Split::Train))?;
    ds.preload(Some(Split::Test))?;
    let ctx = bench.context(device);
    println!(
        "decoded-image cache: {} images ({:.0} MiB, included in peak RSS)",
        ds.cached(),
        (ds.cached() * ds.format.pixels()) as f64 / (1 << 20) as f64
    );
    println!(
        "{} ({}-way {}-shot, {} queries), {} kernels on {:?}, {} meta-steps and {} test episodes per algorithm, {} rayon threads",
        bench.name,
        bench.episode.ways,
        bench.episode.shots,
        bench.episode.queries,
        fewshot::spec::variant_name(&ctx.kernels),
        device.location(),
        steps,
        episodes,
        rayon::current_num_threads()
    );
    println!(
        "{:<24} {:>12} {:>14} {:>16} {:>14}",
        "algorithm", "meta-step", "ms/train ep", "ms/test episode", "peak RSS MiB"
    );
    let mut entries: Vec<(String, fewshot::yaml::Value)> = bench
        .algorithms
        .iter()
        .map(|a| (a.label.clone(), a.config.clone()))
        .collect();
    for &t in lstm_steps {
        if let Some(m) = bench.algorithms.iter().find(|a| a.algorithm == "meta-lstm") {
            let mut v = m.config.clone();
            v["steps"] = fewshot::yaml::Value::from(t as u64);
            v["steps_test"] = fewshot::yaml::Value::from(t as u64);
            entries.push((format!("{} (T={t})", m.label), v));
        }
    }
    if let Some(o) = only {
        entries.retain(|(l, _)| l == o);
        anyhow::ensure!(
            !entries.is_empty(),
            "--only {o}: no such algorithm label in {}",
            bench.name
        );
    }
    for (label, cfg) in entries {
        let mut a = algo::build(&cfg, &ctx, &label)?;
        let train = Sampler::new(&ds, Split::Train, a.train_spec(), bench.seed)?;
        let mb = a.meta_batch() as u64;
        // One warm-up step (allocator, caches), then time.
        let warm: Vec<_> = (0..mb)
            .map(|j| train.batch(&train.episode(j), &device))
            .collect::<fewshot::Result<_>>()?;
        a.meta_train_step(
            &warm,
            Progress {
                step: 0,
                fraction: 0.0,
            },
        )?;
        let reset = reset_peak_rss();
        let t = Instant::now();
        for s in 1..=steps {
            let b: Vec<_> = (0..mb)
                .map(|j| train.batch(&train.episode(s * mb + j), &device))
                .collect::<fewshot::Result<_>>()?;
            a.meta_train_step(
                &b,
                Progress {
                    step: s,
                    fraction: 0.0,
                },
            )?;
        }
        device.synchronize()?;
        let step_ms = 1e3 * t.elapsed().as_secs_f64() / steps as f64;
        let ev = fewshot::run::eval::evaluate(
            &*a,
            &ds,
            Split::Test,
            bench.episode,
            bench.seed,
            episodes,
            false,
        )?;
        let peak = if reset {
            peak_rss_mib()
                .map(|m| format!("{m:.0}"))
                .unwrap_or_default()
        } else {
            "n/a".into()
        };
        // `--episodes 0` times no test episode: shown as "-", not inf.
        let test_ms = if episodes == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", 1e3 * ev.seconds / episodes as f64)
        };
        println!(
            "{:<24} {:>9.0} ms {:>14.1} {:>16} {:>14}",
            label,
            step_ms,
            step_ms / mb as f64,
            test_ms,
            peak
        );
    }
    Ok(())
}
