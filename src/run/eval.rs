//! Evaluation on fixed, indexed episodes, with confidence intervals.
//!
//! Episode `i` of the test split under the episode seed is the same for
//! every algorithm, so leaderboard rows are paired comparisons on the same
//! tasks. The interval is the Student-t 95% interval of the mean
//! ([`crate::report::stats`]): t * s / sqrt(n) with s the sample standard deviation
//! over episodes (t = 1.964 for 600 episodes).

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::algo::{Algorithm, EpisodeScore};
use crate::data::sampler::{EpisodeSpec, Sampler};
use crate::data::task::Task;
use crate::data::{Dataset, Split};
use crate::error::Result;

/// Scores of `n` fixed episodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub split: Split,
    pub episodes: usize,
    /// Mean query accuracy over episodes, in [0, 1].
    pub mean: f64,
    /// Half-width of the 95% confidence interval of the mean.
    pub ci95: f64,
    pub mean_loss: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Per-episode scores, in episode order.
    pub scores: Vec<EpisodeScore>,
}

/// Mean and 95% half-width (Student t; NaN below two values).
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let i = crate::report::stats::mean_interval(xs);
    (i.mean, i.ci95.unwrap_or(f64::NAN))
}

/// Evaluate `algo` on episodes `0..n` of `split` (parallel over episodes).
pub fn evaluate(
    algo: &dyn Algorithm,
    ds: &Dataset,
    split: Split,
    spec: EpisodeSpec,
    seed: u64,
    n: usize,
    show_progress: bool,
) -> Result<Evaluation> {
    let sampler = Sampler::new(ds, split, spec, seed)?;
    ds.preload(Some(split))?;
    let t = Instant::now();
    let pb = if show_progress {
        crate::util::progress(n as u64, &format!("{} {split}", algo.label()))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let device = algo.context().device.clone();
    let scores: Vec<EpisodeScore> = (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let s = algo.evaluate(&sampler.instance(i, &device)?);
            pb.inc(1);
            s
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let accs: Vec<f64> = scores.iter().map(|s| s.accuracy).collect();
    let (mean, ci95) = mean_ci95(&accs);
    let mean_loss = scores.iter().map(|s| s.loss).sum::<f64>() / n.max(1) as f64;
    Ok(Evaluation {
        split,
        episodes: n,
        mean,
        ci95,
        mean_loss,
        seconds: t.elapsed().as_secs_f64(),
        scores,
    })
}

/// The episode fingerprint of `bench`'s test episodes
/// ([`crate::data::fingerprint`]), from the data in `data_dir`.
pub fn test_fingerprint(
    bench: &crate::spec::Benchmark,
    data_dir: &std::path::Path,
) -> Result<String> {
    let ds = crate::data::open(&bench.dataset, data_dir, &bench.data)?;
    let sampler = Sampler::new(&ds, Split::Test, bench.episode, bench.seed)?;
    crate::data::fingerprint::episodes(&sampler, bench.test_episodes)
}
