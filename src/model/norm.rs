//! Where batch norm takes its statistics: the protocols of the reference
//! codes, as one choice per benchmark (`batch_norm:` in the YAML).
//!
//! The learner never keeps state across episodes; what differs between the
//! references is which batch normalises the *query* pass:
//!
//! | phase | mode | who does it |
//! | --- | --- | --- |
//! | meta-training | `query`: the query batch's own statistics | MAML (`tf.contrib.layers.batch_norm`, `is_training` always true: cbfinn/maml `utils.py` `normalize`); meta-LSTM (learner in training mode for the query pass: twitter-research/meta-learning-lstm, markdtw `main.py` `train_learner` then `learner_wo_grad.train()`) |
//! | meta-training | `support`: the support set's statistics | none (fewshot's earlier default; an option) |
//! | evaluation | `query` (transductive) | MAML |
//! | evaluation | `support`: support-set statistics at the adapted parameters | the usual non-transductive protocol of PyTorch ports |
//! | evaluation | `support-plus-one`: each query in a batch of the support set plus that one query | Reptile's non-transductive evaluation (openai/supervised-reptile `reptile.py` `_test_predictions`) |
//! | evaluation | `running`: running statistics reset at the start of each episode, updated by every training-mode pass of the adaptation with `momentum`, then used for the query | meta-LSTM (`learner:evaluate()` after the T support passes; markdtw `main.py` `meta_test`: `reset_batch_stats`, `train()` passes, `eval()` query) |
//!
//! Reptile meta-trains on support batches only, so `meta_train` does not
//! concern it. The benchmark's `transductive` flag is shorthand for
//! `eval: query` (true) or `eval: support` (false) and governs evaluation
//! only.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::kernels::batch_norm::BnStats;

/// Statistics of the query pass during meta-training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainStats {
    /// The query batch's own statistics (MAML and meta-LSTM references).
    Query,
    /// The support set's statistics.
    Support,
}

/// Statistics of the query predictions at validation and test time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalStats {
    /// The query batch's own statistics (transductive).
    Query,
    /// The support set's statistics at the adapted parameters.
    Support,
    /// Each query normalised in a batch of the support set plus itself.
    SupportPlusOne,
    /// Running statistics accumulated over the adaptation's passes.
    Running,
}

impl EvalStats {
    /// Whether predictions share information across queries.
    pub fn transductive(self) -> bool {
        self == EvalStats::Query
    }
}

/// The batch-norm protocol of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormProtocol {
    /// Query-pass statistics while meta-training [default: query].
    pub meta_train: TrainStats,
    /// Query-prediction statistics at validation/test [default: from
    /// `transductive`].
    pub eval: EvalStats,
    /// Weight of the newest batch in the running statistics, as PyTorch's
    /// and Torch7's `momentum` (running = (1 - m) running + m batch). Used
    /// by `eval: running` only [default: 0.9 for 1-shot, 0.95 for 5-shot
    /// and more, the meta-LSTM reference's `BN_momentum`].
    pub momentum: f64,
}

impl Default for NormProtocol {
    fn default() -> Self {
        NormProtocol {
            meta_train: TrainStats::Query,
            eval: EvalStats::Support,
            momentum: 0.9,
        }
    }
}

/// Running batch-norm statistics of one adaptation, reset per episode:
/// mean 0 and variance 1 per channel, then for every training-mode pass
/// `running = (1 - m) * running + m * batch`, with the batch variance
/// unbiased (n / (n - 1)) as in PyTorch and Torch7.
#[derive(Debug, Clone)]
pub struct RunningStats {
    momentum: f64,
    stats: Option<Vec<BnStats>>,
}

impl RunningStats {
    pub fn new(momentum: f64) -> Self {
        RunningStats {
            momentum,
            stats: None,
        }
    }

    /// Fold in the statistics of one training-mode pass.
    pub fn update(&mut self, batch: &[BnStats]) -> Result<()> {
        let m = self.momentum;
        let old = match self.stats.take() {
            Some(s) => s,
            None => batch
                .iter()
                .map(|b| {
                    Ok(BnStats {
                        mean: b.mean.zeros_like()?.detach(),
                        var: b.var.ones_like()?.detach(),
                        count: b.count,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let mut new = Vec::with_capacity(batch.len());
        for (o, b) in old.iter().zip(batch) {
            let n = b.count as f64;
            let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            let mean = ((&o.mean * (1.0 - m))? + (b.mean.detach() * m)?)?;
            let var = ((&o.var * (1.0 - m))? + (b.var.detach() * (m * unbiased))?)?;
            new.push(BnStats {
                mean,
                var,
                count: b.count,
            });
        }
        self.stats = Some(new);
        Ok(())
    }

    /// The statistics so far (`None` before the first pass).
    pub fn get(&self) -> Option<&[BnStats]> {
        self.stats.as_deref()
    }

    /// Means and variances as flat vectors, per layer (tests, reports).
    pub fn to_vecs(&self) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?)
        };
        self.get()
            .unwrap_or(&[])
            .iter()
            .map(|s| Ok((flat(&s.mean)?, flat(&s.var)?)))
            .collect()
    }
}

/// A records sink for adaptation loops: `Some` when the protocol asks for
/// running statistics.
pub fn recorder(p: &NormProtocol) -> Option<RunningStats> {
    (p.eval == EvalStats::Running).then(|| RunningStats::new(p.momentum))
}
