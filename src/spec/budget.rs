//! The meta-training budget and its one check (benchmark files, their
//! profiles and algorithm entries, and `bench run`'s budget flags all go
//! through [`Budget::check`]).

use serde::{Deserialize, Serialize};

/// Meta-training budget per algorithm. Any limit may be absent; at least
/// one must be present. Training stops at whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Wall-clock minutes of meta-training (validation excluded).
    #[serde(default)]
    pub minutes: Option<f64>,
    /// Meta-steps (meta-updates).
    #[serde(default)]
    pub meta_steps: Option<u64>,
    /// Meta-training episodes (meta-steps x meta-batch).
    #[serde(default)]
    pub episodes: Option<u64>,
}

/// A budget a run was meta-trained under, from the meta-step at which it
/// took effect (a resumed run whose budget grew has two).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetSpan {
    pub from_step: u64,
    pub budget: Budget,
}

/// `2 meta-steps (steps 0-2), then 3 meta-steps (from step 2)`.
pub fn describe_spans(spans: &[BudgetSpan]) -> String {
    spans
        .iter()
        .map(|s| format!("{} (from step {})", s.budget.describe(), s.from_step))
        .collect::<Vec<_>>()
        .join(", then ")
}

impl Budget {
    /// The limits that are set, e.g. `30 min` or `60000 meta-steps`.
    pub fn describe(&self) -> String {
        let mut v = vec![];
        if let Some(m) = self.minutes {
            v.push(format!("{m} min"));
        }
        if let Some(s) = self.meta_steps {
            v.push(format!("{s} meta-steps"));
        }
        if let Some(e) = self.episodes {
            v.push(format!("{e} episodes"));
        }
        v.join(", ")
    }

    /// Check the limits: at least one given, each positive (and finite).
    /// The error is the offending limit's field name (`minutes`,
    /// `meta_steps`, `episodes`, or `""` when none is given) and why.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.minutes.is_none() && self.meta_steps.is_none() && self.episodes.is_none() {
            return Err(("", "give `minutes`, `meta_steps` and/or `episodes`".into()));
        }
        if self.episodes == Some(0) {
            return Err(("episodes", "must be >= 1".into()));
        }
        if let Some(m) = self.minutes {
            if !(m.is_finite() && m > 0.0) {
                return Err(("minutes", format!("must be a finite number > 0, got {m}")));
            }
        }
        if self.meta_steps == Some(0) {
            return Err(("meta_steps", "must be >= 1".into()));
        }
        Ok(())
    }
}
