//! Task kinds: what a benchmark's problems are, and the one trait that
//! serves them.
//!
//! A benchmark names its kind in its file (`task: episodic`, the default),
//! and every algorithm's registry entry lists the kinds it can run
//! ([`crate::algo::Entry::tasks`]), so that a benchmark pairing an
//! algorithm with a kind it cannot run is refused when the file is
//! resolved, naming both.
//!
//! Whatever the kind, instance `i` of a split under a seed is always the
//! same instance (a pure function of seed, split and index, whatever the
//! thread count): that is what lets every algorithm answer the same fixed
//! test instances and be compared pair by pair.
//!
//! - [`TaskKind::Episodic`]: N-way K-shot classification episodes
//!   ([`crate::data::sampler::Sampler`]); an instance is a [`Batch`]
//!   (support and query set), its objective the learner's loss on the
//!   support set, its score the accuracy on the query set.
//! - [`TaskKind::Optimisation`]: optimisation problems (random quadratics,
//!   an MLP on MNIST; `crate::algo::problem`); an instance is a problem
//!   (a starting point and an objective), its score the loss after T
//!   steps. Served by `crate::algo::optimizer::Problems`, since a problem
//!   couples data and a model.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::data::sampler::{Batch, Sampler};
use crate::error::Result;

/// What a benchmark's problems are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// N-way K-shot classification episodes from a dataset.
    #[default]
    Episodic,
    /// Optimisation problems: minimise a drawn function for T steps.
    Optimisation,
}

impl TaskKind {
    /// Every kind, in the order errors list them.
    pub const ALL: [TaskKind; 2] = [TaskKind::Episodic, TaskKind::Optimisation];

    /// The name benchmark files use.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Episodic => "episodic",
            TaskKind::Optimisation => "optimisation",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A source of task instances of one split: instance `i` is a pure
/// function of the seed it was built with, its split and `i`.
pub trait Task: Sync {
    /// One problem: what an algorithm adapts to and is scored on.
    type Instance;
    /// The kind of task this is.
    fn kind(&self) -> TaskKind;
    /// Instance `index`, its tensors on `device`.
    fn instance(&self, index: u64, device: &Device) -> Result<Self::Instance>;
}

impl Task for Sampler<'_> {
    type Instance = Batch;

    fn kind(&self) -> TaskKind {
        TaskKind::Episodic
    }

    fn instance(&self, index: u64, device: &Device) -> Result<Batch> {
        self.batch(&self.episode(index), device)
    }
}
