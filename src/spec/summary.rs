//! The benchmark files of a folder summarised (`bench list`): each file
//! resolved with its default profile and with every other profile, its
//! budgets described; a file or profile that does not resolve is listed
//! with its error instead of hiding the others.

use std::path::{Path, PathBuf};

use super::optimisation::OptBenchmark;
use super::{list_benchmarks, AnyBenchmark, Benchmark, Overrides};
use crate::error::Result;

/// One benchmark file of the folder.
#[derive(Debug)]
pub struct Listed {
    pub path: PathBuf,
    /// The benchmark, or why the file does not resolve.
    pub summary: Result<Summary>,
}

/// A benchmark resolved with its default profile.
#[derive(Debug)]
pub struct Summary {
    pub name: String,
    /// The dataset (few-shot) or problem family (optimisation).
    pub dataset: String,
    /// The episode shape (`5w1s15q`, ` T` when transductive) or the
    /// horizon (`T=100`).
    pub shape: String,
    /// Algorithm labels, in the file's order.
    pub labels: Vec<String>,
    /// The budgets on one line ([`Benchmark::describe_budget`]).
    pub budget: String,
    pub description: String,
    /// Every other profile of the file, in the file's order.
    pub profiles: Vec<ProfileSummary>,
}

/// One profile of a benchmark file, resolved.
#[derive(Debug)]
pub struct ProfileSummary {
    pub name: String,
    /// The profile's own description.
    pub about: String,
    /// The budgets on one line, or why the profile does not resolve.
    pub budget: Result<String>,
}

/// Every `*.yaml` of `dir` by name ([`list_benchmarks`]), each summarised.
/// A file that cannot be listed at all (the folder, or a file's profiles
/// unreadable) is an error; one that does not resolve is a [`Listed`] with
/// its error.
pub fn summaries(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = vec![];
    for (path, b) in list_benchmarks(dir)? {
        let summary = match b {
            Ok(AnyBenchmark::Episodic(b)) => Ok(summary(&path, &b)?),
            Ok(AnyBenchmark::Optimisation(b)) => Ok(opt_summary(&path, &b)?),
            Err(e) => Err(e),
        };
        out.push(Listed { path, summary });
    }
    Ok(out)
}

/// The summary of `b`, read from `path`, with every other profile resolved.
fn summary(path: &Path, b: &Benchmark) -> Result<Summary> {
    let mut profiles = vec![];
    for (name, about) in Benchmark::profiles(path)?.into_iter().skip(1) {
        let o = Overrides {
            profile: Some(name.clone()),
            ..Default::default()
        };
        let budget =
            Benchmark::load_with(&path.display().to_string(), &o).map(|(p, _)| p.describe_budget());
        profiles.push(ProfileSummary {
            name,
            about,
            budget,
        });
    }
    Ok(Summary {
        name: b.name.clone(),
        dataset: b.dataset.clone(),
        shape: format!(
            "{}w{}s{}q{}",
            b.episode.ways,
            b.episode.shots,
            b.episode.queries,
            if b.transductive { " T" } else { "" }
        ),
        labels: b.algorithms.iter().map(|a| a.label.clone()).collect(),
        budget: b.describe_budget(),
        description: b.description.clone(),
        profiles,
    })
}

/// The summary of an optimisation benchmark, every other profile resolved.
fn opt_summary(path: &Path, b: &OptBenchmark) -> Result<Summary> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::Error::io(path, e))?;
    let file: super::optimisation::OptBenchmarkFile =
        super::from_str(&text, &path.display().to_string())?;
    let mut profiles = vec![];
    for (name, p) in file.profiles.unwrap_or_default() {
        let o = Overrides {
            profile: Some(name.clone()),
            ..Default::default()
        };
        let budget = OptBenchmark::parse_with(&text, &path.display().to_string(), &o)
            .map(|p| p.budget.describe());
        profiles.push(ProfileSummary {
            name,
            about: p.description.unwrap_or_default(),
            budget,
        });
    }
    Ok(Summary {
        name: b.name.clone(),
        dataset: b.problem.name().to_string(),
        shape: format!("T={}", b.steps),
        labels: b.algorithms.iter().map(|a| a.label.clone()).collect(),
        budget: b.budget.describe(),
        description: b.description.clone(),
        profiles,
    })
}

/// Files and profiles of `list` that do not resolve.
pub fn broken(list: &[Listed]) -> usize {
    list.iter()
        .map(|l| match &l.summary {
            Ok(s) => s.profiles.iter().filter(|p| p.budget.is_err()).count(),
            Err(_) => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_and_profile_is_summarised_and_the_broken_are_counted() {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benchmarks/fewshot-5way1shot.yaml"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), &shipped).unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "name: bad\nepisode: {ways: 0}\n",
        )
        .unwrap();
        // A profile that parses with the file but does not resolve.
        let broken_profile = shipped.replacen(
            "\nprofiles:\n",
            "\nprofiles:\n  broken:\n    budget: {minutes: -1}\n",
            1,
        );
        assert_ne!(broken_profile, shipped);
        std::fs::write(dir.path().join("profile.yaml"), broken_profile).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a benchmark").unwrap();

        let list = summaries(dir.path()).unwrap();
        let names: Vec<_> = list
            .iter()
            .map(|l| l.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["bad.yaml", "good.yaml", "profile.yaml"]);
        assert!(list[0].summary.is_err());
        let good = list[1].summary.as_ref().unwrap();
        assert_eq!(
            (
                good.name.as_str(),
                good.dataset.as_str(),
                good.budget.as_str()
            ),
            ("fewshot-5way1shot", "omniglot", "15 min")
        );
        assert_eq!(good.labels, ["fomaml", "reptile", "meta-lstm"]);
        assert_eq!(good.shape, "5w1s15q");
        assert_eq!(good.profiles.len(), 1);
        let protocol = &good.profiles[0];
        assert_eq!(protocol.name, "protocol");
        assert_eq!(
            protocol.about,
            "published training lengths, final model tested"
        );
        assert_eq!(
            protocol.budget.as_ref().unwrap(),
            "fomaml: 40000 meta-steps; reptile: 100000 meta-steps; meta-lstm: 75000 episodes"
        );
        let with_broken = list[2].summary.as_ref().unwrap();
        let p: Vec<_> = with_broken
            .profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(p, ["broken", "protocol"]);
        let e = with_broken.profiles[0].budget.as_ref().unwrap_err();
        assert!(e.to_string().contains("minutes"), "{e}");
        assert_eq!(broken(&list), 2);
        assert!(summaries(&dir.path().join("missing")).is_err());
    }
}
