//! # fewshot
//!
//! A benchmark harness for few-shot meta-learning: how does a learned
//! optimizer (the Ravi & Larochelle meta-learner LSTM) compare with MAML and
//! Reptile on the same N-way K-shot episodes?
//!
//! - [`data`]: dataset readers (Omniglot, mini-ImageNet, class folders),
//!   fixed class splits, the decoded-image cache and the download step;
//! - [`sampler`]: seeded, indexed episodes and their tensors;
//! - [`rng`]: the one source of randomness, version-stable;
//! - [`learner`], [`ops`], [`params`]: the functional conv-4 learner;
//! - [`norm`]: where batch norm takes its statistics (the references'
//!   protocols, per benchmark);
//! - [`algo`]: the `Algorithm` trait, its registry, MAML, Reptile and the
//!   meta-learner LSTM;
//! - [`optim`]: Adam with checkpointable state;
//! - [`spec`]: benchmark files (YAML) and their resolved form;
//! - [`train`], [`eval`], [`runner`]: meta-training with checkpoints,
//!   evaluation on fixed episodes, the leaderboard;
//! - [`stats`]: Student-t intervals and paired differences over episodes;
//! - [`report`]: the leaderboard as a terminal table, `leaderboard.md` and
//!   `leaderboard.csv`;
//! - [`transfer`]: a run's trained algorithms tested on another
//!   benchmark's episodes (cross-dataset evaluation);
//! - [`logfile`]: the run's log file (`run.log` in the run folder);
//! - [`checkpoint`], [`rundir`]: atomic checkpoints with fallback, and
//!   run folders that are never overwritten by mistake;
//! - [`trace`]: meta-learner gate traces (JSONL, CSV) and their
//!   Figure-2-style plot.

pub mod algo;
pub mod data;
pub mod device;
pub mod error;
pub mod layout;
pub mod model;
pub mod report;
pub mod rng;
pub mod run;
pub mod spec;
pub mod util;
pub mod yaml;

pub use error::{Error, Result};
