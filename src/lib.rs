//! # fewshot
//!
//! A benchmark harness for meta-learning: on the same problems, does a
//! learned update rule (the Ravi & Larochelle meta-learner LSTM) beat
//! hand-designed ones (MAML's and Reptile's learned initialisations)?
//!
//! The library is built in floors; a module imports only from its own
//! floor or below, and no two modules import each other
//! (`docs/architecture.md`; `tests/architecture.rs` holds the rule):
//!
//! - floor 5, [`run`]: benchmark runs (train, evaluate, write), run
//!   folders, checkpoints, run seeds, cross-dataset evaluation, the
//!   catalogue of runs;
//! - floor 4, [`report`]: results ([`report::results::RunResults`]),
//!   intervals and paired differences, leaderboards, gate-trace figures;
//! - floor 3, [`spec`]: benchmark files (YAML) and their resolved form;
//! - floor 2, [`algo`]: the `Algorithm` trait, its registry, MAML, Reptile
//!   and the meta-learner LSTM;
//! - floor 1, [`model`] (the functional conv-4 learner and its kernels) and
//!   [`data`] (dataset readers, seeded episodes, task kinds), side by side;
//! - floor 0, the ground: [`error`], [`rng`], [`yaml`], [`device`],
//!   [`util`] and [`layout`] (the names of a run folder's files).

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
