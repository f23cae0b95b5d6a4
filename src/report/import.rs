//! Scores computed outside fewshot, on a leaderboard (`bench import`).
//!
//! A method written elsewhere scores the fixed episodes of an export
//! (`bench episodes <benchmark> --export DIR`) and writes a CSV in one of
//! two forms (columns found by header name; extra columns, quoting, CRLF
//! and a byte order mark are fine, [`crate::data::table`]):
//! - per-episode accuracy: `episode,accuracy,fingerprint`, accuracy in
//!   [0, 1];
//! - per-query predictions: `episode,query,prediction,fingerprint`, where
//!   `query` indexes the episode's `query_x` as exported (query `q` has
//!   label `q / queries`) and `prediction` is the predicted label; fewshot
//!   computes each episode's accuracy.
//!
//! `fingerprint` is the export's episode fingerprint
//! ([`crate::data::fingerprint`]) on every row. The file must score every
//! episode of the results' test set exactly once (every query of it, for
//! predictions); a wrong fingerprint, a missing, extra or repeated episode
//! or query, or a label out of range is refused with the file and line.
//! The row joins the results with the same paired intervals as fewshot's
//! own rows and says where it came from ([`Imported`]).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::data::table;
use crate::error::{Error, Result};
use crate::report::results::{pair_with_best, AlgoResult, Imported, RunResults};

/// What the scores file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreKind {
    EpisodeAccuracy,
    QueryPredictions,
}

impl ScoreKind {
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::EpisodeAccuracy => "episode accuracy",
            ScoreKind::QueryPredictions => "query predictions",
        }
    }
}

/// Per-episode accuracies read from a scores file, checked against the
/// test set of `results`.
#[derive(Debug, Clone)]
pub struct Scores {
    pub kind: ScoreKind,
    pub episode_accuracy: Vec<f64>,
    pub sha256: String,
}

/// Read and check the scores file `path` against `fingerprint`, `episodes`
/// test episodes of `ways` classes and `queries` queries per class.
pub fn read_scores(
    path: &Path,
    fingerprint: &str,
    episodes: usize,
    ways: usize,
    queries: usize,
) -> Result<Scores> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha256 = format!(
        "sha256:{}",
        crate::data::fingerprint::hex(&Sha256::digest(&bytes))
    );
    let bad = |line: usize, why: String| Error::Csv {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why}"),
    };
    let text = String::from_utf8(bytes).map_err(|_| bad(1, "not UTF-8 text".into()))?;
    let header: Vec<String> = text
        .strip_prefix('\u{feff}')
        .unwrap_or(&text)
        .lines()
        .next()
        .map(|l| {
            csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(l.as_bytes())
                .records()
                .next()
                .and_then(|r| r.ok())
                .map(|r| r.iter().map(|h| h.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let kind = if header.iter().any(|h| h == "prediction") {
        ScoreKind::QueryPredictions
    } else if header.iter().any(|h| h == "accuracy") {
        ScoreKind::EpisodeAccuracy
    } else {
        return Err(bad(
            1,
            format!(
                "the header `{}` has neither `accuracy` (episode,accuracy,fingerprint) nor `prediction` (episode,query,prediction,fingerprint)",
                header.join(",")
            ),
        ));
    };
    let columns: &[&str] = match kind {
        ScoreKind::EpisodeAccuracy => &["episode", "accuracy", "fingerprint"],
        ScoreKind::QueryPredictions => &["episode", "query", "prediction", "fingerprint"],
    };
    let rows = table::read(path, &text, columns)?;
    let per_episode = match kind {
        ScoreKind::EpisodeAccuracy => 1,
        ScoreKind::QueryPredictions => ways * queries,
    };
    // seen[e][q]: the line that scored query q (or the episode) of episode e.
    let mut seen: Vec<Vec<usize>> = vec![vec![0; per_episode]; episodes];
    let mut value = vec![0f64; episodes];
    let number = |line: usize, what: &str, v: &str| -> Result<usize> {
        v.parse::<usize>()
            .map_err(|_| bad(line, format!("{what} `{v}` is not a whole number")))
    };
    for row in &rows {
        let (n, f) = (row.line, &row.values);
        let fp = &f[columns.len() - 1];
        if fp != fingerprint {
            return Err(bad(
                n,
                format!(
                    "fingerprint `{fp}` is not the test episodes' {fingerprint}: these scores are of other episodes (export the benchmark's own with `bench episodes <benchmark> --export DIR`)"
                ),
            ));
        }
        let e = number(n, "episode", &f[0])?;
        if e >= episodes {
            return Err(bad(
                n,
                format!(
                    "episode {e}: the test set has episodes 0 to {}",
                    episodes - 1
                ),
            ));
        }
        let (q, v) = match kind {
            ScoreKind::EpisodeAccuracy => {
                let a: f64 = f[1]
                    .parse()
                    .map_err(|_| bad(n, format!("accuracy `{}` is not a number", f[1])))?;
                if !(0.0..=1.0).contains(&a) {
                    return Err(bad(
                        n,
                        format!(
                            "accuracy {a} is outside [0, 1] (give a fraction, not a percentage)"
                        ),
                    ));
                }
                (0, a)
            }
            ScoreKind::QueryPredictions => {
                let q = number(n, "query", &f[1])?;
                if q >= per_episode {
                    return Err(bad(
                        n,
                        format!(
                            "query {q}: an episode has queries 0 to {} ({ways} ways x {queries} queries)",
                            per_episode - 1
                        ),
                    ));
                }
                let p = number(n, "prediction", &f[2])?;
                if p >= ways {
                    return Err(bad(
                        n,
                        format!("prediction {p}: labels are 0 to {}", ways - 1),
                    ));
                }
                (q, if p == q / queries { 1.0 } else { 0.0 })
            }
        };
        if seen[e][q] != 0 {
            let what = match kind {
                ScoreKind::EpisodeAccuracy => format!("episode {e}"),
                ScoreKind::QueryPredictions => format!("episode {e} query {q}"),
            };
            return Err(bad(
                n,
                format!("{what} is scored twice (first on line {})", seen[e][q]),
            ));
        }
        seen[e][q] = n;
        value[e] += v;
    }
    for (e, s) in seen.iter().enumerate() {
        if let Some(q) = s.iter().position(|&l| l == 0) {
            let what = match kind {
                ScoreKind::EpisodeAccuracy => format!("episode {e} has no score"),
                ScoreKind::QueryPredictions => {
                    format!("episode {e} has no prediction for query {q}")
                }
            };
            return Err(Error::Csv {
                path: path.to_path_buf(),
                reason: format!(
                    "{what}: the file must score all {episodes} test episodes ({} rows)",
                    episodes * per_episode
                ),
            });
        }
    }
    let episode_accuracy = value.iter().map(|v| v / per_episode as f64).collect();
    Ok(Scores {
        kind,
        episode_accuracy,
        sha256,
    })
}

/// Add the row `label` scored by the file `path` to `results` (whose
/// provenance says which episodes its rows were scored on; `fingerprint`
/// when it does not, e.g. results written before it was recorded), with
/// the paired difference of every row recomputed. Refused when `label`
/// names a row already there.
pub fn import(
    results: &mut RunResults,
    label: &str,
    path: &Path,
    fingerprint: &str,
) -> Result<usize> {
    if let Some(r) = results.results.iter().find(|r| r.label == label) {
        return Err(Error::invalid(
            "--label",
            label,
            format!(
                "a label the results do not have yet (`{}` is {})",
                r.label,
                if r.imported.is_some() {
                    "an imported row"
                } else {
                    "one of fewshot's rows"
                }
            ),
        ));
    }
    let n = results
        .results
        .iter()
        .map(|r| r.test_episodes)
        .max()
        .unwrap_or(0);
    if n == 0 {
        return Err(Error::Results {
            path: results.run_dir.join(crate::layout::RESULTS),
            reason: "no row with test episodes to import beside".into(),
        });
    }
    let s = read_scores(
        path,
        fingerprint,
        n,
        results.episode.ways,
        results.episode.queries,
    )?;
    let mut row = AlgoResult::scored(label, &s.episode_accuracy);
    row.algorithm = "imported".into();
    row.selected = "imported".into();
    row.imported = Some(Imported {
        file: path.to_path_buf(),
        sha256: s.sha256,
        scores: s.kind.name().into(),
        fingerprint: fingerprint.into(),
        at: crate::util::utc_now(),
    });
    results.results.push(row);
    pair_with_best(&mut results.results);
    Ok(results.results.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:abc";

    fn scores(text: &str, episodes: usize) -> Result<Scores> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, text).unwrap();
        read_scores(&p, FP, episodes, 2, 2)
    }

    #[test]
    fn predictions_give_each_episode_its_accuracy_with_labels_from_the_query_index() {
        // 2 ways x 2 queries: queries 0, 1 have label 0; 2, 3 label 1.
        let mut t = String::from("\u{feff},episode,query,prediction,fingerprint\r\n");
        for (i, (e, q, p)) in [
            (0, 0, 0),
            (0, 1, 1),
            (0, 2, 1),
            (0, 3, 1),
            (1, 0, 1),
            (1, 1, 1),
            (1, 2, 0),
            (1, 3, 0),
        ]
        .iter()
        .enumerate()
        {
            t.push_str(&format!("{i},{e},{q},{p},{FP}\r\n"));
        }
        let s = scores(&t, 2).unwrap();
        assert_eq!(s.kind, ScoreKind::QueryPredictions);
        assert_eq!(s.episode_accuracy, vec![0.75, 0.0]);
        assert!(s.sha256.starts_with("sha256:"));
    }

    #[test]
    fn wrong_fingerprints_missing_repeated_and_out_of_range_scores_are_refused_with_their_line() {
        let ok = format!("episode,accuracy,fingerprint\n0,0.5,{FP}\n1,1,{FP}\n");
        assert_eq!(scores(&ok, 2).unwrap().episode_accuracy, vec![0.5, 1.0]);
        let e = scores(&ok.replace("1,1,sha256:abc", "1,1,sha256:abd"), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("fingerprint"), "{e}");
        let e = scores(&format!("episode,accuracy,fingerprint\n0,0.5,{FP}\n"), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("episode 1 has no score"), "{e}");
        let e = scores(&format!("{ok}0,0.25,{FP}\n"), 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 4") && e.contains("twice") && e.contains("line 2"),
            "{e}"
        );
        let e = scores(&ok.replace("0,0.5,", "0,50,"), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("outside [0, 1]"), "{e}");
        let e = scores(&ok.replace("1,1,", "2,1,"), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("episode 2"), "{e}");
        let e = scores("episode,score\n0,1\n", 1).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("neither"), "{e}");
        let p = format!("episode,query,prediction,fingerprint\n0,0,2,{FP}\n");
        let e = scores(&p, 1).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("prediction 2"), "{e}");
    }

    #[test]
    fn an_imported_row_is_paired_with_the_best_and_a_taken_label_is_refused() {
        let mut r =
            crate::report::results::tests::results(vec![crate::report::results::tests::row(
                "a",
                &[1.0, 0.5, 1.0],
            )]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(
            &p,
            format!("episode,accuracy,fingerprint\n0,0.5,{FP}\n1,0.5,{FP}\n2,0.5,{FP}\n"),
        )
        .unwrap();
        let i = import(&mut r, "mine", &p, FP).unwrap();
        let row = &r.results[i];
        assert_eq!(row.imported.as_ref().unwrap().scores, "episode accuracy");
        assert!((row.accuracy - 0.5).abs() < 1e-12);
        let d = row.vs_best.as_ref().unwrap();
        assert!((d.mean + 1.0 / 3.0).abs() < 1e-12, "{d:?}");
        let e = import(&mut r, "a", &p, FP).unwrap_err().to_string();
        assert!(e.contains("one of fewshot's rows"), "{e}");
    }
}
