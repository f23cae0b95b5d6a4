//! Running benchmarks: the layer that trains, evaluates and writes.
//!
//! - [`runner`]: meta-train every algorithm of a benchmark, evaluate all of
//!   them on the same fixed test episodes, write results;
//! - [`train`]: the meta-training loop with budgets, validation and
//!   checkpoints; [`eval`]: evaluation on fixed episodes;
//! - [`checkpoint`], [`rundir`]: atomic checkpoints with fallback, and run
//!   folders that are never overwritten by mistake;
//! - [`seeds`]: several run seeds as independent units, and their merge;
//!   [`plan`]: their job array (a Slurm script, or one command per unit);
//! - [`transfer`]: a run's trained algorithms tested on another benchmark's
//!   episodes;
//! - [`catalogue`]: the runs under a folder, as `bench show` and `bench
//!   report` read them;
//! - [`optimise`]: optimisation benchmarks (`task: optimisation`):
//!   hand-designed optimisers tuned and learned ones meta-trained on
//!   training problems, all tested on the same fixed problems;
//! - [`cost`]: the memory and time a run will take, checked before it
//!   starts;
//! - [`logfile`]: the run's log file;
//! - [`selftest`]: the gradient checks on any device;
//! - [`perf`]: speed measurements (data pipeline, algorithms, learner).

pub mod catalogue;
pub mod checkpoint;
pub mod cost;
pub mod eval;
pub mod logfile;
pub mod optimise;
pub mod perf;
pub mod plan;
pub mod rundir;
pub mod runner;
pub mod seeds;
pub mod selftest;
pub mod train;
pub mod transfer;
