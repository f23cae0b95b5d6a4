//! Profiles and overrides: what `--profile NAME`, `--smoke` and the budget
//! flags change in a benchmark file before it is resolved, so that every
//! check happens once, in [`super::resolve`].

use std::collections::BTreeMap;

use super::file::BenchmarkFile;
use super::{cfg_err, Budget};
use crate::error::Result;

/// The profile a benchmark file's own fields describe.
pub const DEFAULT_PROFILE: &str = "budgeted";

/// What `bench run` changes in a benchmark file before it is resolved, so
/// that every check happens once, in [`super::resolve`].
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A profile of the file's `profiles` (default: the file's own fields).
    pub profile: Option<String>,
    /// The smoke profile for tests: 100 meta-steps, 100 test and 20
    /// validation episodes, validation and checkpoints every 50 steps.
    pub smoke: bool,
    /// One budget for every algorithm (replacing per-algorithm budgets).
    pub budget: Option<Budget>,
    pub test_episodes: Option<usize>,
    /// The run seed (initialisation and training episodes) [default: 0].
    pub run_seed: Option<u64>,
}

/// Apply the chosen profile and then `o` to the file's fields. Returns the
/// profile's name, its algorithm overlays by label, and whether
/// per-algorithm budgets are replaced by one budget.
pub(super) fn apply_overrides(
    f: &mut BenchmarkFile,
    source: &str,
    o: &Overrides,
) -> Result<(String, BTreeMap<String, crate::yaml::Mapping>, bool)> {
    let profiles = f.profiles.take().unwrap_or_default();
    if profiles.contains_key(DEFAULT_PROFILE) {
        return Err(cfg_err(
            source,
            &format!("profiles.{DEFAULT_PROFILE}"),
            format!(
                "`{DEFAULT_PROFILE}` is the file's own fields; name the other profiles differently"
            ),
        ));
    }
    let mut overlays = BTreeMap::new();
    let name = o
        .profile
        .clone()
        .unwrap_or_else(|| DEFAULT_PROFILE.to_string());
    if name != DEFAULT_PROFILE {
        let Some(p) = profiles.get(&name) else {
            let mut known = vec![DEFAULT_PROFILE.to_string()];
            known.extend(profiles.keys().cloned());
            return Err(cfg_err(
                source,
                "profiles",
                format!("no profile `{name}`; profiles: {}", known.join(", ")),
            ));
        };
        let p = p.clone();
        if let Some(d) = p.description {
            f.description = Some(format!(
                "{} Profile {name}: {d}",
                f.description.as_deref().unwrap_or("").trim()
            ));
        }
        f.budget = p.budget.unwrap_or(f.budget);
        f.test_episodes = p.test_episodes.or(f.test_episodes);
        f.val_episodes = p.val_episodes.or(f.val_episodes);
        f.select = p.select.or(f.select);
        f.validate_every = p.validate_every.or(f.validate_every);
        f.validate_every_minutes = p.validate_every_minutes.or(f.validate_every_minutes);
        f.checkpoint_every = p.checkpoint_every.or(f.checkpoint_every);
        overlays = p.algorithms;
    }
    let mut one_budget = false;
    if o.smoke {
        f.budget = Budget {
            minutes: None,
            meta_steps: Some(100),
            episodes: None,
        };
        f.test_episodes = Some(100);
        f.val_episodes = Some(20);
        f.validate_every = Some(50);
        f.validate_every_minutes = None;
        f.checkpoint_every = Some(50);
        one_budget = true;
    }
    if let Some(b) = o.budget {
        f.budget = b;
        one_budget = true;
    }
    if let Some(n) = o.test_episodes {
        f.test_episodes = Some(n);
    }
    Ok((name, overlays, one_budget))
}
