//! Speed measurements (`bench perf`): the data pipeline, each algorithm of
//! a benchmark, and the conv-4 learner, returned as plain measurements for
//! the caller to show (numbers belong in docs/perf.md with the command that
//! produced them).
//!
//! - [`data`]: index + decode + cache of a whole dataset, and episodes per
//!   second from the cache into tensors (one thread);
//! - [`algorithms`]: milliseconds per meta-step and per test episode, and
//!   peak memory, of every algorithm of a benchmark;
//! - [`learner`]: forward and forward+backward of the learner on a
//!   query-sized batch (one warm-up, then the median of the repetitions, as
//!   `benchmarks/reference/perf_torch.py` times PyTorch).
//!
//! The long measurements hand each result to an [`Observer`] as soon as it
//! is made (criterion's reporter hooks), so a caller can show rows as they
//! come; the same results are returned at the end.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, DeviceLocation, Tensor};

use crate::algo::{self, Progress};
use crate::data::sampler::{EpisodeSpec, Sampler};
use crate::data::{self, DataOptions, Split};
use crate::error::{Error, Result};
use crate::model::learner::{cross_entropy, Learner};
use crate::model::params::Params;
use crate::spec::Benchmark;

/// Receives each measurement as soon as it is made; every hook does nothing
/// unless implemented.
pub trait Observer {
    /// A dataset was indexed, decoded and cached ([`data`]).
    fn decoded(&mut self, _: &Decode) {}
    /// Episodes per second of one episode shape was measured ([`data`]).
    fn episodes(&mut self, _: &EpisodeRate) {}
    /// The benchmark of [`algorithms`] is loaded and its data cached; the
    /// timings follow.
    fn setup(&mut self, _: &AlgorithmsSetup) {}
    /// One algorithm was timed ([`algorithms`]).
    fn algorithm(&mut self, _: &AlgorithmTiming) {}
}

/// No observer: the results are only returned.
impl Observer for () {}

/// Index + decode + cache of a whole dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Decode {
    pub dataset: String,
    /// Images in the cache afterwards.
    pub images: usize,
    /// Seconds to index the dataset (open it).
    pub index_seconds: f64,
    /// Seconds to index, decode and cache every image.
    pub seconds: f64,
}

/// Episodes per second of the training split, from the decoded-image cache
/// into tensors, on one thread.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeRate {
    pub dataset: String,
    pub spec: EpisodeSpec,
    pub per_second: f64,
}

/// What [`data`] measured, in the order measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataPerf {
    pub decodes: Vec<Decode>,
    pub rates: Vec<EpisodeRate>,
}

/// The datasets [`data`] measures, each with the episode shapes it times
/// (on its training split).
const DATA_EPISODES: [(&str, [EpisodeSpec; 2]); 2] = [
    ("omniglot", [episode(5, 1, 15), episode(20, 5, 15)]),
    ("mini-imagenet", [episode(5, 5, 15), episode(5, 1, 15)]),
];

const fn episode(ways: usize, shots: usize, queries: usize) -> EpisodeSpec {
    EpisodeSpec {
        ways,
        shots,
        queries,
    }
}

/// Decode throughput and episodes per second on the real datasets under
/// `data_dir` (Omniglot, then mini-ImageNet), each episode shape timed for
/// `seconds` in rounds of 50 episodes.
pub fn data(data_dir: &Path, seconds: f64, observer: &mut dyn Observer) -> Result<DataPerf> {
    let mut perf = DataPerf::default();
    for (name, specs) in DATA_EPISODES {
        let t = Instant::now();
        let ds = data::open(name, data_dir, &DataOptions::default())?;
        let index_seconds = t.elapsed().as_secs_f64();
        ds.preload(None)?;
        let decode = Decode {
            dataset: name.to_string(),
            images: ds.cached(),
            index_seconds,
            seconds: t.elapsed().as_secs_f64(),
        };
        observer.decoded(&decode);
        perf.decodes.push(decode);
        for spec in specs {
            let s = Sampler::new(&ds, Split::Train, spec, 0)?;
            let device = Device::Cpu;
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
            let rate = EpisodeRate {
                dataset: name.to_string(),
                spec,
                per_second: n as f64 / t.elapsed().as_secs_f64(),
            };
            observer.episodes(&rate);
            perf.rates.push(rate);
        }
    }
    Ok(perf)
}

/// What [`algorithms`] times, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmsOptions {
    /// Benchmark name or YAML path.
    pub benchmark: String,
    /// Timed meta-steps per algorithm (after one warm-up step); at least 1.
    pub steps: u64,
    /// Timed test episodes per algorithm.
    pub episodes: usize,
    /// Also time the benchmark's meta-LSTM with these numbers of update
    /// steps (training and test).
    pub lstm_steps: Vec<usize>,
    /// Only the algorithm with this label (`--only`; one per process gives
    /// a clean peak memory).
    pub only: Option<String>,
    /// The benchmark's kernels replaced: `fused` or `composed` (`--kernels`).
    pub kernels: Option<String>,
}

/// The benchmark [`algorithms`] times, once loaded and cached.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmsSetup {
    pub benchmark: String,
    pub episode: EpisodeSpec,
    /// The kernels the algorithms run (`fused`, `composed`).
    pub kernels: String,
    pub location: DeviceLocation,
    /// Images in the decoded-image cache (train and test splits).
    pub cached_images: usize,
    /// Their size in MiB (included in the peak RSS).
    pub cache_mib: f64,
    pub steps: u64,
    pub episodes: usize,
    /// rayon's threads.
    pub threads: usize,
}

/// Peak resident memory of one algorithm's timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PeakRss {
    /// VmHWM in MiB, since the counter was reset after the warm-up step.
    Mib(f64),
    /// The counter was reset but could not be read back.
    Unread,
    /// The counter cannot be reset here (not Linux >= 4.0): not measured.
    NotMeasured,
}

/// One algorithm's timing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmTiming {
    pub label: String,
    /// Milliseconds per meta-step.
    pub meta_step_ms: f64,
    /// Milliseconds per meta-training episode (meta-step / meta-batch).
    pub train_episode_ms: f64,
    /// Milliseconds per test episode; `None` when no test episode was timed.
    pub test_episode_ms: Option<f64>,
    pub peak_rss: PeakRss,
}

/// What [`algorithms`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmsPerf {
    pub setup: AlgorithmsSetup,
    pub timings: Vec<AlgorithmTiming>,
}

/// Milliseconds per meta-training episode and per test episode, and peak
/// memory, for each algorithm of a benchmark, on `device`: for each, one
/// warm-up meta-step, then `steps` timed meta-steps, then `episodes` test
/// episodes of the benchmark's fixed test set.
pub fn algorithms(
    data_dir: &Path,
    o: &AlgorithmsOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<AlgorithmsPerf> {
    let (steps, episodes) = (o.steps, o.episodes);
    let (mut bench, _) = Benchmark::load(&o.benchmark)?;
    if let Some(k) = &o.kernels {
        bench.kernels = crate::spec::from_str(k, "--kernels")?;
    }
    let ds = data::open(&bench.dataset, data_dir, &bench.data)?;
    ds.preload(Some(Split::Train))?;
    ds.preload(Some(Split::Test))?;
    let ctx = bench.context(device);
    let setup = AlgorithmsSetup {
        benchmark: bench.name.clone(),
        episode: bench.episode,
        kernels: crate::spec::variant_name(&ctx.learner.kernels),
        location: device.location(),
        cached_images: ds.cached(),
        cache_mib: (ds.cached() * ds.format.pixels()) as f64 / (1 << 20) as f64,
        steps,
        episodes,
        threads: rayon::current_num_threads(),
    };
    observer.setup(&setup);
    let mut entries: Vec<(String, crate::yaml::Value)> = bench
        .algorithms
        .iter()
        .map(|a| (a.label.clone(), a.config.clone()))
        .collect();
    for &t in &o.lstm_steps {
        if let Some(m) = bench.algorithms.iter().find(|a| a.algorithm == "meta-lstm") {
            let mut v = m.config.clone();
            v["steps"] = crate::yaml::Value::from(t as u64);
            v["steps_test"] = crate::yaml::Value::from(t as u64);
            entries.push((format!("{} (T={t})", m.label), v));
        }
    }
    if let Some(only) = &o.only {
        entries.retain(|(l, _)| l == only);
        if entries.is_empty() {
            return Err(Error::Flag {
                flag: "--only".into(),
                value: only.clone(),
                reason: format!("no such algorithm label in {}", bench.name),
            });
        }
    }
    let mut timings = vec![];
    for (label, cfg) in entries {
        let mut a = algo::build(&cfg, &ctx, &label)?;
        let train = Sampler::new(&ds, Split::Train, a.train_spec(), bench.seed)?;
        let mb = a.meta_batch() as u64;
        // One warm-up step (allocator, caches), then time.
        let warm: Vec<_> = (0..mb)
            .map(|j| train.batch(&train.episode(j), device))
            .collect::<Result<_>>()?;
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
                .map(|j| train.batch(&train.episode(s * mb + j), device))
                .collect::<Result<_>>()?;
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
        let ev = crate::run::eval::evaluate(
            &*a,
            &ds,
            Split::Test,
            bench.episode,
            bench.seed,
            episodes,
            false,
        )?;
        let peak_rss = if reset {
            peak_rss_mib().map_or(PeakRss::Unread, PeakRss::Mib)
        } else {
            PeakRss::NotMeasured
        };
        let timing = AlgorithmTiming {
            label,
            meta_step_ms: step_ms,
            train_episode_ms: step_ms / mb as f64,
            // `episodes == 0` times no test episode (not an infinite rate).
            test_episode_ms: (episodes != 0).then(|| 1e3 * ev.seconds / episodes as f64),
            peak_rss,
        };
        observer.algorithm(&timing);
        timings.push(timing);
    }
    Ok(AlgorithmsPerf { setup, timings })
}

/// Forward and forward+backward time of the conv-4 learner.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerTiming {
    pub dataset: String,
    pub batch: usize,
    /// Median seconds of a forward pass.
    pub forward_seconds: f64,
    /// Median seconds of a forward and backward pass.
    pub forward_backward_seconds: f64,
}

/// Time forward and forward+backward of the learner of `dataset`
/// (`omniglot`: 5-way 28 px; anything else: mini-ImageNet's 5-way 84 px)
/// on a random batch of `batch` images: one warm-up repetition, then the
/// median of `reps` (a GPU works asynchronously: each repetition ends with
/// a sync).
pub fn learner(dataset: &str, batch: usize, reps: usize, dev: &Device) -> Result<LearnerTiming> {
    let l = if dataset == "omniglot" {
        Learner::omniglot(5, 28)
    } else {
        Learner::mini_imagenet(5, 84)
    };
    let dev = dev.clone();
    let p = l.init(&mut crate::rng::Rng::new(0), &dev)?;
    let x = Tensor::randn(
        0f32,
        1.,
        (batch, l.in_channels, l.image_size, l.image_size),
        &dev,
    )?;
    let y = Tensor::zeros(batch, DType::U32, &dev)?;
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
    Ok(LearnerTiming {
        dataset: dataset.to_string(),
        batch,
        forward_seconds: fwd,
        forward_backward_seconds: fb,
    })
}

/// Seconds of `f`: one warm-up call, then the median of `reps` calls (at
/// least one).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_follows_one_warm_up_call() {
        let mut calls = 0;
        let s = median_secs(4, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 5);
        assert!(s >= 0.0);
        let mut calls = 0;
        median_secs(0, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 2, "zero repetitions still time one");
    }

    #[test]
    fn the_learner_is_timed_on_the_cpu() {
        let t = learner("omniglot", 2, 1, &Device::Cpu).unwrap();
        assert_eq!((t.dataset.as_str(), t.batch), ("omniglot", 2));
        assert!(t.forward_seconds > 0.0 && t.forward_backward_seconds > 0.0);
    }
}

/// One optimiser's meta-training speed on an optimisation benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OptimizerTiming {
    pub label: String,
    /// Median milliseconds of one meta-training step (one problem of T
    /// steps, the optimiser updated after every unroll).
    pub meta_step_ms: f64,
    /// Median milliseconds to optimise one test problem for T steps.
    pub optimise_ms: f64,
}

/// Time the learned optimisers of the optimisation benchmark `benchmark`
/// (or the one labelled `only`) with `kernels`: `steps` meta-steps after
/// one warm-up, and as many test problems, one at a time (candle's threads
/// inside each operation, `CANDLE_NUM_THREADS`; the fused kernel's on
/// rayon's).
pub fn optimizers(
    data_dir: &Path,
    benchmark: &str,
    only: Option<&str>,
    steps: u64,
    kernels: crate::model::kernels::Kernels,
) -> Result<Vec<OptimizerTiming>> {
    use crate::algo::optimizer::{self, Problems};
    let (bench, _) = crate::spec::optimisation::OptBenchmark::load_with(
        benchmark,
        &crate::spec::Overrides::default(),
    )?;
    if let Some(l) = only {
        bench.algorithm(l)?;
    }
    let data = bench.problem.open(data_dir)?;
    let ctx = crate::algo::optimizer::OptContext {
        kernels,
        ..bench.context()
    };
    let train = Problems {
        spec: &bench.problem,
        data: &data,
        seed: 0,
        split: Split::Train,
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut out = vec![];
    for (i, spec) in bench.algorithms.iter().enumerate() {
        if only.is_some_and(|l| l != spec.label) {
            continue;
        }
        let mut opt = optimizer::build(&spec.config, &ctx, &format!("algorithms[{i}]"))?;
        if !opt.learned() {
            continue;
        }
        let (mut meta, mut run) = (vec![], vec![]);
        for s in 0..=steps {
            let mut p = train.get(s)?;
            let t0 = Instant::now();
            opt.meta_train_step(&mut p)?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut p = train.get(1000 + s)?;
            let t1 = Instant::now();
            opt.optimise(&mut p, bench.steps)?;
            if s > 0 {
                meta.push(ms);
                run.push(t1.elapsed().as_secs_f64() * 1e3);
            }
        }
        out.push(OptimizerTiming {
            label: spec.label.clone(),
            meta_step_ms: median(meta),
            optimise_ms: median(run),
        });
    }
    Ok(out)
}
