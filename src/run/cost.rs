//! What a run will cost, checked before anything is decoded or trained:
//! the peak memory and the time of one meta-step and of one evaluation
//! episode of every algorithm, estimated from the resolved benchmark, the
//! dataset's image count and each algorithm's [`StepCost`].
//!
//! Memory (bytes):
//!
//! ```text
//! cache      = images x channels x side^2          decoded pixels, one byte each
//! episode    = alive_images x learner.activation_bytes() (+ n x tape_bytes_per_param in training)
//! peak       = base + archives + cache + 4 x 4n (parameters, gradient, Adam)
//!              + max(min(threads, meta_batch) x training episode, threads x test episode)
//! ```
//!
//! Time: `step_images x 3 x learner.forward_flops()` (forward and a
//! backward of twice its work) at [`FLOPS`] per second. The estimates are
//! order-of-magnitude: `tests/cost.rs` holds the memory estimate within a
//! factor of 2 of the measured peak RSS on the shipped benchmarks (the
//! log prints both at the end of a run).
//!
//! A run is refused when the peak exceeds the memory available (or
//! `--max-memory`), naming the field that drives the largest term, and
//! when one meta-step or one evaluation episode would take longer than the
//! whole time budget or `--max-step-minutes` (60 by default); it is warned
//! about when the budget buys fewer than 10 meta-steps.

use crate::algo::StepCost;
use crate::error::{Error, Result};
use crate::report::columns::{self, Columns};
use crate::spec::Benchmark;

/// Learner throughput the time estimate assumes, FLOP/s: about half of
/// what the fused kernels reach on this project's 2-core machine (`bench
/// perf learner`), so that estimates err long.
pub const FLOPS: f64 = 4e10;

/// Memory the binary, its allocator and the dataset's index take before
/// any image is decoded.
pub const BASE_BYTES: f64 = 100.0 * 1024.0 * 1024.0;

/// Limits a run is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes; `None`: the memory available now (`MemAvailable`).
    pub max_memory: Option<f64>,
    /// One meta-step or evaluation episode may take at most this long.
    pub max_step_minutes: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: None,
            max_step_minutes: 60.0,
        }
    }
}

/// One algorithm's estimate.
#[derive(Debug, Clone)]
pub struct AlgoCost {
    pub label: String,
    /// Its entry's position (for the field an error names).
    pub index: usize,
    pub peak_bytes: f64,
    pub activation_bytes: f64,
    pub tape_bytes: f64,
    pub step_seconds: f64,
    pub eval_seconds: f64,
    pub cost: StepCost,
}

/// The estimate of a whole run.
#[derive(Debug, Clone)]
pub struct Cost {
    pub images: usize,
    pub cache_bytes: f64,
    pub archive_bytes: f64,
    pub threads: usize,
    pub algorithms: Vec<AlgoCost>,
}

/// Estimate `bench` on a dataset of `images` images (`archive_bytes` of
/// archives read into memory) with `threads` worker threads, for the
/// algorithms `algorithms` built for it (label, entry index, algorithm).
pub fn estimate(
    bench: &Benchmark,
    images: usize,
    archive_bytes: f64,
    threads: usize,
    algorithms: &[(String, usize, Box<dyn crate::algo::Algorithm>)],
) -> Result<Cost> {
    let l = &bench.learner;
    let side = l.image_size as f64;
    let cache_bytes = images as f64 * l.in_channels as f64 * side * side;
    let n = l
        .init(&mut crate::rng::Rng::new(0), &candle_core::Device::Cpu)?
        .numel() as f64;
    let mut out = Cost {
        images,
        cache_bytes,
        archive_bytes,
        threads,
        algorithms: vec![],
    };
    for (label, index, a) in algorithms {
        let c = a.step_cost();
        let activation_bytes = c.alive_images * l.activation_bytes();
        let tape_bytes = n * c.tape_bytes_per_param;
        // Meta-training runs min(threads, meta-batch) episodes at once, each
        // with its activations and tape; evaluation runs one episode per
        // thread, without a tape.
        let training = threads.min(a.meta_batch().max(1)) as f64 * (activation_bytes + tape_bytes);
        let testing = threads as f64 * activation_bytes;
        let peak = BASE_BYTES + archive_bytes + cache_bytes + training.max(testing) + 16.0 * n;
        let flops = 3.0 * l.forward_flops();
        out.algorithms.push(AlgoCost {
            label: label.clone(),
            index: *index,
            peak_bytes: peak,
            activation_bytes,
            tape_bytes,
            step_seconds: c.step_images * flops / FLOPS,
            eval_seconds: c.eval_images * flops / FLOPS,
            cost: c,
        });
    }
    Ok(out)
}

/// `1.2 GiB`, `340 MiB`.
pub fn bytes(b: f64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / (1024.0 * 1024.0))
    }
}

/// `40 ms`, `1.4 s`, `12 min`, `3.1 h`, `2.9e4 days`.
pub fn duration(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 86400.0 * 3.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1e} days", s / 86400.0)
    }
}

/// The memory this machine has free now (`MemAvailable` of /proc/meminfo).
pub fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// This process's peak resident memory so far (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

impl Cost {
    /// The estimate as a table (what `bench run --dry-run` prints).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "decoded images: {} images, {}; archives in memory {}; {} worker threads\n",
            self.images,
            bytes(self.cache_bytes),
            bytes(self.archive_bytes),
            self.threads
        );
        let mut table = Columns::new(vec![
            columns::left("algorithm", 16),
            columns::right("peak memory", 12),
            columns::right("activations", 14),
            columns::right("tape", 12),
            columns::right("meta-step", 12),
            columns::right("test episode", 12).gap("  "),
            columns::left("what sets a meta-step", 0),
        ]);
        for a in &self.algorithms {
            table.row(vec![
                a.label.clone(),
                bytes(a.peak_bytes),
                bytes(a.activation_bytes),
                bytes(a.tape_bytes),
                duration(a.step_seconds),
                duration(a.eval_seconds),
                a.cost.driver.to_string(),
            ]);
        }
        s.push_str(&table.render());
        s.push_str(&format!(
            "(estimates: activations and tape of one episode; times at {:.0} GFLOP/s, docs/benchmarks.md \"Before any training\")\n",
            FLOPS / 1e9
        ));
        s
    }

    /// Refuse what cannot run within `limits` and the budget of `bench`;
    /// returns warnings for what merely runs slowly.
    pub fn check(&self, bench: &Benchmark, limits: &Limits) -> Result<Vec<String>> {
        // The estimate errs by up to a third either way (tests/cost.rs):
        // against the machine's free memory, keep that margin.
        let (limit, what) = match limits.max_memory {
            Some(m) => (Some(m), "--max-memory"),
            None => (
                available_memory().map(|m| 0.75 * m),
                "three quarters of the memory available",
            ),
        };
        let mut warnings = vec![];
        for a in &self.algorithms {
            let field = |f: &str| format!("algorithms[{}] ({}): {f}", a.index, a.label);
            if let Some(limit) = limit {
                if a.peak_bytes > limit {
                    // The largest term names the field that drives it.
                    let per_thread = self.threads as f64;
                    let terms = [
                        (
                            self.cache_bytes,
                            "data.image_size".to_string(),
                            format!(
                                "the decoded images: {} images of {}x{}",
                                self.images, bench.learner.image_size, bench.learner.image_size
                            ),
                        ),
                        (
                            per_thread * a.activation_bytes,
                            "data.image_size, learner.hidden or episode".into(),
                            format!(
                                "the learner's activations: {} images of {}x{} at once, per thread",
                                a.cost.alive_images,
                                bench.learner.image_size,
                                bench.learner.image_size
                            ),
                        ),
                        (
                            per_thread * a.tape_bytes,
                            field("steps"),
                            "the learned rule's tape through its updates, per thread".into(),
                        ),
                    ];
                    let (_, f, why) = terms
                        .iter()
                        .max_by(|x, y| x.0.total_cmp(&y.0))
                        .expect("three terms");
                    return Err(Error::Config {
                        source_name: format!("{}: {f}", bench.name),
                        reason: format!(
                            "{} needs about {} of memory, more than {what} ({}); most of it is {why}. `bench run --dry-run` prints the estimate",
                            a.label,
                            bytes(a.peak_bytes),
                            bytes(limit)
                        ),
                    });
                }
            }
            let budget = bench.budget_of(&bench.algorithms[a.index]);
            let bound = budget
                .minutes
                .map_or(limits.max_step_minutes, |m| m.min(limits.max_step_minutes))
                * 60.0;
            for (what, secs, f) in [
                ("one meta-step", a.step_seconds, a.cost.driver.as_str()),
                (
                    "one test episode",
                    a.eval_seconds,
                    "the evaluation's inner steps",
                ),
            ] {
                if secs > bound {
                    return Err(Error::Config {
                        source_name: format!("{}: {}", bench.name, field(f)),
                        reason: format!(
                            "{what} of {} would take about {}, longer than {} ({}); give --max-step-minutes to allow it",
                            a.label,
                            duration(secs),
                            duration(bound),
                            if budget.minutes.is_some_and(|m| m * 60.0 <= limits.max_step_minutes * 60.0) {
                                "the whole time budget"
                            } else {
                                "--max-step-minutes"
                            }
                        ),
                    });
                }
            }
            if let Some(m) = budget.minutes {
                if a.step_seconds * 10.0 > m * 60.0 {
                    warnings.push(format!(
                        "{}: the {} budget buys about {:.0} meta-steps ({} each)",
                        a.label,
                        budget.describe(),
                        m * 60.0 / a.step_seconds,
                        duration(a.step_seconds)
                    ));
                }
            }
        }
        Ok(warnings)
    }
}
